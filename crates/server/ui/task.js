// One task: its status and answer, pending approvals, the plan as a tree, the timeline, and
// every step with its arguments and results. The page loads the trace (every record so far),
// then follows the events stream after the last record it has, so it updates live while the
// task runs; the task object (status, usage, approvals) is re-read when a record changes it
// and every two seconds until the task ends.

import { api, authHeaders, ApiError } from './api.js';
import { age, badge, clear, duration, every, h, int, pretty, renderInto, UNFINISHED } from './dom.js';
import { follow } from './sse.js';
import * as timeline from './timeline.js';

const REFRESHING = new Set(['plan', 'approval_requested', 'approval', 'final']);

function short(v, n = 90) {
  const text = typeof v === 'string' ? v : JSON.stringify(v);
  const one = (text || '').replace(/\s+/g, ' ').trim();
  return one.length > n ? `${one.slice(0, n - 1)}…` : one;
}

function block(title, content, cls = '') {
  return [h('h4', { text: title }), h('pre', { class: `block ${cls}`, text: content })];
}

/** The plan records' subtasks as a tree, each with what its attempts did. */
function planTree(records) {
  const plans = records.filter((r) => r.kind === 'plan');
  if (!plans.length) return h('p', { class: 'muted', text: 'No plan yet.' });
  return h(
    'ul',
    { class: 'tree' },
    plans.map((p, pi) => {
      const planKey = p.key;
      const inPlan = records.filter((r) => r.key?.startsWith(`${planKey}/`));
      const head = h('div', { class: 'node' }, h('b', { text: pi === 0 ? 'Plan' : `Replan ${pi}` }), h('span', { class: 'muted', text: `${p.steps.length} step${p.steps.length === 1 ? '' : 's'}` }));
      const feedback = p.feedback ? h('div', { class: 'muted', text: `why: ${short(p.feedback, 160)}` }) : null;
      const subs = p.steps.map((st) => {
        const mine = inPlan.filter((r) => r.key.startsWith(`${planKey}/s${st.id}/`));
        const checks = mine.filter((r) => r.kind === 'reflection');
        const last = checks[checks.length - 1];
        const tools = mine.filter((r) => r.kind === 'tool_result');
        let state;
        if (last?.ok) state = h('span', { class: 'tag ok', text: 'done' });
        else if (last) state = h('span', { class: 'tag bad', text: 'retry' });
        else if (mine.length) state = h('span', { class: 'tag', text: 'working' });
        else state = h('span', { class: 'tag', text: 'pending' });
        const attempts = new Set(mine.map((r) => r.key.split('/')[2])).size;
        const children = [
          ...tools.map((t) => h('li', {}, h('div', { class: 'node' }, h('span', { class: `tag tool`, text: t.tool }), h('span', { class: t.ok === false ? 'err-text' : 'muted', text: short(t.output, 80) })))),
          ...checks.map((c) => h('li', {}, h('div', { class: 'node' }, h('span', { class: `tag ${c.ok ? 'ok' : 'bad'}`, text: c.ok ? 'check ✓' : 'check ✗' }), h('span', { class: 'muted', text: short(c.reason, 100) })))),
        ];
        return h(
          'li',
          { 'data-subtask': st.id },
          h(
            'div',
            { class: 'node' },
            h('span', { class: 'sid', text: `s${st.id}` }),
            h('span', { text: st.task }),
            state,
            st.depends_on?.length ? h('span', { class: 'tag', text: `after ${st.depends_on.map((d) => `s${d}`).join(', ')}` }) : null,
            attempts > 1 ? h('span', { class: 'tag', text: `${attempts} attempts` }) : null,
          ),
          children.length ? h('ul', {}, children) : null,
        );
      });
      return h('li', {}, head, feedback, h('ul', {}, subs));
    }),
  );
}

function summary(r) {
  switch (r.kind) {
    case 'plan':
      return `${r.replan ? 'replan' : 'plan'}: ${r.steps.map((s) => s.task).join(' → ')}`;
    case 'model_call': {
      const resp = r.response || {};
      const calls = (resp.tool_calls || []).map((c) => c.name);
      const said = calls.length ? `calls ${calls.join(', ')}` : short(resp.content, 70);
      return `${r.purpose || 'model'}${r.subtask ? ` (step ${r.subtask})` : ''} → ${said}`;
    }
    case 'tool_call':
      return `${r.tool}(${short(r.arguments, 70)})`;
    case 'tool_result':
      return `${r.tool}: ${short(r.output, 80)}`;
    case 'reflection':
      return `${r.ok ? '✓' : '✗'} ${short(r.reason, 90)}`;
    case 'guard':
      return `${r.guard}: ${short(r.detail, 90)}`;
    case 'approval_requested':
      return `#${r.n} ${r.tool}(${short(r.arguments, 60)}) waits for a person`;
    case 'approval':
      return `#${r.n} ${r.approve ? 'granted' : 'denied'}${r.reason ? `: ${r.reason}` : ''}`;
    case 'final':
      return `${r.status}${r.reason ? `: ${r.reason}` : ''}`;
    default:
      return r.key || '';
  }
}

function stepBody(r) {
  switch (r.kind) {
    case 'model_call': {
      const resp = r.response || {};
      const u = r.usage || {};
      return [
        h('div', { class: 'muted num', text: `${int(u.prompt_tokens)} prompt tokens (${int(u.cached_tokens)} cached) · ${int(u.completion_tokens)} completion tokens · ${int(r.messages)} messages · ${duration(r.ended_ms - r.started_ms)}` }),
        resp.content ? block('Reply', resp.content) : null,
        resp.tool_calls?.length ? block('Tool calls', pretty(resp.tool_calls)) : null,
      ];
    }
    case 'tool_call':
      return [...block('Arguments', pretty(r.arguments)), h('div', { class: 'result', 'data-result-for': r.key }, h('span', { class: 'muted', text: 'running…' }))];
    case 'tool_result':
      return block(r.denied ? 'Denied' : 'Result', r.output ?? '', r.ok === false ? 'err-text' : '');
    case 'plan':
      return block('Steps', r.steps.map((s) => `s${s.id}. ${s.task}${s.depends_on?.length ? `  (after ${s.depends_on.map((d) => `s${d}`).join(', ')})` : ''}`).join('\n'));
    default: {
      const { seq, kind, key, started_ms, ended_ms, at_ms, ...rest } = r;
      return block('Record', pretty(rest));
    }
  }
}

function fillResult(el, res) {
  clear(el).append(...block(`Result${res.ok === false ? ' (error)' : ''} · ${duration(res.ended_ms - res.started_ms)}`, res.output ?? '', res.ok === false ? 'err-text' : ''));
}

export function render(main, [id], signal) {
  const state = { task: null, records: [], seen: new Set(), lastSeq: 0 };
  const error = h('p', { class: 'notice error', hidden: true });
  const status = h('span', { id: 'task-status' });
  const meta = h('div', { class: 'meta' });
  const liveState = h('span', { class: 'live-state', id: 'live-state' });
  const cancel = h('button', { class: 'danger small', type: 'button', text: 'Cancel task', hidden: true });
  const goal = h('div', { class: 'goal-text' });
  const answer = h('div', { class: 'panel answer pending', id: 'answer' }, h('h2', { text: 'Answer' }), h('div', { class: 'answer-text muted', text: 'The answer appears here when the task ends.' }));
  const approvals = h('div', { class: 'panel', id: 'approvals', hidden: true });
  const usage = h('div', { class: 'stats' });
  const tree = h('div', { id: 'plan' });
  const tl = h('div', { class: 'timeline', id: 'timeline' });
  const steps = h('div', { class: 'steps', id: 'steps' });
  const stepCount = h('span', { class: 'muted num' });
  main.append(
    h('div', { class: 'page-head' }, h('div', { class: 'grow' }, h('div', { class: 'meta' }, h('a', { href: '#/', text: '← Tasks' }), h('span', { class: 'mono', text: id })), goal, h('div', { class: 'meta' }, status, meta, liveState)), cancel),
    error,
    h(
      'div',
      { class: 'cols' },
      h(
        'div',
        {},
        answer,
        approvals,
        h('div', { class: 'panel' }, h('h2', { text: 'Timeline' }), h('div', { class: 'legend' }, h('span', {}, h('i', { class: 'lg-model' }), 'model call'), h('span', {}, h('i', { class: 'lg-tool' }), 'tool call'), h('span', {}, h('i', { class: 'lg-wait' }), 'waiting for approval'), h('span', {}, h('i', { class: 'lg-mark' }), 'decision, guard, end'), h('span', { text: 'bold: slow' })), tl),
        h('div', { class: 'panel' }, h('h2', {}, 'Steps ', stepCount), steps),
      ),
      h('div', {}, h('div', { class: 'panel' }, h('h2', { text: 'Usage' }), usage), h('div', { class: 'panel' }, h('h2', { text: 'Plan' }), tree)),
    ),
  );

  function addStep(r) {
    if (r.kind === 'tool_result') {
      const slot = steps.querySelector(`[data-result-for="${CSS.escape(r.key)}"]`);
      if (slot) {
        fillResult(slot, r);
        const sum = slot.closest('details')?.querySelector('.took');
        if (sum) sum.textContent = duration(r.ended_ms - r.started_ms);
        if (r.ok === false) slot.closest('details')?.querySelector('.sum')?.classList.add('err-text');
        return;
      }
    }
    const took = r.kind === 'model_call' ? duration(r.ended_ms - r.started_ms) : '';
    const el = h(
      'details',
      { class: 'step', 'data-kind': r.kind, 'data-seq': r.seq },
      h('summary', {}, h('span', { class: 'seq', text: `#${r.seq}` }), h('span', { class: `kind k-${r.kind}`, text: r.kind.replace('_', ' ') }), h('span', { class: 'sum', text: summary(r) }), h('span', { class: 'took', text: took })),
      h('div', { class: 'body' }, stepBody(r)),
    );
    steps.append(el);
    if (r.kind === 'tool_call') {
      const res = state.records.find((x) => x.kind === 'tool_result' && x.key === r.key);
      if (res) addStep(res);
    }
  }

  function add(records) {
    let added = 0;
    for (const r of records) {
      if (state.seen.has(r.seq)) continue;
      state.seen.add(r.seq);
      state.records.push(r);
      state.lastSeq = Math.max(state.lastSeq, r.seq);
      addStep(r);
      added++;
    }
    if (added) schedule();
    return added;
  }

  let frame = 0;
  function schedule() {
    if (!frame) frame = requestAnimationFrame(paintRecords);
  }

  function running() {
    return !state.task || UNFINISHED.includes(state.task.status);
  }

  function paintRecords() {
    frame = 0;
    if (signal.aborted) return;
    stepCount.textContent = `(${state.records.length} records)`;
    renderInto(tree, String(state.records.length), () => planTree(state.records));
    timeline.draw(tl, state.records, { running: running() });
  }

  function paintTask() {
    const t = state.task;
    if (!t) return;
    document.title = `${t.status} · ${t.goal.slice(0, 40)} — Open-AutoGLM`;
    goal.textContent = t.goal;
    if (status.firstChild?.dataset.status !== t.status) clear(status).append(badge(t.status));
    const ended = !UNFINISHED.includes(t.status);
    const took = ended ? (t.updated_at - t.created_at) * 1000 : Date.now() - t.created_at * 1000;
    clear(meta).append(
      h('span', {}, 'started ', h('b', { text: age(t.created_at) })),
      h('span', {}, ended ? 'took ' : 'running for ', h('b', { class: 'num', text: duration(took) })),
      h('span', {}, 'priority ', h('b', { text: t.priority })),
      h('span', {}, 'tools ', h('b', { text: t.tools ? t.tools.join(', ') || 'none' : 'all' })),
    );
    cancel.hidden = ended;
    const box = answer.querySelector('.answer-text');
    answer.classList.toggle('pending', !ended);
    answer.classList.toggle('failed', ended && t.status !== 'succeeded');
    if (t.answer) {
      box.textContent = t.answer;
      box.classList.remove('muted');
    } else if (ended) {
      box.textContent = t.error ? `No answer: ${t.error}` : `No answer (${t.status.replace('_', ' ')}).`;
      box.classList.add('muted');
    }
    answer.dataset.state = ended ? (t.answer ? 'answered' : 'none') : 'waiting';
    const u = t.usage || {};
    renderInto(usage, JSON.stringify([u, t.steps, t.tool_calls]), () => [
      stat('prompt tokens', int(u.prompt_tokens)),
      stat('completion tokens', int(u.completion_tokens)),
      stat('cached prompt tokens', int(u.cached_tokens)),
      stat('total tokens', int(u.total_tokens)),
      stat('model calls', int(t.steps)),
      stat('tool calls', int(t.tool_calls)),
      h('div', { class: 'note', text: 'Tokens only: the API reports no prices, so no cost.' }),
    ]);
    renderInto(approvals, JSON.stringify(t.pending_approvals), () => {
      approvals.hidden = !t.pending_approvals.length;
      return [h('h2', { text: 'Waiting for approval' }), ...t.pending_approvals.map(approvalCard)];
    });
  }

  function stat(k, v) {
    return h('div', { class: 'stat' }, h('div', { class: 'v', text: v }), h('div', { class: 'k', text: k }));
  }

  function approvalCard(p) {
    const reason = h('input', { type: 'text', placeholder: 'reason (optional)', 'aria-label': 'reason' });
    const decide = async (approve, btn) => {
      for (const b of btn.parentElement.querySelectorAll('button')) b.disabled = true;
      try {
        state.task = await api(`/v1/tasks/${id}/approvals/${p.n}`, { method: 'POST', body: { approve, reason: reason.value || undefined }, signal });
        paintTask();
      } catch (e) {
        showError(e);
        for (const b of btn.parentElement.querySelectorAll('button')) b.disabled = false;
      }
    };
    const grant = h('button', { class: 'grant small', type: 'button', text: 'Grant' });
    const deny = h('button', { class: 'danger small', type: 'button', text: 'Deny' });
    grant.addEventListener('click', () => decide(true, grant));
    deny.addEventListener('click', () => decide(false, deny));
    return h('div', { class: 'approval', 'data-n': p.n }, h('div', {}, h('b', { text: `#${p.n} ${p.tool}` }), ' wants to run with:'), h('pre', { class: 'block', text: pretty(p.arguments) }), h('div', { class: 'row' }, grant, deny, reason));
  }

  function showError(e) {
    if (signal.aborted) return;
    error.textContent = e instanceof ApiError && e.status === 404 ? `No task ${id} (for this key's tenant).` : e.message;
    error.hidden = false;
  }

  async function refreshTask() {
    try {
      state.task = await api(`/v1/tasks/${id}`, { signal });
      paintTask();
      schedule();
    } catch (e) {
      showError(e);
      if (e.status === 401) throw e;
    }
  }

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    cancel.textContent = 'Cancelling…';
    try {
      state.task = await api(`/v1/tasks/${id}/cancel`, { method: 'POST', signal });
      paintTask();
    } catch (e) {
      showError(e);
    }
    cancel.disabled = false;
    cancel.textContent = 'Cancel task';
  });

  (async () => {
    try {
      const [trace] = await Promise.all([api(`/v1/tasks/${id}/trace`, { signal }), refreshTask()]);
      add(trace.steps);
    } catch (e) {
      showError(e);
      return;
    }
    if (!running()) {
      liveState.textContent = '';
      return;
    }
    // The task object until the task ends (a queued task's start is no record), and the
    // timeline's running bars.
    every(2000, signal, async () => {
      if (!running()) return;
      await refreshTask();
    });
    try {
      const how = await follow(`/v1/tasks/${id}/events`, {
        after: state.lastSeq,
        headers: authHeaders,
        signal,
        onState: (s) => {
          liveState.textContent = s === 'live' ? '● live' : 'reconnecting…';
          liveState.dataset.state = s;
        },
        onEvent: (ev) => {
          const r = JSON.parse(ev.data);
          if (ev.event === 'error') throw new Error(r.message);
          add([r]);
          if (REFRESHING.has(r.kind)) refreshTask().catch(() => {});
        },
      });
      if (how === 'ended') {
        liveState.textContent = '';
        await refreshTask();
      }
    } catch (e) {
      liveState.textContent = '';
      showError(e);
    }
  })();
}
