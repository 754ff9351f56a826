// Server-sent events over fetch(): EventSource cannot send an Authorization header, so the
// stream is read from a ReadableStream and parsed here, after the HTML standard's rules
// (fields id/event/data/retry, comments, any of CRLF, LF or CR ending a line, an event
// dispatched on a blank line). follow() reconnects after a dropped connection with
// `Last-Event-ID`, so no record is lost or seen twice across a reconnect.

export class SseParser {
  constructor(lastId = '') {
    this.buf = '';
    this.data = [];
    this.type = '';
    this.lastId = lastId;
    this.retry = null;
  }

  /** Feeds decoded text; returns the events it completed, as {id, event, data}. */
  push(text) {
    this.buf += text;
    const out = [];
    let start = 0;
    const eol = /\r\n|\r|\n/g;
    for (;;) {
      eol.lastIndex = start;
      const m = eol.exec(this.buf);
      if (!m) break;
      // A CR that ends the text so far may be the first half of a CRLF: wait for more.
      if (m[0] === '\r' && m.index === this.buf.length - 1) break;
      this.line(this.buf.slice(start, m.index), out);
      start = m.index + m[0].length;
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  line(line, out) {
    if (line === '') {
      if (this.data.length) {
        out.push({ id: this.lastId, event: this.type || 'message', data: this.data.join('\n') });
      }
      this.data = [];
      this.type = '';
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.type = value;
    else if (field === 'id') {
      if (!value.includes('\0')) this.lastId = value;
    } else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

class Fatal extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function wait(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * Follows the event stream at `url` until an `end` event arrives (resolves 'ended'), the
 * signal aborts ('aborted'), or the server refuses it with a 4xx other than 429 (rejects).
 * `after`: the id to resume after. `headers()`: extra request headers, asked for on every
 * (re)connection. `onState('live' | 'reconnecting')` tells the connection's state.
 */
export async function follow(url, { after = '', headers = () => ({}), onEvent, onState, signal, fetchImpl } = {}) {
  const get = fetchImpl || fetch;
  let last = after === null || after === undefined ? '' : String(after);
  let delay = 500;
  while (!signal?.aborted) {
    try {
      const h = { Accept: 'text/event-stream', ...headers() };
      if (last !== '') h['Last-Event-ID'] = last;
      const resp = await get(url, { headers: h, signal, cache: 'no-store' });
      if (!resp.ok) {
        const text = await resp.text().catch(() => '');
        let message = text;
        try {
          message = JSON.parse(text).error.message;
        } catch {
          /* not JSON: the text as it is */
        }
        if (resp.status >= 400 && resp.status < 500 && resp.status !== 429) throw new Fatal(resp.status, message);
        throw new Error(`HTTP ${resp.status}: ${message}`);
      }
      onState?.('live');
      const parser = new SseParser(last);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const ev of parser.push(value)) {
          last = ev.id;
          if (ev.event === 'end') {
            reader.cancel().catch(() => {});
            return 'ended';
          }
          try {
            onEvent(ev);
          } catch (e) {
            // A view's bug must not cost the stream: the event counts as seen.
            console.error(e);
          }
          delay = 500;
        }
      }
      if (parser.retry !== null) delay = parser.retry;
    } catch (e) {
      if (signal?.aborted) break;
      if (e instanceof Fatal) throw e;
    }
    if (signal?.aborted) break;
    onState?.('reconnecting');
    await wait(delay, signal);
    delay = Math.min(delay * 2, 8000);
  }
  return 'aborted';
}
