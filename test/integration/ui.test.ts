// The pool's web page in a real browser: Debian's chromium, headless, driven by playwright-core
// (no browser download). Log in through the form, see every VM's name and the host, start a VM
// with its button, open its console (noVNC over the WebSocket form of /console) and see the
// canvas drawn with the guest's text, type into it, see the charts. Screenshots go to
// test-artifacts/ui/ (git-ignored) for a person to look at.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import { vmRecord } from '../vm-record.js';
import { jsonCall, login } from './client.js';
import { PASSWORD, ROOT, startXapi, stopXapi, type XapiProcess } from './harness.js';

const MiB = 1024 * 1024;
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(ROOT, 'test-artifacts', 'ui');

let x: XapiProcess;
let browser: Browser;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  x = await startXapi({ args: ['--sim-boot-ms', '20', '--rrd-sample-interval-ms', '200'] });
  // root needs --no-sandbox (CI runs as root)
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});
after(async () => {
  await browser?.close();
  await stopXapi(x);
});

/** How many of the canvas's pixels are bright (the guest's text), read in the page. */
function brightPixels(page: Page): Promise<number> {
  return page.evaluate(() => {
    const canvas = document.querySelector('.console-screen canvas') as HTMLCanvasElement | null;
    if (!canvas || canvas.width === 0) return 0;
    const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i]! > 0x80 && data[i + 1]! > 0x80 && data[i + 2]! > 0x80) n++;
    return n;
  });
}

test('log in, see every VM, start one, open its console and see it drawn', async () => {
  const session = await login(x.url, PASSWORD);
  const names = ['Alpha web', 'Bravo db', 'Charlie cache'];
  const refs: string[] = [];
  for (const name of names) refs.push((await jsonCall(x.url, 'VM.create', [session, vmRecord(name, { memory: 128 * MiB })])) as string);
  const uuid = (await jsonCall(x.url, 'VM.get_uuid', [session, refs[1]])) as string;

  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  try {
    await page.goto(`${x.url}/ui/`);
    await page.locator('input[name="username"]').fill('root');
    await page.locator('input[name="password"]').fill(PASSWORD);
    await page.screenshot({ path: join(SHOTS, '1-login.png') });
    await page.locator('button[type="submit"]').click();

    for (const name of names) await page.getByText(name, { exact: true }).waitFor();
    const hostRow = page.locator('tr[data-host]');
    assert.equal(await hostRow.count(), 1);
    await page.locator('tr[data-host] .host-state', { hasText: 'live' }).waitFor();
    await page.screenshot({ path: join(SHOTS, '2-pool.png') });

    const row = page.locator(`tr[data-vm="${uuid}"]`);
    await row.getByRole('button', { name: 'Start' }).click();
    await row.locator('.power-state', { hasText: /^Running$/ }).waitFor();
    assert.equal(await jsonCall(x.url, 'VM.get_power_state', [session, refs[1]]), 'Running');

    await row.getByRole('button', { name: /Console/ }).click();
    await page.locator('.console-status', { hasText: '(connected)' }).waitFor();
    await page.locator('.console-screen canvas').waitFor();
    // the guest's text drawn: bright pixels on the dark screen, and more once the prompt is there
    await page.waitForFunction(() => {
      const canvas = document.querySelector('.console-screen canvas') as HTMLCanvasElement | null;
      if (!canvas || canvas.width === 0) return false;
      const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < data.length; i += 4) if (data[i]! > 0x80 && data[i + 1]! > 0x80 && data[i + 2]! > 0x80) return true;
      return false;
    });
    const before = await brightPixels(page);
    assert.ok(before > 0);
    await page.locator('.console-screen canvas').click();
    await page.keyboard.type('root');
    await page.waitForFunction(async (n) => {
      const canvas = document.querySelector('.console-screen canvas') as HTMLCanvasElement;
      const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
      let bright = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i]! > 0x80 && data[i + 1]! > 0x80 && data[i + 2]! > 0x80) bright++;
      return bright > n;
    }, before);
    // the charts, once the host's RRD has a consolidated value
    await page.waitForFunction(() => [...document.querySelectorAll<HTMLElement>('.chart')].some((c) => Number(c.dataset.points) > 0));
    await page.screenshot({ path: join(SHOTS, '3-console.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});
