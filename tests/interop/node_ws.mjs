// The `ws` package (npm) as a client of `switchyard serve` over HTTP/1.1.
//
// usage: node node_ws.mjs ws://127.0.0.1:PORT/echo
//        node node_ws.mjs wss://127.0.0.1:PORT/echo CA_FILE
//
// Checks: permessage-deflate negotiated; text, binary and a 256 KiB
// compressible message echo; a ping is answered with a pong carrying the same
// payload; close code 4001 comes back.
import fs from 'node:fs';
import crypto from 'node:crypto';
import WebSocket from 'ws';

const [url, caFile] = process.argv.slice(2);
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
const ok = (msg) => console.log(`ok: ${msg}`);
setTimeout(() => fail('timed out after 20 s'), 20000).unref();

const ws = new WebSocket(url, {
  perMessageDeflate: true,
  ...(caFile ? { ca: fs.readFileSync(caFile) } : {}),
});
ws.on('error', (e) => fail(`error: ${e.message}`));
ws.on('unexpected-response', (_req, res) => fail(`handshake answered ${res.statusCode}`));

const big = 'abcdefghij'.repeat(26215);
const bin = crypto.randomBytes(5000);
const steps = [
  ['text', 'héllo from ws ✓'],
  ['binary', bin],
  ['big text', big],
];

ws.on('upgrade', (res) => {
  const ext = res.headers['sec-websocket-extensions'] || '';
  if (!ext.startsWith('permessage-deflate')) fail(`permessage-deflate not negotiated: ${ext}`);
  ok(`permessage-deflate negotiated (${ext})`);
  if (url.startsWith('wss:')) ok(`TLS ${res.socket.getProtocol()}`);
});

ws.on('open', () => {
  ws.ping(Buffer.from('are you there'));
});
ws.on('pong', (data) => {
  if (data.toString() !== 'are you there') fail(`pong payload ${data}`);
  ok('ping answered with the same payload');
  for (const [, payload] of steps) ws.send(payload);
});
ws.on('message', (data, isBinary) => {
  const [name, want] = steps.shift() ?? fail('unexpected message');
  const same = typeof want === 'string'
    ? !isBinary && data.toString('utf8') === want
    : isBinary && Buffer.compare(data, want) === 0;
  if (!same) fail(`${name} echo differs (${data.length} bytes, binary=${isBinary})`);
  ok(`${name} echo (${data.length} bytes)`);
  if (!steps.length) ws.close(4001, 'ws bye');
});
ws.on('close', (code, reason) => {
  if (steps.length) fail(`closed early with ${code}`);
  if (code !== 4001) fail(`close answered with ${code} '${reason}', want 4001`);
  ok('close code 4001 round trip');
  console.log('node_ws: all checks passed');
  process.exit(0);
});
