// Chromium headless (the Debian package, driven by playwright-core over its
// DevTools pipe) runs `new WebSocket('wss://...')` against `switchyard serve --tls`.
//
// usage: node chromium.mjs https://127.0.0.1:PORT SPKI_SHA256_BASE64 WANT_PROTOCOL [CHROMIUM_FLAG...]
//   WANT_PROTOCOL: h2 or http/1.1, the protocol the page load must have used
//   (performance nextHopProtocol); whether the WebSocket itself went over an
//   extended CONNECT or an HTTP/1.1 upgrade is asserted by interop.sh from the
//   server's log.
//
// The index page opens a WebSocket of its own; this script opens another one and
// closes it with 4002, which interop.sh finds in the server log.
//
// The certificate is trusted by its SPKI hash only
// (--ignore-certificate-errors-spki-list), not by turning checks off.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [origin, spki, wantProtocol, ...extraArgs] = process.argv.slice(2);
const fail = (msg) => { console.log(`FAILED: ${msg}`); process.exit(1); };
const ok = (msg) => console.log(`ok: ${msg}`);
setTimeout(() => fail('timed out after 45 s'), 45000).unref();

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'interop-chromium-'));
let browser;
try {
  browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage',
      `--ignore-certificate-errors-spki-list=${spki}`,
      ...extraArgs,
    ],
  });
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('console', (m) => console.log(`page console: ${m.text()}`));
  const resp = await page.goto(`${origin}/`, { waitUntil: 'load' });
  if (!resp || resp.status() !== 200) fail(`index page answered ${resp && resp.status()}`);
  const proto = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  if (proto !== wantProtocol) fail(`page loaded over ${proto}, want ${wantProtocol}`);
  ok(`index page loaded over ${proto}`);

  const wsUrl = origin.replace(/^https:/, 'wss:') + '/echo';
  const result = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const events = [];
    const next = () => new Promise((resolve, reject) => {
      ws.onmessage = (e) => resolve(e.data);
      ws.onerror = () => reject(new Error('websocket error'));
      ws.onclose = (e) => reject(new Error(`closed early: ${e.code}`));
    });
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('websocket error before open'));
      ws.onclose = (e) => reject(new Error(`closed before open: ${e.code}`));
    });
    events.push(`open extensions=${ws.extensions}`);
    let p = next(); ws.send('hello from chromium ✓'); events.push(`text:${await p}`);
    p = next(); ws.send(new Uint8Array([1, 2, 3, 250]));
    events.push(`binary:${Array.from(new Uint8Array(await p)).join(',')}`);
    const big = 'x'.repeat(100000);
    p = next(); ws.send(big); events.push(`big:${(await p) === big}`);
    const closed = new Promise((resolve) => { ws.onclose = (e) => resolve(e); ws.onerror = null; });
    ws.close(4002, 'chromium bye');
    const e = await closed;
    events.push(`close:${e.code}:${e.wasClean}`);
    return events;
  }, wsUrl).catch((e) => fail(`in the page: ${e.message}`));
  console.log(`page events: ${JSON.stringify(result)}`);
  const want = [
    null, // extensions checked below
    'text:hello from chromium ✓',
    'binary:1,2,3,250',
    'big:true',
    'close:4002:true',
  ];
  if (!result[0].startsWith('open extensions=permessage-deflate')) fail(`permessage-deflate not negotiated: ${result[0]}`);
  ok(result[0]);
  for (let i = 1; i < want.length; i++) {
    if (result[i] !== want[i]) fail(`event ${i}: got ${result[i]}, want ${want[i]}`);
    ok(want[i]);
  }
  console.log('chromium: all checks passed');
} finally {
  if (browser) await browser.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
