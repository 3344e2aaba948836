// Chromium headless (the Debian package, driven by playwright-core) reads the
// gateway's `/status` dashboard while the browser itself is a client of the
// gateway, for crates/gateway/tests/session/dashboard.rs.
//
// usage: node status_chromium.mjs ADMIN_ORIGIN WS_URL TOKEN REPORT_DIR
//   ADMIN_ORIGIN: the admin listener (with `[admin] token_file` = TOKEN);
//   WS_URL: a proxied WebSocket echo route of the same gateway (with a
//   `ping_interval`), labelled by its path on the dashboard; REPORT_DIR:
//   where the screenshots go.
//
// Prints `ok: ...` per check and `all checks passed`, or `FAILED: ...` and
// exits 1.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [admin, wsUrl, token, reports] = process.argv.slice(2);
const route = new URL(wsUrl).pathname;
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
const ok = (msg) => console.log(`ok: ${msg}`);
setTimeout(() => fail('timed out after 60 s'), 60000).unref();

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'status-chromium-'));
let browser;
try {
  browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('console', (m) => console.log(`page console: ${m.text()}`));
  // A figure of the route's card, once its text passes `test`.
  const figure = async (field, test, what) => {
    const sel = `section[data-route="${route}"] [data-field="${field}"]`;
    await page.waitForFunction(([s, src]) => {
      const e = document.querySelector(s);
      return e !== null && new Function('t', `return ${src}`)(e.textContent);
    }, [sel, test], { timeout: 20000 })
      .catch(async () => fail(`${what}: ${field} is ${await page.textContent(sel).catch(() => 'absent')}`));
    const text = await page.textContent(sel);
    ok(`${what}: ${field} ${text}`);
    return text;
  };

  // 1. Without the token the page loads (it holds no data) and says why it
  //    shows nothing.
  await page.goto(`${admin}/status`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.getElementById('state').textContent.includes('wants a token'),
    null, { timeout: 20000 }).catch(() => fail('no message about the missing token'));
  if (await page.$('section[data-route]')) fail('route data shown without the token');
  ok('without the token: the page asks for it, no data');

  // 2. With the token in the fragment: data, and the token leaves the address bar.
  await page.goto(`${admin}/status#token=${encodeURIComponent(token)}`, { waitUntil: 'load' });
  await figure('live', 't === "0"', 'before any client');
  await figure('messages', 't === "0"', 'before any client');
  if (page.url().includes(token)) fail(`the token stayed in the address bar: ${page.url()}`);
  ok('the token left the address bar');

  // 3. The browser connects through the gateway and sends: the figures follow.
  const client = await browser.newPage();
  await client.evaluate(async (url) => {
    const ws = new WebSocket(url);
    window.ws = ws;
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('no open')); });
    let got = 0;
    const echoed = new Promise((resolve) => { ws.onmessage = () => { if (++got === 10) resolve(); }; });
    for (let i = 0; i < 10; i++) ws.send(`message ${i}`);
    await echoed;
  }, wsUrl).catch((e) => fail(`the browser's WebSocket: ${e.message}`));
  await figure('live', 't === "1"', 'a client connected');
  await figure('handshake', 't.startsWith("≤")', 'a handshake timed');
  // Counted while the connection lives, not when it ends.
  await figure('messages', 'Number(t) >= 20', 'ten messages echoed, the client still connected');
  await figure('bytes', 't !== "0 B"', 'their bytes');
  await figure('success', 't === "100.0%"', 'the one upgrade switched');
  // Chromium answers the gateway's probe pings.
  await figure('ping', 't.startsWith("≤")', 'ping round trips measured');
  const row = await page.textContent(`section[data-route="${route}"] tbody`);
  if (!/h1\s*websocket\s*1/.test(row)) fail(`no "h1 websocket 1" row: ${row}`);
  ok('open connections by protocol and transport: h1 websocket 1');
  const conns = await page.textContent('#connections');
  if (!conns.includes('127.0.0.1')) fail(`the live connection is not listed: ${conns}`);
  ok('the live connection is listed');

  // 4. Screenshots at laptop and phone widths, the client still connected.
  fs.mkdirSync(reports, { recursive: true });
  await page.screenshot({ path: path.join(reports, 'status-laptop.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`the page is ${overflow} px wider than a phone screen`);
  await page.screenshot({ path: path.join(reports, 'status-phone.png'), fullPage: true });
  ok(`screenshots in ${reports}; no horizontal scroll at 390 px`);

  // 5. The client leaves: back to 0, its messages still counted.
  await client.evaluate(() => window.ws.close(1000));
  await figure('live', 't === "0"', 'the client closed');
  await figure('messages', 'Number(t) >= 20', 'ten messages echoed');
  console.log('all checks passed');
} finally {
  if (browser) await browser.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
