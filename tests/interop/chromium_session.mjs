// What the Chromium scripts of the fallback sessions share: the in-page
// exchange over `SwitchyardSocket` and the launch of the system Chromium
// (playwright-core over its DevTools pipe, no browser download).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// In the page: open a socket, send `n` messages (text and binary in turn)
// while receiving their echoes, optionally cut every connection once after
// `cutAt` echoes, check order and content, close with 4000.
export async function exchange({ url, protocols, options, n, cutAt, control }) {
  const s = new SwitchyardSocket(url, protocols, options);
  s.binaryType = 'arraybuffer';
  await new Promise((resolve, reject) => {
    s.onopen = resolve;
    s.onclose = (e) => reject(new Error(`closed before open: ${e.code} ${e.reason}`));
  });
  const got = [];
  const want = [];
  const all = new Promise((resolve, reject) => {
    s.onmessage = (e) => {
      got.push(typeof e.data === 'string' ? e.data : `bin:${new Uint8Array(e.data).join(',')}`);
      if (got.length === cutAt) fetch(`${control}/__cut`, { mode: 'no-cors' });
      if (got.length === n) resolve();
    };
    s.onclose = (e) => reject(new Error(`closed after ${got.length} messages: ${e.code} ${e.reason}`));
  });
  for (let i = 0; i < n; i++) {
    if (i % 2) {
      const b = new Uint8Array([i % 256, (i * 7) % 256, 0, 255]);
      s.send(b);
      want.push(`bin:${b.join(',')}`);
    } else {
      const t = `message ${i} ✓ ${'x'.repeat(i % 40)}`;
      s.send(t);
      want.push(t);
    }
  }
  await all;
  const closed = new Promise((resolve) => { s.onclose = (e) => resolve(`${e.code}:${e.wasClean}`); });
  s.close(4000, 'bye');
  return {
    transport: s.transport,
    protocol: s.protocol,
    received: got.length,
    firstWrong: got.findIndex((g, i) => g !== want[i]),
    close: await closed,
  };
}

// Chromium headless on a fresh profile; `close()` ends it and removes the
// profile.
export async function launch() {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'fallback-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  }).catch((e) => { fs.rmSync(profile, { recursive: true, force: true }); throw e; });
  return {
    browser,
    close: async () => {
      await browser.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}
