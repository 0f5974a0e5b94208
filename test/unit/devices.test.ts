// VBDs, VIFs and networks through the API, in-process, against xapi's own rules
// (xapi_vbd.ml, xapi_vbd_helpers.ml, xapi_vif_helpers.ml, xapi_network.ml): the constructor and
// destructor checks with xapi's errors and parameters, allowed_operations as xapi computes them
// and kept current through the VM's life, hotplug refusals, and waiting for a busy device.
import { countCalls, waitUntil } from '../wait.js';
import { globalGate } from '../../src/xapi/retry.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct, type Rpc, type RpcStruct } from '../../src/rpc/rpc.js';
import { apiClient, struct } from './api-client.js';
import { seededMac } from '../../src/xapi/vif.js';
import { possibleDevices, validUserdevice } from '../../src/xapi/device-number.js';
import { assertVifOperation, sortedOperations } from '../../src/xapi/device-checks.js';
import type { XapiError } from '../../src/rpc/errors.js';
import { vmStruct } from '../vm-record.js';

const GiB = 1024 ** 3;
const NULL = 'OpaqueRef:NULL';

async function setup(opts: { guestAgent?: boolean } = {}) {
  const h = await memoryHost({ rootPassword: 'pw', ...opts });
  h.xenops.start();
  const { call, ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const [network] = (await ok('network.get_by_name_label', s, 'Pool-wide network associated with eth0')) as string[];
  const pool = ((await ok('pool.get_all', s)) as string[])[0]!;
  const sr = (await ok('pool.get_default_SR', s, pool)) as string;
  const rec = async (cls: string, ref: string) => (await ok(`${cls}.get_record`, s, ref)) as RpcStruct;
  const makeVm = async (name: string, extra: Record<string, Rpc> = {}) =>
    (await ok('VM.create', s, vmStruct(name, { memory: GiB }, extra))) as string;
  const makeVdi = async (extra: Record<string, Rpc> = {}) =>
    (await ok(
      'VDI.create',
      s,
      struct({
        name_label: 'disk',
        name_description: '',
        SR: sr,
        virtual_size: 4n * 1024n * 1024n,
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: newStruct(),
        xenstore_data: newStruct(),
        sm_config: newStruct(),
        tags: [],
        ...extra,
      }),
    )) as string;
  const vbdRecord = (vm: string, vdi: string, extra: Record<string, Rpc> = {}) =>
    struct({
      VM: vm,
      VDI: vdi,
      userdevice: 'autodetect',
      bootable: false,
      mode: 'RW',
      type: 'Disk',
      unpluggable: true,
      empty: false,
      other_config: newStruct(),
      qos_algorithm_type: '',
      qos_algorithm_params: newStruct(),
      ...extra,
    });
  const vifRecord = (vm: string, extra: Record<string, Rpc> = {}) =>
    struct({
      device: '0',
      network: network!,
      VM: vm,
      MAC: '',
      MTU: 1500n,
      other_config: newStruct(),
      qos_algorithm_type: '',
      qos_algorithm_params: newStruct(),
      ...extra,
    });
  /** Running, with its guest agent reporting (what HVM hotplug needs). */
  const startVm = async (vm: string) => {
    await ok('VM.start', s, vm, false, false);
    await waitUntil('the guest agent reports', async () => (await rec('VM', vm)).guest_metrics !== NULL);
  };
  const allowed = async (cls: string, ref: string) => [...((await rec(cls, ref)).allowed_operations as string[])].sort();
  return { ...h, call, ok, err, s, sr, network: network!, rec, makeVm, makeVdi, vbdRecord, vifRecord, startVm, allowed };
}

test('VBD.create refuses as xapi does: empty Disk, writable CD, writable read-only VDI, VDI types, devices', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('vbds');
    const vdi = await t.makeVdi();
    // Only removable media may be empty.
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(vm, NULL, { empty: true })), ['VBD_NOT_REMOVABLE_MEDIA', 'in constructor']);
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(vm, NULL, { type: 'CD', empty: true })), ['VBD_CDS_MUST_BE_READONLY']);
    const ro = await t.makeVdi({ read_only: true });
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(vm, ro)), ['VDI_READONLY', ro]);
    const statefile = await t.makeVdi({ type: 'ha_statefile' });
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(vm, statefile)), ['VDI_INCOMPATIBLE_TYPE', statefile, 'ha_statefile']);
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(vm, vdi, { userdevice: 'bogus' })), ['INVALID_DEVICE', 'bogus']);
    // A record missing a field fails in the unmarshaller, before any check.
    const partial = t.vbdRecord(vm, vdi);
    delete partial.bootable;
    assert.deepEqual(await t.err('VBD.create', t.s, partial), ['INTERNAL_ERROR', 'Server_helpers.Dispatcher_FieldNotFound("bootable")']);

    // autodetect takes the first free device; "xvda" and "hda" are the same disk as "0".
    const first = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, vdi))) as string;
    const r = await t.rec('VBD', first);
    assert.equal(r.userdevice, '0');
    assert.equal(r.device, '');
    for (const name of ['0', 'xvda', 'hda']) {
      assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi(), { userdevice: name })), [
        'DEVICE_ALREADY_EXISTS',
        name,
      ]);
    }
    const second = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi(), { userdevice: 'xvde' }))) as string;
    assert.equal((await t.rec('VBD', second)).userdevice, 'xvde');
    assert.equal((await t.rec('VBD', (await t.ok('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi()))) as string)).userdevice, '1');
    // An empty CD drive is fine; an empty floppy is not (only CDs may be empty), and a floppy
    // needs an emulator (an HVM guest).
    const cd = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, NULL, { type: 'CD', mode: 'RO', empty: true }))) as string;
    assert.equal((await t.rec('VBD', cd)).userdevice, '2');
    const pv = await t.makeVm('pv', { domain_type: 'pv' });
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(pv, NULL, { type: 'Floppy', mode: 'RO', empty: true })), [
      'VBD_NOT_REMOVABLE_MEDIA',
      'in constructor',
    ]);
    assert.deepEqual(await t.err('VBD.create', t.s, t.vbdRecord(pv, await t.makeVdi(), { type: 'Floppy' })), [
      'NOT_IMPLEMENTED',
      "VBD of type 'floppy' is not supported on PV domain",
    ]);
    // Each VBD has its metrics, as xapi makes them (their messages are removed from the API).
    assert.equal((await t.db.get('VBD_metrics', r.metrics as string)).io_read_kbs, 0);
    assert.deepEqual(await t.ok('VM.get_allowed_VBD_devices', t.s, vm), [...Array(255).keys()].filter((n) => n === 3 || n > 4).map(String));
  } finally {
    await t.close();
  }
});

test('device names read as xapi-idl Device_number does', () => {
  assert.deepEqual(possibleDevices('0'), [
    { bus: 'Ide', disk: 0, partition: 0 },
    { bus: 'Xen', disk: 0, partition: 0 },
  ]);
  assert.deepEqual(possibleDevices('5'), [
    { bus: 'Xen', disk: 5, partition: 0 },
    { bus: 'Xen', disk: 5, partition: 0 },
  ]);
  assert.deepEqual(possibleDevices('xvdaa2'), [
    { bus: 'Xen', disk: 26, partition: 2 },
    { bus: 'Xen', disk: 26, partition: 2 },
  ]);
  assert.deepEqual(possibleDevices('d3p1'), [
    { bus: 'Xen', disk: 3, partition: 1 },
    { bus: 'Xen', disk: 3, partition: 1 },
  ]);
  assert.deepEqual(possibleDevices('sdb'), [
    { bus: 'Scsi', disk: 1, partition: 0 },
    { bus: 'Scsi', disk: 1, partition: 0 },
  ]);
  // Any integer is a valid userdevice but for floppies (valid_device's "n >= 0 || n < 16").
  assert.equal(validUserdevice('-1', 'Disk'), true);
  assert.equal(validUserdevice('-1', 'Floppy'), false);
  assert.equal(validUserdevice('0x10', 'Disk'), true);
  assert.equal(validUserdevice('foo', 'CD'), false);
});

test('VBD.destroy refuses an attached VBD with its uuids, and takes its metrics along', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('destroy-vbd');
    const vbd = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi()))) as string;
    const metrics = (await t.rec('VBD', vbd)).metrics as string;
    await t.startVm(vm);
    assert.equal((await t.rec('VBD', vbd)).currently_attached, true);
    const [vbdUuid, vmUuid] = [(await t.rec('VBD', vbd)).uuid, (await t.rec('VM', vm)).uuid];
    assert.deepEqual(await t.err('VBD.destroy', t.s, vbd), ['OPERATION_NOT_ALLOWED', `VBD '${vbdUuid}' still attached to '${vmUuid}'`]);
    await t.ok('VBD.unplug', t.s, vbd);
    await t.ok('VBD.destroy', t.s, vbd);
    // (VBD_metrics messages are removed from the API: the database tells.)
    assert.equal(await t.db.tryGet('VBD_metrics', metrics), undefined);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('VIF.create: MACs from the VM mac_seed as xapi derives them, MAC and device validation', async () => {
  const t = await setup();
  try {
    const seed = '5b7c4d0e-2a5f-4d8e-9c3b-1f2e3d4c5b6a';
    const vm = await t.makeVm('macs', { other_config: struct({ mac_seed: seed }) });
    // Vectors computed with xapi's gen_mac (Xapi_vif_helpers) under OCaml's Digest.
    assert.equal(await seededMac(7, 'seed'), 'e6:71:a7:02:eb:55');
    assert.equal(await seededMac(0, ''), 'd6:1d:8c:d9:ad:b2');
    const vif0 = (await t.ok('VIF.create', t.s, t.vifRecord(vm))) as string;
    let r = await t.rec('VIF', vif0);
    assert.equal(r.MAC, '8a:2a:a3:7a:18:73');
    assert.equal(r.MAC_autogenerated, true);
    const vif1 = (await t.ok('VIF.create', t.s, t.vifRecord(vm, { device: '1' }))) as string;
    assert.equal((await t.rec('VIF', vif1)).MAC, '16:44:f8:64:07:b5');
    // A MAC given is kept as given (not autogenerated), but must look like one.
    const given = (await t.ok('VIF.create', t.s, t.vifRecord(vm, { device: '2', MAC: 'AA:bb:cc:dd:ee:ff' }))) as string;
    r = await t.rec('VIF', given);
    assert.equal(r.MAC, 'AA:bb:cc:dd:ee:ff');
    assert.equal(r.MAC_autogenerated, false);
    assert.deepEqual(await t.err('VIF.create', t.s, t.vifRecord(vm, { device: '3', MAC: 'aa:bb:cc:dd:ee' })), [
      'MAC_INVALID',
      'aa:bb:cc:dd:ee',
    ]);
    assert.deepEqual(await t.err('VIF.create', t.s, t.vifRecord(vm, { device: '3', MAC: 'aa-bb-cc-dd-ee-ff' })), [
      'MAC_INVALID',
      'aa-bb-cc-dd-ee-ff',
    ]);
    // Devices are unsigned integers, compared as numbers; xapi sets no upper bound.
    assert.deepEqual(await t.err('VIF.create', t.s, t.vifRecord(vm, { device: '-1' })), ['INVALID_DEVICE', '-1']);
    assert.deepEqual(await t.err('VIF.create', t.s, t.vifRecord(vm, { device: 'eth0' })), ['INVALID_DEVICE', 'eth0']);
    assert.deepEqual(await t.err('VIF.create', t.s, t.vifRecord(vm, { device: '01' })), ['DEVICE_ALREADY_EXISTS', '01']);
    await t.ok('VIF.create', t.s, t.vifRecord(vm, { device: '20' }));
    // Without a seed an empty MAC is no MAC at all; VM.create gives every VM a seed.
    const seedless = await t.makeVm('seedless');
    const ownSeed = ((await t.rec('VM', seedless)).other_config as RpcStruct).mac_seed;
    assert.match(String(ownSeed), /^[0-9a-f-]{36}$/);
    await t.ok('VM.remove_from_other_config', t.s, seedless, 'mac_seed');
    assert.deepEqual(await t.err('VIF.create', t.s, t.vifRecord(seedless)), ['MAC_INVALID', '']);
    // Each VIF has its metrics.
    assert.equal((await t.db.get('VIF_metrics', (await t.rec('VIF', vif0)).metrics as string)).io_write_kbs, 0);
  } finally {
    await t.close();
  }
});

test('VIF.destroy refuses a VIF attached to a running VM, and takes its metrics along', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('destroy-vif');
    const vif = (await t.ok('VIF.create', t.s, t.vifRecord(vm))) as string;
    const metrics = (await t.rec('VIF', vif)).metrics as string;
    await t.startVm(vm);
    assert.deepEqual(await t.err('VIF.destroy', t.s, vif), ['OPERATION_NOT_ALLOWED', 'VIF currently attached to a running VM']);
    await t.ok('VIF.unplug', t.s, vif);
    await t.ok('VIF.destroy', t.s, vif);
    assert.equal(await t.db.tryGet('VIF_metrics', metrics), undefined);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('allowed_operations of VBDs and VIFs follow the VM through its life', async () => {
  const t = await setup();
  try {
    const vm = await t.makeVm('allowed');
    const disk = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi()))) as string;
    const fixed = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi(), { unpluggable: false }))) as string;
    const cd = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, NULL, { type: 'CD', mode: 'RO', empty: true }))) as string;
    const vif = (await t.ok('VIF.create', t.s, t.vifRecord(vm))) as string;
    // Halted: only attach (a start); a CD can take a disc.
    assert.deepEqual(await t.allowed('VBD', disk), ['attach']);
    assert.deepEqual(await t.allowed('VBD', cd), ['attach', 'insert']);
    assert.deepEqual(await t.allowed('VIF', vif), ['attach']);
    assert.deepEqual(await t.err('VBD.plug', t.s, disk), ['VM_BAD_POWER_STATE', vm, 'running', 'halted']);
    assert.deepEqual(await t.err('VIF.unplug', t.s, vif), ['VM_BAD_POWER_STATE', vm, 'running', 'halted']);
    assert.deepEqual(await t.err('VBD.eject', t.s, cd), ['VBD_IS_EMPTY', cd]);
    assert.deepEqual(await t.err('VBD.insert', t.s, disk, await t.makeVdi()), ['VBD_NOT_REMOVABLE_MEDIA', disk]);

    await t.startVm(vm);
    assert.deepEqual(await t.allowed('VBD', disk), ['attach', 'pause', 'unpause', 'unplug', 'unplug_force']);
    assert.deepEqual(await t.allowed('VBD', fixed), ['attach', 'pause', 'unpause']);
    // An HVM guest's CD drive is not hotplugged, only loaded.
    assert.deepEqual(await t.allowed('VBD', cd), ['attach', 'insert', 'pause', 'unpause']);
    assert.deepEqual(await t.allowed('VIF', vif), ['attach', 'unplug']);
    assert.deepEqual(await t.err('VBD.unplug', t.s, fixed), ['VBD_NOT_UNPLUGGABLE', fixed]);
    assert.deepEqual(await t.err('VBD.plug', t.s, disk), ['DEVICE_ALREADY_ATTACHED', disk]);
    assert.deepEqual(await t.err('VBD.unplug', t.s, cd), [
      'OPERATION_NOT_ALLOWED',
      'HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected',
    ]);

    await t.ok('VIF.unplug', t.s, vif);
    assert.deepEqual(await t.allowed('VIF', vif), ['attach', 'plug']);
    assert.deepEqual(await t.err('VIF.unplug', t.s, vif), ['DEVICE_ALREADY_DETACHED', vif]);
    await t.ok('VIF.plug', t.s, vif);
    await t.ok('VBD.unplug', t.s, disk);
    assert.deepEqual(await t.allowed('VBD', disk), ['attach', 'pause', 'plug', 'unpause']);
    await t.ok('VBD.plug', t.s, disk);

    await t.ok('VM.pause', t.s, vm);
    // A paused VM's disks can still be paused and unpaused, nothing else changes.
    assert.deepEqual(await t.allowed('VBD', disk), ['attach', 'pause', 'unpause']);
    assert.deepEqual(await t.err('VBD.unplug', t.s, disk), ['VM_BAD_POWER_STATE', vm, 'running', 'paused']);
    await t.ok('VM.unpause', t.s, vm);
    await t.ok('VM.hard_shutdown', t.s, vm);
    assert.deepEqual(await t.allowed('VBD', disk), ['attach']);
    assert.deepEqual(await t.allowed('VIF', vif), ['attach']);
  } finally {
    await t.close();
  }
});

test('HVM hotplug needs PV drivers; a PV guest does not', async () => {
  const t = await setup({ guestAgent: false });
  try {
    const hvm = await t.makeVm('no-drivers');
    const vif = (await t.ok('VIF.create', t.s, t.vifRecord(hvm))) as string;
    await t.ok('VM.start', t.s, hvm, false, false);
    assert.deepEqual(await t.err('VIF.unplug', t.s, vif), ['VM_MISSING_PV_DRIVERS', hvm]);
    assert.deepEqual(await t.allowed('VIF', vif), ['attach']);
    const pv = await t.makeVm('pv', { domain_type: 'pv' });
    const pvVif = (await t.ok('VIF.create', t.s, t.vifRecord(pv))) as string;
    await t.ok('VM.start', t.s, pv, false, false);
    await t.ok('VIF.unplug', t.s, pvVif);
    await t.ok('VM.hard_shutdown', t.s, hvm);
    await t.ok('VM.hard_shutdown', t.s, pv);
  } finally {
    await t.close();
  }
});

test('a device operation waits while another holds the device, and can be cancelled meanwhile', async () => {
  const t = await setup();
  const sleeps = countCalls(globalGate, 'sleep');
  try {
    const vm = await t.makeVm('busy');
    const vif = (await t.ok('VIF.create', t.s, t.vifRecord(vm))) as string;
    await t.startVm(vm);
    // Another task holds the VIF: an unplug waits for it, as xapi retries. The test learns that
    // the call is waiting when it sleeps at the host's gate (retry.ts), and ends the wait as an
    // ending operation does: the mark goes, then every sleeper is woken.
    const holder = 'OpaqueRef:holder-task';
    await t.db.update('VIF', vif, { current_operations: { [holder]: 'plug' } });
    const task = (await t.ok('Async.VIF.unplug', t.s, vif)) as string;
    const status = async () => (await t.rec('task', task)).status;
    await sleeps.calls(1);
    assert.equal(await status(), 'pending');
    assert.equal((await t.rec('VIF', vif)).currently_attached, true);
    await t.db.update('VIF', vif, { current_operations: {} });
    globalGate.broadcast();
    await waitUntil('the unplug completes', async () => (await status()) !== 'pending');
    assert.equal(await status(), 'success');
    assert.equal((await t.rec('VIF', vif)).currently_attached, false);

    // Held again: this time the waiting call is cancelled.
    await t.db.update('VIF', vif, { current_operations: { [holder]: 'unplug' } });
    // What a waiting call keeps meeting: every operation and every task, each list in braces.
    await assert.rejects(assertVifOperation(t.host.db, vif, 'plug'), (e: XapiError) => {
      assert.deepEqual([e.code, ...e.params], ['OTHER_OPERATION_IN_PROGRESS', 'VIF', vif, '{unplug}', `{${holder}}`]);
      return true;
    });
    const slept = sleeps.count;
    const cancelled = (await t.ok('Async.VIF.plug', t.s, vif)) as string;
    await sleeps.calls(slept + 1);
    await t.ok('task.cancel', t.s, cancelled);
    await waitUntil('the cancelled plug ends', async () => (await t.rec('task', cancelled)).status !== 'pending');
    const r = await t.rec('task', cancelled);
    assert.equal(r.status, 'cancelled');
    // helpers.ml retry: TaskHelper.cancel ends the task before TASK_CANCELLED is raised, so the
    // failure that follows finds it no longer pending and records no error_info.
    assert.deepEqual(r.error_info, []);
    assert.equal((await t.rec('VIF', vif)).currently_attached, false);
    // A mark a killed process left behind is cleared at the next start-up.
    const vbd = (await t.ok('VBD.create', t.s, t.vbdRecord(vm, await t.makeVdi()))) as string;
    await t.db.update('VBD', vbd, { current_operations: { [holder]: 'plug' } });
    await t.xenops.resync();
    assert.deepEqual((await t.rec('VIF', vif)).current_operations, newStruct());
    assert.deepEqual((await t.rec('VBD', vbd)).current_operations, newStruct());
    assert.deepEqual(await t.allowed('VIF', vif), ['attach', 'plug']);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    sleeps.restore();
    await t.close();
  }
});

test('current operations sort as OCaml compares constant variants', () => {
  // The order of the tags' hashes (caml_hash_variant), checked against OCaml 4.13's List.sort_uniq compare.
  const ops = { a: 'unplug', b: 'attach', c: 'plug', d: 'pause', e: 'insert', f: 'eject', g: 'unplug_force', h: 'unpause' } as const;
  assert.deepEqual(
    sortedOperations(ops).map(([, op]) => op),
    ['plug', 'attach', 'unplug', 'unplug_force', 'eject', 'insert', 'unpause', 'pause'],
  );
});

test('network.create names bridges and defaults the MTU as xapi; network.destroy refuses what xapi refuses', async () => {
  const t = await setup();
  try {
    const net = (extra: Record<string, Rpc> = {}) =>
      struct({ name_label: 'n', name_description: '', MTU: 1500n, other_config: newStruct(), ...extra });
    const a = (await t.ok('network.create', t.s, net({ MTU: 0n }))) as string;
    let r = await t.rec('network', a);
    assert.equal(r.bridge, 'xapi0');
    assert.equal(r.MTU, 1500n);
    assert.equal(r.managed, true);
    const b = (await t.ok('network.create', t.s, net({ MTU: -9n }))) as string;
    r = await t.rec('network', b);
    assert.equal(r.bridge, 'xapi1');
    assert.equal(r.MTU, 1500n);
    assert.equal((await t.rec('network', (await t.ok('network.create', t.s, net({ MTU: 9000n }))) as string)).MTU, 9000n);
    // A caller's bridge name must not be reserved, too long or taken.
    for (const bad of ['xenbr7', 'xapi9', 'vif1.0', 'tap0', 'eth1', 'a-name-too-long!']) {
      assert.deepEqual(await t.err('network.create', t.s, net({ bridge: bad })), ['INVALID_VALUE', 'bridge', bad]);
    }
    const own = (await t.ok('network.create', t.s, net({ bridge: 'br-lab' }))) as string;
    assert.equal((await t.rec('network', own)).bridge, 'br-lab');
    assert.deepEqual(await t.err('network.create', t.s, net({ bridge: 'br-lab' })), ['BRIDGE_NAME_EXISTS', 'br-lab']);
    // A name is free again once its network is gone, however it went.
    await t.db.destroy('network', own);
    const again = (await t.ok('network.create', t.s, net({ bridge: 'br-lab' }))) as string;
    await t.ok('network.destroy', t.s, again);
    await t.ok('network.destroy', t.s, (await t.ok('network.create', t.s, net({ bridge: 'br-lab' }))) as string);

    // The management network has its PIF; the host-internal one is the system's.
    const mgmt = await t.rec('network', t.network);
    assert.deepEqual(await t.err('network.destroy', t.s, t.network), ['NETWORK_CONTAINS_PIF', ...(mgmt.PIFs as string[])]);
    const [himn] = (await t.ok('network.get_by_name_label', t.s, 'Host internal management network')) as string[];
    assert.deepEqual(await t.err('network.destroy', t.s, himn!), ['CANNOT_DESTROY_SYSTEM_NETWORK', himn!]);

    // A VIF attached to a running VM holds its network; one that is not goes with it.
    const vm = await t.makeVm('on-a');
    const vif = (await t.ok('VIF.create', t.s, t.vifRecord(vm, { network: a }))) as string;
    await t.startVm(vm);
    assert.deepEqual(await t.err('network.destroy', t.s, a), ['NETWORK_CONTAINS_VIF', vif]);
    await t.ok('VM.hard_shutdown', t.s, vm);
    await t.ok('network.destroy', t.s, a);
    assert.deepEqual(await t.err('VIF.get_record', t.s, vif), ['HANDLE_INVALID', 'VIF', vif]);
    assert.deepEqual((await t.rec('VM', vm)).VIFs, []);
  } finally {
    await t.close();
  }
});
