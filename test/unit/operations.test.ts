// allowed_operations of VMs, hosts, the pool, SRs and VDIs as xapi computes and lists them, kept
// current as things change; the errors of the checks with xapi's parameters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newStruct, type RpcStruct } from '../../src/rpc/rpc.js';
import { struct } from './api-client.js';
import { GiB, vmHost, waitFor } from './vm-host.js';
import { checkOperation, vmFacts } from '../../src/xapi/vm-lifecycle.js';
import { hostOperationError } from '../../src/xapi/host-operations.js';
import { srOperationError } from '../../src/xapi/storage-operations.js';

const allowed = (r: RpcStruct) => r.allowed_operations as string[];

test("a halted VM: xapi's allowed_operations, in xapi's order (the datamodel's, reversed)", async () => {
  const t = await vmHost();
  try {
    const vm = await t.makeVm('halted');
    assert.deepEqual(allowed(await t.vmRec(vm)), [
      'create_vtpm',
      'destroy',
      'metadata_export',
      'export',
      'make_into_template',
      'changing_NVRAM',
      'changing_shadow_memory',
      'changing_static_range',
      'changing_dynamic_range',
      'migrate_send',
      'start_on',
      'start',
      'copy',
      'clone',
      'snapshot',
    ]);
  } finally {
    await t.close();
  }
});

test('blocked operations: refused with the reason, and gone from allowed_operations at once', async () => {
  const t = await vmHost();
  try {
    const vm = await t.makeVm('blocked');
    await t.ok('VM.add_to_blocked_operations', t.s, vm, 'start', 'maintenance');
    assert.ok(!allowed(await t.vmRec(vm)).includes('start'));
    assert.deepEqual(await t.err('VM.start', t.s, vm, false, false), ['OPERATION_BLOCKED', vm, 'maintenance']);
    await t.ok('VM.remove_from_blocked_operations', t.s, vm, 'start');
    assert.ok(allowed(await t.vmRec(vm)).includes('start'));
  } finally {
    await t.close();
  }
});

test("an HVM guest without its agent: clean operations lack the guest's features", async () => {
  // the agent never reports within the test
  const t = await vmHost({ agentDelayMs: 600_000 });
  try {
    const vm = await t.makeVm('no-agent');
    await t.ok('VM.start', t.s, vm, false, false);
    const ops = allowed(await t.vmRec(vm));
    for (const op of ['clean_shutdown', 'clean_reboot', 'suspend', 'checkpoint']) assert.ok(!ops.includes(op), `${op} allowed`);
    for (const op of ['hard_shutdown', 'hard_reboot', 'pause', 'snapshot']) assert.ok(ops.includes(op), `${op} not allowed`);
    assert.deepEqual(await t.err('VM.clean_shutdown', t.s, vm), ['VM_LACKS_FEATURE', vm]);
    assert.deepEqual(await t.err('VM.assert_operation_valid', t.s, vm, 'suspend'), ['VM_LACKS_FEATURE', vm]);
    await t.ok('VM.hard_shutdown', t.s, vm);
    assert.equal((await t.vmRec(vm)).power_state, 'Halted');
  } finally {
    await t.close();
  }
});

test("operation names in errors are xapi's, several operations in progress are listed together", async () => {
  const t = await vmHost();
  try {
    const vm = await t.makeVm('names');
    const f = await vmFacts(t.host.db, vm);
    const busy = { ...f, vm: { ...f.vm, current_operations: { t1: 'changing_VCPUs' as const, t2: 'export' as const } } };
    assert.deepEqual(checkOperation(busy, 'start')?.slice(1), ['VM', vm, '{(unknown operation),export}', '{t1,t2}']);
    const one = { ...f, vm: { ...f.vm, current_operations: { t1: 'data_source_op' as const } } };
    assert.deepEqual(checkOperation(one, 'start')?.slice(1), ['VM', vm, 'data_sources_op', 't1']);
    const template = { ...f, vm: { ...f.vm, is_a_template: true } };
    assert.deepEqual(checkOperation(template, 'start')?.slice(1), [vm, 'start']);
    // clones and exports run together
    assert.equal(checkOperation({ ...f, vm: { ...f.vm, current_operations: { t1: 'export' as const } } }, 'clone'), undefined);
  } finally {
    await t.close();
  }
});

test("host: allowed_operations in xapi's order; disabling allows reboot and shutdown and stops VM starts", async () => {
  const t = await vmHost();
  try {
    const host = t.host.hostRef;
    assert.deepEqual(allowed(await t.rec('host', host)), ['vm_migrate', 'provision', 'vm_resume', 'enable', 'evacuate', 'vm_start']);
    assert.equal((await hostOperationError(t.host.db, host, 'reboot'))?.code, 'HOST_NOT_DISABLED');
    assert.deepEqual((await hostOperationError(t.host.db, host, 'power_on'))?.params, [host]);
    await t.ok('host.disable', t.s, host);
    assert.deepEqual(allowed(await t.rec('host', host)), [
      'vm_migrate',
      'provision',
      'vm_resume',
      'apply_updates',
      'enable',
      'reboot',
      'evacuate',
      'vm_start',
      'shutdown',
    ]);
    const vm = await t.makeVm('nowhere');
    assert.deepEqual(await t.err('VM.start', t.s, vm, false, false), ['HOST_DISABLED', host]);
    await t.ok('host.enable', t.s, host);
    assert.deepEqual(allowed(await t.rec('host', host)), ['vm_migrate', 'provision', 'vm_resume', 'enable', 'evacuate', 'vm_start']);
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual((await t.rec('host', host)).current_operations, newStruct());
    await t.ok('VM.hard_shutdown', t.s, vm);
    // a VM arriving (resume) and the host leaving (shutdown) exclude each other, named as xapi names them
    await t.host.db.update('host', host, { current_operations: { T: 'vm_resume' } });
    assert.deepEqual((await hostOperationError(t.host.db, host, 'evacuate'))?.params, ['host', host, 'VM.resume', 'T']);
  } finally {
    await t.close();
  }
});

test('pool: every operation but disabling HA, which is not enabled', async () => {
  const t = await vmHost();
  try {
    const [pool] = (await t.ok('pool.get_all', t.s)) as string[];
    assert.deepEqual(allowed(await t.rec('pool', pool!)), [
      'ha_enable',
      'cluster_create',
      'designate_new_master',
      'tls_verification_enable',
      'configure_repositories',
      'sync_updates',
      'apply_updates',
      'cert_refresh',
      'exchange_certificates_on_join',
      'exchange_ca_certificates_on_join',
      'copy_primary_host_certs',
      'eject',
      'get_updates',
    ]);
  } finally {
    await t.close();
  }
});

test("SR: allowed_operations from the driver's features and the PBDs, in xapi's order; recomputed on unplug", async () => {
  const t = await vmHost();
  try {
    const [sr] = (await t.ok('SR.get_by_name_label', t.s, 'Local storage')) as string[];
    const plugged = [
      'vdi_enable_cbt',
      'vdi_list_changed_blocks',
      'unplug',
      'plug',
      'pbd_create',
      'vdi_disable_cbt',
      'update',
      'pbd_destroy',
      'vdi_resize',
      'vdi_clone',
      'vdi_data_destroy',
      'scan',
      'vdi_snapshot',
      'vdi_mirror',
      'vdi_create',
      'vdi_destroy',
      'vdi_set_on_boot',
    ];
    assert.deepEqual(allowed(await t.rec('SR', sr!)), plugged);
    assert.deepEqual((await srOperationError(t.host.db, sr!, 'destroy'))?.params, [sr]);
    assert.equal((await srOperationError(t.host.db, sr!, 'destroy'))?.code, 'SR_HAS_PBD');
    assert.deepEqual((await srOperationError(t.host.db, sr!, 'vdi_introduce'))?.params, [sr]);
    const vdi = (await t.ok(
      'VDI.create',
      t.s,
      struct({
        name_label: 'd',
        name_description: '',
        SR: sr!,
        virtual_size: BigInt(GiB),
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: newStruct(),
        xenstore_data: newStruct(),
        sm_config: newStruct(),
        tags: [],
      }),
    )) as string;
    const [pbd] = (await t.rec('SR', sr!)).PBDs as string[];
    await t.ok('PBD.unplug', t.s, pbd!);
    const unplugged = allowed(await t.rec('SR', sr!));
    assert.ok(unplugged.includes('forget'));
    // the SR still holds a disk
    assert.ok(!unplugged.includes('destroy'));
    assert.equal((await srOperationError(t.host.db, sr!, 'destroy'))?.code, 'SR_NOT_EMPTY');
    await t.ok('PBD.plug', t.s, pbd!);
    assert.deepEqual(allowed(await t.rec('SR', sr!)), plugged);
    await t.ok('VDI.destroy', t.s, vdi);
    // operations in progress: the first by OCaml's order of variants blocks all but plug, the
    // first that is not a plug blocks plugs; named as xapi names SR operations
    await t.host.db.update('SR', sr!, { current_operations: { B: 'vdi_resize', A: 'plug' } });
    assert.deepEqual((await srOperationError(t.host.db, sr!, 'scan'))?.params, ['SR', sr, 'plug', 'A']);
    assert.deepEqual((await srOperationError(t.host.db, sr!, 'plug'))?.params, ['SR', sr, 'VDI.resize', 'B']);
    await t.host.db.update('SR', sr!, { current_operations: {} });
  } finally {
    await t.close();
  }
});

test("VDI: allowed_operations follow its disk's attachment to a running VM", async () => {
  const t = await vmHost();
  try {
    const [sr] = (await t.ok('SR.get_by_name_label', t.s, 'Local storage')) as string[];
    const vdi = (await t.ok(
      'VDI.create',
      t.s,
      struct({
        name_label: 'disk',
        name_description: '',
        SR: sr!,
        virtual_size: BigInt(GiB),
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: newStruct(),
        xenstore_data: newStruct(),
        sm_config: newStruct(),
        tags: [],
      }),
    )) as string;
    // xapi's Set order (by variant); resize_online needs a feature this driver lacks
    const detached = ['copy', 'generate_config', 'clone', 'forget', 'update', 'resize', 'snapshot', 'destroy'];
    assert.deepEqual(allowed(await t.rec('VDI', vdi)), detached);
    const vm = await t.makeVm('with-disk');
    await t.ok(
      'VBD.create',
      t.s,
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
    await t.ok('VM.start', t.s, vm, false, false);
    await waitFor(async () => allowed(await t.rec('VDI', vdi)).length === 2, "the VDI's operations following the attached disk");
    assert.deepEqual(allowed(await t.rec('VDI', vdi)), ['clone', 'snapshot']);
    assert.deepEqual(await t.err('VDI.destroy', t.s, vdi), ['VDI_IN_USE', vdi, 'destroy']);
    await t.ok('VM.hard_shutdown', t.s, vm);
    assert.deepEqual(allowed(await t.rec('VDI', vdi)), detached);
  } finally {
    await t.close();
  }
});
