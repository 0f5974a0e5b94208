// A live migration's destination killed (SIGKILL) at chosen points (src/util/fault-point.ts),
// with real processes: a coordinator migrating a running VM to its member.
//  - killed while the memory streams in (migrate.receive-pages): the VM runs on at the source,
//    the same domain, unpaused; the call fails (xapi tries again and cannot reach the host:
//    VM_MIGRATE_CONTACT_REMOTE_SERVICE_FAILED); nothing is left in current_operations or
//    reserved; the member restarted, the migration works.
//  - killed after the commit, before unpausing its copy (migrate.go): the VM is the member's
//    (resident_on says so, the source dropped its domain); the restarted member finds its paused
//    copy owned and runs it. Either way the VM runs on exactly one host.
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { jsonCall, xapiFailure } from './client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { createSharedSr, startPool, timesServing, type TestPool } from './pool-harness.js';
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
let sharedDir: string;
let shared: string;
let coordinator: string;
let member: string;
/** The member's process: replaced at each restart. */
let memberProcess: XapiProcess;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

before(async () => {
  pool = await startPool(2, { env: FAST });
  url = pool.coordinator.url;
  s = pool.session;
  [coordinator, member] = pool.refs as [string, string];
  memberProcess = pool.members[0]!;
  ({ sr: shared, dir: sharedDir } = await createSharedSr(call, coordinator, 'xapi-migrate-faults-'));
});

after(async () => {
  // a restarted member first (its state directory is the original's, which pool.stop removes)
  if (memberProcess && memberProcess !== pool?.members[0]) await stopXapi(memberProcess, true);
  await pool?.stop();
  await rm(sharedDir, { recursive: true, force: true });
});

/** The member again from its state directory, with `point` armed (or none). */
async function restartMember(point?: string): Promise<void> {
  const old = memberProcess;
  if (old.proc.exitCode === null && old.proc.signalCode === null) await stopXapi(old, true);
  const startsBefore = await timesServing(old.stateDir);
  memberProcess = await startXapi({
    stateDir: old.stateDir,
    address: old.address,
    httpPort: old.httpPort,
    httpsPort: old.httpsPort,
    env: { ...FAST, XAPI_TEST_FAULT_POINT: point },
  });
  // serving again: its log says so (its records say enabled and live from before the kill)
  const metrics = (await call('host.get_metrics', member)) as string;
  await waitUntil(
    'the member back',
    async () => {
      const login = await xapiFailure(jsonCall(memberProcess.url, 'session.login_with_password', ['root', PASSWORD])).catch(() => []);
      if (login[0] !== 'HOST_IS_SLAVE' || (await timesServing(old.stateDir)) <= startsBefore) return false;
      const h = (await call('host.get_record', member)) as Rec;
      return h.enabled === true && (await call('host_metrics.get_live', metrics)) === true;
    },
    { timeoutMs: 90_000, intervalMs: 100 },
  );
}

async function killedAt(point: string): Promise<void> {
  assert.equal(await memberProcess.exited, 'SIGKILL', memberProcess.output().slice(-3000));
  assert.ok(memberProcess.output().includes(`fault point ${point} reached`), `the member died elsewhere than ${point}`);
}

/** The VM's domain is on exactly the host its record names, running, and nowhere else. */
function assertRunsOnlyOn(uuid: string, where: XapiProcess, elsewhere: XapiProcess, domid: unknown): void {
  const here = simulatorVms(where.stateDir).get(uuid);
  assert.equal(here?.domain?.domid, domid);
  assert.equal(here?.domain?.paused, false);
  assert.equal(here?.domain?.pausedForMigration, undefined);
  assert.equal(here?.incoming, undefined);
  const there = simulatorVms(elsewhere.stateDir).get(uuid);
  assert.equal(there?.domain, undefined);
  assert.equal(there?.incoming, undefined);
}

async function assertNothingMarked(vm: string): Promise<void> {
  const r = (await call('VM.get_record', vm)) as Rec;
  assert.deepEqual(r.current_operations, {});
  assert.equal(r.scheduled_to_be_resident_on, NULL);
  for (const h of [coordinator, member]) assert.deepEqual(await call('host.get_current_operations', h), {});
}

test('the destination killed while the memory streams in: the VM runs on at the source, intact', { timeout: 240_000 }, async () => {
  const vm = (await call('VM.create', vmRecord('faulty', { memory: 64 * MiB }))) as string;
  const vdi = (await call('VDI.create', vdiRecord(shared, 8 * MiB, 'faulty disk'))) as string;
  await call('VBD.create', vbdRecord(vm, vdi));
  await call('VM.start_on', vm, coordinator, false, false);
  await waitUntil('the guest agent reporting', async () => (await call('VM.get_guest_metrics', vm)) !== NULL);
  const before = (await call('VM.get_record', vm)) as Rec;
  const uuid = before.uuid as string;

  // The member, as a destination, dies at the 8th megabyte of memory it receives.
  await restartMember('migrate.receive-pages@8');
  assert.deepEqual(await xapiFailure(call('VM.pool_migrate', vm, member, { live: 'true' })), ['VM_MIGRATE_CONTACT_REMOTE_SERVICE_FAILED']);
  await killedAt('migrate.receive-pages');
  const now = (await call('VM.get_record', vm)) as Rec;
  assert.equal(now.power_state, 'Running');
  assert.equal(now.resident_on, coordinator);
  assert.equal(now.domid, before.domid, 'the same domain');
  assert.equal(now.guest_metrics, before.guest_metrics);
  await assertNothingMarked(vm);
  assertRunsOnlyOn(uuid, pool.coordinator, memberProcess, before.domid);
  assert.equal(simulatorVms(memberProcess.stateDir).has(uuid), false, 'no half-received copy left');

  // Back, with the next point armed: the migration goes through to the commit, and the member
  // dies as it is told to run its copy.
  await restartMember('migrate.go');
  assert.equal(simulatorVms(memberProcess.stateDir).has(uuid), false);
  const failure = await xapiFailure(call('VM.pool_migrate', vm, member, { live: 'true' }));
  assert.equal(failure[0], 'INTERNAL_ERROR', failure.join(' '));
  await killedAt('migrate.go');
  const moved = (await call('VM.get_record', vm)) as Rec;
  assert.equal(moved.resident_on, member, 'committed: the VM is the member\u2019s');
  assert.equal(moved.power_state, 'Running');
  await assertNothingMarked(vm);
  assert.equal(simulatorVms(pool.coordinator.stateDir).get(uuid)?.domain, undefined, 'the source dropped its domain');
  assert.equal(simulatorVms(memberProcess.stateDir).get(uuid)?.incoming?.domid, moved.domid, 'the paused copy waits on disk');

  // Restarted, the member finds the database names its copy: it runs.
  await restartMember();
  await waitUntil('the member running its copy', () => simulatorVms(memberProcess.stateDir).get(uuid)?.domain?.paused === false);
  assertRunsOnlyOn(uuid, memberProcess, pool.coordinator, moved.domid);
  const settled = (await call('VM.get_record', vm)) as Rec;
  assert.equal(settled.power_state, 'Running');
  assert.equal(settled.resident_on, member);

  // And the pool goes on migrating it.
  await call('VM.pool_migrate', vm, coordinator, {});
  const back = (await call('VM.get_record', vm)) as Rec;
  assert.equal(back.resident_on, coordinator);
  assertRunsOnlyOn(uuid, pool.coordinator, memberProcess, back.domid);
  await call('VM.hard_shutdown', vm);
});
