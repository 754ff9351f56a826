// Small DOM and formatting helpers. Elements are built with h(); text always goes in as text
// (never as HTML), so nothing a task or a model wrote can become markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Replaces el's children only when `key` changed, so unchanged parts keep their DOM state
 *  (open <details>, scroll, focus). */
export function renderInto(el, key, make) {
  if (el.dataset.key === key) return false;
  el.dataset.key = key;
  clear(el).append(...[make()].flat());
  return true;
}

const STATUS_LABEL = {
  queued: 'queued',
  running: 'running',
  waiting_approval: 'waiting for approval',
  succeeded: 'succeeded',
  failed: 'failed',
  budget_exhausted: 'budget exhausted',
  cancelled: 'cancelled',
};

export const UNFINISHED = ['queued', 'running', 'waiting_approval'];

export function badge(status) {
  const live = status === 'running' || status === 'waiting_approval';
  return h('span', {
    class: `badge s-${status}${live ? ' live' : ''}`,
    'data-status': status,
    text: STATUS_LABEL[status] || status,
  });
}

export function age(unixSeconds, nowMs = Date.now()) {
  const secs = Math.max(0, Math.round(nowMs / 1000 - unixSeconds));
  if (secs < 60) return `${secs} s ago`;
  const mins = Math.floor(secs / 60);
  if (mins < 60) return `${mins} min ago`;
  const hours = Math.floor(mins / 60);
  if (hours < 48) return `${hours} h ${mins % 60} min ago`;
  return `${Math.floor(hours / 24)} days ago`;
}

export function duration(ms) {
  if (ms == null || !isFinite(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60_000);
  return `${m} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function int(n) {
  return n == null ? '–' : Number(n).toLocaleString('en-US');
}

export function pct(x) {
  return x == null ? '–' : `${(x * 100).toFixed(x < 0.1 && x > 0 ? 1 : 0)} %`;
}

export function pretty(v) {
  if (typeof v === 'string') {
    try {
      return JSON.stringify(JSON.parse(v), null, 2);
    } catch {
      return v;
    }
  }
  return JSON.stringify(v, null, 2);
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** Runs fn now and then every `ms` until signal aborts; a slow fn delays the next run rather
 *  than piling calls up. A 401 stops it: asking again with the same key is pointless, and
 *  giving a key in the key bar renders the view anew. */
export async function every(ms, signal, fn) {
  while (!signal.aborted) {
    try {
      await fn();
    } catch (e) {
      if (e?.status === 401) return;
      if (!signal.aborted) console.warn(e);
    }
    await sleep(ms, signal);
  }
}
