// The web UI's test: first its pure parts in Node (the SSE parser, reconnection with
// Last-Event-ID against a stand-in server that drops the stream, the timeline's spans), then
// the real page in headless Chromium (Debian's, driven by playwright-core) against a running
// `autoglm serve --no-auth`: start a task through the form, see its steps arrive live, wait for
// the end, check the timeline and the answer, then the engine page; screenshots on the way.
//
//   node tests/ui/run.mjs http://127.0.0.1:PORT [SCREENSHOT_DIR]
//
// With AUTOGLM_UI_KEYED_URL (a server that asks for keys) and AUTOGLM_UI_KEY (a key of it with
// the tasks and models scopes) it also checks the key bar, a task followed over the
// authenticated event stream, and the cancel button there.
//
// crates/cli/tests/cli.rs runs it (the_web_ui_in_headless_chromium). Exit 0 when every check
// passed; the last line says "N passed, 0 failed".

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';

const base = (process.argv[2] || '').replace(/\/$/, '');
const shots = process.argv[3] || '.';
const chromium = process.env.CHROMIUM || '/usr/bin/chromium';
const STARTED = Date.now();

let passed = 0;
let failed = 0;
// The browser checks build on each other: after one fails, the rest are not tried.
let chain = null;
async function check(name, fn) {
  const t = Date.now();
  if (chain?.broken) {
    failed++;
    console.log(`FAIL ${name}: not tried after "${chain.broken}" failed`);
    return;
  }
  try {
    await fn();
    passed++;
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failed++;
    if (chain) chain.broken = name;
    console.log(`FAIL ${name}\n     ${(e && e.stack) || e}`);
  }
}

// ---------------------------------------------------------------- without a browser

const { SseParser, follow } = await import('../../crates/server/ui/sse.js');
const { spans } = await import('../../crates/server/ui/timeline.js');

const STREAM =
  ': keep-alive comment\n' +
  'id: 1\nevent: plan\ndata: {"seq":1}\n\n' +
  'id: 2\r\nevent: model_call\r\ndata: {"seq":2,\r\ndata: "x":1}\r\n\r\n' +
  'id: 3\revent: tool_call\rdata:{"seq":3}\r\r' +
  'data: no id or type\n\n' +
  'event: ignored-without-data\n\n' +
  'event: end\ndata: {}\n\n';
const EXPECTED = [
  { id: '1', event: 'plan', data: '{"seq":1}' },
  { id: '2', event: 'model_call', data: '{"seq":2,\n"x":1}' },
  { id: '3', event: 'tool_call', data: '{"seq":3}' },
  { id: '3', event: 'message', data: 'no id or type' },
  { id: '3', event: 'end', data: '{}' },
];

await check('SSE parser: every way of cutting the stream into chunks gives the same events', () => {
  for (let size = 1; size <= STREAM.length; size++) {
    const p = new SseParser();
    const got = [];
    for (let i = 0; i < STREAM.length; i += size) got.push(...p.push(STREAM.slice(i, i + size)));
    assert.deepEqual(got, EXPECTED, `chunks of ${size}`);
  }
  // Two cut points: a CR and its LF in different chunks, and everything else.
  for (let a = 1; a < STREAM.length; a += 3) {
    for (let b = a + 1; b < STREAM.length; b += 7) {
      const p = new SseParser();
      const got = [...p.push(STREAM.slice(0, a)), ...p.push(STREAM.slice(a, b)), ...p.push(STREAM.slice(b))];
      assert.deepEqual(got, EXPECTED, `cut at ${a} and ${b}`);
    }
  }
});

await check('SSE follow: a dropped stream resumes after the last id with Last-Event-ID', async () => {
  const seen = [];
  let connections = 0;
  const server = http.createServer((req, res) => {
    connections++;
    seen.push(req.headers['last-event-id'] ?? null);
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const after = Number(req.headers['last-event-id'] ?? 0);
    if (connections === 1) {
      // Two whole events and half of the third, then the connection dies.
      res.write('id: 1\nevent: plan\ndata: {"seq":1}\n\nid: 2\nevent: tool_call\ndata: {"seq":2}\n\nid: 3\nevent: tool_res');
      setTimeout(() => res.socket.destroy(), 50);
      return;
    }
    for (let i = after + 1; i <= 4; i++) res.write(`id: ${i}\nevent: step\ndata: {"seq":${i}}\n\n`);
    res.end('event: end\ndata: {}\n\n');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/events`;
  const got = [];
  const states = [];
  try {
    const how = await follow(url, {
      after: 0,
      headers: () => ({ Authorization: 'Bearer test' }),
      onEvent: (e) => got.push(JSON.parse(e.data).seq),
      onState: (s) => states.push(s),
    });
    assert.equal(how, 'ended');
  } finally {
    server.close();
  }
  assert.deepEqual(got, [1, 2, 3, 4], 'each record once, in order');
  assert.deepEqual(seen, ['0', '2'], 'the second connection resumes after id 2');
  assert.deepEqual(states, ['live', 'reconnecting', 'live']);
});

await check('SSE follow: a 4xx is final, not retried', async () => {
  let n = 0;
  const server = http.createServer((req, res) => {
    n++;
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"message":"no task t1"}}');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    await assert.rejects(follow(`http://127.0.0.1:${server.address().port}/e`, { onEvent() {} }), /no task t1/);
  } finally {
    server.close();
  }
  assert.equal(n, 1);
});

await check('timeline spans: bars for model calls, tool calls and approval waits; unfinished ones grow to now; slow ones marked', () => {
  const rec = (seq, kind, start, end, more = {}) => ({ seq, kind, started_ms: start, ended_ms: end, ...more });
  const records = [
    rec(1, 'model_call', 0, 100, { purpose: 'plan', key: 'plan0/m0' }),
    rec(2, 'plan', 100, 100, { key: 'plan0', steps: [] }),
    rec(3, 'model_call', 100, 200, { purpose: 'step', subtask: 1, key: 'plan0/s1/a0/r0' }),
    rec(4, 'tool_call', 200, 200, { tool: 'calculator', key: 'plan0/s1/a0/r0/t0' }),
    rec(5, 'tool_result', 200, 230, { tool: 'calculator', ok: true, key: 'plan0/s1/a0/r0/t0' }),
    rec(6, 'model_call', 230, 5230, { purpose: 'final_answer', key: 'plan0/compose' }),
    rec(7, 'tool_call', 5300, 5300, { tool: 'shell', key: 'plan0/s2/a0/r0/t0' }),
    rec(8, 'guard', 5400, 5400, { guard: 'repeat', key: 'g' }),
    rec(9, 'approval_requested', 5500, 5500, { n: 1, tool: 'shell', key: 'plan0/s2/a0/r0/t1' }),
    rec(10, 'approval', 7500, 7500, { n: 1, approve: false, key: 'plan0/s2/a0/r0/t1' }),
    rec(11, 'approval_requested', 8000, 8000, { n: 2, tool: 'python', key: 'plan0/s2/a0/r1/t0' }),
  ];
  const { bars, marks } = spans(records, 9000);
  assert.deepEqual(
    bars.map((b) => [b.seq, b.type, b.label, b.start, b.end, !!b.running, !!b.slow]),
    [
      [1, 'model', 'plan', 0, 100, false, false],
      [3, 'model', 'step · step 1', 100, 200, false, false],
      [4, 'tool', 'calculator', 200, 230, false, false],
      [6, 'model', 'final answer', 230, 5230, false, true],
      [7, 'tool', 'shell', 5300, 9000, true, false],
      // Waiting for a person: until the decision, or until now while none came.
      [9, 'wait', 'approval #1 (shell)', 5500, 7500, false, false],
      [11, 'wait', 'approval #2 (python)', 8000, 9000, true, false],
    ],
  );
  assert.deepEqual(marks.map((m) => [m.seq, m.kind]), [[8, 'guard'], [10, 'approval']]);
});

// ---------------------------------------------------------------- in the browser

if (!base) {
  console.log('no server URL given: browser checks not run');
} else {
  const { chromium: pw } = await import('playwright-core');
  mkdirSync(shots, { recursive: true });
  const browser = await pw.launch({
    executablePath: chromium,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      '--no-first-run',
    ],
  });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const problems = [];
  page.on('console', (m) => {
    // A refused key is the keyed check's own doing: the browser logs its 401s.
    if (m.type() === 'error' && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // Streams and polls cut short by leaving a page are expected.
    if (!/ERR_ABORTED/.test(r.failure()?.errorText || '')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  const shot = async (name) => {
    const path = join(shots, name);
    // From the top: a full-page shot of a scrolled page draws the sticky header mid-page.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  };
  let taskId = null;
  chain = { broken: null };

  try {
    await check('/ opens the task list', async () => {
      await page.goto(`${base}/`);
      assert.match(page.url(), /\/ui\/$/);
      await page.locator('h1', { hasText: 'Tasks' }).waitFor();
      await page.locator('.empty:visible, table.tasks:visible').first().waitFor();
      assert.equal(await page.locator('#keybar').isHidden(), true, 'no key asked for under --no-auth');
    });

    await check('the form starts a task, whose steps appear live', async () => {
      await page.click('a[data-nav=new]');
      await page.locator('.tool input[name=tool]').first().waitFor();
      assert.ok((await page.locator('.tool').count()) >= 1, 'the tools are listed');
      await page.fill('#f-goal', 'What is 17 * 23? Use the calculator.');
      await page.fill('#f-max_steps', '12');
      // The calculator asks first: the approval buttons get their turn below.
      await page.locator('.tool', { hasText: 'calculator' }).locator('input[name=ask]').check();
      await page.click('#start-task');
      await page.waitForURL(/#\/tasks\/[A-Za-z0-9_-]+$/, { timeout: 10_000 });
      taskId = page.url().split('/').pop();
      // A step shown while the task is still unfinished: it came over the event stream.
      await page.waitForFunction(
        () => {
          const s = document.querySelector('#task-status .badge')?.dataset.status;
          return document.querySelectorAll('#steps .step').length > 0 && ['queued', 'running', 'waiting_approval'].includes(s);
        },
        null,
        { timeout: 60_000, polling: 'raf' },
      );
      assert.match(await page.locator('#live-state').textContent(), /live/);
      await shot('ui-task-running.png');
    });

    await check('a calculator call waits for approval; Grant lets it run', async () => {
      const TERMINAL = ['succeeded', 'failed', 'budget_exhausted', 'cancelled'];
      await page.waitForFunction(
        (terminal) => document.querySelector('#approvals .approval') || terminal.includes(document.querySelector('#task-status .badge')?.dataset.status),
        TERMINAL,
        { timeout: 90_000, polling: 250 },
      );
      if (!(await page.locator('#approvals .approval').count())) {
        // The small model may answer without the tool; then nothing asked for approval.
        console.log('     the model called no tool: no approval to grant');
        return;
      }
      assert.match(await page.locator('#task-status .badge').getAttribute('data-status'), /waiting_approval/);
      assert.match(await page.locator('#approvals .approval').first().textContent(), /calculator/);
      await shot('ui-approval.png');
      await page.click('#approvals button.grant');
      await page.locator('#approvals').waitFor({ state: 'hidden', timeout: 10_000 });
      await page.locator('#steps .step[data-kind=approval]').first().waitFor({ timeout: 10_000 });
      assert.match(await page.locator('#steps .step[data-kind=approval] .sum').first().textContent(), /granted/);
    });

    await check('the task ends; the timeline has bars; the answer box shows', async () => {
      await page.waitForFunction(
        () => ['succeeded', 'failed', 'budget_exhausted', 'cancelled'].includes(document.querySelector('#task-status .badge')?.dataset.status),
        null,
        { timeout: 90_000, polling: 500 },
      );
      const status = await page.locator('#task-status .badge').getAttribute('data-status');
      console.log(`     task ${taskId}: ${status}`);
      await page.waitForFunction(() => ['answered', 'none'].includes(document.querySelector('#answer')?.dataset.state), null, { timeout: 10_000 });
      const answer = (await page.locator('#answer .answer-text').textContent()).trim();
      assert.ok(answer.length > 0, 'the answer box says something');
      console.log(`     answer: ${JSON.stringify(answer.slice(0, 120))}`);
      const bars = await page.locator('#timeline rect.bar').count();
      assert.ok(bars >= 1, `timeline bars: ${bars}`);
      assert.ok((await page.locator('#timeline rect.bar-model').count()) >= 1, 'a model call bar');
      // Every record the server has is on the page, each once.
      const trace = await page.evaluate(async (id) => (await fetch(`/v1/tasks/${id}/trace`)).json(), taskId);
      const shown = await page.locator('#steps .step').count();
      const tools = trace.steps.filter((s) => s.kind === 'tool_result' && trace.steps.some((c) => c.kind === 'tool_call' && c.key === s.key)).length;
      assert.equal(shown, trace.steps.length - tools, 'one entry per record (a tool call and its result share one)');
      assert.equal(await page.locator('#plan .tree').count(), trace.steps.some((s) => s.kind === 'plan') ? 1 : 0);
      const kinds = await page.evaluate(() => [...document.querySelectorAll('#steps .step')].map((e) => `${e.dataset.seq}:${e.dataset.kind}`));
      assert.deepEqual(kinds, trace.steps.filter((s) => !(s.kind === 'tool_result' && trace.steps.some((c) => c.kind === 'tool_call' && c.key === s.key))).map((s) => `${s.seq}:${s.kind}`));
      if (trace.steps.some((s) => s.kind === 'tool_call')) {
        await page.locator('#steps .step[data-kind=tool_call] summary').first().click();
        await page.locator('#steps .step[data-kind=tool_call] .result pre').first().waitFor();
      }
      assert.equal(await page.locator('button', { hasText: 'Cancel task' }).isHidden(), true, 'no cancel button once ended');
      await shot('ui-task.png');
    });

    await check('the list shows the task with its status and age', async () => {
      await page.click('a[data-nav=tasks]');
      const row = page.locator(`tr[data-id="${taskId}"]`);
      await row.waitFor();
      assert.match(await row.locator('.badge').textContent(), /succeeded|failed|budget|cancelled/);
      assert.match(await row.locator('td').nth(2).textContent(), /ago/);
      await shot('ui-tasks.png');
    });

    await check('the engine page shows numbers and a chart', async () => {
      await page.click('a[data-nav=engine]');
      await page.waitForFunction(() => /\d/.test(document.querySelector('[data-card="KV cache use"] .v')?.textContent || ''), null, { timeout: 10_000 });
      const generated = await page.locator('[data-card="Tokens so far"] .v').textContent();
      assert.ok(Number(generated.replace(/,/g, '')) > 0, `generated tokens: ${generated}`);
      assert.match(await page.locator('[data-card="Prefix-cache hit rate"] .v').textContent(), /%/);
      await page.locator('.chart path.gen').waitFor({ timeout: 10_000 });
      await shot('ui-engine.png');
    });

    const keyed = process.env.AUTOGLM_UI_KEYED_URL;
    const key = process.env.AUTOGLM_UI_KEY;
    if (keyed && key) {
      await check('with keys: the page asks for one, refuses a wrong one, works with the right one', async () => {
        await page.goto(`${keyed}/ui/`);
        await page.locator('#keybar').waitFor();
        await page.fill('#key-input', 'agk_0000000000000000_00');
        await page.click('#keybar button[type=submit]');
        await page.locator('#keybar').waitFor();
        assert.match(await page.locator('#key-message').textContent(), /refused/);
        await page.fill('#key-input', key);
        await page.click('#keybar button[type=submit]');
        await page.locator('.empty:visible, table.tasks:visible').first().waitFor();
        assert.equal(await page.locator('#keybar').isHidden(), true);
        assert.equal(await page.evaluate(() => localStorage.getItem('autoglm.apiKey')), key, 'kept in this browser');
      });

      await check('with keys: a task started and followed live over the authenticated stream, then cancelled', async () => {
        await page.click('a[data-nav=new]');
        await page.locator('.tool input[name=tool]').first().waitFor();
        await page.fill('#f-goal', 'List three prime numbers, then check them with the calculator.');
        await page.click('#start-task');
        await page.waitForURL(/#\/tasks\//, { timeout: 10_000 });
        await page.locator('#steps .step').first().waitFor({ timeout: 60_000 });
        await page.waitForFunction(() => document.querySelector('#live-state')?.dataset.state === 'live', null, { timeout: 10_000 });
        const status = await page.locator('#task-status .badge').getAttribute('data-status');
        if (['queued', 'running', 'waiting_approval'].includes(status)) {
          await page.click('button:has-text("Cancel task")');
          await page.waitForFunction(() => document.querySelector('#task-status .badge')?.dataset.status === 'cancelled', null, { timeout: 30_000 });
          await page.locator('#answer[data-state=none]').waitFor({ timeout: 10_000 });
        } else {
          console.log(`     the task had already ended (${status}); nothing to cancel`);
        }
        await page.click('a[data-nav=engine]');
        await page.waitForFunction(() => /%/.test(document.querySelector('[data-card="KV cache use"] .v')?.textContent || ''), null, { timeout: 10_000 });
      });
    }

    chain = null;
    await check('no console errors, failed requests or content-policy violations', () => {
      assert.deepEqual(problems, []);
    });
  } finally {
    await browser.close();
  }
}

console.log(`ui test: ${((Date.now() - STARTED) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
