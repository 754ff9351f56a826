// The form that starts a task (POST /v1/tasks): goal, tools (and which of them ask a person
// first), budgets and priority. The server checks every field; its error names the field,
// which is marked here.

import { api } from './api.js';
import { h } from './dom.js';

function numberField(name, label, hint, attrs) {
  const input = h('input', { type: 'number', name, id: `f-${name}`, min: 1, step: 1, inputmode: 'numeric', ...attrs });
  return { input, el: h('div', { class: 'field', 'data-field': name }, h('label', { for: `f-${name}`, text: label }), input, h('span', { class: 'hint', text: hint })) };
}

export function render(main, _params, signal) {
  const goal = h('textarea', { id: 'f-goal', name: 'goal', required: true, maxlength: 16000, rows: 4, placeholder: 'What is 17 * 23? Use the calculator.' });
  const tools = h('div', { class: 'tools' }, h('span', { class: 'muted', text: 'Loading tools…' }));
  const steps = numberField('max_steps', 'Max steps', 'model calls (default 40)', { max: 1000, placeholder: '40' });
  const tokens = numberField('max_tokens', 'Max tokens', 'prompt + completion', { max: 10000000, placeholder: 'no limit' });
  const secs = numberField('max_duration_s', 'Time limit (s)', 'wall clock of a run', { max: 604800, placeholder: 'default' });
  const priority = h(
    'select',
    { id: 'f-priority', name: 'priority' },
    h('option', { value: 'interactive', text: 'interactive' }),
    h('option', { value: 'batch', text: 'batch' }),
    h('option', { value: 'background', text: 'background' }),
  );
  const error = h('p', { class: 'notice error', hidden: true, role: 'alert' });
  const submit = h('button', { class: 'primary', type: 'submit', id: 'start-task', text: 'Start task' });
  const form = h(
    'form',
    { class: 'form panel', id: 'new-task', novalidate: true },
    h('div', { class: 'field', 'data-field': 'goal' }, h('label', { for: 'f-goal', text: 'Goal' }), goal, h('span', { class: 'hint', text: 'What the agent should do. It plans, calls tools and checks its results.' })),
    h('div', { class: 'field', 'data-field': 'tools' }, h('label', { text: 'Tools' }), h('span', { class: 'hint', text: 'Offered to the task. “Ask first” pauses the task before each call until someone grants or denies it here.' }), tools),
    h(
      'div',
      { class: 'grid3' },
      steps.el,
      tokens.el,
      secs.el,
      h('div', { class: 'field', 'data-field': 'priority' }, h('label', { for: 'f-priority', text: 'Priority' }), priority, h('span', { class: 'hint', text: 'queue class' })),
    ),
    error,
    h('div', { class: 'actions' }, submit, h('a', { href: '#/', text: 'Cancel' })),
  );
  main.append(h('div', { class: 'page-head' }, h('div', { class: 'grow' }, h('h1', { text: 'New task' }))), form);
  goal.focus();

  let names = [];
  api('/v1/tools', { signal })
    .then((list) => {
      names = list.data.map((t) => t.name);
      tools.replaceChildren(
        ...names.map((n) =>
          h(
            'div',
            { class: 'tool' },
            h('label', { class: 'name' }, h('input', { type: 'checkbox', name: 'tool', value: n, checked: true }), n),
            h('label', { class: 'ask' }, h('input', { type: 'checkbox', name: 'ask', value: n }), 'ask first'),
          ),
        ),
      );
    })
    .catch((e) => {
      if (!signal.aborted) tools.replaceChildren(h('span', { class: 'err-text', text: `Cannot list tools (${e.message}); the task gets all of them.` }));
    });

  function request() {
    const body = { goal: goal.value.trim(), priority: priority.value };
    const picked = [...form.querySelectorAll('input[name=tool]:checked')].map((i) => i.value);
    const ask = [...form.querySelectorAll('input[name=ask]:checked')].map((i) => i.value);
    // Every tool ticked: leave it to the server's default (all), which is the same thing.
    if (names.length && picked.length !== names.length) body.tools = picked;
    if (ask.length) body.ask = ask;
    for (const f of [steps, tokens, secs]) {
      if (f.input.value !== '') body[f.input.name] = Number(f.input.value);
    }
    return body;
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    for (const f of form.querySelectorAll('.field.bad')) f.classList.remove('bad');
    error.hidden = true;
    const body = request();
    if (!body.goal) {
      form.querySelector('[data-field=goal]').classList.add('bad');
      error.textContent = 'Give the task a goal.';
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Starting…';
    try {
      const t = await api('/v1/tasks', { method: 'POST', body, signal });
      location.hash = `#/tasks/${t.id}`;
    } catch (err) {
      if (signal.aborted) return;
      const field = err.param?.replace(/\[.*$/, '');
      if (field) form.querySelector(`[data-field="${field}"]`)?.classList.add('bad');
      error.textContent = err.message;
      error.hidden = false;
      submit.disabled = false;
      submit.textContent = 'Start task';
    }
  });
}
