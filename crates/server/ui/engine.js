// The engine page: GET /v1/engine every two seconds — batch, queue, KV cache, prefix cache,
// tasks — and its history (the server samples the engine every few seconds and keeps the last
// minutes) drawn as a chart of tokens per second.

import { api } from './api.js';
import { every, h, int, pct, s } from './dom.js';

function card(label) {
  const v = h('div', { class: 'v', text: '–' });
  const sub = h('div', { class: 'sub', text: '\u00a0' });
  const bar = h('span');
  const meter = h('div', { class: 'meter', hidden: true }, bar);
  const el = h('div', { class: 'card', 'data-card': label }, h('div', { class: 'k', text: label }), v, sub, meter);
  return {
    el,
    set(value, subText, share) {
      v.textContent = value;
      sub.textContent = subText || '\u00a0';
      if (share !== undefined) {
        meter.hidden = false;
        bar.style.width = `${Math.min(100, Math.max(0, share * 100)).toFixed(1)}%`;
      }
    },
  };
}

/** A round axis maximum at or above `x` (divisible in four). */
function niceMax(x) {
  if (!(x > 0)) return 10;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

const H = 220;
const PAD = { l: 44, r: 12, t: 12, b: 24 };

export function chart(el, points, windowS) {
  // Drawn at the box's own width (measured, not scaled), so text keeps its size.
  const W = Math.max(320, el.clientWidth || 1000);
  const now = points.length ? points[points.length - 1].at : Date.now();
  const t0 = now - windowS * 1000;
  const max = niceMax(Math.max(...points.map((p) => Math.max(p.tokens_per_second, p.prompt_tokens_per_second)), 0));
  const x = (t) => PAD.l + ((t - t0) / (now - t0)) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / max) * (H - PAD.t - PAD.b);
  const grid = s('g', { class: 'grid' });
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    grid.append(s('line', { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }), s('text', { x: PAD.l - 6, y: y(v) + 4, 'text-anchor': 'end', text: int(Math.round(v)) }));
  }
  for (let m = 0; m <= windowS / 60; m++) {
    const t = now - m * 60_000;
    grid.append(s('text', { x: x(t), y: H - 6, 'text-anchor': m === 0 ? 'end' : 'middle', text: m === 0 ? 'now' : `−${m} min` }));
  }
  const shown = points.filter((p) => p.at >= t0);
  const line = (key) => shown.map((p, i) => `${i ? 'L' : 'M'}${x(p.at).toFixed(1)},${y(p[key]).toFixed(1)}`).join('');
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': 'tokens per second over the last minutes' }, grid);
  if (shown.length > 1) {
    const first = x(shown[0].at).toFixed(1);
    const last = x(shown[shown.length - 1].at).toFixed(1);
    svg.append(
      s('path', { class: 'gen-area', d: `${line('tokens_per_second')}L${last},${y(0)}L${first},${y(0)}Z` }),
      s('path', { class: 'prompt', d: line('prompt_tokens_per_second') }),
      s('path', { class: 'gen', d: line('tokens_per_second') }),
    );
  }
  el.replaceChildren(svg);
  return shown.length;
}

export function render(main, _params, signal) {
  const cards = {
    batch: card('Running batch'),
    queue: card('Queue depth'),
    kv: card('KV cache use'),
    prefix: card('Prefix-cache hit rate'),
    tps: card('Generated tokens/s'),
    tasks: card('Tasks'),
    total: card('Tokens so far'),
    refused: card('Refused / preempted'),
  };
  const error = h('p', { class: 'notice error', hidden: true });
  const model = h('div', { class: 'muted', text: '\u00a0' });
  const chartBox = h('div', { class: 'chart' });
  const note = h('div', { class: 'muted', text: '\u00a0' });
  main.append(
    h('div', { class: 'page-head' }, h('div', { class: 'grow' }, h('h1', { text: 'Engine' }), model)),
    error,
    h('div', { class: 'cards' }, Object.values(cards).map((c) => c.el)),
    h(
      'div',
      { class: 'panel' },
      h('h2', { text: 'Tokens per second' }),
      h('div', { class: 'legend' }, h('span', {}, h('i', { class: 'lg-gen' }), 'generated'), h('span', {}, h('i', { class: 'lg-prompt' }), 'prompt (computed)')),
      chartBox,
      note,
    ),
  );

  async function load() {
    let e;
    try {
      e = await api('/v1/engine', { signal });
    } catch (err) {
      if (signal.aborted) return;
      error.textContent = err.status === 403 ? 'This key lacks the models scope, which the engine page needs.' : `Cannot read the engine's state: ${err.message}`;
      error.hidden = false;
      throw err;
    }
    error.hidden = true;
    model.textContent = `${e.model} · context ${int(e.context_length)} tokens`;
    cards.batch.set(int(e.running_sequences), `sequences · last step ${int(e.batch_size)}`);
    cards.queue.set(int(e.queue_depth), `waiting · ${int(e.requests_in_flight)} in flight`);
    cards.kv.set(pct(e.kv_cache_use), `${int(e.kv_blocks.used)} of ${int(e.kv_blocks.total)} blocks · ${int(e.kv_blocks.cached)} cached`, e.kv_cache_use);
    cards.prefix.set(pct(e.prefix_cache.hit_rate), `${int(e.prefix_cache.hit_tokens)} of ${int(e.prefix_cache.lookup_tokens)} prompt tokens`, e.prefix_cache.hit_rate);
    const points = e.history.points;
    const recent = points.length ? points[points.length - 1].tokens_per_second : null;
    cards.tps.set(recent === null ? '–' : recent.toFixed(1), `last ${e.history.interval_s} s · ${e.engine_steps.toLocaleString('en-US')} steps`);
    cards.tasks.set(int(e.tasks.running), `running · ${int(e.tasks.queued)} queued`);
    cards.total.set(int(e.generated_tokens), `generated · ${int(e.prompt_tokens)} prompt`);
    cards.refused.set(`${int(e.requests_refused)} / ${int(e.preemptions)}`, 'requests refused / sequences preempted');
    const n = chart(chartBox, points, 300);
    note.textContent = n > 1 ? `Last 5 minutes, one point every ${e.history.interval_s} s.` : 'The server samples the engine every few seconds; the chart fills in as it does.';
  }
  every(2000, signal, load);
}
