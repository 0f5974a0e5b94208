// `xapi pool --hosts 3`: hosts 2 and 3 join host 1 through pool.join, the coordinator lists the
// three as live, members answer HOST_IS_SLAVE naming it; SIGTERM stops all three; started again
// on the same state the pool comes back without joining anew.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PASSWORD } from './harness.js';
import { jsonCall, login, type RpcFailure } from './client.js';
import { isRunning, startPool, stopPool } from './launcher-harness.js';

test('xapi pool --hosts 3 forms a pool of three live hosts, and comes back in the same roles', { timeout: 240_000 }, async () => {
  const p = await startPool({ hosts: 3, env: { XAPI_ROOT_PASSWORD: PASSWORD }, timeoutMs: 180_000 });
  const [coordinator, ...members] = p.addresses as [string, string, string];
  try {
    assert.match(p.output(), new RegExp(`^ {2}host1 {2}${coordinator.replaceAll('.', '\\.')} {2}coordinator `, 'm'));
    for (const [i, m] of members.entries()) {
      assert.match(p.output(), new RegExp(`^ {2}host${i + 2} {2}${m.replaceAll('.', '\\.')} {2}member `, 'm'));
      assert.match(
        p.output(),
        new RegExp(`host${i + 2} \\(${m.replaceAll('.', '\\.')}\\) joined the pool of ${coordinator.replaceAll('.', '\\.')}`),
      );
    }
    const url = `http://${coordinator}:${p.httpPort}`;
    const s = await login(url, PASSWORD);
    const hosts = (await jsonCall(url, 'host.get_all_records', [s])) as Record<string, { address: string; metrics: string }>;
    assert.deepEqual(
      Object.values(hosts)
        .map((h) => h.address)
        .sort(),
      [...p.addresses].sort(),
    );
    for (const h of Object.values(hosts)) assert.equal(await jsonCall(url, 'host_metrics.get_live', [s, h.metrics]), true);
    for (const m of members) {
      await assert.rejects(login(`http://${m}:${p.httpPort}`, PASSWORD), (e: RpcFailure) => {
        assert.deepEqual(e.error, ['HOST_IS_SLAVE', coordinator]);
        return true;
      });
    }
    p.proc.kill('SIGTERM');
    assert.equal(await p.exited, 0);
    assert.deepEqual(p.hostPids.filter(isRunning), []);
  } finally {
    await stopPool(p, true);
  }
  // Started again on the same state: the members are members already, so nobody joins, and the
  // coordinator lists the three live again.
  const again = await startPool({ hosts: 3, env: { XAPI_ROOT_PASSWORD: PASSWORD }, timeoutMs: 180_000, again: p });
  try {
    assert.doesNotMatch(again.output(), /joined the pool/);
    assert.match(again.output(), new RegExp(`^ {2}host1 {2}${coordinator.replaceAll('.', '\\.')} {2}coordinator `, 'm'));
    const url = `http://${coordinator}:${again.httpPort}`;
    const s = await login(url, PASSWORD);
    assert.equal(((await jsonCall(url, 'host.get_all', [s])) as string[]).length, 3);
  } finally {
    await stopPool(again);
  }
});
