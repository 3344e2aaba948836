// Chromium headless runs `SwitchyardSocket` through HAProxy in front of
// three gateway instances (crates/gateway/tests/session/haproxy.rs). HAProxy
// drops `Upgrade` and balances every request round robin, so the socket
// falls back to SSE and each request of its session may land on another
// instance.
//
// usage: node cluster_chromium.mjs ORIGIN PATH N
//   ORIGIN: HAProxy, whose `/` is the gateways' index page; PATH: the route
//   to the WebSocket backend; N: messages each way.
//
// Prints `ok: ...` and `all checks passed`, or `FAILED: ...` and exits 1.
import { exchange, launch } from './chromium_session.mjs';

const [origin, url, count] = process.argv.slice(2);
const n = Number(count);
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
setTimeout(() => fail('timed out after 100 s'), 100000).unref();

let chromium;
try {
  chromium = await launch();
  const page = chromium.browser.pages()[0] ?? await chromium.browser.newPage();
  page.on('console', (m) => console.log(`page console: ${m.text()}`));
  await page.goto(`${origin}/`, { waitUntil: 'load' });
  await page.evaluate(async () => {
    window.SwitchyardSocket = (await import('/.switchyard/client.js')).SwitchyardSocket;
  });
  await page.evaluate(`window.exchange = ${exchange.toString()}`);
  const got = await page.evaluate((a) => window.exchange(a), { url, protocols: [], options: {}, n, cutAt: -1 })
    .catch((e) => fail(`${url}: ${e.message}`));
  const want = { transport: 'sse', received: n, firstWrong: -1, close: '4000:true' };
  for (const [k, v] of Object.entries(want)) {
    if (got[k] !== v) fail(`${k} is ${JSON.stringify(got[k])}, want ${JSON.stringify(v)} (${JSON.stringify(got)})`);
  }
  console.log(`ok: ${n} messages each way through HAProxy: ${JSON.stringify(got)}`);
  console.log('all checks passed');
} finally {
  if (chromium) await chromium.close();
}
process.exit(0);
