// api.js: the hub's HTTP API (web/API.md): tokens, JSON reads and writes, the SSE stream.

const READ_KEY = 'twinhub.readToken';
const WRITE_KEY = 'twinhub.writeToken';

export function tokens() {
  return {
    read: sessionStorage.getItem(READ_KEY) || '',
    write: sessionStorage.getItem(WRITE_KEY) || '',
  };
}

export function setTokens(read, write) {
  for (const [k, v] of [[READ_KEY, read], [WRITE_KEY, write]]) {
    if (v) sessionStorage.setItem(k, v);
    else sessionStorage.removeItem(k);
  }
}

export function canWrite() {
  return tokens().write !== '';
}

// The write token grants reads too: reads send it when there is no read token.
function headers(write) {
  const t = tokens();
  const tok = write ? t.write : (t.read || t.write);
  const h = { Accept: 'application/json' };
  if (tok) h.Authorization = 'Bearer ' + tok;
  return h;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

async function answer(r) {
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    body = null;
  }
  if (!r.ok) {
    const msg = body && typeof body.message === 'string' ? body.message : r.statusText;
    throw new ApiError(r.status, `${r.status} ${msg}`);
  }
  return body;
}

// GET /api/... ; signal: an AbortSignal that the page aborts when it goes away.
export async function get(path, params, signal) {
  const r = await fetch('/api/' + path + query(params), { headers: headers(false), signal });
  return answer(r);
}

export async function post(path, body, signal) {
  if (!canWrite()) throw new ApiError(403, '403 a write needs the write token (set it above)');
  const h = headers(true);
  h['Content-Type'] = 'application/json';
  const r = await fetch('/api/' + path, { method: 'POST', headers: h, body: JSON.stringify(body), signal });
  return answer(r);
}

export function twinPath(id, rest) {
  return 'twins/' + encodeURIComponent(id) + (rest ? '/' + rest : '');
}

// The live stream: fetch + a stream reader parsing Server-Sent Events (EventSource cannot send
// the Authorization header), reconnecting with Last-Event-ID. handlers: {state, event,
// prediction, reset(data), status(text)}; reset is called on the hub's `reset` event (re-read the
// snapshot). close() stops it for good.
export class Stream {
  constructor(params, handlers) {
    this.params = params;
    this.h = handlers;
    this.lastId = null;
    this.closed = false;
    this.ctrl = null;
    this.backoff = 500;
    this.timer = null;
    this.run();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ctrl) this.ctrl.abort();
  }

  status(s) {
    if (this.h.status) this.h.status(s);
  }

  async run() {
    if (this.closed) return;
    this.ctrl = new AbortController();
    const h = headers(false);
    h.Accept = 'text/event-stream';
    if (this.lastId) h['Last-Event-ID'] = this.lastId;
    try {
      const r = await fetch('/api/stream' + query(this.params), { headers: h, signal: this.ctrl.signal, cache: 'no-store' });
      if (!r.ok || !r.body) throw new ApiError(r.status, `stream: ${r.status} ${r.statusText}`);
      this.status('live');
      this.backoff = 500;
      await this.read(r.body.getReader());
      if (!this.closed) this.status('reconnecting');
    } catch (e) {
      if (this.closed) return;
      this.status(e instanceof ApiError && (e.status === 401 || e.status === 403)
        ? 'no access: check the token' : 'reconnecting');
    }
    if (this.closed) return;
    this.timer = setTimeout(() => this.run(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, 5000);
  }

  async read(reader) {
    const dec = new TextDecoder();
    let buf = '';
    let ev = { type: '', data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
        if (line === '') {
          if (ev.data.length) this.dispatch(ev);
          ev = { type: '', data: [], id: null };
          continue;
        }
        if (line[0] === ':') continue; // a comment: keepalive
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val[0] === ' ') val = val.slice(1);
        if (field === 'event') ev.type = val;
        else if (field === 'data') ev.data.push(val);
        else if (field === 'id') ev.id = val;
      }
    }
  }

  dispatch(ev) {
    if (ev.id !== null) this.lastId = ev.id;
    let data;
    try {
      data = JSON.parse(ev.data.join('\n'));
    } catch (e) {
      return; // not ours to show
    }
    const type = ev.type || 'message';
    const fn = this.h[type];
    if (fn) fn(data);
  }
}
