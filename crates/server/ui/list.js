// The task list: newest first, refreshed every two seconds, rows updated in place (a row's
// size never changes with its contents, so nothing jumps).

import { api } from './api.js';
import { age, badge, clear, every, h, int, UNFINISHED } from './dom.js';

const FILTERS = [
  ['', 'All tasks'],
  [UNFINISHED.join(','), 'Unfinished'],
  ['succeeded', 'Succeeded'],
  ['failed,budget_exhausted', 'Failed'],
  ['cancelled', 'Cancelled'],
];

const PAGE = 25;

export function render(main, _params, signal) {
  const state = { status: sessionStorage.getItem('autoglm.filter') || '', cursors: [null], tasks: [], next: null };
  const select = h('select', { 'aria-label': 'Filter by status' }, FILTERS.map(([v, label]) => h('option', { value: v, text: label })));
  select.value = state.status;
  const error = h('p', { class: 'notice error', hidden: true });
  const body = h('tbody');
  const table = h(
    'table',
    { class: 'tasks' },
    h('colgroup', {}, h('col', { class: 'col-status' }), h('col'), h('col', { class: 'col-age' }), h('col', { class: 'col-n' }), h('col', { class: 'col-n' }), h('col', { class: 'col-tok' })),
    h('thead', {}, h('tr', {}, h('th', { text: 'Status' }), h('th', { text: 'Goal' }), h('th', { text: 'Age' }), h('th', { class: 'r', text: 'Steps' }), h('th', { class: 'r', text: 'Tools' }), h('th', { class: 'r', text: 'Tokens' }))),
    body,
  );
  table.hidden = true;
  const empty = h('div', { class: 'empty', hidden: true }, 'No tasks here yet. ', h('a', { href: '#/new', text: 'Start one' }), '.');
  const newer = h('button', { class: 'small', type: 'button', text: '← Newer', disabled: true });
  const older = h('button', { class: 'small', type: 'button', text: 'Older →', disabled: true });
  const panel = h('div', { class: 'panel' }, table, empty);
  main.append(
    h('div', { class: 'page-head' }, h('div', { class: 'grow' }, h('h1', { text: 'Tasks' }), h('div', { class: 'muted', text: 'Agent tasks of this key\u2019s tenant, newest first.' }))),
    h('div', { class: 'toolbar' }, select, h('span', { class: 'spacer' }), h('a', { href: '#/new' }, h('button', { class: 'primary', type: 'button', text: 'New task' }))),
    error,
    panel,
    h('div', { class: 'pager' }, newer, older),
  );

  const rows = new Map();
  function row(t) {
    let r = rows.get(t.id);
    if (!r) {
      const link = h('a', { href: `#/tasks/${t.id}` });
      r = {
        tr: h('tr', { 'data-id': t.id, onclick: (e) => {
          if (e.target.closest('a')) return;
          location.hash = `#/tasks/${t.id}`;
        } }),
        status: h('td'),
        goal: h('td', { class: 'goal' }, link),
        link,
        age: h('td', { class: 'num muted' }),
        steps: h('td', { class: 'r num' }),
        tools: h('td', { class: 'r num' }),
        tokens: h('td', { class: 'r num' }),
      };
      r.tr.append(r.status, r.goal, r.age, r.steps, r.tools, r.tokens);
      rows.set(t.id, r);
    }
    if (r.status.firstChild?.dataset.status !== t.status) clear(r.status).append(badge(t.status));
    r.link.textContent = t.goal;
    r.link.title = t.goal;
    r.age.textContent = age(t.created_at);
    r.steps.textContent = int(t.steps);
    r.tools.textContent = int(t.tool_calls);
    r.tokens.textContent = int(t.usage?.total_tokens);
    return r.tr;
  }

  function show() {
    const trs = state.tasks.map(row);
    const keep = new Set(state.tasks.map((t) => t.id));
    for (const id of rows.keys()) if (!keep.has(id)) rows.delete(id);
    body.replaceChildren(...trs);
    empty.hidden = state.tasks.length > 0;
    table.hidden = state.tasks.length === 0;
    newer.disabled = state.cursors.length <= 1;
    older.disabled = !state.next;
  }

  async function load() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (state.status) q.set('status', state.status);
    const before = state.cursors[state.cursors.length - 1];
    if (before) q.set('before', before);
    try {
      const page = await api(`/v1/tasks?${q}`, { signal });
      state.tasks = page.data;
      state.next = page.next;
      error.hidden = true;
      show();
    } catch (e) {
      if (signal.aborted) return;
      error.textContent = `Cannot list tasks: ${e.message}`;
      error.hidden = false;
      throw e;
    }
  }

  select.addEventListener('change', () => {
    state.status = select.value;
    sessionStorage.setItem('autoglm.filter', state.status);
    state.cursors = [null];
    load();
  });
  older.addEventListener('click', () => {
    if (state.next) state.cursors.push(state.next);
    load();
  });
  newer.addEventListener('click', () => {
    if (state.cursors.length > 1) state.cursors.pop();
    load();
  });
  every(2000, signal, load);
}
