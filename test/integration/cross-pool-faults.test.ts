// A cross-pool migration's hosts killed (SIGKILL) at chosen points (src/util/fault-point.ts),
// with real processes: pool A (a coordinator and the source member) and pool B (the destination,
// a standalone host; a second host joins it for the last test). Afterwards the VM runs on
// exactly one host in one pool, or is halted in A with its disk holding what it held; and once
// the killed host is back, pool B holds no half copy and no VM record the migration did not
// finish. The windows: the claim's answer lost (B killed right after its claim), a VM without
// disks whose source dies between the import and the claim, another of B's hosts restarting
// while a copy on a shared SR is under way.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { jsonCall, login, putBody, xapiFailure } from './client.js';
import { PASSWORD, startXapi, stopHosts, stopXapi, type XapiProcess } from './harness.js';
import { createSharedSr, hostRef, joinPool, loginWhenServing, startHosts } from './pool-harness.js';
import { simulatorVms } from './sim-state.js';
import { vbdRecord, vdiRecord, vifRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const NULL = 'OpaqueRef:NULL';
const FAST = { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200' };
type Rec = Record<string, unknown>;

let a0: XapiProcess;
/** The source (A's member) and the destination (B), replaced at each restart. */
let src: XapiProcess;
let dst: XapiProcess;
/** A second host for pool B (joined in the last test). */
let dst2: XapiProcess;
let sharedDir: string | undefined;
let sa: string;
let sb: string;
let hostA1: string;
let hostB: string;
let netA: string;
let netB: string;

const callA = (method: string, ...params: unknown[]) => jsonCall(a0.url, method, [sa, ...params]);
const callB = (method: string, ...params: unknown[]) => jsonCall(dst.url, method, [sb, ...params]);

async function managementNetwork(url: string, s: string): Promise<string> {
  const pifs = (await jsonCall(url, 'PIF.get_all_records', [s])) as Record<string, { management: boolean; network: string }>;
  return Object.values(pifs).find((p) => p.management)!.network;
}

before(async () => {
  [a0, src, dst, dst2] = (await startHosts(4, { env: FAST })) as [XapiProcess, XapiProcess, XapiProcess, XapiProcess];
  await joinPool(a0, src);
  sa = await login(a0.url, PASSWORD);
  sb = await login(dst.url, PASSWORD);
  hostA1 = await hostRef(a0, sa, src);
  hostB = await hostRef(dst, sb, dst);
  netA = await managementNetwork(a0.url, sa);
  netB = await managementNetwork(dst.url, sb);
});

after(async () => {
  await stopHosts([a0, src, dst, dst2]);
  if (sharedDir) await rm(sharedDir, { recursive: true, force: true });
});

/** The source again from its state directory, `point` armed (or none); waits until A has it back. */
async function restartSource(point?: string): Promise<void> {
  const old = src;
  if (old.proc.exitCode === null && old.proc.signalCode === null) await stopXapi(old, true);
  src = await startXapi({
    stateDir: old.stateDir,
    address: old.address,
    httpPort: old.httpPort,
    httpsPort: old.httpsPort,
    env: { ...FAST, XAPI_TEST_FAULT_POINT: point },
  });
  const metrics = (await callA('host.get_metrics', hostA1)) as string;
  await waitUntil(
    'the source back in pool A',
    async () => {
      const refused = await xapiFailure(jsonCall(src.url, 'session.login_with_password', ['root', PASSWORD])).catch(() => []);
      if (refused[0] !== 'HOST_IS_SLAVE') return false;
      return (await callA('host.get_enabled', hostA1)) === true && (await callA('host_metrics.get_live', metrics)) === true;
    },
    { timeoutMs: 90_000, intervalMs: 100 },
  );
}

/** The destination pool's host again, `point` armed (or none); waits until it serves. */
async function restartDestination(point?: string): Promise<void> {
  const old = dst;
  if (old.proc.exitCode === null && old.proc.signalCode === null) await stopXapi(old, true);
  dst = await startXapi({
    stateDir: old.stateDir,
    address: old.address,
    httpPort: old.httpPort,
    httpsPort: old.httpsPort,
    env: { ...FAST, XAPI_TEST_FAULT_POINT: point },
  });
  sb = await loginWhenServing(dst.url);
  await waitUntil('the destination enabled', async () => (await callB('host.get_enabled', hostB)) === true);
}

async function killedAt(h: XapiProcess, point: string): Promise<void> {
  assert.equal(await h.exited, 'SIGKILL', h.output().slice(-3000));
  assert.ok(h.output().includes(`fault point ${point} reached`), `the host died elsewhere than ${point}`);
}

async function contentHash(vdi: string): Promise<string> {
  const res = await fetch(`${src.url}/export_raw_vdi?session_id=${sa}&vdi=${vdi}&format=raw`);
  assert.equal(res.status, 200);
  return createHash('sha256')
    .update(Buffer.from(await res.arrayBuffer()))
    .digest('hex');
}

async function localSr(call: typeof callA, host: string): Promise<string> {
  const pbds = (await call('PBD.get_all_records')) as Record<string, { host: string; SR: string }>;
  for (const pbd of Object.values(pbds)) if (pbd.host === host && (await call('SR.get_type', pbd.SR)) === 'ext') return pbd.SR;
  throw new Error(`no local SR on ${host}`);
}

interface Moving {
  vm: string;
  uuid: string;
  disk: string;
  hash: string;
  domid: unknown;
}

/** A running VM on the source with a 64 MiB disk on its local SR holding 48 MiB of data, and a VIF. */
async function vmOnSource(name: string): Promise<Moving> {
  const disk = (await callA('VDI.create', vdiRecord(await localSr(callA, hostA1), 64 * MiB, `${name} disk`))) as string;
  const data = Buffer.alloc(48 * MiB);
  for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  assert.equal(await putBody(src.url, `/import_raw_vdi?session_id=${sa}&vdi=${disk}&format=raw`, data), 200);
  const vm = (await callA('VM.create', vmRecord(name, { memory: 64 * MiB }))) as string;
  await callA('VBD.create', vbdRecord(vm, disk));
  await callA('VIF.create', vifRecord(vm, netA));
  await callA('VM.start_on', vm, hostA1, false, false);
  await waitUntil('the guest agent reporting', async () => (await callA('VM.get_guest_metrics', vm)) !== NULL);
  return {
    vm,
    uuid: (await callA('VM.get_uuid', vm)) as string,
    disk,
    hash: await contentHash(disk),
    domid: await callA('VM.get_domid', vm),
  };
}

/** Starts the VM's migration to pool B's host (as a task of pool A), its disk to `to` (B's host's local SR by default). */
async function migrateSend(o: Pick<Moving, 'vm' | 'disk'>, to?: string): Promise<string> {
  const dest = await callB('host.migrate_receive', hostB, netB, {});
  const [vif] = (await callA('VM.get_VIFs', o.vm)) as string[];
  const vdiMap = o.disk ? { [o.disk]: to ?? (await localSr(callB, hostB)) } : {};
  return (await jsonCall(a0.url, 'Async.VM.migrate_send', [sa, o.vm, dest, true, vdiMap, { [vif!]: netB }, {}, {}])) as string;
}

async function taskOutcome(task: string): Promise<Rec> {
  await waitUntil('the migration over', async () => (await callA('task.get_status', task)) !== 'pending', {
    timeoutMs: 120_000,
    intervalMs: 100,
  });
  return (await callA('task.get_record', task)) as Rec;
}

/** Pool B holds nothing of the migration: no VM of that uuid, no copy marked as a migration's. */
async function nothingInB(uuid: string): Promise<boolean> {
  if ((await xapiFailure(callB('VM.get_by_uuid', uuid)).catch(() => []))[0] !== 'UUID_INVALID') return false;
  const vdis = (await callB('VDI.get_all_records')) as Record<string, { sm_config: Rec }>;
  return Object.values(vdis).every((v) => v.sm_config.migrate_task === undefined);
}

/** The VM runs on the source, the same domain, on its own disk holding what it held; B's host has no domain of it. */
async function assertIntactOnSource(o: Moving): Promise<void> {
  const r = (await callA('VM.get_record', o.vm)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, hostA1);
  assert.equal(r.domid, o.domid, 'the same domain');
  assert.deepEqual(r.current_operations, {});
  assert.equal(await callA('VBD.get_VDI', (r.VBDs as string[])[0]), o.disk);
  assert.equal(await contentHash(o.disk), o.hash, 'the disk holds what it held');
  assert.equal(simulatorVms(src.stateDir).get(o.uuid)?.domain?.paused, false);
  assert.equal(simulatorVms(dst.stateDir).get(o.uuid)?.domain, undefined);
}

test('the destination pool killed during the disk copy: the VM runs on in A; its restart removes the half copy', {
  timeout: 300_000,
}, async () => {
  const o = await vmOnSource('destination dies');
  await restartDestination('sxm.receive@4');
  const outcome = await taskOutcome(await migrateSend(o));
  assert.equal(outcome.status, 'failure');
  assert.deepEqual(outcome.error_info, ['MIRROR_FAILED', o.disk]);
  await killedAt(dst, 'sxm.receive');
  await assertIntactOnSource(o);
  await restartDestination();
  assert.ok(await nothingInB(o.uuid), 'pool B keeps nothing of the migration');
  // and it migrates then
  const done = await taskOutcome(await migrateSend(o));
  assert.equal(done.status, 'success', JSON.stringify(done.error_info));
  const there = (await callB('VM.get_by_uuid', o.uuid)) as string;
  assert.equal(await callB('VM.get_resident_on', there), hostB);
  assert.deepEqual(await xapiFailure(callA('VM.get_record', o.vm)), ['HANDLE_INVALID', 'VM', o.vm]);
  await callB('VM.hard_shutdown', there);
});

test('the source killed during the disk copy: B drops the half copy at once; the restarted source runs the VM', {
  timeout: 300_000,
}, async () => {
  await restartSource('sxm.copy@4');
  const o = await vmOnSource('source dies copying');
  const outcome = await taskOutcome(await migrateSend(o));
  assert.equal(outcome.status, 'failure');
  assert.deepEqual(outcome.error_info, ['CANNOT_CONTACT_HOST', hostA1]);
  await killedAt(src, 'sxm.copy');
  await waitUntil('pool B clear of the migration', () => nothingInB(o.uuid));
  await restartSource();
  await assertIntactOnSource(o);
  await callA('VM.hard_shutdown', o.vm);
});

test('the source killed with the guest paused, before B claims the VM: halted in A with its disk; B keeps nothing', {
  timeout: 300_000,
}, async () => {
  await restartSource('xpool.leaving');
  const o = await vmOnSource('source dies leaving');
  const outcome = await taskOutcome(await migrateSend(o));
  assert.equal(outcome.status, 'failure');
  await killedAt(src, 'xpool.leaving');
  // B's copy of the memory, whole and paused, goes when its sender is gone unclaimed; so do the
  // VM it imported and the disk's copy
  await waitUntil('pool B clear of the migration', () => nothingInB(o.uuid));
  assert.equal(simulatorVms(dst.stateDir).get(o.uuid)?.domain, undefined);
  await restartSource();
  // B never claimed it: asked at the source's start, it says so, and the VM stays in A
  await waitUntil(
    'the departure settled',
    async () => (await readdir(join(src.stateDir, 'xpool-departures')).catch(() => [])).length === 0,
  );
  const r = (await callA('VM.get_record', o.vm)) as Rec;
  assert.equal(r.power_state, 'Halted');
  assert.equal(await callA('VBD.get_VDI', (r.VBDs as string[])[0]), o.disk);
  assert.equal(await contentHash(o.disk), o.hash, 'the disk holds what it held');
  assert.equal(simulatorVms(src.stateDir).get(o.uuid)?.domain, undefined);
  await callA('VM.start', o.vm, false, false);
  await callA('VM.hard_shutdown', o.vm);
});

test('the source killed right after B claimed the VM: it runs in B only, and leaves A once the source is back', {
  timeout: 300_000,
}, async () => {
  await restartSource('xpool.claimed');
  const o = await vmOnSource('source dies claimed');
  const outcome = await taskOutcome(await migrateSend(o));
  assert.equal(outcome.status, 'failure');
  await killedAt(src, 'xpool.claimed');
  // B, its sender gone after the claim, runs its copy
  const there = (await callB('VM.get_by_uuid', o.uuid)) as string;
  await waitUntil('the VM running in B', async () => simulatorVms(dst.stateDir).get(o.uuid)?.domain?.paused === false);
  const r = (await callB('VM.get_record', there)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, hostB);
  assert.ok(await nothingInB('no such uuid'));
  const vdis = (await callB('VDI.get_all_records')) as Record<string, { sm_config: Rec }>;
  assert.ok(
    Object.values(vdis).every((v) => v.sm_config.migrate_task === undefined),
    'the copies are the VM’s',
  );
  await restartSource();
  // the source let its paused domain go, then asked B, which had claimed the VM: it leaves pool
  // A with its disk
  assert.equal(simulatorVms(src.stateDir).get(o.uuid)?.domain, undefined);
  const gone = async (p: Promise<unknown>, code: string) => (await xapiFailure(p).catch(() => []))[0] === code;
  await waitUntil(
    'the VM and its disk gone from pool A',
    async () =>
      (await gone(callA('VM.get_by_uuid', o.uuid), 'UUID_INVALID')) && (await gone(callA('VDI.get_record', o.disk), 'HANDLE_INVALID')),
  );
  assert.equal(await callB('VM.get_power_state', there), 'Running');
  await callB('VM.hard_shutdown', there);
});

test('the claim’s answer lost (B killed right after claiming): the source keeps the guest paused, asks B, and the VM runs in B only', {
  timeout: 300_000,
}, async () => {
  await restartDestination('xpool.claim-committed');
  // the source stops once it sees the answer lost, so the test looks at it then
  await restartSource('xpool.claim-lost:SIGSTOP');
  const o = await vmOnSource('claim answer lost');
  const task = await migrateSend(o);
  await killedAt(dst, 'xpool.claim-committed');
  // B took the VM and died before answering: the source must not run the guest meanwhile
  await waitUntil('the source seeing the answer lost', () => src.output().includes('fault point xpool.claim-lost reached (SIGSTOP)'), {
    timeoutMs: 60_000,
  });
  assert.notEqual(simulatorVms(src.stateDir).get(o.uuid)?.domain?.paused, false, 'the guest does not run in A');
  assert.equal(await callA('task.get_status', task), 'pending');
  await restartDestination();
  // asked now, B says it took the VM: the source lets it go
  src.proc.kill('SIGCONT');
  const outcome = await taskOutcome(task);
  assert.equal(outcome.status, 'success', JSON.stringify(outcome.error_info));
  const there = (await callB('VM.get_by_uuid', o.uuid)) as string;
  await waitUntil('the VM running in B', async () => simulatorVms(dst.stateDir).get(o.uuid)?.domain?.paused === false);
  assert.equal(await callB('VM.get_resident_on', there), hostB);
  assert.equal(await callB('VM.get_power_state', there), 'Running');
  assert.deepEqual(await xapiFailure(callA('VM.get_record', o.vm)), ['HANDLE_INVALID', 'VM', o.vm]);
  assert.equal(simulatorVms(src.stateDir).get(o.uuid)?.domain, undefined);
  await callB('VM.hard_shutdown', there);
});

test('a VM without disks, its source killed between the import and the claim: B drops the imported VM; it runs on in A', {
  timeout: 300_000,
}, async () => {
  await restartSource('xpool.imported');
  const vm = (await callA('VM.create', vmRecord('no disks', { memory: 64 * MiB }))) as string;
  await callA('VIF.create', vifRecord(vm, netA));
  await callA('VM.start_on', vm, hostA1, false, false);
  const uuid = (await callA('VM.get_uuid', vm)) as string;
  const outcome = await taskOutcome(await migrateSend({ vm, disk: '' }));
  assert.equal(outcome.status, 'failure');
  await killedAt(src, 'xpool.imported');
  // no disk's connection tells B the sender went: the quiet period does
  await waitUntil('pool B clear of the migration', () => nothingInB(uuid), { timeoutMs: 90_000, intervalMs: 500 });
  await restartSource();
  const r = (await callA('VM.get_record', vm)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, hostA1);
  assert.equal(simulatorVms(dst.stateDir).get(uuid)?.domain, undefined);
  await callA('VM.hard_shutdown', vm);
});

test('another of B’s hosts restarting during a copy to B’s shared SR leaves the copy; the migration completes', {
  timeout: 300_000,
}, async () => {
  await joinPool(dst, dst2);
  sb = await login(dst.url, PASSWORD);
  const created = await createSharedSr(callB, hostB, 'xapi-xpool-shared-');
  sharedDir = created.dir;
  const shared = created.sr;
  // the source stops in the middle of the copy, its connection to B held open
  await restartSource('sxm.copy:SIGSTOP@4');
  const o = await vmOnSource('shared copy');
  const task = await migrateSend(o, shared);
  await waitUntil('the source stopped mid-copy', () => src.output().includes('fault point sxm.copy reached (SIGSTOP)'));
  const copies = async () => {
    const vdis = (await callB('VDI.get_all_records')) as Record<string, { SR: string; sm_config: Rec }>;
    return Object.keys(vdis).filter((r) => vdis[r]!.SR === shared && vdis[r]!.sm_config.migrate_task !== undefined);
  };
  const [copy] = await copies();
  assert.ok(copy, 'the copy being filled on the shared SR');
  // B's other host restarts: its start-up sweep sees the copy (it has the SR) but it is not its own
  const startsBefore = await memberStarts(dst2.stateDir);
  await stopXapi(dst2, true);
  dst2 = await startXapi({ stateDir: dst2.stateDir, address: dst2.address, httpPort: dst2.httpPort, httpsPort: dst2.httpsPort, env: FAST });
  await waitUntil('B’s other host serving again', async () => (await memberStarts(dst2.stateDir)) > startsBefore, {
    timeoutMs: 90_000,
    intervalMs: 200,
  });
  assert.deepEqual(await copies(), [copy], 'the copy is still there');
  src.proc.kill('SIGCONT');
  const outcome = await taskOutcome(task);
  assert.equal(outcome.status, 'success', JSON.stringify(outcome.error_info));
  const there = (await callB('VM.get_by_uuid', o.uuid)) as string;
  assert.equal(await callB('VM.get_resident_on', there), hostB);
  const [vbd] = (await callB('VM.get_VBDs', there)) as string[];
  assert.equal(await callB('VBD.get_VDI', vbd!), copy);
  assert.equal(await callB('VDI.get_SR', copy!), shared);
  await callB('VM.hard_shutdown', there);
});

/** How many times the member keeping its state in `dir` has logged that it serves (its start-up, sweeps included, over). */
async function memberStarts(dir: string): Promise<number> {
  const log = await readFile(join(dir, 'xapi.log'), 'utf8').catch(() => '');
  return log.split('member of the pool: serving').length - 1;
}
