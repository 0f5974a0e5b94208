// VM lifecycle through the API against the simulator backend, in-process: states, errors with
// xapi's parameters, allowed/current operations, memory checks and device hotplug.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct, type Rpc, type RpcStruct } from '../../src/api/rpc.js';
import { apiClient, struct } from './api-client.js';
import { waitUntil } from '../wait.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

async function setup(opts: { bootTimeMs?: number; shutdownTimeMs?: number } = {}) {
  const h = await memoryHost({ rootPassword: 'pw', ...opts });
  h.xenops.start();
  const { call, ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const [network] = (await ok('network.get_by_name_label', s, 'Pool-wide network associated with eth0')) as string[];
  const makeVm = async (name: string, memory = 1 * GiB, extra: Record<string, Rpc> = {}) => {
    const vm = (await ok(
      'VM.create',
      s,
      struct({
        name_label: name,
        name_description: '',
        user_version: 1n,
        is_a_template: false,
        affinity: 'OpaqueRef:NULL',
        memory_static_max: BigInt(memory),
        memory_dynamic_max: BigInt(memory),
        memory_dynamic_min: BigInt(memory),
        memory_static_min: BigInt(memory),
        VCPUs_params: newStruct(),
        VCPUs_max: 2n,
        VCPUs_at_startup: 2n,
        actions_after_shutdown: 'destroy',
        actions_after_reboot: 'restart',
        actions_after_crash: 'restart',
        PV_bootloader: '',
        PV_kernel: '',
        PV_ramdisk: '',
        PV_args: '',
        PV_bootloader_args: '',
        PV_legacy_args: '',
        HVM_boot_policy: 'BIOS order',
        HVM_boot_params: newStruct(),
        platform: newStruct(),
        PCI_bus: '',
        other_config: newStruct(),
        recommendations: '',
        domain_type: 'hvm',
        ...extra,
      }),
    )) as string;
    await ok('VIF.create', s, struct({ device: '0', network: network!, VM: vm, MAC: '', MTU: 1500n, other_config: newStruct(), qos_algorithm_type: '', qos_algorithm_params: newStruct() }));
    return vm;
  };
  const rec = async (vm: string) => (await ok('VM.get_record', s, vm)) as RpcStruct;
  return { ...h, call, ok, err, s, makeVm, rec, network: network! };
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
    assert.ok((r.allowed_operations as string[]).includes('clean_shutdown'));
    const metrics = (await t.ok('VM_metrics.get_record', t.s, r.metrics as string)) as RpcStruct;
    assert.equal(metrics.memory_actual, BigInt(GiB));
    assert.equal(metrics.VCPUs_number, 2n);
    const [vif] = r.VIFs as string[];
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif!), true);
    // the simulated guest agent reports in
    await waitUntil('the guest metrics', async () => (await t.rec(vm)).guest_metrics !== 'OpaqueRef:NULL');
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
    await t.ok('VM.clean_reboot', t.s, vm);
    r = await t.rec(vm);
    assert.equal(r.power_state, 'Running');
    assert.notEqual(r.domid, domid);
    await t.ok('VM.hard_reboot', t.s, vm);

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
    assert.deepEqual(await t.err('VM.clean_shutdown', t.s, dom0Ref), ['OPERATION_NOT_ALLOWED', 'This operation is not allowed on a control domain']);
    // the power state is checked first, as in xapi: dom0 is running
    assert.deepEqual(await t.err('VM.destroy', t.s, dom0Ref), ['VM_BAD_POWER_STATE', dom0Ref, 'halted, suspended', 'running']);

    assert.deepEqual(await t.err('VM.set_memory_limits', t.s, vm, BigInt(GiB), BigInt(GiB), BigInt(2 * GiB), BigInt(GiB)), ['MEMORY_CONSTRAINT_VIOLATION_ORDER']);
    await t.ok('VM.set_memory_limits', t.s, vm, BigInt(512 * MiB), BigInt(2 * GiB), BigInt(1 * GiB), BigInt(2 * GiB));
    assert.equal((await t.rec(vm)).memory_static_max, BigInt(2 * GiB));
    assert.deepEqual(await t.err('VM.set_VCPUs_at_startup', t.s, vm, 3n), ['VALUE_NOT_SUPPORTED', 'VCPUs_at_startup', '3', 'value greater than VCPUs_max']);
    assert.deepEqual(await t.ok('VM.get_allowed_VIF_devices', t.s, vm), Array.from({ length: 15 }, (_, i) => String(i + 1)));
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

test('two conflicting operations: OTHER_OPERATION_IN_PROGRESS', async () => {
  // A guest that takes a minute to shut down: the clean_shutdown is surely still running when
  // the pause comes, however slow the machine; the hard_shutdown cuts it short.
  const t = await setup({ shutdownTimeMs: 60_000 });
  try {
    const vm = await t.makeVm('busy');
    await t.ok('VM.start', t.s, vm, false, false);
    const task = (await t.ok('Async.VM.clean_shutdown', t.s, vm)) as string;
    await waitUntil('the shutdown to be marked', async () => ((await t.rec(vm)).current_operations as Record<string, string>)[task] === 'clean_shutdown');
    assert.deepEqual(await t.err('VM.pause', t.s, vm), ['OTHER_OPERATION_IN_PROGRESS', 'VM', vm, 'clean_shutdown', task]);
    assert.ok(!((await t.rec(vm)).allowed_operations as string[]).includes('pause'));
    // hard_shutdown pre-empts anything else
    await t.ok('VM.hard_shutdown', t.s, vm);
    await waitUntil('the shutdown to end', async () => Object.keys((await t.rec(vm)).current_operations as object).length === 0);
    assert.equal((await t.rec(vm)).power_state, 'Halted');
    assert.deepEqual((await t.rec(vm)).current_operations, newStruct());
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
    const vif = (await t.ok('VIF.create', t.s, struct({ device: '1', network: t.network, VM: vm, MAC: '', MTU: 1500n, other_config: newStruct(), qos_algorithm_type: '', qos_algorithm_params: newStruct() }))) as string;
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif), false);
    await t.ok('VIF.plug', t.s, vif);
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif), true);
    assert.deepEqual(await t.err('VIF.plug', t.s, vif), ['DEVICE_ALREADY_ATTACHED', vif]);
    await t.ok('VIF.unplug', t.s, vif);
    assert.equal(await t.ok('VIF.get_currently_attached', t.s, vif), false);
    assert.deepEqual(await t.err('VIF.create', t.s, struct({ device: '1', network: t.network, VM: vm, MAC: '', MTU: 1500n, other_config: newStruct(), qos_algorithm_type: '', qos_algorithm_params: newStruct() })), ['DEVICE_ALREADY_EXISTS', '1']);
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
    await t.ok('VIF.create', t.s, struct({ device: '0', network: t.network, VM: clone, MAC: '', MTU: 1500n, other_config: newStruct(), qos_algorithm_type: '', qos_algorithm_params: newStruct() }));
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
    const e = await t.err('VM.create', t.s, struct({
      name_label: 'bad', name_description: '', user_version: 1n, is_a_template: false, affinity: 'OpaqueRef:NULL',
      memory_static_max: BigInt(GiB), memory_dynamic_max: BigInt(2 * GiB), memory_dynamic_min: BigInt(GiB), memory_static_min: BigInt(GiB),
      VCPUs_params: newStruct(), VCPUs_max: 1n, VCPUs_at_startup: 1n, actions_after_shutdown: 'destroy', actions_after_reboot: 'restart',
      actions_after_crash: 'restart', PV_bootloader: '', PV_kernel: '', PV_ramdisk: '', PV_args: '', PV_bootloader_args: '', PV_legacy_args: '',
      HVM_boot_policy: '', HVM_boot_params: newStruct(), platform: newStruct(), PCI_bus: '', other_config: newStruct(), recommendations: '',
    }));
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
