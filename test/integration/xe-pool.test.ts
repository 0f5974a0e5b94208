// The real `xe` binary driving a pool of two real `xapi serve` processes: pool-join run on the
// joining host, a member refusing ordinary commands as xapi's /cli does over TCP (HOST_IS_SLAVE,
// naming the coordinator), the Neverforward commands served on any host, and
// pool-designate-new-master moving the coordinator.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jsonCall, login, xapiFailure } from './client.js';
import { PASSWORD, stopHosts, type XapiProcess } from './harness.js';
import { loginWhenServing, startHosts } from './pool-harness.js';
import { type XeResult, xeRaw } from './xe-harness.js';
import { waitUntil } from '../wait.js';

const on = (h: XapiProcess, ...args: string[]): Promise<XeResult> =>
  xeRaw(['-s', h.address, '-p', String(h.httpsPort), '-u', 'root', '-pw', PASSWORD, ...args]);

/** `member` answers logins with HOST_IS_SLAVE naming `c`, and `c` sees it enabled and live. */
async function waitMember(c: XapiProcess, member: XapiProcess): Promise<void> {
  await waitUntil(
    `${member.address} a live member of ${c.address}`,
    async () => {
      try {
        // Until it restarts, the member still logs in as its own coordinator.
        const f = await xapiFailure(login(member.url, PASSWORD)).catch((e: Error) =>
          e.message.startsWith('expected a XenAPI failure') ? [] : Promise.reject(e),
        );
        if (f[0] !== 'HOST_IS_SLAVE' || f[1] !== c.address) return false;
        const s = await loginWhenServing(c.url);
        const hosts = (await jsonCall(c.url, 'host.get_all_records', [s])) as Record<string, Record<string, unknown>>;
        const row = Object.values(hosts).find((h) => h.address === member.address);
        if (!row?.enabled) return false;
        return (await jsonCall(c.url, 'host_metrics.get_live', [s, row.metrics])) === true;
      } catch (e) {
        // A host restarting (joining, or changing role) refuses connections for a moment.
        if (e instanceof TypeError && e.message === 'fetch failed') return false;
        throw e;
      }
    },
    { timeoutMs: 90_000, intervalMs: 200 },
  );
}

test('xe on a pool of two: pool-join, HOST_IS_SLAVE from the member, designate-new-master', { timeout: 300_000 }, async () => {
  const hosts = await startHosts(2);
  const [a, b] = hosts as [XapiProcess, XapiProcess];
  try {
    const joined = await on(b, 'pool-join', `master-address=${a.address}`, 'master-username=root', `master-password=${PASSWORD}`);
    assert.deepEqual(
      [joined.code, joined.stdout, joined.stderr],
      [0, 'Host agent will restart and attempt to join pool in 10. seconds...\n', ''],
    );
    await waitMember(a, b);

    const uuids = (await on(a, 'host-list', '--minimal')).stdout.trim().split(',');
    assert.equal(uuids.length, 2);
    const refused = await on(b, 'vm-list');
    assert.deepEqual(
      [refused.code, refused.stdout, refused.stderr],
      [
        1,
        '',
        `You cannot make regular API calls directly on a supporter. Please pass API calls via the coordinator host.\nMaster IP address: ${a.address}\n`,
      ],
    );
    // help needs no login, anywhere.
    assert.equal((await on(b, 'help')).code, 0);
    // Neverforward commands run on the host they are sent to, with a local session.
    const already = await on(a, 'pool-emergency-transition-to-master');
    assert.deepEqual([already.code, already.stdout], [0, "Host agent is already master. Use '--force' to execute the operation anyway.\n"]);

    const bUuid = (await on(a, 'host-list', `address=${b.address}`, '--minimal')).stdout.trim();
    const moved = await on(a, 'pool-designate-new-master', `host-uuid=${bUuid}`);
    assert.deepEqual([moved.code, moved.stdout, moved.stderr], [0, '', '']);
    await waitMember(b, a);
    const master = await on(b, 'pool-list', 'params=master', '--minimal');
    assert.deepEqual([master.code, master.stdout], [0, `${bUuid}\n`]);
    const nowRefused = await on(a, 'host-list');
    assert.equal(nowRefused.stderr.split('\n')[1], `Master IP address: ${b.address}`);
  } finally {
    await stopHosts(hosts);
  }
});
