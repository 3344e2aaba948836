// Node's built-in `http2` client opens a WebSocket over HTTP/2 (RFC 8441) to
// `switchyard serve`: extended CONNECT with `:protocol: websocket`.
//
// usage: node node_h2.mjs https://127.0.0.1:PORT CA_FILE     (TLS, ALPN h2)
//        node node_h2.mjs http://127.0.0.1:PORT              (cleartext, prior knowledge)
//
// Checks: the server's SETTINGS carry SETTINGS_ENABLE_CONNECT_PROTOCOL = 1; the
// CONNECT gets :status 200 (and no Upgrade/Connection headers); a masked text
// frame, a masked binary frame and a masked ping come back as unmasked frames
// (echo and pong); a close frame with code 4000 is answered with 4000; then the
// stream ends. Then 20 more WebSockets run at once on the same connection. Frames are encoded and decoded by hand here, so nothing of ours
// is on the client side.
import http2 from 'node:http2';
import fs from 'node:fs';
import crypto from 'node:crypto';

const [origin, caFile] = process.argv.slice(2);
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
const ok = (msg) => console.log(`ok: ${msg}`);
setTimeout(() => fail('timed out after 20 s'), 20000).unref();

// One client frame: FIN set, masked with a random key (RFC 6455 section 5.2).
function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len])
    : len < 65536 ? Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 255])
      : (() => { const b = Buffer.alloc(10); b[0] = 0x80 | opcode; b[1] = 0x80 | 127; b.writeBigUInt64BE(BigInt(len), 2); return b; })();
  const key = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, key, body]);
}

// Parse complete server frames from `buf`; returns [frames, rest].
function parse(buf) {
  const frames = [];
  for (;;) {
    if (buf.length < 2) break;
    const fin = (buf[0] & 0x80) !== 0, opcode = buf[0] & 0x0f, masked = (buf[1] & 0x80) !== 0;
    let len = buf[1] & 0x7f, off = 2;
    if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); off = 4; }
    else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); off = 10; }
    if (masked) fail('server frame is masked (RFC 6455 5.1: a server must not mask)');
    if ((buf[0] & 0x70) !== 0) fail(`unexpected RSV bits (no extension was negotiated): ${buf[0].toString(16)}`);
    if (buf.length < off + len) break;
    frames.push({ fin, opcode, payload: buf.subarray(off, off + len) });
    buf = buf.subarray(off + len);
  }
  return [frames, buf];
}

// N more WebSockets at once on the same HTTP/2 connection: each echoes its own
// text (a 64 KiB one, so flow control windows are crossed on every stream) and
// closes with 1000.
function multiplex(n) {
  const url = new URL(origin);
  const one = (i) => new Promise((resolve) => {
    const text = Buffer.from(`stream ${i} `.repeat(8000).slice(0, 65536));
    const st = session.request({
      ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': url.protocol.slice(0, -1),
      ':path': '/echo', ':authority': url.host, 'sec-websocket-version': '13',
    }, { endStream: false });
    st.on('error', (e) => fail(`multiplexed stream ${i}: ${e.message}`));
    st.on('response', (h) => {
      if (h[':status'] !== 200) fail(`multiplexed stream ${i}: CONNECT answered ${h[':status']}`);
      st.write(frame(1, text));
    });
    let buf = Buffer.alloc(0), echoed = false;
    st.on('data', (chunk) => {
      let frames;
      [frames, buf] = parse(Buffer.concat([buf, chunk]));
      for (const f of frames) {
        if (!echoed) {
          if (f.opcode !== 1 || !f.payload.equals(text)) fail(`multiplexed stream ${i}: wrong echo (opcode ${f.opcode}, ${f.payload.length} bytes)`);
          echoed = true;
          const close = Buffer.alloc(2); close.writeUInt16BE(1000, 0);
          st.write(frame(8, close));
        } else if (f.opcode !== 8 || f.payload.readUInt16BE(0) !== 1000) {
          fail(`multiplexed stream ${i}: want close 1000, got opcode ${f.opcode}`);
        }
      }
    });
    st.on('end', () => { if (!echoed) fail(`multiplexed stream ${i} ended early`); st.end(); resolve(); });
  });
  return Promise.all(Array.from({ length: n }, (_, i) => one(i))).then(() => {
    ok(`${n} more WebSockets at once on the same connection, 64 KiB echo each`);
  });
}

const opts = origin.startsWith('https:')
  ? { ca: fs.readFileSync(caFile), servername: 'localhost', ALPNProtocols: ['h2'] }
  : {};
const session = http2.connect(origin, opts);
session.on('error', (e) => fail(`session error: ${e.message}`));
session.once('remoteSettings', (settings) => {
  if (settings.enableConnectProtocol !== true) {
    fail(`server SETTINGS lack SETTINGS_ENABLE_CONNECT_PROTOCOL=1: ${JSON.stringify(settings)}`);
  }
  ok('server SETTINGS: enableConnectProtocol = true');
  if (session.alpnProtocol !== undefined) ok(`ALPN: ${session.alpnProtocol}`);
  const url = new URL(origin);
  const stream = session.request({
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': url.protocol.slice(0, -1),
    ':path': '/echo',
    ':authority': url.host,
    'sec-websocket-version': '13',
    'origin': origin,
  }, { endStream: false });
  stream.on('error', (e) => fail(`stream error: ${e.message}`));
  stream.on('response', (headers) => {
    if (headers[':status'] !== 200) fail(`CONNECT answered ${headers[':status']}, want 200`);
    for (const h of ['upgrade', 'connection', 'sec-websocket-accept']) {
      if (h in headers) fail(`response has a ${h} header, not allowed over HTTP/2 (RFC 8441 5)`);
    }
    ok('extended CONNECT :protocol websocket answered 200');
    const big = crypto.randomBytes(70000);
    const expect = [
      { opcode: 1, payload: Buffer.from('hello over h2 ✓') },
      { opcode: 2, payload: Buffer.from([0, 1, 2, 255]) },
      { opcode: 10, payload: Buffer.from('ping!') },
      { opcode: 2, payload: big },
    ];
    stream.write(frame(1, Buffer.from('hello over h2 ✓')));
    stream.write(frame(2, Buffer.from([0, 1, 2, 255])));
    stream.write(frame(9, Buffer.from('ping!')));
    stream.write(frame(2, big));
    let buf = Buffer.alloc(0), closed = false;
    stream.on('data', (chunk) => {
      let frames;
      [frames, buf] = parse(Buffer.concat([buf, chunk]));
      for (const f of frames) {
        if (closed) fail(`frame after the close frame: opcode ${f.opcode}`);
        if (f.opcode === 8) {
          if (expect.length) fail(`close before all echoes (${expect.length} missing)`);
          const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null;
          if (code !== 4000) fail(`close answered with ${code}, want 4000`);
          ok('close code 4000 round trip');
          closed = true;
          continue;
        }
        const want = expect.shift();
        if (!want) fail(`unexpected frame opcode ${f.opcode}`);
        if (!f.fin || f.opcode !== want.opcode || !f.payload.equals(want.payload)) {
          fail(`got opcode ${f.opcode} (${f.payload.length} bytes), want opcode ${want.opcode} (${want.payload.length} bytes)`);
        }
        ok(`${{ 1: 'text echo', 2: 'binary echo', 10: 'pong' }[f.opcode]} (${f.payload.length} bytes, unmasked)`);
        if (!expect.length) {
          const close = Buffer.alloc(2 + 3); close.writeUInt16BE(4000, 0); close.write('bye', 2);
          stream.write(frame(8, close));
        }
      }
    });
    stream.on('end', () => {
      if (!closed) fail('stream ended without a close frame');
      ok('stream ended after the closing handshake');
      stream.end();
      multiplex(20).then(() => {
        session.close(() => { console.log('node_h2: all checks passed'); process.exit(0); });
      });
    });
  });
});
