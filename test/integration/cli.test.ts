// The `xapi serve` contract: flags, first-start password, clean SIGTERM, a port that cannot be
// bound, and a state directory from a newer store format.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { PASSWORD, freePort, loopbackAddress, makeStateDir, startXapi, stopXapi } from './harness.js';
import { jsonCall, login, type RpcFailure } from './client.js';

test('first start generates a root password, prints it once, and stores it hashed', { timeout: 60_000 }, async () => {
  const first = await startXapi({ env: { XAPI_ROOT_PASSWORD: undefined } });
  const m = /generated root password \(shown once, stored hashed\): (\S+)/.exec(first.output());
  assert.ok(m, first.output());
  const password = m[1]!;
  await login(first.url, password);
  await stopXapi(first, true);
  const { readFile } = await import('node:fs/promises');
  const stored = await readFile(join(first.stateDir, 'passwd'), 'utf8');
  assert.ok(!stored.includes(password));
  assert.match(stored, /scrypt\$/);
  const log = await readFile(join(first.stateDir, 'xapi.log'), 'utf8');
  assert.ok(!log.includes(password), 'the password reached the log');

  const second = await startXapi({ stateDir: first.stateDir, env: { XAPI_ROOT_PASSWORD: undefined } });
  assert.ok(!/generated root password/.test(second.output()));
  await login(second.url, password);
  await assert.rejects(login(second.url, 'wrong'), (e: RpcFailure) => e.error[0] === 'SESSION_AUTHENTICATION_FAILED');
  await stopXapi(second);
});

test('SIGTERM shuts down cleanly with exit code 0', { timeout: 30_000 }, async () => {
  const x = await startXapi();
  const s = await login(x.url, PASSWORD);
  await jsonCall(x.url, 'pool.get_all', [s]);
  x.kill('SIGTERM');
  assert.equal(await x.exited, 0);
  await rm(x.stateDir, { recursive: true, force: true });
});

test('a port that cannot be bound stops start-up, naming the flag', { timeout: 30_000 }, async () => {
  const address = loopbackAddress();
  const blocker = createServer();
  const port = await freePort(address);
  await new Promise<void>((resolve) => blocker.listen(port, address, resolve));
  try {
    const stateDir = await makeStateDir();
    await assert.rejects(startXapi({ address, httpPort: port, stateDir }), (e: Error) => {
      assert.match(e.message, /--http-port/);
      return true;
    });
    await assert.rejects(startXapi({ address, httpsPort: port, stateDir }), (e: Error) => {
      assert.match(e.message, /--https-port/);
      return true;
    });
    await rm(stateDir, { recursive: true, force: true });
  } finally {
    blocker.close();
  }
});

test('a state directory from a newer store format is refused, not misread', { timeout: 30_000 }, async () => {
  const x = await startXapi();
  await stopXapi(x, true);
  const db = new Database(join(x.stateDir, 'xapi.db'));
  db.prepare("UPDATE meta SET value = '999' WHERE key = 'store_format'").run();
  db.close();
  await assert.rejects(startXapi({ stateDir: x.stateDir }), (e: Error) => {
    assert.match(e.message, /newer xapi-ts/);
    return true;
  });
  await rm(x.stateDir, { recursive: true, force: true });
});
