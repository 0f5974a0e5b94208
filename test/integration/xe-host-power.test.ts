// host-evacuate, host-reboot and host-shutdown through the real `xe` against a pool of two real
// `xapi serve` processes: running VMs moved off a host (they run on the other), the refusals with
// their parameters (NO_HOSTS_AVAILABLE per VM, HOST_NOT_DISABLED), a member and the coordinator
// rebooted (each back in its role, enabled, its VMs moved away or shut down first), and a member
// shut down (its process gone, the coordinator seeing it not live).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jsonCall, login, xapiFailure } from './client.js';
import { PASSWORD, type XapiProcess } from './harness.js';
import { loginWhenServing, runningVmOn, startPool } from './pool-harness.js';
import { type XeResult, xeRaw } from './xe-harness.js';
import { waitUntil } from '../wait.js';

const on = (h: XapiProcess, ...args: string[]): Promise<XeResult> =>
  xeRaw(['-s', h.address, '-p', String(h.httpsPort), '-u', 'root', '-pw', PASSWORD, ...args]);

const ok = (r: XeResult, stdout = '') => assert.deepEqual([r.code, r.stdout, r.stderr], [0, stdout, '']);

test('xe host-evacuate, host-reboot, host-shutdown on a pool of two', { timeout: 600_000 }, async () => {
  const pool = await startPool(2);
  const [a, b] = pool.hosts as [XapiProcess, XapiProcess];
  const [aRef, bRef] = pool.refs as [string, string];
  const call = async (method: string, ...params: unknown[]) => jsonCall(a.url, method, [await loginWhenServing(a.url), ...params]);
  const aUuid = String(await call('host.get_uuid', aRef));
  const bUuid = String(await call('host.get_uuid', bRef));
  const residentOn = async (vm: string) => String(await call('VM.get_resident_on', vm));
  /** b a live, enabled member of a again (after a restart of either). */
  const backInPool = async () =>
    waitUntil(
      'both hosts enabled and live, b a member',
      async () => {
        try {
          const f = await xapiFailure(login(b.url, PASSWORD)).catch(() => []);
          if (f[0] !== 'HOST_IS_SLAVE' || f[1] !== a.address) return false;
          for (const ref of pool.refs) {
            const h = (await call('host.get_record', ref)) as { enabled: boolean; metrics: string };
            if (!h.enabled || (await call('host_metrics.get_live', h.metrics)) !== true) return false;
          }
          return true;
        } catch (e) {
          if (e instanceof TypeError && e.message === 'fetch failed') return false; // restarting
          throw e;
        }
      },
      { timeoutMs: 120_000, intervalMs: 200 },
    );
  try {
    // Two running VMs on the member: evacuated, they run on the coordinator.
    const vm1 = await runningVmOn(a, pool.session, b, 'evac-1');
    const vm2 = await runningVmOn(a, pool.session, b, 'evac-2');
    ok(await on(a, 'host-evacuate', `uuid=${bUuid}`));
    for (const vm of [vm1, vm2]) {
      assert.equal(await residentOn(vm), aRef);
      assert.equal(await call('VM.get_power_state', vm), 'Running');
    }
    assert.deepEqual(await call('host.get_current_operations', bRef), {});

    // Nowhere to go: the only other host is disabled. Each VM is refused, the first raised.
    ok(await on(a, 'host-disable', `uuid=${bUuid}`));
    const vmUuid = String(await call('VM.get_uuid', vm1));
    const refused = await on(a, 'host-evacuate', `uuid=${aUuid}`);
    assert.equal(refused.code, 1);
    assert.equal(refused.stdout, '');
    assert.match(
      refused.stderr,
      /^There were no servers available to complete the specified operation\.\n<extra>: [0-9a-f-]{36} \(evac-[12]\)\n$/,
    );
    const why = (await call('host.get_vms_which_prevent_evacuation', aRef)) as Record<string, string[]>;
    assert.deepEqual(why, { [vm1]: ['NO_HOSTS_AVAILABLE', vm1], [vm2]: ['NO_HOSTS_AVAILABLE', vm2] });
    const listed = await on(a, 'host-get-vms-which-prevent-evacuation', `uuid=${aUuid}`);
    assert.equal(listed.code, 0);
    assert.ok(
      listed.stdout.includes(
        `uuid ( RO)          : ${vmUuid}\n    name-label ( RW): evac-1\n        reason ( RO): NO_HOSTS_AVAILABLE,${vm1}\n\n`,
      ),
      listed.stdout,
    );
    const asserted = xapiFailure(call('host.assert_can_evacuate', aRef));
    const [code, errors] = await asserted;
    assert.equal(code, 'CANNOT_EVACUATE_HOST');
    assert.deepEqual(new Set(errors!.split('|')), new Set([`NO_HOSTS_AVAILABLE,${vm1}`, `NO_HOSTS_AVAILABLE,${vm2}`]));

    // Reboot and shutdown need the host disabled.
    const notDisabled = await on(a, 'host-reboot', `uuid=${aUuid}`);
    assert.deepEqual(
      [notDisabled.code, notDisabled.stdout, notDisabled.stderr],
      [1, '', 'This operation cannot be performed because the host is not disabled. Please disable the host and then try again.\n'],
    );
    assert.equal((await on(a, 'host-shutdown', `uuid=${aUuid}`)).code, 1);

    // The member rebooted with a VM on it: the VM is moved to the coordinator first, then the
    // member's process restarts the host, which comes back a member, enabled.
    ok(await on(a, 'host-enable', `uuid=${bUuid}`));
    const vm3 = await runningVmOn(a, pool.session, b, 'evac-3');
    ok(await on(a, 'host-disable', `uuid=${bUuid}`));
    ok(await on(a, 'host-reboot', `uuid=${bUuid}`));
    await waitUntil('the member restarting', () => b.output().includes('restarting: host.reboot'), { timeoutMs: 60_000 });
    await backInPool();
    assert.equal(await residentOn(vm3), aRef);
    assert.equal(await call('VM.get_power_state', vm3), 'Running');

    // The coordinator rebooted: its VMs go to the member, and it comes back coordinator, enabled.
    ok(await on(a, 'host-disable', `uuid=${aUuid}`));
    ok(await on(a, 'host-reboot', `uuid=${aUuid}`));
    await waitUntil('the coordinator restarting', () => a.output().includes('restarting: host.reboot'), { timeoutMs: 60_000 });
    await backInPool();
    for (const vm of [vm1, vm2, vm3]) {
      assert.equal(await residentOn(vm), bRef);
      assert.equal(await call('VM.get_power_state', vm), 'Running');
    }
    assert.equal((await on(a, 'pool-list', 'params=master', '--minimal')).stdout, `${aUuid}\n`);

    // The member shut down: its VMs cannot leave (the coordinator is disabled), so they are shut
    // down; its process exits and the coordinator sees it not live.
    ok(await on(a, 'host-disable', `uuid=${aUuid}`));
    ok(await on(a, 'host-disable', `uuid=${bUuid}`));
    ok(await on(a, 'host-shutdown', `uuid=${bUuid}`));
    assert.equal(await b.exited, 0);
    const metrics = String(await call('host.get_metrics', bRef));
    assert.equal(await call('host_metrics.get_live', metrics), false);
    for (const vm of [vm1, vm2, vm3]) assert.equal(await call('VM.get_power_state', vm), 'Halted');
  } finally {
    await pool.stop();
  }
});
