// VM lifecycle through the API against the simulator backend, in-process: states, errors with
// xapi's parameters, allowed/current operations, memory checks and device hotplug.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct, type Rpc, type RpcStruct } from '../../src/rpc/rpc.js';
import { apiClient, struct } from './api-client.js';
import { waitUntil } from '../wait.js';
import { vmStruct } from '../vm-record.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** The task's record once it is no longer pending. */
async function waitTask(ok: (m: string, ...p: Rpc[]) => Promise<Rpc>, s: string, task: string): Promise<RpcStruct> {
  return waitUntil(`task ${task} to finish`, async () => {
    const rec = (await ok('task.get_record', s, task)) as RpcStruct;
    return rec.status !== 'pending' && rec;
  });
}

async function setup(opts: { bootTimeMs?: number; shutdownTimeMs?: number; agentDelayMs?: number } = {}) {
  const h = await memoryHost({ rootPassword: 'pw', ...opts });
  h.xenops.start();
  const { call, ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const [network] = (await ok('network.get_by_name_label', s, 'Pool-wide network associated with eth0')) as string[];
  const makeVm = async (name: string, memory = 1 * GiB, extra: Record<string, Rpc> = {}) => {
    const vm = (await ok('VM.create', s, vmStruct(name, { memory, vcpus: 2 }, extra))) as string;
    await ok(
      'VIF.create',
      s,
      struct({
        device: '0',
        network: network!,
        VM: vm,
        MAC: '',
        MTU: 1500n,
        other_config: newStruct(),
        qos_algorithm_type: '',
        qos_algorithm_params: newStruct(),
      }),
    );
    return vm;
  };
  const rec = async (vm: string) => (await ok('VM.get_record', s, vm)) as RpcStruct;
  /** Until the guest agent has reported (an HVM guest needs its features for clean operations). */
  const waitAgent = (vm: string) => waitUntil('the guest agent to report', async () => (await rec(vm)).guest_metrics !== 'OpaqueRef:NULL');
  return { ...h, call, ok, err, s, makeVm, rec, waitAgent, network: network! };
}

test('a whole life: start, pause, unpause, suspend, resume, reboot, shutdown, destroy', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('life');
    let r = await t.rec(vm);
    assert.equal(r.power_state, 'Halted');
    assert.ok((r.allowed_operations as string[]).includes('start'));
    assert.ok(!(r.allowed_operations as string[]).includes('pause'));

    await t.ok('VM.start', t.s, vm, false, false);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Running');
    assert.equal(r.resident_on, t.host.hostRef);
    assert.ok(Number(r.domid) > 0);
    assert.deepEqual(r.current_operations, newStruct());
    const metrics = (await t.ok('VM_metrics.get_record', t.s, r.metrics as string)) as RpcStruct;
    assert.equal(metrics.memory_actual, BigInt(GiB));
    assert.equal(metrics.VCPUs_number, 2n);
    const [vif] = r.VIFs as string[];
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif!), true);
    // the simulated guest agent reports in; with its features, clean operations are allowed
    await t.waitAgent(vm);
    assert.ok(((await t.rec(vm)).allowed_operations as string[]).includes('clean_shutdown'));
    const gm = (await t.ok('VM_guest_metrics.get_record', t.s, (await t.rec(vm)).guest_metrics as string)) as RpcStruct;
    assert.ok(Object.keys(gm.os_version as object).length > 0);
    assert.ok('0/ip' in (gm.networks as object));

    await t.ok('VM.pause', t.s, vm);
    assert.equal((await t.rec(vm)).power_state, 'Paused');
    await t.ok('VM.unpause', t.s, vm);
    assert.equal((await t.rec(vm)).power_state, 'Running');

    await t.ok('VM.suspend', t.s, vm);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Suspended');
    assert.equal(r.resident_on, 'OpaqueRef:NULL');
    // the memory image lives in a "Suspend image" VDI on the suspend SR, a real VHD file
    const suspendVdi = r.suspend_VDI as string;
    const image = (await t.ok('VDI.get_record', t.s, suspendVdi)) as RpcStruct;
    assert.equal(image.type, 'suspend');
    assert.equal(image.name_label, 'Suspend image');
    assert.ok(Number(image.virtual_size) >= GiB);
    const sr = (await t.ok('SR.get_record', t.s, image.SR as string)) as RpcStruct;
    assert.ok(existsSync(`${t.host.config.stateDir}/storage/${sr.uuid as string}/${image.location as string}.vhd`));
    await t.ok('VM.resume', t.s, vm, false, false);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Running');
    assert.equal(r.suspend_VDI, 'OpaqueRef:NULL');
    assert.deepEqual(await t.err('VDI.get_record', t.s, suspendVdi), ['HANDLE_INVALID', 'VDI', suspendVdi]);

    const domid = (await t.rec(vm)).domid;
    await t.waitAgent(vm);
    await t.ok('VM.clean_reboot', t.s, vm);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Running');
    assert.notEqual(r.domid, domid);
    await t.ok('VM.hard_reboot', t.s, vm);

    await t.waitAgent(vm);
    await t.ok('VM.clean_shutdown', t.s, vm);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Halted');
    assert.equal(r.domid, -1n);
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif!), false);
    await t.ok('VM.destroy', t.s, vm);
    assert.deepEqual(await t.err('VM.get_record', t.s, vm), ['HANDLE_INVALID', 'VM', vm]);
  } finally {
    await t.close();
  }
});

test('a refresh that finds the VM as the database has it writes nothing; a stale row passed to it is read again', async () => {
  // the update loop is not started: only the refreshes called here run (and no guest agent reports)
  const h = await memoryHost({ rootPassword: 'pw', guestAgent: false });
  try {
    const { ok } = apiClient(h);
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    const vm = (await ok('VM.create', s, vmStruct('quiet', { memory: 1 * GiB, vcpus: 2 }))) as string;
    await ok('VM.start', s, vm, false, false);
    const row = await h.host.db.get('VM', vm);
    assert.equal(row.power_state, 'Running');
    assert.ok(row.consoles.length > 0);
    // allowed_operations is worked out from the pool's row among others: count its reads
    const db = h.db as unknown as { all: (cls: string) => Promise<unknown> };
    const all = db.all.bind(db);
    let poolReads = 0;
    db.all = (cls) => {
      if (cls === 'pool') poolReads++;
      return all(cls);
    };
    const generation = h.host.db.generation();
    await h.xenops.refresh(vm);
    assert.equal(h.host.db.generation(), generation, 'an unchanged VM gets no write');
    assert.equal(poolReads, 0, 'nor its allowed_operations worked out again (xapi: only when the power state, domain or agent changed)');
    // the row the caller passes points at consoles the VM no longer has: the refresh compares
    // with the VM's own, so it finds nothing to change either
    await h.xenops.refresh(vm, { ...row, consoles: [], metrics: 'OpaqueRef:NULL' });
    assert.equal(h.host.db.generation(), generation);
    assert.deepEqual((await h.host.db.get('VM', vm)).consoles, row.consoles);
    // once the domain is gone behind the database's back, a refresh passed the old row writes the change
    await h.domains.shutdown(row.uuid);
    await h.xenops.refresh(vm, row);
    const after = await h.host.db.get('VM', vm);
    assert.equal(after.power_state, 'Halted');
    assert.deepEqual(after.consoles, []);
    assert.ok(after.allowed_operations.includes('start'));
    assert.ok(poolReads > 0);
  } finally {
    await h.close();
  }
});

test('wrong power state, templates, the control domain, constraints', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('errors');
    assert.deepEqual(await t.err('VM.pause', t.s, vm), ['VM_BAD_POWER_STATE', vm, 'running', 'halted']);
    assert.deepEqual(await t.err('VM.hard_reboot', t.s, vm), ['VM_BAD_POWER_STATE', vm, 'paused, running', 'halted']);
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual(await t.err('VM.start', t.s, vm, false, false), ['VM_BAD_POWER_STATE', vm, 'halted', 'running']);
    assert.deepEqual(await t.err('VM.destroy', t.s, vm), ['VM_BAD_POWER_STATE', vm, 'halted, suspended', 'running']);
    await t.ok('VM.hard_shutdown', t.s, vm);

    const tpl = await t.makeVm('tpl', GiB, { is_a_template: true });
    assert.deepEqual(await t.err('VM.start', t.s, tpl, false, false), ['VM_IS_TEMPLATE', tpl, 'start']);

    const dom0Ref = Object.keys((await t.ok('VM.get_all_records_where', t.s, 'field "is_control_domain" = "true"')) as RpcStruct)[0]!;
    assert.deepEqual(await t.err('VM.clean_shutdown', t.s, dom0Ref), [
      'OPERATION_NOT_ALLOWED',
      'This operation is not allowed on a control domain',
    ]);
    // the power state is checked first, as in xapi: dom0 is running
    assert.deepEqual(await t.err('VM.destroy', t.s, dom0Ref), ['VM_BAD_POWER_STATE', dom0Ref, 'halted, suspended', 'running']);

    assert.deepEqual(await t.err('VM.set_memory_limits', t.s, vm, BigInt(GiB), BigInt(GiB), BigInt(2 * GiB), BigInt(GiB)), [
      'MEMORY_CONSTRAINT_VIOLATION_ORDER',
    ]);
    await t.ok('VM.set_memory_limits', t.s, vm, BigInt(512 * MiB), BigInt(2 * GiB), BigInt(1 * GiB), BigInt(2 * GiB));
    assert.equal((await t.rec(vm)).memory_static_max, BigInt(2 * GiB));
    assert.deepEqual(await t.err('VM.set_VCPUs_at_startup', t.s, vm, 3n), [
      'INVALID_VALUE',
      'VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max',
      '3',
    ]);
    assert.deepEqual(
      await t.ok('VM.get_allowed_VIF_devices', t.s, vm),
      Array.from({ length: 15 }, (_, i) => String(i + 1)),
    );
  } finally {
    await t.close();
  }
});

test('memory runs out: HOST_NOT_ENOUGH_FREE_MEMORY with needed and available', async () => {
  const t = await setup();
  try {
    const free = Number(await t.ok('host.compute_free_memory', t.s, t.host.hostRef));
    const big = await t.makeVm('big', free + GiB);
    const e = await t.err('VM.start', t.s, big, false, false);
    assert.equal(e[0], 'HOST_NOT_ENOUGH_FREE_MEMORY');
    assert.ok(Number(e[1]) > Number(e[2]));
    assert.equal(Number(e[2]), free);
    // dynamic ranges let more VMs fit: started at dynamic_min
    const a = await t.makeVm('a', 4 * GiB, { memory_dynamic_min: BigInt(GiB), memory_static_min: BigInt(GiB) });
    await t.ok('VM.start', t.s, a, false, false);
    assert.ok(Number(await t.ok('host.compute_free_memory', t.s, t.host.hostRef)) < free);
    await t.ok('VM.hard_shutdown', t.s, a);
  } finally {
    await t.close();
  }
});

test('a conflicting operation waits for the one in progress, then meets the new power state', async () => {
  const t = await setup({ shutdownTimeMs: 300 });
  try {
    const vm = await t.makeVm('busy');
    await t.ok('VM.start', t.s, vm, false, false);
    await t.waitAgent(vm);
    const task = (await t.ok('Async.VM.clean_shutdown', t.s, vm)) as string;
    await waitUntil('the clean shutdown to be marked', async () => Object.keys((await t.rec(vm)).current_operations as object).length > 0);
    assert.deepEqual((await t.rec(vm)).current_operations, struct({ [task]: 'clean_shutdown' }));
    assert.ok(!((await t.rec(vm)).allowed_operations as string[]).includes('pause'));
    // assert_operation_valid does not wait: it reports the operation in progress
    assert.deepEqual(await t.err('VM.assert_operation_valid', t.s, vm, 'pause'), [
      'OTHER_OPERATION_IN_PROGRESS',
      'VM',
      vm,
      'clean_shutdown',
      task,
    ]);
    // the pause waits for the shutdown, then finds the VM halted (xapi's retry, not a refusal)
    assert.deepEqual(await t.err('VM.pause', t.s, vm), ['VM_BAD_POWER_STATE', vm, 'running', 'halted']);
    assert.equal((await waitTask(t.ok, t.s, task)).status, 'success');
    assert.equal((await t.rec(vm)).power_state, 'Halted');
    assert.deepEqual((await t.rec(vm)).current_operations, newStruct());
  } finally {
    await t.close();
  }
});

test('two clean shutdowns at once: the second gets VM_BAD_POWER_STATE after the first', async () => {
  const t = await setup({ shutdownTimeMs: 200 });
  try {
    const vm = await t.makeVm('twice');
    await t.ok('VM.start', t.s, vm, false, false);
    await t.waitAgent(vm);
    const [a, b] = (await Promise.all([t.ok('Async.VM.clean_shutdown', t.s, vm), t.ok('Async.VM.clean_shutdown', t.s, vm)])) as string[];
    const results = await Promise.all([waitTask(t.ok, t.s, a!), waitTask(t.ok, t.s, b!)]);
    const failed = results.filter((r) => r.status === 'failure');
    assert.equal(results.filter((r) => r.status === 'success').length, 1);
    assert.equal(failed.length, 1);
    assert.deepEqual(failed[0]!.error_info, ['VM_BAD_POWER_STATE', vm, 'running', 'halted']);
    assert.equal((await t.rec(vm)).power_state, 'Halted');
  } finally {
    await t.close();
  }
});

test('hard_shutdown runs alongside a clean shutdown and ends it', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('stuck');
    await t.ok('VM.start', t.s, vm, false, false);
    await t.waitAgent(vm);
    // a guest that never completes a shutdown: the clean shutdown would wait for its timeout
    t.domains.inject((await t.rec(vm)).uuid as string, 'refuse-shutdown');
    const task = (await t.ok('Async.VM.clean_shutdown', t.s, vm)) as string;
    await waitUntil('the clean shutdown to be marked', async () => Object.keys((await t.rec(vm)).current_operations as object).length > 0);
    await t.ok('VM.hard_shutdown', t.s, vm);
    // the hard shutdown cancels the clean one it overtook (xapi's cancel of the overtaken tasks)
    const overtaken = await waitTask(t.ok, t.s, task);
    assert.equal(overtaken.status, 'cancelled');
    assert.deepEqual(overtaken.error_info, ['TASK_CANCELLED', task]);
    assert.equal((await t.rec(vm)).power_state, 'Halted');
    await waitUntil('the operations to end', async () => Object.keys((await t.rec(vm)).current_operations as object).length === 0);
  } finally {
    await t.close();
  }
});

test('task.cancel ends an operation waiting for a busy VM, as xapi does', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('cancel');
    await t.ok('VM.start', t.s, vm, false, false);
    await t.waitAgent(vm);
    t.domains.inject((await t.rec(vm)).uuid as string, 'refuse-shutdown');
    const shutdown = (await t.ok('Async.VM.clean_shutdown', t.s, vm)) as string;
    await waitUntil('the clean shutdown to be marked', async () => Object.keys((await t.rec(vm)).current_operations as object).length > 0);
    // xapi creates tasks not cancellable; an operation that may wait makes its task cancellable
    const pause = (await t.ok('Async.VM.pause', t.s, vm)) as string;
    await waitUntil('the waiting pause to be cancellable', async () =>
      ((await t.ok('task.get_allowed_operations', t.s, pause)) as string[]).includes('cancel'),
    );
    await t.ok('task.cancel', t.s, pause);
    const cancelled = await waitTask(t.ok, t.s, pause);
    assert.equal(cancelled.status, 'cancelled');
    // xapi marks the task cancelled as it gives up waiting, before the error is raised: no error_info
    assert.deepEqual(cancelled.error_info, []);
    assert.deepEqual(cancelled.allowed_operations, []);
    // the shutdown in progress is untouched, then ended by a hard shutdown
    assert.deepEqual(Object.values((await t.rec(vm)).current_operations as object), ['clean_shutdown']);
    await t.ok('VM.hard_shutdown', t.s, vm);
    await waitTask(t.ok, t.s, shutdown);
    // cancelling a finished task is accepted (xapi records the request and nothing happens)
    await t.ok('task.cancel', t.s, pause);
    assert.equal(await t.ok('task.get_status', t.s, pause), 'cancelled');
  } finally {
    await t.close();
  }
});

test('VIF hotplug on a running VM', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('hot');
    await t.ok('VM.start', t.s, vm, false, false);
    // An HVM guest hotplugs once its PV drivers report (xapi: VM_MISSING_PV_DRIVERS before).
    await waitUntil('the guest agent reports', async () => (await t.rec(vm)).guest_metrics !== 'OpaqueRef:NULL');
    const vif = (await t.ok(
      'VIF.create',
      t.s,
      struct({
        device: '1',
        network: t.network,
        VM: vm,
        MAC: '',
        MTU: 1500n,
        other_config: newStruct(),
        qos_algorithm_type: '',
        qos_algorithm_params: newStruct(),
      }),
    )) as string;
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif), false);
    await t.ok('VIF.plug', t.s, vif);
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif), true);
    assert.deepEqual(await t.err('VIF.plug', t.s, vif), ['DEVICE_ALREADY_ATTACHED', vif]);
    await t.ok('VIF.unplug', t.s, vif);
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif), false);
    assert.deepEqual(
      await t.err(
        'VIF.create',
        t.s,
        struct({
          device: '1',
          network: t.network,
          VM: vm,
          MAC: '',
          MTU: 1500n,
          other_config: newStruct(),
          qos_algorithm_type: '',
          qos_algorithm_params: newStruct(),
        }),
      ),
      ['DEVICE_ALREADY_EXISTS', '1'],
    );
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('faults: a guest crash, a guest halting itself, a guest refusing to shut down', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('faulty');
    const uuid = (await t.rec(vm)).uuid as string;
    await t.ok('VM.start', t.s, vm, false, false);
    const domid = (await t.rec(vm)).domid;
    // actions_after_crash = restart: the VM comes back in a new domain
    t.domains.inject(uuid, 'crash');
    // (between the crash and the restart the VM is briefly Halted with no domain)
    const restarted = (r: RpcStruct) => r.domid !== domid && r.power_state === 'Running';
    await waitUntil('the VM to restart after its crash', async () => restarted(await t.rec(vm)));
    let r = await t.rec(vm);
    assert.equal(r.power_state, 'Running');
    assert.notEqual(r.domid, domid);
    // the guest halts itself; actions_after_shutdown = destroy leaves it Halted
    t.domains.inject(uuid, 'guest-shutdown');
    await waitUntil('the guest to halt itself', async () => (await t.rec(vm)).power_state === 'Halted');
    assert.equal((await t.rec(vm)).power_state, 'Halted');
    // a guest that ignores the shutdown request: clean_shutdown times out, shutdown falls back to hard
    await t.ok('VM.start', t.s, vm, false, false);
    await t.waitAgent(vm);
    t.domains.inject(uuid, 'refuse-shutdown');
    const e = await t.err('VM.clean_shutdown', t.s, vm);
    assert.equal(e[0], 'VM_SHUTDOWN_TIMEOUT');
    assert.equal(e[1], vm);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Running');
    assert.deepEqual(r.current_operations, newStruct());
    await t.ok('VM.shutdown', t.s, vm);
    assert.equal((await t.rec(vm)).power_state, 'Halted');
  } finally {
    await t.close();
  }
});

test('clone and copy make a new VM with its own identity; provision turns a template into a VM', async () => {
  const t = await setup();
  try {
    const tpl = Object.keys((await t.ok('VM.get_all_records_where', t.s, 'field "name__label" = "Other install media"')) as RpcStruct)[0]!;
    assert.deepEqual(await t.err('VM.destroy', t.s, tpl), ['VM_CANNOT_DELETE_DEFAULT_TEMPLATE', tpl]);
    const clone = (await t.ok('VM.clone', t.s, tpl, 'from-template')) as string;
    let r = await t.rec(clone);
    assert.equal(r.is_a_template, true);
    assert.equal(r.is_default_template, false);
    await t.ok('VM.provision', t.s, clone);
    r = await t.rec(clone);
    assert.equal(r.is_a_template, false);
    assert.ok((r.allowed_operations as string[]).includes('start'));
    await t.ok(
      'VIF.create',
      t.s,
      struct({
        device: '0',
        network: t.network,
        VM: clone,
        MAC: '',
        MTU: 1500n,
        other_config: newStruct(),
        qos_algorithm_type: '',
        qos_algorithm_params: newStruct(),
      }),
    );
    r = await t.rec(clone);
    const copy = (await t.ok('VM.copy', t.s, clone, 'copied', 'OpaqueRef:NULL')) as string;
    const c = await t.rec(copy);
    assert.notEqual(c.uuid, r.uuid);
    assert.equal(c.name_label, 'copied');
    const [vifA] = r.VIFs as string[];
    const [vifB] = c.VIFs as string[];
    assert.notEqual(await t.ok('VIF.get_MAC', t.s, vifA!), await t.ok('VIF.get_MAC', t.s, vifB!));
    await t.ok('VM.start', t.s, copy, false, false);
    assert.deepEqual(await t.err('VM.clone', t.s, copy, 'x'), ['VM_BAD_POWER_STATE', copy, 'halted', 'running']);
    await t.ok('VM.hard_shutdown', t.s, copy);
  } finally {
    await t.close();
  }
});

test('VM.create refuses bad memory constraints and leaves nothing behind', async () => {
  const t = await setup();
  try {
    const before = ((await t.ok('VM.get_all', t.s)) as string[]).length;
    const e = await t.err(
      'VM.create',
      t.s,
      struct({
        name_label: 'bad',
        name_description: '',
        user_version: 1n,
        is_a_template: false,
        affinity: 'OpaqueRef:NULL',
        memory_static_max: BigInt(GiB),
        memory_dynamic_max: BigInt(2 * GiB),
        memory_dynamic_min: BigInt(GiB),
        memory_static_min: BigInt(GiB),
        VCPUs_params: newStruct(),
        VCPUs_max: 1n,
        VCPUs_at_startup: 1n,
        actions_after_shutdown: 'destroy',
        actions_after_reboot: 'restart',
        actions_after_crash: 'restart',
        PV_bootloader: '',
        PV_kernel: '',
        PV_ramdisk: '',
        PV_args: '',
        PV_bootloader_args: '',
        PV_legacy_args: '',
        HVM_boot_policy: '',
        HVM_boot_params: newStruct(),
        platform: newStruct(),
        PCI_bus: '',
        other_config: newStruct(),
        recommendations: '',
      }),
    );
    assert.deepEqual(e, ['MEMORY_CONSTRAINT_VIOLATION_ORDER']);
    assert.equal(((await t.ok('VM.get_all', t.s)) as string[]).length, before);
  } finally {
    await t.close();
  }
});

test('ballooning: a second VM squeezes the first towards dynamic_min, and gives it back on shutdown', async () => {
  const t = await setup();
  try {
    const range = { memory_static_min: BigInt(2 * GiB), memory_dynamic_min: BigInt(2 * GiB) };
    const a = await t.makeVm('a', 8 * GiB, range);
    const b = await t.makeVm('b', 8 * GiB, range);
    await t.ok('VM.start', t.s, a, false, false);
    const actual = async (vm: string) => Number(await t.ok('VM_metrics.get_memory_actual', t.s, (await t.rec(vm)).metrics as string));
    assert.equal(await actual(a), 8 * GiB);
    await t.ok('VM.start', t.s, b, false, false); // both at 8 GiB would not fit in 16 GiB
    await waitUntil('a to be squeezed', async () => (await actual(a)) < 8 * GiB);
    const [ma, mb] = [await actual(a), await actual(b)];
    assert.ok(ma < 8 * GiB && ma >= 2 * GiB, `a has ${ma}`);
    assert.ok(Math.abs(ma - mb) <= 4096, 'the same fraction of the same range');
    await t.ok('VM.hard_shutdown', t.s, b);
    await waitUntil('a to get its memory back', async () => (await actual(a)) === 8 * GiB);
    assert.equal(await actual(a), 8 * GiB);
    await t.ok('VM.hard_shutdown', t.s, a);
  } finally {
    await t.close();
  }
});
