// OUR client over HTTP/2 against a third-party HTTP/2 server: Node's built-in
// `http2` server, with SETTINGS_ENABLE_CONNECT_PROTOCOL, accepts the RFC 8441
// extended CONNECT of `switchyard connect --http2` and echoes WebSocket frames
// (decoded and encoded by hand here, no extension negotiated).
//
// usage: node node_h2_server.mjs SWITCHYARD_BIN tls CERT KEY CA   (ALPN h2)
//        node node_h2_server.mjs SWITCHYARD_BIN plain             (prior knowledge)
//
// Checks: the CONNECT carries :protocol websocket, :scheme, :path /interop,
// :authority and sec-websocket-version 13, and no Upgrade/Connection headers;
// the client's frames are masked; the stdin lines arrive as text messages and
// come back on stdout; the client says on stderr that it used HTTP/2, ends with
// a close 1000 and exits 0.
import http2 from 'node:http2';
import fs from 'node:fs';
import { spawn } from 'node:child_process';

const [bin, mode, certFile, keyFile, caFile] = process.argv.slice(2);
const LINES = ['hello over h2', 'from node ✓', 'third line'];
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
const ok = (msg) => console.log(`ok: ${msg}`);
setTimeout(() => fail('timed out after 30 s'), 30000).unref();

function encode(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len])
    : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 255])
      : (() => { const b = Buffer.alloc(10); b[0] = 0x80 | opcode; b[1] = 127; b.writeBigUInt64BE(BigInt(len), 2); return b; })();
  return Buffer.concat([head, payload]);
}

const received = [];
let closeCode = null;
const settings = { enableConnectProtocol: true };
const server = mode === 'tls'
  ? http2.createSecureServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), settings, allowHTTP1: false })
  : http2.createServer({ settings });
server.on('stream', (stream, h) => {
  if (h[':method'] !== 'CONNECT' || h[':protocol'] !== 'websocket') {
    stream.respond({ ':status': 400 }); stream.end(); fail(`not an extended CONNECT: ${JSON.stringify(h)}`);
  }
  const scheme = mode === 'tls' ? 'https' : 'http';
  if (h[':scheme'] !== scheme) fail(`:scheme ${h[':scheme']}, want ${scheme}`);
  if (h[':path'] !== '/interop') fail(`:path ${h[':path']}, want /interop`);
  if (!h[':authority']) fail('no :authority');
  if (h['sec-websocket-version'] !== '13') fail(`sec-websocket-version ${h['sec-websocket-version']}`);
  for (const bad of ['upgrade', 'connection', 'sec-websocket-key']) {
    if (bad in h) fail(`request has ${bad}, not allowed in an RFC 8441 CONNECT`);
  }
  ok(`extended CONNECT ${h[':scheme']}://${h[':authority']}${h[':path']} (extensions offered: ${h['sec-websocket-extensions'] ?? 'none'})`);
  stream.respond({ ':status': 200 });
  let buf = Buffer.alloc(0), parts = [], partOp = 0;
  stream.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const fin = (buf[0] & 0x80) !== 0, op = buf[0] & 0x0f;
      if ((buf[0] & 0x70) !== 0) fail('RSV bits set without an extension');
      if ((buf[1] & 0x80) === 0) fail('client frame not masked (RFC 6455 5.1)');
      let len = buf[1] & 0x7f, off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      if (buf.length < off + 4 + len) return;
      const key = buf.subarray(off, off + 4);
      const p = Buffer.from(buf.subarray(off + 4, off + 4 + len));
      for (let i = 0; i < p.length; i++) p[i] ^= key[i & 3];
      buf = buf.subarray(off + 4 + len);
      if (op === 8) {
        closeCode = p.length >= 2 ? p.readUInt16BE(0) : 1005;
        stream.end(encode(8, p.subarray(0, 2)));
        return;
      } else if (op === 9) {
        stream.write(encode(10, p));
      } else if (op === 1 || op === 2 || op === 0) {
        if (op !== 0) partOp = op;
        parts.push(p);
        if (fin) {
          const msg = Buffer.concat(parts); parts = [];
          if (partOp === 1) received.push(msg.toString('utf8'));
          stream.write(encode(partOp, msg));
        }
      }
    }
  });
  stream.on('error', (e) => fail(`stream error: ${e.message}`));
});

server.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  const url = `${mode === 'tls' ? 'wss' : 'ws'}://127.0.0.1:${port}/interop`;
  const args = ['connect', '--http2', url, ...(mode === 'tls' ? ['--ca', caFile] : [])];
  console.log(`running: ${bin} ${args.join(' ')}`);
  const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  // The child may exit before reading its stdin (e.g. a refused option): no EPIPE crash.
  child.stdin.on('error', () => {});
  child.stdin.end(LINES.map((l) => `${l}\n`).join(''));
  child.on('exit', (code) => {
    console.log(`client stdout:\n${stdout}client stderr:\n${stderr}`);
    if (code !== 0) fail(`switchyard connect exited ${code}`);
    ok('switchyard connect exited 0');
    if (!/HTTP\/2/.test(stderr)) fail('switchyard connect did not report HTTP/2 on stderr');
    ok('switchyard connect reported HTTP/2');
    if (JSON.stringify(received) !== JSON.stringify(LINES)) fail(`server received ${JSON.stringify(received)}`);
    ok('server received the stdin lines as text messages');
    const printed = stdout.split('\n').filter((l) => l !== '');
    if (JSON.stringify(printed) !== JSON.stringify(LINES)) fail(`client printed ${JSON.stringify(printed)}`);
    ok('client printed the echoes, one per line');
    if (closeCode !== 1000) fail(`client close code ${closeCode}, want 1000`);
    ok('client closed with 1000');
    console.log('node_h2_server: all checks passed');
    process.exit(0);
  });
});
