// A task's timeline: every model call and tool call as a bar on one time axis (from the
// records' started_ms/ended_ms), one row each in journal order, so a slow step is a long bar;
// a wait for a person's approval is a bar too; decisions, guards and the end are marks on the
// top row. While a tool call runs (its call journaled, its result not yet) or an approval is
// pending, its bar grows to "now".

import { duration, h, s } from './dom.js';

const ROW = 22;
const LABEL = 190;
const TOP = 26;
const AXIS = 22;

/** The bars and marks of a list of records (plain data: tested without a browser). */
export function spans(records, nowMs) {
  const results = new Map();
  const decisions = new Map();
  for (const r of records) {
    if (r.kind === 'tool_result') results.set(r.key, r);
    if (r.kind === 'approval') decisions.set(r.key, r);
  }
  const bars = [];
  const marks = [];
  for (const r of records) {
    if (r.kind === 'model_call') {
      const what = r.purpose === 'final_answer' ? 'final answer' : r.purpose || 'model';
      const sub = r.subtask ? ` · step ${r.subtask}` : '';
      bars.push({ seq: r.seq, type: 'model', label: `${what}${sub}`, start: r.started_ms, end: r.ended_ms, tokens: r.usage });
    } else if (r.kind === 'tool_call') {
      const res = results.get(r.key);
      const running = !res;
      bars.push({
        seq: r.seq,
        type: 'tool',
        label: r.tool,
        start: r.started_ms,
        end: running ? Math.max(nowMs, r.started_ms) : res.ended_ms,
        running,
        ok: res ? res.ok !== false : null,
      });
    } else if (r.kind === 'approval_requested') {
      // Time spent waiting for a person is a bar of its own: often the slowest step of all.
      const d = decisions.get(r.key);
      bars.push({
        seq: r.seq,
        type: 'wait',
        label: `approval #${r.n} (${r.tool})`,
        start: r.started_ms,
        end: d ? d.started_ms : Math.max(nowMs, r.started_ms),
        running: !d,
        ok: d ? d.approve : null,
      });
    } else if (['approval', 'guard', 'final'].includes(r.kind)) {
      marks.push({ seq: r.seq, kind: r.kind, at: r.started_ms, label: r.kind === 'guard' ? r.guard : r.kind.replace('_', ' ') });
    }
  }
  // Slow: at least three times the median of its kind, and a second or more.
  for (const type of ['model', 'tool']) {
    const ds = bars.filter((b) => b.type === type).map((b) => b.end - b.start).sort((a, b) => a - b);
    const median = ds.length ? ds[Math.floor(ds.length / 2)] : 0;
    for (const b of bars) if (b.type === type) b.slow = ds.length > 2 && b.end - b.start >= Math.max(1000, 3 * median);
  }
  return { bars, marks };
}

function tickStep(spanMs, px) {
  const target = spanMs / Math.max(2, px / 110);
  for (const step of [100, 200, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000]) {
    if (step >= target) return step;
  }
  return 3_600_000;
}

function tickLabel(ms) {
  if (ms === 0) return '0';
  if (ms < 60_000) return `${ms % 1000 ? (ms / 1000).toFixed(1) : ms / 1000} s`;
  return `${Math.floor(ms / 60_000)}:${String(Math.round((ms % 60_000) / 1000)).padStart(2, '0')}`;
}

export function draw(el, records, { nowMs = Date.now(), running = false } = {}) {
  const { bars, marks } = spans(records, nowMs);
  if (!bars.length && !marks.length) {
    el.replaceChildren(h('p', { class: 'muted', text: running ? 'Waiting for the first step…' : 'No steps were recorded.' }));
    return { bars: 0 };
  }
  const times = [...bars.flatMap((b) => [b.start, b.end]), ...marks.map((m) => m.at)].filter((t) => Number.isFinite(t));
  const t0 = Math.min(...times);
  const t1 = Math.max(...times, running ? nowMs : -Infinity, t0 + 1000);
  const W = Math.max(480, el.clientWidth || 900);
  const plotW = W - LABEL - 64;
  const x = (t) => LABEL + ((t - t0) / (t1 - t0)) * plotW;
  const Hh = TOP + bars.length * ROW + AXIS;
  const svg = s('svg', { width: W, height: Hh, viewBox: `0 0 ${W} ${Hh}`, role: 'img', 'aria-label': 'timeline of model and tool calls' });
  const axis = s('g', { class: 'axis' });
  const step = tickStep(t1 - t0, plotW);
  for (let t = 0; t <= t1 - t0; t += step) {
    axis.append(s('line', { x1: x(t0 + t), x2: x(t0 + t), y1: TOP - 4, y2: Hh - AXIS + 2 }), s('text', { x: x(t0 + t), y: Hh - 6, 'text-anchor': 'middle', text: tickLabel(t) }));
  }
  svg.append(axis);
  svg.append(s('text', { class: 'lbl', x: 4, y: 16, text: 'events' }));
  for (const m of marks) {
    const cx = x(m.at);
    svg.append(s('path', { class: 'mark', d: `M${cx},6 l5,6 l-5,6 l-5,-6 Z`, 'data-kind': m.kind }, s('title', { text: `#${m.seq} ${m.label} at ${tickLabel(m.at - t0)}` })));
  }
  bars.forEach((b, i) => {
    const y = TOP + i * ROW;
    const x0 = x(b.start);
    const w = Math.max(2, x(b.end) - x0);
    const took = b.end - b.start;
    const g = s('g', { class: 'row', 'data-seq': b.seq });
    g.append(
      s('rect', { class: 'bg', x: 0, y, width: W, height: ROW, fill: 'transparent' }),
      s('text', { class: 'lbl', x: 4, y: y + 15, text: b.label.length > 28 ? `${b.label.slice(0, 27)}…` : b.label }),
      s(
        'rect',
        { class: `bar bar-${b.type}${b.slow ? ' bar-slow' : ''}`, x: x0, y: y + 4, width: w, height: ROW - 8, rx: 2, opacity: b.running ? 0.55 : 1 },
        s('title', { text: `${b.label}: ${duration(took)}${b.running ? ' (still going)' : ''}${b.ok === false ? (b.type === 'wait' ? ' (denied)' : ' (error)') : ''}` }),
      ),
      s('text', { class: 'dur', x: x0 + w + 5, y: y + 15, 'font-weight': b.slow ? 700 : 400, text: `${duration(took)}${b.running ? '…' : ''}` }),
    );
    svg.append(g);
  });
  el.replaceChildren(svg);
  return { bars: bars.length };
}
