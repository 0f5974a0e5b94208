// Forwarding of the calls that need a host seeing certain SRs, or the VM's own host, in a pool of
// two real processes: a VM whose disk is on the member's local SR (only the member sees it) is
// cloned, snapshotted and checkpointed there; its running domain's VCPUs and xenstore are set
// there; its disk is copied to a shared SR by the member; SR.destroy and SR.forget reach the
// hosts holding PBDs; PBD.set_device_config is stored by the PBD's host. Which host did the
// work shows in the coordinator's task (resident_on, set with xapi's forwarded / forwarded_to),
// kept by an Async call; errors on that path too.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { RpcFailure, jsonCall, login, waitTask } from './client.js';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { localSrOf, startPool, type TestPool } from './pool-harness.js';
import { vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
let pool: TestPool;
let url: string;
let s: string;
let dir: string;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

/** Runs `Async.<method>` and returns its finished task record. */
async function asyncCall(method: string, ...params: unknown[]): Promise<Record<string, unknown>> {
  const task = (await call(`Async.${method}`, ...params)) as string;
  return waitTask(url, s, task, 60_000);
}

async function rejects(p: Promise<unknown>, error: unknown[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof RpcFailure, String(e));
    assert.deepEqual(e.error, error);
    return true;
  });
}

async function createDisk(sr: string, name: string, readOnly = false): Promise<string> {
  return (await call('VDI.create', {
    SR: sr,
    virtual_size: MiB,
    name_label: name,
    name_description: '',
    type: 'user',
    sharable: false,
    read_only: readOnly,
    other_config: {},
    xenstore_data: {},
    sm_config: {},
    tags: [],
  })) as string;
}

async function attach(vm: string, vdi: string, userdevice: string): Promise<void> {
  await call('VBD.create', {
    VM: vm,
    VDI: vdi,
    userdevice,
    bootable: userdevice === '0',
    mode: 'RW',
    type: 'Disk',
    unpluggable: false,
    empty: false,
    other_config: {},
    qos_algorithm_type: '',
    qos_algorithm_params: {},
  });
}

/**
 * The task ran on `host`: the coordinator forwarded it there (the task's resident_on; its
 * forwarded/forwarded_to are internal fields) and completed it.
 */
function assertForwarded(task: Record<string, unknown>, host: string): void {
  assert.equal(task.status, 'success', JSON.stringify(task.error_info));
  assert.equal(task.resident_on, host);
}

let member: string;
let coordinator: string;
let vm: string;
let memberDisk: string;

before(async () => {
  pool = await startPool(2);
  url = pool.coordinator.url;
  s = pool.session;
  [coordinator, member] = pool.refs as [string, string];
  dir = await mkdtemp(join(tmpdir(), 'xapi-fwd-'));
  memberDisk = await createDisk(await localSrOf(call, member), 'member disk');
  vm = (await call(
    'VM.create',
    vmRecord('on member storage', { memory: 256 * MiB }, { HVM_boot_policy: '', domain_type: 'pv' }),
  )) as string;
  await call('VM.set_VCPUs_max', vm, 2);
  await attach(vm, memberDisk, '0');
});

after(async () => {
  await pool?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('VM.clone, snapshot and revert of a halted VM run on the host that sees the VM SRs', { timeout: 120_000 }, async () => {
  const clone = await asyncCall('VM.clone', vm, 'the clone');
  assertForwarded(clone, member);
  const snap = await asyncCall('VM.snapshot', vm, 'the snapshot', []);
  assertForwarded(snap, member);
  // the new VMs' disks are on the member's SR, made by the member
  const cloneRef = /<value>(OpaqueRef:[^<]+)<\/value>/.exec(clone.result as string)![1]!;
  const [vbd] = (await call('VM.get_VBDs', cloneRef)) as string[];
  const vdi = (await call('VBD.get_VDI', vbd)) as string;
  assert.equal(await call('VDI.get_SR', vdi), await localSrOf(call, member));
  assert.deepEqual(await call('VM.get_current_operations', vm), {});
  // a revert of the halted VM runs there too
  const snapRef = /<value>(OpaqueRef:[^<]+)<\/value>/.exec(snap.result as string)![1]!;
  assertForwarded(await asyncCall('VM.revert', snapRef), member);
});

test('no host sees all the SRs of a VM: NO_HOSTS_AVAILABLE, and no marks left', { timeout: 60_000 }, async () => {
  const split = (await call('VM.create', vmRecord('split storage', { memory: 128 * MiB }))) as string;
  await attach(split, await createDisk(await localSrOf(call, member), 'here'), '0');
  await attach(split, await createDisk(await localSrOf(call, coordinator), 'there'), '1');
  await rejects(call('VM.clone', split, 'x'), ['NO_HOSTS_AVAILABLE']);
  await rejects(call('VM.snapshot', split, 'x', []), ['NO_HOSTS_AVAILABLE']);
  assert.deepEqual(await call('VM.get_current_operations', split), {});
});

test('a VM running on the member: live setters and a running checkpoint run there', { timeout: 120_000 }, async () => {
  await call('VM.start', vm, false, false);
  assert.equal(await call('VM.get_resident_on', vm), member);
  assertForwarded(await asyncCall('VM.set_VCPUs_number_live', vm, 2), member);
  assert.equal(await call('VM_metrics.get_VCPUs_number', await call('VM.get_metrics', vm)), 2);
  // the member refuses what its domain cannot take, and the caller hears it
  const refused = await asyncCall('VM.set_VCPUs_number_live', vm, 5);
  assert.deepEqual(refused.error_info, ['INVALID_VALUE', 'nvcpu', '5']);
  assert.equal(refused.resident_on, member);
  // no Async form: the coordinator's own domain manager has no such domain, so success says where it ran
  await call('VM.set_xenstore_data', vm, { 'vm-data/x': '1' });
  assertForwarded(await asyncCall('VM.set_memory_dynamic_range', vm, 256 * MiB, 256 * MiB), member);
  assert.equal(await call('VM.get_memory_dynamic_min', vm), 256 * MiB);
  const checkpoint = await asyncCall('VM.checkpoint', vm, 'running checkpoint');
  assertForwarded(checkpoint, member);
  assert.equal(await call('VM.get_power_state', vm), 'Running');
  assert.equal(await call('VM.get_resident_on', vm), member);
  assert.deepEqual(await call('VM.get_current_operations', vm), {});
});

test('VM.hard_shutdown of a Suspended VM runs on a host seeing its disks', { timeout: 120_000 }, async () => {
  await call('VM.suspend', vm);
  assert.equal(await call('VM.get_power_state', vm), 'Suspended');
  assertForwarded(await asyncCall('VM.hard_shutdown', vm), member);
  assert.equal(await call('VM.get_power_state', vm), 'Halted');
  assert.equal(await call('VM.get_suspend_VDI', vm), 'OpaqueRef:NULL');
});

let shared: string;

test('VDI.copy runs on a host seeing both SRs; its errors come back from there', { timeout: 120_000 }, async () => {
  shared = (await call(
    'SR.create',
    coordinator,
    { server: '127.0.0.1', serverpath: dir },
    0,
    'shared',
    '',
    'nfs',
    'user',
    true,
    {},
  )) as string;
  assert.equal(((await call('SR.get_PBDs', shared)) as string[]).length, 2);
  const [vbd] = (await call('VM.get_VBDs', vm)) as string[];
  memberDisk = (await call('VBD.get_VDI', vbd)) as string; // the revert replaced the first one
  const copy = await asyncCall('VDI.copy', memberDisk, shared, 'OpaqueRef:NULL', 'OpaqueRef:NULL');
  assertForwarded(copy, member);
  const copied = /<value>(OpaqueRef:[^<]+)<\/value>/.exec(copy.result as string)![1]!;
  assert.equal(await call('VDI.get_SR', copied), shared);
  // into a read-only VDI: refused by the member that runs the copy
  const into = await createDisk(shared, 'read only', true);
  const refused = await asyncCall('VDI.copy', memberDisk, shared, 'OpaqueRef:NULL', into);
  assert.deepEqual(refused.error_info, ['VDI_READONLY', into]);
  assert.equal(refused.resident_on, member);
  await call('VDI.destroy', into);
  await call('VDI.destroy', copied);
});

test('SR.forget goes to every PBD host; SR.destroy runs on the SR master', { timeout: 120_000 }, async () => {
  for (const pbd of (await call('SR.get_PBDs', shared)) as string[]) {
    await rejects(call('SR.forget', shared), ['SR_HAS_PBD', shared]);
    await call('PBD.unplug', pbd);
  }
  const forget = await asyncCall('SR.forget', shared);
  assertForwarded(forget, member);
  assert.deepEqual(
    await call('SR.get_all'),
    ((await call('SR.get_all')) as string[]).filter((r) => r !== shared),
  );

  // a non-shared SR of the member, in a directory of its own: destroyed by the member
  const own = join(dir, 'own');
  await mkdir(own);
  const sr = (await call('SR.create', member, { server: '127.0.0.1', serverpath: own }, 0, 'own', '', 'nfs', 'user', false, {})) as string;
  assert.ok((await readdir(own)).length > 0);
  const [pbd] = (await call('SR.get_PBDs', sr)) as string[];
  await rejects(call('SR.destroy', sr), ['SR_HAS_PBD', sr]);
  assertForwarded(await asyncCall('PBD.unplug', pbd), member);
  assertForwarded(await asyncCall('SR.destroy', sr), member);
  assert.deepEqual(await readdir(own), []);
  await rejects(call('SR.get_record', sr), ['HANDLE_INVALID', 'SR', sr]);
});

test('PBD.set_device_config: the coordinator checks the backend session, the PBD host stores it', { timeout: 60_000 }, async () => {
  const sr = await localSrOf(call, member);
  const [pbd] = (await call('SR.get_PBDs', sr)) as string[];
  const dc = (await call('PBD.get_device_config', pbd)) as Record<string, string>;
  await rejects(call('PBD.set_device_config', pbd, { ...dc, note: 'x' }), ['PERMISSION_DENIED', '']);
  // a session given the SR as its storage backend's (xapi's SM sessions carry _sm_session)
  const sm = await login(url, PASSWORD);
  const smCall = (method: string, ...params: unknown[]) => jsonCall(url, method, [sm, ...params]);
  await smCall('session.add_to_other_config', sm, '_sm_session', sr);
  try {
    const refusedTask = (await smCall('Async.PBD.set_device_config', pbd, { ...dc, SRmaster: 'true' })) as string;
    const refused = await waitTask(url, sm, refusedTask, 30_000);
    assert.deepEqual(refused.error_info, ['VALUE_NOT_SUPPORTED', 'SRmaster', 'true', 'This key is for internal use only']);
    assert.equal(refused.resident_on, member);
    const task = (await smCall('Async.PBD.set_device_config', pbd, { ...dc, note: 'x' })) as string;
    assertForwarded(await waitTask(url, sm, task, 30_000), member);
    assert.deepEqual(await call('PBD.get_device_config', pbd), { ...dc, note: 'x' });
  } finally {
    await smCall('session.logout');
  }
});
let sharedToForget: string;

test("PBD.plug on the member: its own SR is scanned there at once; a shared SR's records are left to the coordinator", {
  timeout: 120_000,
}, async () => {
  // A non-shared SR of the member: the member is its master, and learns at plug what it holds.
  const own = join(dir, 'plug-own');
  await mkdir(own);
  const sr = (await call(
    'SR.create',
    member,
    { server: '127.0.0.1', serverpath: own },
    0,
    'plug own',
    '',
    'nfs',
    'user',
    false,
    {},
  )) as string;
  const disk = await createDisk(sr, 'known again at plug');
  const uuid = (await call('VDI.get_uuid', disk)) as string;
  const size = await call('VDI.get_virtual_size', disk);
  const [pbd] = (await call('SR.get_PBDs', sr)) as string[];
  assertForwarded(await asyncCall('PBD.unplug', pbd), member);
  await call('VDI.forget', disk);
  await rejects(call('VDI.get_by_uuid', uuid), ['UUID_INVALID', 'VDI', uuid]);
  assertForwarded(await asyncCall('PBD.plug', pbd), member);
  const found = (await call('VDI.get_by_uuid', uuid)) as string;
  assert.equal(await call('VDI.get_SR', found), sr);
  assert.equal(await call('VDI.get_virtual_size', found), size);
  await call('VDI.destroy', found);
  await call('PBD.unplug', pbd);
  await call('SR.destroy', sr);

  // A shared SR: its master is the coordinator; the member plugging it scans nothing.
  const there = join(dir, 'plug-shared');
  await mkdir(there);
  sharedToForget = (await call(
    'SR.create',
    coordinator,
    { server: '127.0.0.1', serverpath: there },
    0,
    'plug shared',
    '',
    'nfs',
    'user',
    true,
    {},
  )) as string;
  const shared = await createDisk(sharedToForget, 'forgotten while the member plugs');
  const sharedUuid = (await call('VDI.get_uuid', shared)) as string;
  const pbds = (await call('SR.get_PBDs', sharedToForget)) as string[];
  const memberPbd = [];
  for (const p of pbds) if ((await call('PBD.get_host', p)) === member) memberPbd.push(p);
  assert.equal(memberPbd.length, 1);
  await call('PBD.unplug', memberPbd[0]);
  await call('VDI.forget', shared);
  assertForwarded(await asyncCall('PBD.plug', memberPbd[0]), member);
  await rejects(call('VDI.get_by_uuid', sharedUuid), ['UUID_INVALID', 'VDI', sharedUuid]);
  // An SR.scan (on the coordinator, its master) finds it.
  await call('SR.scan', sharedToForget);
  assert.equal(await call('VDI.get_SR', await call('VDI.get_by_uuid', sharedUuid)), sharedToForget);
});

test('task.cancel of a task forwarded to the member runs there; the member offline: HOST_OFFLINE for it, and SR.forget skips it', {
  timeout: 120_000,
}, async () => {
  // A task the coordinator forwarded to the member (only the member sees the disk's SR).
  const task = (await call('Async.VDI.copy', memberDisk, sharedToForget, 'OpaqueRef:NULL', 'OpaqueRef:NULL')) as string;
  assertForwarded(await waitTask(url, s, task, 60_000), member);
  await call('task.cancel', task);
  assert.ok(Object.values((await call('task.get_current_operations', task)) as Record<string, string>).includes('cancel'));
  for (const pbd of (await call('SR.get_PBDs', sharedToForget)) as string[]) await call('PBD.unplug', pbd);

  // The member stopped cleanly is offline at once; its call log, written out at its close, holds
  // the cancel it was forwarded.
  const m = pool.hosts[1]!;
  await stopXapi(m, true);
  assert.match(await readFile(join(m.stateDir, 'xapi.log'), 'utf8'), /"method":"task\.cancel"[^\n]*"ok":true/);
  assert.equal(await call('host_metrics.get_live', await call('host.get_metrics', member)), false);
  await rejects(call('task.cancel', task), ['HOST_OFFLINE', member]);

  // SR.forget goes on without the offline host (forward_sr_all_op): the SR and its PBDs are gone.
  const pbds = (await call('SR.get_PBDs', sharedToForget)) as string[];
  await call('SR.forget', sharedToForget);
  await rejects(call('SR.get_record', sharedToForget), ['HANDLE_INVALID', 'SR', sharedToForget]);
  for (const pbd of pbds) await rejects(call('PBD.get_record', pbd), ['HANDLE_INVALID', 'PBD', pbd]);

  // Back, the member is live again (at its pool.hello) without the SR.
  const again = await startXapi({ stateDir: m.stateDir, address: m.address, httpPort: m.httpPort, httpsPort: m.httpsPort });
  pool.hosts[1] = again;
  await waitUntil(
    'the member live again',
    async () => (await call('host_metrics.get_live', await call('host.get_metrics', member))) === true,
  );
  assert.deepEqual(await call('host.get_PBDs', member), [await pbdOf(member, await localSrOf(call, member))]);
});

async function pbdOf(host: string, sr: string): Promise<string> {
  const [[ref]] = Object.entries((await call('PBD.get_all_records')) as Record<string, { host: string; SR: string }>).filter(
    ([, p]) => p.host === host && p.SR === sr,
  ) as [[string, unknown]];
  return ref;
}
