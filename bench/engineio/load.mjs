// The load generator of bench/fallback.sh against the engine.io peer: `engine.io-client`
// sockets (polling only, no upgrade), each keeping IN_FLIGHT messages of SIZE bytes
// outstanding (closed loop), replies matched in FIFO order and checked, latency from the
// send() call to the 'message' event. CLIENT picks the polling transport:
// - `xhr` (default): engine.io-client's Node transport (XMLHttpRequest over Node's http
//   module) with a keep-alive `http.Agent` through its `agent` option. Without an agent
//   (its default) every request opens a TCP connection.
// - `fetch`: its `Fetch` transport (Node's fetch). It costs the client about 0.5 ms of CPU
//   per request here, so with 10 connections the load generator saturates its core and
//   measures itself, not the server (bench/README.md, "Fallback sessions").
// Prints one JSON object with the keys of `switchyard bench --json` that bench/fallback.sh
// reads.
//
// Usage: node load.mjs URL CONNECTIONS IN_FLIGHT SIZE WARMUP_S DURATION_S [xhr|fetch]
import { createRequire } from 'node:module';
import http from 'node:http';

const require = createRequire(new URL('../../tests/interop/package.json', import.meta.url));
const { Socket, Fetch } = require('engine.io-client');

const [url, conns, inFlight, size, warmup, duration, client = 'xhr'] = process.argv.slice(2);
if (client !== 'xhr' && client !== 'fetch') {
  console.error(`load.mjs: CLIENT is xhr or fetch, not ${client}`);
  process.exit(2);
}
const C = Number(conns), N = Number(inFlight), S = Number(size);
const payload = Array.from({ length: S }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
const lat = [];
let total = 0, errors = 0, firstError = null;
const fail = (e) => { errors++; firstError ??= String(e); };

const agent = new http.Agent({ keepAlive: true });
const options = client === 'fetch'
  ? { transports: [Fetch], upgrade: false }
  : { transports: ['polling'], upgrade: false, agent };
const open = () => new Promise((resolve) => {
  const s = new Socket(url, options);
  s.on('open', () => resolve(s));
  s.on('error', (e) => { fail(e); resolve(null); });
});
const sockets = (await Promise.all(Array.from({ length: C }, open))).filter(Boolean);

const ns = () => process.hrtime.bigint();
const t0 = ns();
const from = t0 + BigInt(Math.round(Number(warmup) * 1e9));
const end = from + BigInt(Math.round(Number(duration) * 1e9));
const cpu0 = process.cpuUsage();
let running = true;

await Promise.all(sockets.map((s) => new Promise((done) => {
  const sent = [];
  const send = () => { sent.push(ns()); s.send(payload); };
  s.on('message', (data) => {
    const now = ns();
    const at = sent.shift();
    if (data !== payload || at === undefined) fail(`unexpected echo of ${String(data).length} bytes`);
    total++;
    if (now >= from && now < end) lat.push(Number(now - at) / 1e3);
    if (now >= end) { running = false; s.close(); done(); return; }
    send();
  });
  s.on('close', (why) => { if (running) fail(`closed: ${why}`); done(); });
  for (let i = 0; i < N; i++) send();
})));

const cpu = process.cpuUsage(cpu0);
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0);
const secs = Number(duration);
const wall = Number(ns() - t0) / 1e9;
console.log(JSON.stringify({
  transport: 'engine.io-polling',
  connections: C, in_flight: N, size: S, seconds: secs,
  messages: lat.length, messages_total: total, msgs_per_s: lat.length / secs,
  p50_us: q(0.5), p90_us: q(0.9), p99_us: q(0.99), p999_us: q(0.999),
  max_us: lat.length ? lat[lat.length - 1] : 0,
  errors, first_error: firstError,
  client_cpu: (cpu.user + cpu.system) / 1e6 / wall,
  client_cpu_seconds: (cpu.user + cpu.system) / 1e6,
}));
process.exit(0);
