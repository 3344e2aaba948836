// Chromium headless (the Debian package, driven by playwright-core over its
// DevTools pipe) runs `SwitchyardSocket` (crates/gateway/src/client.js) and a
// bare `EventSource` against the fallback session test gateway of
// crates/gateway/tests/session/browser.rs.
//
// usage: node fallback_chromium.mjs PAGE_ORIGIN CONTROL_ORIGIN [behind-nginx]
//   PAGE_ORIGIN: where the page and every request of the page go (a TCP
//   forwarder whose connections CONTROL_ORIGIN/__cut kills); the gateway
//   answers WebSocket upgrades on /echo and /py with 426, as behind a proxy
//   that drops Upgrade; /ws is a working WebSocket echo.
//   behind-nginx: PAGE_ORIGIN is nginx (without the Upgrade headers) in
//   front of the real gateway, whose index page is `/`: the page must fall
//   back to SSE and show it; there is no /ws and no attempt counter.
//   credentials: PAGE_ORIGIN is a gateway serving its index page, and
//   CONTROL_ORIGIN another one (same site, another port: another origin)
//   whose /py (the Python backend) allows PAGE_ORIGIN; a cookie of the site
//   reaches the backend through the cross-origin session only with
//   `credentials: 'include'`.
//
// Prints `ok: ...` per check and `all checks passed`, or `FAILED: ...` and
// exits 1.
import { exchange, launch } from './chromium_session.mjs';

const [origin, control, mode] = process.argv.slice(2);
const behindNginx = mode === 'behind-nginx';
const credentials = mode === 'credentials';
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
const ok = (msg) => console.log(`ok: ${msg}`);
setTimeout(() => fail('timed out after 100 s'), 100000).unref();

// What the backend behind the other origin saw of the session's open (its
// `info` answer), from a socket opened with `options`.
async function infoAcross({ url, options }) {
  const s = new SwitchyardSocket(url, [], { transports: ['sse'], remember: false, ...options });
  await new Promise((resolve, reject) => {
    s.onopen = resolve;
    s.onclose = (e) => reject(new Error(`closed before open: ${e.code} ${e.reason}`));
  });
  const info = await new Promise((resolve) => {
    s.onmessage = (e) => resolve(JSON.parse(e.data));
    s.send('info');
  });
  s.close(1000);
  return { transport: s.transport, ...info };
}

async function checkCredentials(browser, page) {
  // A cookie of the site (cookies ignore the port): sent to the other
  // origin only when the page asks for credentials.
  await browser.addCookies([{ name: 'sw_test', value: '1', domain: 'localhost', path: '/' }]);
  await page.evaluate(async () => {
    window.SwitchyardSocket = (await import('/.switchyard/client.js')).SwitchyardSocket;
  });
  await page.evaluate(`window.infoAcross = ${infoAcross.toString()}`);
  const across = (options) => page.evaluate((a) => window.infoAcross(a), { url: `${control}/py`, options })
    .catch((e) => fail(`across origins: ${e.message}`));
  const withCookies = await across({ credentials: 'include' });
  if (withCookies.transport !== 'sse' || withCookies.cookie !== 'sw_test=1' || withCookies.origin !== origin) {
    fail(`credentials 'include': ${JSON.stringify(withCookies)}`);
  }
  ok(`credentials 'include': the backend saw the cookie and the page's origin (${JSON.stringify(withCookies)})`);
  const without = await across({});
  if (without.transport !== 'sse' || without.cookie !== null || without.origin !== origin) {
    fail(`default credentials: ${JSON.stringify(without)}`);
  }
  ok(`default credentials ('same-origin'): no cookie across origins (${JSON.stringify(without)})`);
}

let chromium;
try {
  chromium = await launch();
  const browser = chromium.browser;
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('console', (m) => console.log(`page console: ${m.text()}`));
  await page.goto(`${origin}/`, { waitUntil: 'load' });
  if (credentials) {
    await checkCredentials(browser, page);
    console.log('all checks passed');
    await chromium.close();
    process.exit(0);
  }
  if (behindNginx) {
    // The gateway's index page: its socket falls back and shows the transport.
    await page.waitForFunction(() => document.getElementById('state')?.dataset.transport === 'sse',
      null, { timeout: 30000 }).catch(() => fail('the index page did not fall back to sse'));
    ok('the index page fell back to sse and shows it');
    await page.evaluate(async () => {
      window.SwitchyardSocket = (await import('/.switchyard/client.js')).SwitchyardSocket;
      localStorage.clear();
    });
  }
  await page.waitForFunction(() => window.SwitchyardSocket !== undefined);
  await page.evaluate(`window.exchange = ${exchange.toString()}`);
  // Behind nginx the gateway counts the attempts (the test checks them).
  const stats = async () => behindNginx ? 0 : (await (await fetch(`${control}/__stats`)).json()).ws_attempts;
  const check = (name, got, want) => {
    for (const [k, v] of Object.entries(want)) {
      if (got[k] !== v) fail(`${name}: ${k} is ${JSON.stringify(got[k])}, want ${JSON.stringify(v)} (${JSON.stringify(got)})`);
    }
    ok(`${name}: ${JSON.stringify(got)}`);
  };
  const run = (arg) => page.evaluate((a) => window.exchange(a), { protocols: [], options: {}, cutAt: -1, control, ...arg })
    .catch((e) => fail(`${arg.url}: ${e.message}`));
  const clean = { received: 1000, firstWrong: -1, close: '4000:true' };

  // 1. WebSocket refused on the path: SSE, 1000 messages each way.
  const before = await stats();
  check('websocket refused, sse', await run({ url: '/echo', n: 1000 }), { transport: 'sse', ...clean });
  if (!behindNginx) {
    if ((await stats()) !== before + 1) fail('the WebSocket was not tried first');
    ok('the WebSocket was tried first');
  }
  // 2. What worked is remembered for the URL: no WebSocket attempt now.
  check('remembered', await run({ url: '/echo', n: 10 }), { transport: 'sse', received: 10, firstWrong: -1 });
  if (!behindNginx) {
    if ((await stats()) !== before + 1) fail('the remembered transport was not tried first');
    ok('the remembered transport went first');
  }
  // 3. Long polling only.
  check('poll', await run({ url: '/echo', n: 1000, options: { transports: ['poll'] } }), { transport: 'poll', ...clean });
  // 4. Every connection killed mid-stream, once per transport: resumed, nothing lost or repeated.
  for (const t of ['sse', 'poll']) {
    check(`${t} cut mid-stream`, await run({ url: '/echo', n: 1000, cutAt: 300, options: { transports: [t] } }),
      { transport: t, ...clean });
  }
  // 5. A real WebSocket where the path allows it.
  if (!behindNginx) {
    check('websocket', await run({ url: '/ws', n: 20 }), { transport: 'websocket', received: 20, firstWrong: -1, close: '4000:true' });
  }
  // 6. Subprotocol negotiated with the Python backend through the gateway.
  check('subprotocol', await run({ url: '/py', protocols: ['chat.v1', 'chat.v2'], n: 10, options: { transports: ['sse'] } }),
    { transport: 'sse', protocol: 'chat.v2', received: 10, firstWrong: -1 });
  // 7. A bare EventSource: a receive-only session, resumed by the browser
  //    itself (Last-Event-ID) each time a response ends at its budget.
  const greetings = await page.evaluate(() => new Promise((resolve, reject) => {
    const es = new EventSource('/py?greet=200&sw=sse');
    const got = [];
    es.onmessage = (e) => {
      got.push(e.data);
      if (got.length === 200) { es.close(); resolve({ got, lastId: e.lastEventId }); }
    };
    setTimeout(() => reject(new Error(`only ${got.length} greetings`)), 30000);
  })).catch((e) => fail(`EventSource: ${e.message}`));
  const wrong = greetings.got.findIndex((g, i) => g !== `greeting ${i + 1}`);
  if (wrong !== -1) fail(`EventSource: greeting ${wrong}: ${greetings.got[wrong]}`);
  if (greetings.lastId.split('.').length !== 3) fail(`EventSource ids carry the session: ${greetings.lastId}`);
  ok(`EventSource received 200 greetings in order (last id ${greetings.lastId.replace(/\.[0-9a-f]{32}\./, '.<token>.')})`);
  console.log('all checks passed');
} finally {
  if (chromium) await chromium.close();
}
process.exit(0);
