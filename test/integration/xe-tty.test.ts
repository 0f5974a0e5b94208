// xe at a terminal: the real binary run inside tmux (a private tmux server, ended by its own
// socket name), drawing xapi's progress bar for a transfer given progress=true: the bar redrawn
// in place with `\r`, then the total time.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PASSWORD, ROOT, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { xe } from './xe-harness.js';
import { waitUntil } from '../wait.js';

const run = promisify(execFile);
const socket = `xe-test-${process.pid}`;
const tmux = (...args: string[]) => run('tmux', ['-L', socket, ...args]);

let host: XapiProcess;
let dir: string;

before(async () => {
  host = await startXapi();
  dir = await mkdtemp(join(tmpdir(), 'xe-tty-'));
});
after(async () => {
  await tmux('kill-server').catch(() => undefined);
  if (host) await stopXapi(host);
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('vdi-import progress=true draws the 80-column bar on the terminal and the total time', async () => {
  const sr = (await xe(host, 'sr-list', 'name-label=Local storage', '--minimal')).stdout.trim();
  const vdi = (await xe(host, 'vdi-create', `sr-uuid=${sr}`, 'name-label=tty', 'virtual-size=4MiB')).stdout.trim();
  const file = join(dir, 'disk.raw');
  await writeFile(file, randomBytes(4 * 2 ** 20));
  const command = [
    process.execPath,
    join(ROOT, 'bin/xe.js'),
    '-s',
    host.address,
    '-p',
    String(host.httpsPort),
    '-u',
    'root',
    '-pw',
    PASSWORD,
    'vdi-import',
    `uuid=${vdi}`,
    `filename=${file}`,
    'format=raw',
    'progress=true',
  ]
    .map((w) => `'${w}'`)
    .join(' ');
  await tmux('new-session', '-d', '-x', '100', '-y', '20', `${command}; echo "exit=$?"; sleep 600`);
  const screen = await waitUntil('the import finished on the terminal', async () => {
    const { stdout } = await tmux('capture-pane', '-p');
    return /exit=\d+/.test(stdout) ? stdout : undefined;
  });
  const lines = screen.split('\n');
  const bar = lines.find((l) => l.startsWith('['));
  assert.ok(bar, screen);
  // 55 columns of bar, its last over the first blank of the suffix, as xapi draws it.
  assert.match(bar, /^\[[-\\|/]\] #{54}> \(100% ETA 00:00:00\) ?$/);
  assert.match(lines[lines.indexOf(bar) + 1]!, /^Total time: [\d.]+(us|ms|s|min\d+s)$/);
  assert.ok(screen.includes('exit=0'), screen);
});
