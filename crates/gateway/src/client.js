// switchyard's browser client: `SwitchyardSocket`, a WebSocket that falls back
// to Server-Sent Events + POST, then to long polling, through the switchyard
// gateway when something on the path stops WebSocket (docs/fallback.md).
// An ES module: no build step, no dependency.
//
//   import { SwitchyardSocket } from '/.switchyard/client.js';
//   const s = new SwitchyardSocket('/chat', ['chat.v2']);
//   s.onmessage = (e) => console.log(s.transport, e.data);
//
// It has the WebSocket interface (onopen, onmessage, onclose, onerror,
// addEventListener, send, close, readyState, protocol, binaryType) plus
// `transport`: 'websocket', 'sse' or 'poll'. Options: `transports` (the order
// to try, default ['websocket', 'sse', 'poll']), `timeout` (ms a transport
// gets to open, default 5000), `remember` (try first what worked last time
// for this URL, default true), `credentials` (the fetch mode for the session's
// requests: 'include' sends cookies and Authorization to a gateway of another
// origin, which its `allowed_origins` must list; default 'same-origin', as
// fetch). Messages carry sequence numbers both ways:
// after a network error the socket resumes where it was, without loss or
// repeats, for as long as the gateway keeps the session (its idle timeout).

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
const TRANSPORTS = ['websocket', 'sse', 'poll'];
// Statuses after which the session no longer exists on the gateway.
const GONE = [403, 404, 410];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const toBase64 = (bytes) => {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
const fromBase64 = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));

export class SwitchyardSocket extends EventTarget {
  constructor(url, protocols = [], options = {}) {
    super();
    const base = new URL(url, location.href);
    this.url = base.href;
    this._http = new URL(base);
    this._http.protocol = base.protocol.replace(/^ws/, 'http');
    this._wsUrl = new URL(base);
    this._wsUrl.protocol = this._http.protocol.replace(/^http/, 'ws');
    this._protocols = typeof protocols === 'string' ? [protocols] : [...protocols];
    this._opts = { timeout: 5000, transports: TRANSPORTS, remember: true, credentials: 'same-origin', ...options };
    this._key = `switchyard.transport ${this._http.origin}${this._http.pathname}`;
    Object.assign(this, {
      readyState: CONNECTING, protocol: '', extensions: '', binaryType: 'blob', transport: null,
      bufferedAmount: 0, onopen: null, onmessage: null, onclose: null, onerror: null,
    });
    this._live = new Set(); // requests in flight (close() cuts them)
    this._last = 0; // last server message delivered
    this._acked = 0; // last client message the gateway accepted
    this._outbox = [];
    this._connect();
  }

  send(data) {
    if (this.readyState === CONNECTING) throw new DOMException('still connecting', 'InvalidStateError');
    if (this.readyState !== OPEN) return;
    if (this._ws) return this._ws.send(data);
    this._outbox.push(data);
    this.bufferedAmount += typeof data === 'string' ? data.length : (data.byteLength ?? data.size ?? 0);
    this._pump();
  }

  close(code = 1000, reason = '') {
    if (code !== 1000 && (code < 3000 || code > 4999)) throw new DOMException(`close code ${code}`, 'InvalidAccessError');
    if (this.readyState >= CLOSING) return;
    if (this.readyState === CONNECTING) return this._finish(1006, 'closed before it opened', false);
    this.readyState = CLOSING;
    if (this._ws) return this._ws.close(code, reason);
    this._closing = { code, reason };
    this._pump();
    // The backend's close reply arrives through the reader; do not wait forever.
    setTimeout(() => this._finish(1006, 'no close reply', false), 10000);
  }

  _emit(type, init = {}) {
    const Kind = { message: MessageEvent, close: CloseEvent }[type] ?? Event;
    const ev = new Kind(type, init);
    this.dispatchEvent(ev);
    if (typeof this[`on${type}`] === 'function') this[`on${type}`](ev);
  }

  _opened(transport, protocol) {
    Object.assign(this, { transport, protocol, readyState: OPEN });
    if (this._opts.remember) try { localStorage.setItem(this._key, transport); } catch { /* storage off */ }
    this._emit('open');
  }

  _finish(code, reason, wasClean) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    for (const c of this._live) c.abort();
    if (!wasClean) this._emit('error');
    this._emit('close', { code, reason, wasClean });
  }

  async _connect() {
    let order = this._opts.transports.filter((t) => TRANSPORTS.includes(t));
    let known = null;
    if (this._opts.remember) try { known = localStorage.getItem(this._key); } catch { /* storage off */ }
    if (order.includes(known)) order = [known, ...order.filter((t) => t !== known)];
    for (const t of order) {
      if (this.readyState !== CONNECTING) return;
      const opened = t === 'websocket' ? await this._tryWebSocket() : await this._tryFallback(t).catch(() => false);
      if (opened) return;
    }
    this._finish(1006, `no transport worked (${order.join(', ')})`, false);
  }

  _tryWebSocket() {
    return new Promise((resolve) => {
      let ws;
      try { ws = new WebSocket(this._wsUrl.href, this._protocols); } catch { return resolve(false); }
      ws.binaryType = 'arraybuffer';
      const fail = () => { clearTimeout(timer); ws.onopen = ws.onclose = ws.onerror = null; ws.close(); resolve(false); };
      const timer = setTimeout(fail, this._opts.timeout);
      ws.onerror = ws.onclose = fail;
      ws.onopen = () => {
        clearTimeout(timer);
        if (this.readyState !== CONNECTING) return ws.close();
        this._ws = ws;
        this.extensions = ws.extensions;
        ws.onmessage = (e) => this._deliver(e.data);
        ws.onerror = () => this._emit('error');
        ws.onclose = (e) => { this.readyState = CLOSED; this._emit('close', { code: e.code, reason: e.reason, wasClean: e.wasClean }); };
        this._opened('websocket', ws.protocol);
        resolve(true);
      };
    });
  }

  _target(action, extra = '') {
    const u = new URL(this._http);
    u.search = `${u.search ? `${u.search}&` : '?'}sw=${action}${this._sid ? `&sid=${this._sid}&token=${this._token}` : ''}${extra}`;
    return u.href;
  }

  // One request and its whole answer within `ms`; close() cuts it. `loop`
  // (a reader) can cut it too.
  async _call(url, init, ms, loop) {
    const ctl = new AbortController();
    if (loop) loop.ctl = ctl;
    this._live.add(ctl);
    const timer = setTimeout(() => ctl.abort(), ms);
    try {
      const resp = await fetch(url, { ...init, cache: 'no-store', credentials: this._opts.credentials, signal: ctl.signal });
      const text = await resp.text();
      return { ok: resp.ok, status: resp.status, headers: resp.headers, json: () => JSON.parse(text) };
    } finally {
      clearTimeout(timer);
      this._live.delete(ctl);
    }
  }

  // Open a session and see the transport deliver within the timeout.
  async _tryFallback(transport) {
    this._sid = null;
    const body = JSON.stringify({ protocols: this._protocols, transport });
    const r = await this._call(this._target('open'), { method: 'POST', body, headers: { 'Content-Type': 'application/json' } }, this._opts.timeout);
    if (!r.ok) {
      // Not offered here: the next transport may be. Refused (Origin, caps,
      // the backend's answer): every transport would be.
      if ([404, 405, 426].includes(r.status)) return false;
      this._finish(1006, `the gateway refused the session: ${r.status}`, false);
      return true;
    }
    const info = r.json();
    Object.assign(this, { _sid: info.sid, _token: info.token, _info: info });
    const loop = transport === 'sse' ? this._sseLoop() : this._pollLoop();
    // A poll may be held until a message comes; an event stream starts at
    // once unless something on the path (a buffering proxy) holds it.
    if (transport === 'sse' && !(await Promise.race([loop.started, sleep(this._opts.timeout).then(() => false)]))) {
      loop.stop();
      this._call(this._target('close'), { method: 'POST' }, this._opts.timeout).catch(() => {});
      return false;
    }
    this._opened(transport, info.protocol ?? '');
    return true;
  }

  // Retry pauses; false once the gateway has been unreachable longer than
  // the session's idle timeout (it has closed the session by then).
  async _retry(state, ms) {
    state.since ??= Date.now();
    if (Date.now() - state.since > this._info.idle_timeout_ms) {
      this._finish(1006, 'the gateway stayed unreachable; the session is lost', false);
      return false;
    }
    await sleep(ms ?? (state.pause = Math.min((state.pause ?? 50) * 2, 2000)));
    return this.readyState !== CLOSED;
  }

  // Deliver a server message once, in order; true when the session ended.
  _entry(seq, type, data) {
    if (type !== 'close') {
      if (seq <= this._last) return false;
      if (seq !== this._last + 1) { this._finish(1006, `message ${seq} after ${this._last}`, false); return true; }
    }
    this._last = seq;
    if (type === 'close') { this._finish(data.code, data.reason, true); return true; }
    if (this.readyState !== CLOSING) this._deliver(type === 'binary' ? fromBase64(data).buffer : data);
    return false;
  }

  _deliver(data) {
    if (typeof data !== 'string' && this.binaryType === 'blob') data = new Blob([data]);
    this._emit('message', { data, origin: this._http.origin });
  }

  // A reader loop around `once(loop, ok)`, which answers 'end', 'again'
  // (read on at once), or a status; `started` resolves at the first answer.
  _reader(once) {
    let started;
    const loop = { stopped: false, ctl: null, started: new Promise((r) => { started = r; }) };
    loop.stop = () => { loop.stopped = true; loop.ctl?.abort(); };
    (async () => {
      const state = {};
      while (this.readyState !== CLOSED && !loop.stopped) {
        const status = await once(loop, () => { started(true); state.since = state.pause = null; }).catch(() => 0);
        if (status === 'end' || this.readyState === CLOSED || loop.stopped) return;
        if (GONE.includes(status)) return this._finish(1006, `the session is gone (${status})`, false);
        if (status !== 'again' && !(await this._retry(state))) return;
      }
    })();
    return loop;
  }

  _sseLoop() {
    return this._reader(async (loop, ok) => {
      const headers = { Accept: 'text/event-stream' };
      if (this._last) headers['Last-Event-ID'] = String(this._last);
      const ctl = new AbortController();
      loop.ctl = ctl;
      this._live.add(ctl);
      // No byte for this long, heartbeats included: the stream is dead.
      const quiet = () => setTimeout(() => ctl.abort(), 2 * this._info.heartbeat_ms + this._opts.timeout);
      let timer = setTimeout(() => ctl.abort(), this._opts.timeout);
      try {
        const resp = await fetch(this._target('sse'), { headers, cache: 'no-store', credentials: this._opts.credentials, signal: ctl.signal });
        if (!resp.ok) return resp.status;
        const reader = resp.body.getReader();
        const text = new TextDecoder();
        let buf = '', ev = { data: [] };
        for (;;) {
          clearTimeout(timer);
          timer = quiet();
          const { value, done } = await reader.read();
          if (done) return 'again'; // the response's budget: resume at once
          ok();
          buf += text.decode(value, { stream: true });
          let m;
          while ((m = /\r\n|\r|\n/.exec(buf)) && !(m[0] === '\r' && m.index === buf.length - 1)) {
            const line = buf.slice(0, m.index);
            buf = buf.slice(m.index + m[0].length);
            if (line === '') {
              if (ev.data.length && ev.id !== undefined) {
                const type = ev.event ?? 'message';
                const data = ev.data.join('\n');
                const payload = type === 'close' ? JSON.parse(data)
                  : type === 'text-base64' ? new TextDecoder().decode(fromBase64(data)) : data;
                if (this._entry(Number(ev.id.split('.').pop()), type === 'text-base64' ? 'message' : type, payload)) return 'end';
              }
              ev = { data: [] };
            } else if (!line.startsWith(':')) {
              const i = line.indexOf(':');
              const field = i < 0 ? line : line.slice(0, i);
              const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
              if (field === 'data') ev.data.push(value);
              else if (field === 'id' || field === 'event') ev[field] = value;
            }
          }
        }
      } finally {
        clearTimeout(timer);
        this._live.delete(ctl);
      }
    });
  }

  _pollLoop() {
    return this._reader(async (loop, ok) => {
      const r = await this._call(this._target('poll', `&after=${this._last}`), {},
        this._info.poll_timeout_ms + this._opts.timeout, loop);
      if (!r.ok) return r.status;
      ok();
      for (const m of r.json().messages) {
        if (this._entry(m.seq, m.type, m.type === 'close' ? m : m.data)) return 'end';
      }
      return 'again';
    });
  }

  // Send what is queued, one POST at a time, each numbered: a POST repeated
  // after a network error is accepted once. Then the close, if asked.
  async _pump() {
    if (this._pumping) return;
    this._pumping = true;
    const state = {};
    try {
      while (this.readyState !== CLOSED && (this._outbox.length || (this._closing && !this._closeSent))) {
        let url, body, headers = { 'Content-Type': 'application/json' };
        if (this._outbox.length) {
          const batch = [];
          let bytes = 0;
          for (const item of this._outbox) {
            const m = typeof item === 'string' ? { type: 'text', data: item }
              : { type: 'binary', data: toBase64(new Uint8Array(item instanceof Blob ? await item.arrayBuffer() : ArrayBuffer.isView(item) ? item.buffer.slice(item.byteOffset, item.byteOffset + item.byteLength) : item)) };
            // UTF-8 and JSON escapes may triple a text's length.
            bytes += (m.type === 'text' ? 3 : 1) * m.data.length + 32;
            if (batch.length && bytes > this._info.max_body) break;
            batch.push(m);
          }
          url = this._target('send', `&seq=${this._acked + 1}`);
          body = JSON.stringify(batch);
        } else {
          url = this._target('close');
          body = JSON.stringify(this._closing);
        }
        let r;
        try {
          r = await this._call(url, { method: 'POST', body, headers }, this._opts.timeout);
        } catch {
          if (!(await this._retry(state))) return;
          continue;
        }
        if (r.ok) {
          state.since = state.pause = null;
          const { acked } = r.json();
          while (this._acked < acked && this._outbox.length) {
            const done = this._outbox.shift();
            this.bufferedAmount -= typeof done === 'string' ? done.length : (done.byteLength ?? done.size ?? 0);
            this._acked += 1;
          }
          if (!this._outbox.length && url.includes('sw=close')) this._closeSent = true;
        } else if (GONE.includes(r.status)) {
          return this._finish(1006, `the session is gone (${r.status})`, false);
        } else if (r.status === 413) {
          return this._finish(1009, 'a message is larger than the gateway accepts', false);
        } else if (r.status === 409) {
          return this._finish(1006, 'the gateway saw a gap in our messages', false);
        } else if (!(await this._retry(state, Number(r.headers.get('Retry-After')) * 1000 || undefined))) {
          return;
        }
      }
    } finally {
      this._pumping = false;
    }
  }
}

Object.assign(SwitchyardSocket, { CONNECTING, OPEN, CLOSING, CLOSED });
