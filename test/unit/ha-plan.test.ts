// The HA planner against a host's database (src/xapi/ha-plan.ts, src/xapi/ha.ts): a VM made
// protected may not break an existing failover plan (HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN)
// unless overcommit is allowed; the pool's plan fields follow; a VM started with priority
// "restart" is protected and a clean shutdown unprotects it; a VM on a local disk is not agile.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct } from '../../src/rpc/rpc.js';
import { apiClient, struct } from './api-client.js';
import { vmStruct } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 ** 2;

test('HA planner: protecting a running VM with no room left breaks the plan; overcommit allowed lets it', async () => {
  const h = await memoryHost({ rootPassword: 'pw' });
  h.xenops.start();
  try {
    const { ok, err } = apiClient(h);
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    const [pool] = (await ok('pool.get_all', s)) as [string];
    const vm = (await ok('VM.create', s, vmStruct('protected', { memory: 256 * MiB }))) as string;
    await ok('VM.start', s, vm, false, false);
    // HA on as enable_ha leaves it, with one failure to tolerate planned for (one host: only
    // while no VM is protected).
    await h.host.db.update('pool', pool, { ha_enabled: true, ha_host_failures_to_tolerate: 1, ha_plan_exists_for: 1 });
    assert.deepEqual(await err('VM.set_ha_restart_priority', s, vm, 'restart'), ['HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN']);
    assert.equal(await ok('VM.get_ha_restart_priority', s, vm), '');
    // best-effort VMs are not planned for
    await ok('VM.set_ha_restart_priority', s, vm, 'best-effort');
    assert.equal(await ok('VM.get_ha_always_run', s, vm), false);
    assert.equal(await ok('pool.ha_compute_max_host_failures_to_tolerate', s), 1n);

    await ok('pool.set_ha_allow_overcommit', s, pool, true);
    await ok('VM.set_ha_restart_priority', s, vm, 'restart');
    assert.equal(await ok('VM.get_ha_always_run', s, vm), true, 'running: protected at once');
    assert.equal(await ok('pool.ha_failover_plan_exists', s, 1n), false);
    assert.equal(await ok('pool.ha_failover_plan_exists', s, 0n), true);
    assert.equal(await ok('pool.ha_compute_max_host_failures_to_tolerate', s), 0n);
    assert.equal(await ok('pool.get_ha_overcommitted', s, pool), true);
    assert.equal(await ok('pool.get_ha_plan_exists_for', s, pool), 0n);
    // what if it were not protected: one failure again
    assert.equal(await ok('pool.ha_compute_hypothetical_max_host_failures_to_tolerate', s, struct({ [vm]: 'best-effort' })), 1n);

    // a clean shutdown (once the guest agent reports) unprotects it; a start protects it again
    await waitUntil('the guest agent', async () => (await ok('VM.get_guest_metrics', s, vm)) !== 'OpaqueRef:NULL');
    await ok('VM.clean_shutdown', s, vm);
    assert.equal(await ok('VM.get_ha_always_run', s, vm), false);
    await ok('VM.start', s, vm, false, false);
    assert.equal(await ok('VM.get_ha_always_run', s, vm), true);
    await ok('VM.hard_shutdown', s, vm);
    assert.equal(await ok('VM.get_ha_always_run', s, vm), false);
  } finally {
    await h.close();
  }
});

test('HA planner: the failover plan packs what fits and says why the rest does not (not agile, no room)', async () => {
  const h = await memoryHost({ rootPassword: 'pw' });
  try {
    const { ok } = apiClient(h);
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    const [pool] = (await ok('pool.get_all', s)) as [string];
    const sr = (await ok('pool.get_default_SR', s, pool)) as string;
    // too big for any host: left out of the plan, which then says why
    const vm = (await ok('VM.create', s, vmStruct('local disk', { memory: 4 * 1024 * 1024 * MiB }))) as string;
    const vdi = (await ok(
      'VDI.create',
      s,
      struct({
        name_label: 'disk',
        name_description: '',
        SR: sr,
        virtual_size: BigInt(4 * MiB),
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: newStruct(),
        xenstore_data: newStruct(),
        sm_config: newStruct(),
        tags: [],
      }),
    )) as string;
    await ok(
      'VBD.create',
      s,
      struct({
        VM: vm,
        VDI: vdi,
        userdevice: '0',
        bootable: true,
        mode: 'RW',
        type: 'Disk',
        unpluggable: false,
        empty: false,
        other_config: newStruct(),
        qos_algorithm_type: '',
        qos_algorithm_params: newStruct(),
      }),
    );
    const diskless = (await ok('VM.create', s, vmStruct('diskless', { memory: 256 * MiB }))) as string;
    const huge = (await ok('VM.create', s, vmStruct('huge', { memory: 4 * 1024 * 1024 * MiB }))) as string;
    const plan = (await ok('pool.ha_compute_vm_failover_plan', s, [], [vm, diskless, huge])) as Record<string, Record<string, string>>;
    assert.deepEqual({ ...plan[vm] }, { error_code: 'HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED' });
    assert.deepEqual({ ...plan[huge] }, { error_code: 'HOST_NOT_ENOUGH_FREE_MEMORY' });
    // the diskless VM is agile and fits on the one live host
    assert.deepEqual({ ...plan[diskless] }, { host: h.host.hostRef });
  } finally {
    await h.close();
  }
});
