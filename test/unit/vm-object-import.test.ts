// The metadata import (PUT /import_metadata's work, xapi's import.ml Metadata_import), in
// process: a VM's export brought back into the same host's database, its disks already there.
// The checks in xapi's order and with its parameters (a VM of the same uuid, its power state
// and version, the memory of a live import, a disk that is not there), a dry run making nothing,
// the VIFs and VDIs found by maps_to, uuids and MACs kept only with restore. The same importer's
// full import (an XVA's): disks made on the SR, a network made, restore replacing an older VM.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memoryHost } from '../../src/host/memory-host.js';
import { checkSession } from '../../src/api/session-check.js';
import type { RpcStruct } from '../../src/rpc/rpc.js';
import { XapiError } from '../../src/rpc/errors.js';
import { exportObjects } from '../../src/xapi/vm-export.js';
import type { MetadataImportOptions } from '../../src/xapi/vm-import-export.js';
import { importObjects } from '../../src/xapi/vm-object-import.js';
import { apiClient, struct } from './api-client.js';
import { vmStruct } from '../vm-record.js';

const MiB = 1024 * 1024;

async function setup() {
  const h = await memoryHost({ rootPassword: 'pw' });
  h.xenops.start();
  const { ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const [network] = (await ok('network.get_by_name_label', s, 'Pool-wide network associated with eth0')) as string[];
  const pool = ((await ok('pool.get_all', s)) as string[])[0]!;
  const sr = (await ok('pool.get_default_SR', s, pool)) as string;
  const vm = (await ok('VM.create', s, vmStruct('exported', { memory: 64 * MiB }, { other_config: struct({ mine: 'yes' }) }))) as string;
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
      other_config: struct({}),
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
      empty: false,
      other_config: struct({}),
      qos_algorithm_type: '',
      qos_algorithm_params: struct({}),
    }),
  );
  const vif = (await ok(
    'VIF.create',
    s,
    struct({
      device: '0',
      network,
      VM: vm,
      MAC: '',
      MTU: 1500n,
      other_config: struct({}),
      qos_algorithm_type: '',
      qos_algorithm_params: struct({}),
    }),
  )) as string;
  const session = await checkSession(h.host, s);
  const task = await h.dispatcher.tasks.create(session, 'metadata import', false);
  const call = h.dispatcher.taskCall(session, task);
  const { objects } = await exportObjects(call, vm, { withSuspendImage: false });
  const run = async (o: Partial<MetadataImportOptions>, objs = objects) => {
    const { restore, force, ...metadata } = { restore: false, force: false, dryRun: false, live: false, checkCpu: false, ...o };
    return (await importObjects(call, objs, { type: { kind: 'metadata', ...metadata }, restore, force })).vms;
  };
  const failure = async (p: Promise<unknown>) => {
    try {
      await p;
    } catch (e) {
      if (e instanceof XapiError) return [e.code, ...e.params];
      throw e;
    }
    assert.fail('expected a XenAPI error');
  };
  const runFull = async (o: { restore?: boolean; force?: boolean }, objs = objects) =>
    importObjects(call, objs, { type: { kind: 'full', storage: h.storage, sr }, restore: false, force: false, ...o });
  return { h, ok, err, s, sr, vm, vdi, vif, network, objects, run, runFull, failure, task };
}

test('the checks: a VM of the same uuid (running, then not newer), a disk not there, the memory of a live import', async () => {
  const t = await setup();
  try {
    const count = async () => (await t.h.host.db.all('VM')).length;
    const before = await count();
    // the same uuid, halted: the export is not newer (version 0 both)
    assert.deepEqual(await t.failure(t.run({ restore: true, dryRun: true })), ['VM_TO_IMPORT_IS_NOT_NEWER_VERSION', t.vm, '0', '0']);
    // running: refused whatever its version (unless force)
    await t.ok('VM.start', t.s, t.vm, false, false);
    assert.deepEqual(await t.failure(t.run({ restore: true, dryRun: true })), ['VM_BAD_POWER_STATE', t.vm, 'Halted', 'Running']);
    assert.deepEqual(await t.run({ restore: true, dryRun: true, force: true }), []);
    await t.ok('VM.hard_shutdown', t.s, t.vm);
    // a disk that is not there: by SR and location (its SR is here)
    const moved = t.objects.map((o) =>
      o.class === 'VDI' ? { ...o, snapshot: { ...(o.snapshot as RpcStruct), location: 'elsewhere' } as RpcStruct } : o,
    );
    assert.deepEqual(await t.failure(t.run({}, moved)), ['VDI_LOCATION_MISSING', t.sr, 'elsewhere']);
    // ... which a live migration's dry run expects (the disks are copied later)
    assert.deepEqual(await t.run({ dryRun: true, live: true }, moved), []);
    // a running VM's live import: this host's free memory
    const huge = t.objects.map((o) =>
      o.class === 'VM'
        ? { ...o, snapshot: { ...(o.snapshot as RpcStruct), power_state: 'Running', memory_dynamic_min: String(1024 ** 5) } as RpcStruct }
        : o,
    );
    const [code, needed, available] = await t.failure(t.run({ dryRun: true, live: true }, huge));
    assert.equal(code, 'HOST_NOT_ENOUGH_FREE_MEMORY');
    assert.ok(Number(needed) > Number(available), `${needed} > ${available}`);
    assert.equal(await count(), before, 'the dry runs and failures made no VM');
  } finally {
    await t.h.close();
  }
});

test('the records made: a new uuid and MACs without restore; maps_to finds the disk and the network', async () => {
  const t = await setup();
  try {
    const [copy] = await t.run({});
    const r = (await t.ok('VM.get_record', t.s, copy!)) as RpcStruct;
    assert.notEqual(r.uuid, await t.ok('VM.get_uuid', t.s, t.vm));
    assert.equal(r.power_state, 'Halted');
    assert.equal((r.other_config as RpcStruct).mine, 'yes');
    const [vbd] = r.VBDs as string[];
    assert.equal(await t.ok('VBD.get_VDI', t.s, vbd!), t.vdi, 'the disk found by SR and location');
    const [vif] = r.VIFs as string[];
    assert.equal(await t.ok('VIF.get_network', t.s, vif!), t.network);
    assert.notEqual(await t.ok('VIF.get_MAC', t.s, vif!), await t.ok('VIF.get_MAC', t.s, t.vif));

    // maps_to names the disk and the network the import uses, and is not kept on the VIF
    const other = (await t.ok(
      'VDI.create',
      t.s,
      struct({
        name_label: 'copy',
        name_description: '',
        SR: t.sr,
        virtual_size: BigInt(4 * MiB),
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: struct({}),
      }),
    )) as string;
    const net = (await t.ok(
      'network.create',
      t.s,
      struct({ name_label: 'elsewhere', name_description: '', MTU: 1500n, other_config: struct({}) }),
    )) as string;
    const mapped = t.objects.map((o) => {
      const snap = o.snapshot as RpcStruct;
      if (o.class === 'VDI') return { ...o, snapshot: { ...snap, other_config: { maps_to: other } } as RpcStruct };
      if (o.class === 'VIF') return { ...o, snapshot: { ...snap, other_config: { maps_to: net, kept: 'yes' } } as RpcStruct };
      // a migration's export carries its mark (cross-pool.ts transferMetadata)
      if (o.class === 'VM')
        return {
          ...o,
          snapshot: { ...snap, other_config: { ...(snap.other_config as RpcStruct), migrate_task: 'xpool:test' } } as RpcStruct,
        };
      return o;
    });
    const [again] = await t.run({ live: true }, mapped);
    const a = (await t.ok('VM.get_record', t.s, again!)) as RpcStruct;
    assert.equal(await t.ok('VBD.get_VDI', t.s, (a.VBDs as string[])[0]!), other);
    const vifA = (a.VIFs as string[])[0]!;
    assert.equal(await t.ok('VIF.get_network', t.s, vifA), net);
    assert.deepEqual({ ...((await t.ok('VIF.get_other_config', t.s, vifA)) as RpcStruct) }, { kept: 'yes' });
    // a live migration's import is marked as the migration's until claimed
    assert.equal((a.other_config as RpcStruct).migrate_task, 'xpool:test');
    // ... and only a live import keeps it
    const [notLive] = await t.run({}, mapped);
    assert.equal(((await t.ok('VM.get_other_config', t.s, notLive!)) as RpcStruct).migrate_task, undefined);
  } finally {
    await t.h.close();
  }
});

test('a full import (an XVA) through the same importer: disks made, a network made when none matches, restore replaces an older halted VM', async () => {
  const t = await setup();
  try {
    // a network by a name this host does not have is made, marked with the import's task
    const renamed = t.objects.map((o) =>
      o.class === 'network'
        ? { ...o, snapshot: { ...(o.snapshot as RpcStruct), name_label: 'brought', uuid: 'x', bridge: 'x' } as RpcStruct }
        : o,
    );
    const made = await t.runFull({}, renamed);
    assert.equal(made.disks.size, 1);
    const [newVdi] = [...made.disks.values()];
    assert.notEqual(newVdi, t.vdi, 'a new disk on the SR');
    assert.equal(await t.ok('VDI.get_SR', t.s, newVdi!), t.sr);
    const r = (await t.ok('VM.get_record', t.s, made.vms[0]!)) as RpcStruct;
    assert.equal((r.other_config as RpcStruct).import_task, t.task);
    assert.equal(await t.ok('VBD.get_VDI', t.s, (r.VBDs as string[])[0]!), newVdi);
    const net = (await t.ok('VIF.get_network', t.s, (r.VIFs as string[])[0]!)) as string;
    assert.notEqual(net, t.network);
    assert.equal(await t.ok('network.get_name_label', t.s, net), 'brought');
    assert.equal(((await t.ok('network.get_other_config', t.s, net)) as RpcStruct).import_task, t.task);
    await made.undo();
    assert.deepEqual(await t.err('VM.get_record', t.s, made.vms[0]!), ['HANDLE_INVALID', 'VM', made.vms[0]]);
    assert.deepEqual(await t.err('network.get_record', t.s, net), ['HANDLE_INVALID', 'network', net]);

    // restore of the same uuid: not newer is refused (xapi's check, not DUPLICATE_VM); newer replaces it
    assert.deepEqual(await t.failure(t.runFull({ restore: true })), ['VM_TO_IMPORT_IS_NOT_NEWER_VERSION', t.vm, '0', '0']);
    const newer = t.objects.map((o) =>
      o.class === 'VM' ? { ...o, snapshot: { ...(o.snapshot as RpcStruct), version: '3' } as RpcStruct } : o,
    );
    const uuid = await t.ok('VM.get_uuid', t.s, t.vm);
    const restored = await t.runFull({ restore: true }, newer);
    assert.deepEqual(await t.err('VM.get_record', t.s, t.vm), ['HANDLE_INVALID', 'VM', t.vm]);
    assert.equal(await t.ok('VM.get_uuid', t.s, restored.vms[0]!), uuid);
    assert.equal(await t.ok('VM.get_version', t.s, restored.vms[0]!), 4n);
  } finally {
    await t.h.close();
  }
});
