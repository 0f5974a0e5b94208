// The call log's writer on a disk that refuses every write (/dev/full answers ENOSPC): lines are
// dropped, nothing throws, and flush and close still finish, so shutdown never waits on the log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LogFile } from '../../src/host/log-file.js';

const line = (i: number) => `${JSON.stringify({ level: 30, msg: 'call', i, pad: 'x'.repeat(200) })}\n`;

test('a log on a full disk drops its lines; flush and close still finish', async () => {
  const log = new LogFile('/dev/full');
  for (let i = 0; i < 1000; i++) assert.equal(log.write(line(i)), true);
  await new Promise<void>((resolve) => log.flush(() => resolve()));
  await log.close();
});

test('a log on a good disk keeps every line, in order, written at close', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-log-'));
  try {
    const log = new LogFile(join(dir, 'xapi.log'));
    for (let i = 0; i < 1000; i++) log.write(line(i));
    await log.close();
    const lines = (await readFile(join(dir, 'xapi.log'), 'utf8')).trimEnd().split('\n');
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { i: number }).i),
      Array.from({ length: 1000 }, (_, i) => i),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
