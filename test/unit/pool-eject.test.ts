// pool.eject in process: the pool operation around it (refusals, release), and the ejected
// host's reset finished at start from its marker whatever point a crash interrupted it at.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { memoryHost } from '../../src/host/memory-host.js';
import { EJECTED_MARKER, finishEject, markEjected } from '../../src/xapi/pool-eject.js';
import { gateOf } from '../../src/xapi/retry.js';
import { waitUntil } from '../wait.js';
import { apiClient } from './api-client.js';

test('pool.eject of the coordinator: INTERNAL_ERROR, the pool operation released', async () => {
  const h = await memoryHost({ rootPassword: 'pw' });
  try {
    const { ok, err } = apiClient(h);
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    assert.deepEqual(await err('pool.eject', s, h.host.hostRef), ['INTERNAL_ERROR', 'Xapi_pool.Cannot_eject_master']);
    const pool = await h.host.db.get('pool', h.host.poolRef);
    assert.deepEqual(pool.current_operations, {});
    assert.ok(pool.allowed_operations.includes('eject'));
    // An unknown host: the pool operation is taken, then the lookup refuses it.
    assert.deepEqual(await err('pool.eject', s, 'OpaqueRef:nope'), ['HANDLE_INVALID', 'host', 'OpaqueRef:nope']);
    assert.deepEqual((await h.host.db.get('pool', h.host.poolRef)).current_operations, {});
    assert.deepEqual(h.restartRequests, [], 'nothing restarts');
  } finally {
    await h.close();
  }
});

test('pool.eject during a pool secret rotation: POOL_SECRET_ROTATION_PENDING, before anything else', async () => {
  const h = await memoryHost({ rootPassword: 'pw' });
  try {
    const { ok, err } = apiClient(h);
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    await h.host.db.update('pool', h.host.poolRef, { is_psr_pending: true });
    assert.deepEqual(await err('pool.eject', s, h.host.hostRef), ['POOL_SECRET_ROTATION_PENDING']);
    await h.host.db.update('pool', h.host.poolRef, { is_psr_pending: false, current_operations: { other: 'ha_enable' } });
    // HA's operation makes eject wait (OTHER_OPERATION_IN_PROGRESS is retried), until it ends.
    const task = (await ok('Async.pool.eject', s, h.host.hostRef)) as string;
    assert.equal((await h.host.db.get('task', task)).status, 'pending');
    await h.host.db.update('pool', h.host.poolRef, { current_operations: {} });
    gateOf(h.host).broadcast();
    const done = await waitUntil('the eject task over', async () => {
      const t = await h.host.db.get('task', task);
      return t.status !== 'pending' && t;
    });
    assert.deepEqual(done.error_info, ['INTERNAL_ERROR', 'Xapi_pool.Cannot_eject_master']);
    assert.deepEqual((await h.host.db.get('pool', h.host.poolRef)).current_operations, {});
  } finally {
    await h.close();
  }
});

async function stateDir(files: string[], role: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-ejected-'));
  for (const f of files) await writeFile(join(dir, f), 'x');
  await writeFile(join(dir, 'pool.conf'), role);
  await mkdir(join(dir, 'storage', 'sr'), { recursive: true });
  return dir;
}

test('an ejected host finishes its reset at start, from its marker, once', async () => {
  const dir = await stateDir(['ptoken', 'xapi.db', 'inventory', 'passwd', 'xapi-ssl.pem'], 'slave:127.0.0.2');
  try {
    assert.equal(await finishEject(dir), false, 'no marker: a member stays a member');
    assert.equal(await readFile(join(dir, 'pool.conf'), 'utf8'), 'slave:127.0.0.2');
    assert.ok((await readdir(dir)).includes('ptoken'));

    await markEjected(dir);
    assert.equal(await finishEject(dir), true);
    assert.equal(await readFile(join(dir, 'pool.conf'), 'utf8'), 'master');
    assert.deepEqual((await readdir(dir)).sort(), ['inventory', 'passwd', 'pool.conf', 'xapi-ssl.pem']);
    assert.equal(await finishEject(dir), false, 'done once');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a reset interrupted half way (secret gone, still a member in pool.conf) is finished at the next start', async () => {
  // The state a crash during the reset leaves: some files gone, pool.conf not yet rewritten.
  const dir = await stateDir(['xapi.db', 'inventory', 'passwd'], 'slave:127.0.0.2');
  try {
    await writeFile(join(dir, EJECTED_MARKER), 'ejected from its pool\n');
    assert.equal(await finishEject(dir), true);
    assert.equal(await readFile(join(dir, 'pool.conf'), 'utf8'), 'master');
    assert.deepEqual((await readdir(dir)).sort(), ['inventory', 'passwd', 'pool.conf']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
