// A storage migration's hosts killed (SIGKILL) in the middle of the disk copy, at chosen points
// (src/util/fault-point.ts), with real processes: a VM on one member's local SR moving to the
// other member's. Afterwards the VM runs on exactly one host (its source), on its own disk, whose
// content is what it was; and once the killed host is back no half-copied disk is left (the
// destination removes it when its sender vanishes, or at its next start). A task.cancel during
// the copy ends the same way, the VM untouched.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { jsonCall, putBody, xapiFailure } from './client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { localSrOf, startPool, timesServing, type TestPool } from './pool-harness.js';
import { simulatorVms } from './sim-state.js';
import { vbdRecord, vdiRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const NULL = 'OpaqueRef:NULL';
const FAST = { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200' };
type Rec = Record<string, unknown>;

let pool: TestPool;
let url: string;
let s: string;
let network: string;
/** The members' processes (index 0: the source, 1: the destination), replaced at each restart. */
const members: XapiProcess[] = [];
let refs: [string, string, string];

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

before(async () => {
  pool = await startPool(3, { env: FAST });
  url = pool.coordinator.url;
  s = pool.session;
  refs = pool.refs as [string, string, string];
  members.push(pool.members[0]!, pool.members[1]!);
  const [mgmt] = Object.entries((await call('PIF.get_all_records')) as Record<string, { management: boolean; network: string }>).filter(
    ([, p]) => p.management,
  );
  network = mgmt![1].network;
});

after(async () => {
  for (const [i, m] of members.entries()) if (m !== pool?.members[i]) await stopXapi(m, true);
  await pool?.stop();
});

/** The members' logged warnings and errors (pino levels 40 and up), the last 20 of each. */
async function warnings(): Promise<string> {
  const out: string[] = [];
  for (const [i, m] of members.entries()) {
    const lines = (await readFile(join(m.stateDir, 'xapi.log'), 'utf8').catch(() => '')).split('\n');
    const bad = lines.filter((l) => /"level":(4|5|6)0/.test(l)).slice(-20);
    out.push(`member ${i} (${m.address}):`, ...bad);
  }
  return out.join('\n');
}

/** Member `i` again from its state directory, with `point` armed (or none); waits until it is back. */
async function restart(i: 0 | 1, point?: string): Promise<void> {
  const old = members[i]!;
  if (old.proc.exitCode === null && old.proc.signalCode === null) await stopXapi(old, true);
  // The host record says enabled and live from before the kill, and the new process answers
  // HOST_IS_SLAVE as soon as it listens: only its log says its start-up (storage plugged, half
  // copies swept) is over.
  const startsBefore = await timesServing(old.stateDir);
  members[i] = await startXapi({
    stateDir: old.stateDir,
    address: old.address,
    httpPort: old.httpPort,
    httpsPort: old.httpsPort,
    env: { ...FAST, XAPI_TEST_FAULT_POINT: point },
  });
  const ref = refs[i + 1]!;
  const metrics = (await call('host.get_metrics', ref)) as string;
  await waitUntil(
    'the member back',
    async () => {
      const login = await xapiFailure(jsonCall(members[i]!.url, 'session.login_with_password', ['root', PASSWORD])).catch(() => []);
      if (login[0] !== 'HOST_IS_SLAVE' || (await timesServing(old.stateDir)) <= startsBefore) return false;
      const h = (await call('host.get_record', ref)) as Rec;
      return h.enabled === true && (await call('host_metrics.get_live', metrics)) === true;
    },
    { timeoutMs: 90_000, intervalMs: 100 },
  );
}

async function killedAt(i: 0 | 1, point: string): Promise<void> {
  const m = members[i]!;
  assert.equal(await m.exited, 'SIGKILL', m.output().slice(-3000));
  assert.ok(m.output().includes(`fault point ${point} reached`), `the member died elsewhere than ${point}`);
}

async function contentHash(hostUrl: string, vdi: string): Promise<string> {
  const res = await fetch(`${hostUrl}/export_raw_vdi?session_id=${s}&vdi=${vdi}&format=raw`);
  assert.equal(res.status, 200);
  return createHash('sha256')
    .update(Buffer.from(await res.arrayBuffer()))
    .digest('hex');
}

/** A running VM on the source member with a 64 MiB disk on its local SR holding `dataMiB` MiB of data. */
async function vmOnSource(name: string, dataMiB = 48): Promise<{ vm: string; disk: string; hash: string; domid: unknown }> {
  const source = members[0]!;
  const disk = (await call('VDI.create', vdiRecord(await localSrOf(call, refs[1]), 64 * MiB, `${name} disk`))) as string;
  const data = Buffer.alloc(dataMiB * MiB);
  for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  assert.equal(await putBody(source.url, `/import_raw_vdi?session_id=${s}&vdi=${disk}&format=raw`, data), 200);
  const vm = (await call('VM.create', vmRecord(name, { memory: 64 * MiB }))) as string;
  await call('VBD.create', vbdRecord(vm, disk));
  await call('VM.start_on', vm, refs[1], false, false);
  await waitUntil('the guest agent reporting', async () => (await call('VM.get_guest_metrics', vm)) !== NULL);
  return { vm, disk, hash: await contentHash(source.url, disk), domid: await call('VM.get_domid', vm) };
}

/** Starts the VM's storage migration to the destination member's local SR (as a task). */
async function migrateSend(vm: string, disk: string): Promise<string> {
  const dest = await call('host.migrate_receive', refs[2], network, {});
  return (await jsonCall(url, 'Async.VM.migrate_send', [
    s,
    vm,
    dest,
    true,
    { [disk]: await localSrOf(call, refs[2]) },
    {},
    {},
    {},
  ])) as string;
}

async function taskOutcome(task: string): Promise<Rec> {
  await waitUntil('the migration over', async () => (await call('task.get_status', task)) !== 'pending', {
    timeoutMs: 120_000,
    intervalMs: 100,
  });
  return (await call('task.get_record', task)) as Rec;
}

/** Whatever happened, the VM runs on the source only, on its own disk, holding what it held. */
async function assertIntactOnSource(o: { vm: string; disk: string; hash: string; domid: unknown }): Promise<void> {
  const r = (await call('VM.get_record', o.vm)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, refs[1]);
  assert.equal(r.domid, o.domid, 'the same domain');
  assert.deepEqual(r.current_operations, {});
  assert.equal(r.scheduled_to_be_resident_on, NULL);
  for (const h of refs) assert.deepEqual(await call('host.get_current_operations', h), {});
  assert.equal(await call('VBD.get_VDI', (r.VBDs as string[])[0]), o.disk);
  assert.equal(await contentHash(members[0]!.url, o.disk), o.hash, 'the disk holds what it held');
  const uuid = r.uuid as string;
  const here = simulatorVms(members[0]!.stateDir).get(uuid);
  assert.equal(here?.domain?.domid, o.domid);
  assert.equal(here?.domain?.paused, false);
  assert.equal(simulatorVms(members[1]!.stateDir).get(uuid)?.domain, undefined);
}

/** The copies a migration made: none left on any SR. */
async function halfCopies(): Promise<string[]> {
  const vdis = (await call('VDI.get_all_records')) as Record<string, { sm_config: Rec }>;
  return Object.entries(vdis)
    .filter(([, v]) => v.sm_config.migrate_task !== undefined)
    .map(([ref]) => ref);
}

test('the destination killed during the disk copy: the VM runs on at the source; its restart removes the half copy', {
  timeout: 300_000,
}, async () => {
  const o = await vmOnSource('destination dies');
  const destSr = await localSrOf(call, refs[2]);
  const before = ((await call('SR.get_VDIs', destSr)) as string[]).length;
  await restart(1, 'sxm.receive@4');
  const outcome = await taskOutcome(await migrateSend(o.vm, o.disk));
  assert.equal(outcome.status, 'failure');
  assert.deepEqual(outcome.error_info, ['MIRROR_FAILED', o.disk]);
  await killedAt(1, 'sxm.receive');
  await assertIntactOnSource(o);
  // the copy stays marked while its host is down; its next start removes it
  await restart(1);
  assert.deepEqual(await halfCopies(), []);
  assert.equal(((await call('SR.get_VDIs', destSr)) as string[]).length, before);

  // and the pool migrates it then
  const done = await taskOutcome(await migrateSend(o.vm, o.disk));
  // This failed once in CI (MIRROR_FAILED, 1 run in 3, not reproduced since): the hosts' warnings
  // say which end gave up, for whoever meets it next.
  assert.equal(done.status, 'success', `${JSON.stringify(done.error_info)}\n${await warnings()}`);
  assert.equal(await call('VM.get_resident_on', o.vm), refs[2]);
  await call('VM.hard_shutdown', o.vm);
});

test('the source killed during the disk copy: the destination drops the half copy; the source restarted runs the VM', {
  timeout: 300_000,
}, async () => {
  await restart(0, 'sxm.copy@4');
  const o = await vmOnSource('source dies');
  const outcome = await taskOutcome(await migrateSend(o.vm, o.disk));
  assert.equal(outcome.status, 'failure');
  assert.deepEqual(outcome.error_info, ['CANNOT_CONTACT_HOST', refs[1]]);
  await killedAt(0, 'sxm.copy');
  // the destination saw its sender vanish before the end: the half copy is gone at once
  await waitUntil('the half copy removed', async () => (await halfCopies()).length === 0);
  await restart(0);
  await assertIntactOnSource(o);
  assert.deepEqual(await halfCopies(), []);
  await call('VM.hard_shutdown', o.vm);
});

test('task.cancel during the disk copy: the VM stays, untouched, and no copy is left', { timeout: 300_000 }, async () => {
  const o = await vmOnSource('cancelled');
  // the destination stops (SIGSTOP) in the middle of the copy, so the cancel lands during it
  await restart(1, 'sxm.receive:SIGSTOP@4');
  const task = await migrateSend(o.vm, o.disk);
  await waitUntil('the destination stopped mid-copy', () => members[1]!.output().includes('fault point sxm.receive reached (SIGSTOP)'));
  await call('task.cancel', task);
  await waitUntil('the cancel recorded', async () =>
    Object.values((await call('task.get_current_operations', task)) as Rec).includes('cancel'),
  );
  members[1]!.proc.kill('SIGCONT');
  const outcome = await taskOutcome(task);
  assert.notEqual(outcome.status, 'success');
  assert.equal((outcome.error_info as string[])[0], 'TASK_CANCELLED', JSON.stringify(outcome));
  await assertIntactOnSource(o);
  await waitUntil('no half copy', async () => (await halfCopies()).length === 0);
  await call('VM.hard_shutdown', o.vm);
});

test('a fourth storage migration from one host while three run: TOO_MANY_STORAGE_MIGRATES ["3"]', { timeout: 300_000 }, async () => {
  const vms: Awaited<ReturnType<typeof vmOnSource>>[] = [];
  for (let i = 0; i < 4; i++) vms.push(await vmOnSource(`concurrent ${i}`, 4));
  // the destination freezes at the first piece it receives: the migrations that got in wait
  await restart(1, 'sxm.receive:SIGSTOP');
  const tasks: string[] = [];
  for (const o of vms) tasks.push(await migrateSend(o.vm, o.disk));
  const refused = await waitUntil(
    'one migration refused',
    async () => {
      for (const t of tasks) if ((await call('task.get_status', t)) === 'failure') return t;
      return undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100 },
  );
  assert.deepEqual(await call('task.get_error_info', refused), ['TOO_MANY_STORAGE_MIGRATES', '3']);
  await waitUntil('the destination stopped', () => members[1]!.output().includes('fault point sxm.receive reached (SIGSTOP)'));
  const others = tasks.filter((t) => t !== refused);
  for (const t of others) assert.equal(await call('task.get_status', t), 'pending');
  for (const t of others) await call('task.cancel', t);
  members[1]!.proc.kill('SIGCONT');
  for (const t of others) assert.equal(((await taskOutcome(t)).error_info as string[])[0], 'TASK_CANCELLED');
  for (const o of vms) await assertIntactOnSource(o);
  await waitUntil('no half copy', async () => (await halfCopies()).length === 0);
  for (const o of vms) await call('VM.hard_shutdown', o.vm);
});
