// bin/xapi.js's first line runs a host the way src/cli/host-process.ts says, so `npx xapi serve`
// gets the same process settings as the hosts the harness, the benchmarks and the launcher start.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HOST_GLIBC_TUNABLES, HOST_NODE_FLAGS, hostEnv } from '../../src/cli/host-process.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const bin = join(root, 'bin/xapi.js');

test("bin/xapi.js's first line sets the host process's settings", () => {
  const first = readFileSync(bin, 'utf8').split('\n')[0];
  assert.equal(first, `#!/usr/bin/env -S GLIBC_TUNABLES=${HOST_GLIBC_TUNABLES} node ${HOST_NODE_FLAGS.join(' ')}`);
});

test('the first line runs on this system and the settings reach node', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-shebang-'));
  try {
    // The same first line over a script that reports what node got.
    const script = join(dir, 'probe.mjs');
    const first = readFileSync(bin, 'utf8').split('\n')[0];
    writeFileSync(script, `${first}\nconsole.log(JSON.stringify({ tunables: process.env.GLIBC_TUNABLES, flags: process.execArgv }));\n`, {
      mode: 0o755,
    });
    const got = JSON.parse(execFileSync(script, { encoding: 'utf8', env: { PATH: process.env.PATH } })) as {
      tunables: string;
      flags: string[];
    };
    assert.equal(got.tunables, HOST_GLIBC_TUNABLES);
    assert.deepEqual(got.flags, HOST_NODE_FLAGS);
    // and bin/xapi.js itself starts through it
    const help = spawnSync(bin, ['help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stderr, /^usage: xapi serve/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('hostEnv adds the tunables to those already set', () => {
  assert.equal(hostEnv({}).GLIBC_TUNABLES, HOST_GLIBC_TUNABLES);
  assert.equal(hostEnv({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }).GLIBC_TUNABLES, `glibc.malloc.arena_max=2:${HOST_GLIBC_TUNABLES}`);
  assert.equal(hostEnv({ A: 'b' }).A, 'b');
});
