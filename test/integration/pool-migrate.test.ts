// Live migration in a pool of three real processes (issue 11 items 1-2): VM.pool_migrate through
// Xen Orchestra's connector moves a running VM's memory from one member's simulator to the
// other's (the figures in the source's migrations.log), with the task's progress, event.from
// never showing it Halted or on two hosts, and its records brought up to date there; then the
// checks and errors of xapi's pool_migrate through Python's xmlrpc.client, in xapi's order and
// with their parameters (the VM staying where it was, nothing left in current_operations); last,
// a source that is not live (HOST_OFFLINE) and a destination that is not (HOST_NOT_LIVE).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { jsonCall, xapiFailure } from './client.js';
import { PASSWORD } from './harness.js';
import { createSharedSr, localSrOf, poolWideNetwork, startPool, type TestPool } from './pool-harness.js';
import { simulatorVms } from './sim-state.js';
import { vbdRecord, vdiRecord, vifRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const NULL = 'OpaqueRef:NULL';
type Rec = Record<string, unknown>;

let pool: TestPool;
let url: string;
let s: string;
let sharedDir: string;
let shared: string;
let network: string;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

before(async () => {
  // Short heartbeats and dead interval, for the last test (a member that dies is soon not live).
  // The third host is small (1 GiB): a VM that does not fit there, and two that fit only one at a
  // time, stay small enough to migrate quickly.
  pool = await startPool(3, {
    env: { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200' },
    args: ['--host-assumed-dead-interval', '6'],
    hostArgs: [[], [], ['--sim-memory-mib', '1024']],
  });
  url = pool.coordinator.url;
  s = pool.session;
  ({ sr: shared, dir: sharedDir } = await createSharedSr(call, pool.refs[0]!, 'xapi-migrate-sr-'));
  // a network every host has a PIF on
  network = await poolWideNetwork(call, 3);
});

after(async () => {
  await pool?.stop();
  await rm(sharedDir, { recursive: true, force: true });
});

/** A VM with a disk on `sr` (the shared SR by default) and a VIF, started on `host`, its guest agent up. */
async function runningVm(name: string, host: string, o: { memory?: number; sr?: string; dirtyRate?: number } = {}): Promise<string> {
  const other = o.dirtyRate === undefined ? {} : { simulator_dirty_rate: String(o.dirtyRate) };
  const vm = (await call('VM.create', vmRecord(name, { memory: o.memory ?? 256 * MiB }, { other_config: other }))) as string;
  const vdi = (await call('VDI.create', vdiRecord(o.sr ?? shared, 8 * MiB, `${name} disk`))) as string;
  await call('VBD.create', vbdRecord(vm, vdi));
  await call('VIF.create', vifRecord(vm, network));
  await call('VM.start_on', vm, host, false, false);
  // Until its PV drivers report, an HVM guest cannot be migrated (VM_LACKS_FEATURE), as in xapi.
  await waitUntil('the guest agent reporting', async () => (await call('VM.get_guest_metrics', vm)) !== NULL);
  return vm;
}

/** The lines the host at `stateDir` wrote to its migrations.log. */
async function migrationLog(stateDir: string): Promise<Rec[]> {
  const text = await readFile(join(stateDir, 'migrations.log'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l)
    .map((l) => JSON.parse(l) as Rec);
}

function python(script: string, env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`python3 exited ${code}:\n${out}`))));
  });
}

test('VM.pool_migrate through the xen-api connector: the memory moves member to member, resident_on flips once', {
  timeout: 180_000,
}, async () => {
  const [, m1, m2] = pool.refs as [string, string, string];
  const vm = await runningVm('migrating', m1, { memory: 128 * MiB, dirtyRate: 16 * MiB });
  const uuid = (await call('VM.get_uuid', vm)) as string;
  const before = (await call('VM.get_record', vm)) as Rec;
  const metricsBefore = (await call('VM_metrics.get_record', before.metrics)) as Rec;

  // Every change the coordinator reports about the VM and the tasks, from now on.
  const seen: Rec[] = [];
  const progress: number[] = [];
  let { token } = (await call('event.from', ['VM', 'task'], '', 0)) as { token: string };
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const batch = (await call('event.from', ['VM', 'task'], token, 1)) as { token: string; events: Rec[] };
      token = batch.token;
      for (const e of batch.events) {
        const snap = e.snapshot as Rec | undefined;
        if (e.class === 'vm' && e.ref === vm && snap) seen.push(snap);
        if (e.class === 'task' && snap?.name_label === 'Async.VM.pool_migrate') progress.push(snap.progress as number);
      }
    }
  })();

  const xapi = new Xapi({ url: pool.coordinator.httpsUrl, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true });
  try {
    await xapi.connect();
    await xapi.callAsync('VM.pool_migrate', vm, m2, { live: 'true' });
  } finally {
    await xapi.disconnect();
  }
  const after = (await call('VM.get_record', vm)) as Rec;
  // one more event.from round, so the watcher has everything up to now
  await call('VM.add_to_other_config', vm, 'migrated', 'yes');
  await waitUntil('the watcher caught up', () => seen.some((r) => (r.other_config as Rec).migrated === 'yes'));
  watching = false;
  await watcher;

  assert.equal(after.power_state, 'Running');
  assert.equal(after.resident_on, m2);
  assert.deepEqual(after.current_operations, {});
  assert.equal(after.scheduled_to_be_resident_on, NULL);
  assert.ok((after.allowed_operations as string[]).includes('pool_migrate'));
  // the guest did not restart: same start time, same guest metrics
  const metricsAfter = (await call('VM_metrics.get_record', after.metrics)) as Rec;
  assert.equal(metricsAfter.start_time, metricsBefore.start_time);
  assert.equal(after.guest_metrics, before.guest_metrics);
  // its console is the destination's
  const [console_] = after.consoles as string[];
  assert.match((await call('console.get_location', console_)) as string, new RegExp(`^https://${pool.hosts[2]!.address}/`));
  // the VBD and VIF still attached
  for (const vbd of after.VBDs as string[]) assert.equal(await call('VBD.get_currently_attached', vbd), true);
  for (const vif of after.VIFs as string[]) assert.equal(await call('VIF.get_currently_attached', vif), true);

  // Never Halted, never anywhere but m1 then m2: resident_on changed once.
  assert.ok(seen.length > 0);
  for (const r of seen) assert.equal(r.power_state, 'Running', JSON.stringify(r));
  const places = seen.map((r) => r.resident_on).filter((h, i, all) => i === 0 || h !== all[i - 1]);
  assert.deepEqual(places, [m1, m2]);
  // progress moved on the task between 0 and 1
  assert.ok(
    progress.some((p) => p > 0 && p < 1),
    JSON.stringify(progress),
  );
  assert.ok(
    progress.every((p, i) => i === 0 || p >= progress[i - 1]!),
    JSON.stringify(progress),
  );

  // The domain moved between the members' simulators; the coordinator's never had it.
  assert.equal(simulatorVms(pool.hosts[1]!.stateDir).get(uuid)?.domain, undefined);
  const there = simulatorVms(pool.hosts[2]!.stateDir).get(uuid)?.domain;
  assert.equal(there?.domid, after.domid);
  assert.equal(there?.paused, false);
  assert.equal(simulatorVms(pool.coordinator.stateDir).has(uuid), false);

  // The source logged the migration's rounds, bytes and downtime.
  const [line] = (await migrationLog(pool.hosts[1]!.stateDir)).filter((l) => l.vm === uuid);
  assert.ok(line, 'a line in the source host migrations.log');
  const rounds = line.rounds as { pages: number; bytes: number; final: boolean }[];
  assert.equal(rounds[0]!.pages, (128 * MiB) / 4096);
  assert.ok(rounds.length >= 2 && rounds.at(-1)!.final);
  assert.ok((line.bytes as number) > 128 * MiB);
  assert.equal(typeof line.downtimeMs, 'number');
  assert.ok((line.downtimeMs as number) < (line.totalMs as number));
  assert.equal(line.to, m2);

  // the VM_MIGRATED message
  const messages = (await call('message.get_all_records')) as Record<string, Rec>;
  assert.ok(Object.values(messages).some((m) => m.name === 'VM_MIGRATED' && m.obj_uuid === uuid));

  // It lives on there: a clean shutdown is forwarded to m2.
  await call('VM.clean_shutdown', vm);
  assert.equal(await call('VM.get_power_state', vm), 'Halted');
});

test("pool_migrate's checks and errors through Python's xmlrpc.client; the VM stays where it was", { timeout: 180_000 }, async () => {
  const [, m1, m2] = pool.refs as [string, string, string];
  const halted = (await call('VM.create', vmRecord('halted', { memory: 128 * MiB }))) as string;
  const local = await runningVm('on a local SR', m1, { memory: 128 * MiB, sr: await localSrOf(call, m1) });
  const localSr = await localSrOf(call, m1);
  const mover = await runningVm('mover', m1, { memory: 128 * MiB });
  // bigger than all m2 has
  const bigA = await runningVm('big on m1', m1, { memory: 1 * GiB });
  const bigRec = (await call('VM.get_record', bigA)) as Rec;
  const needed = String((bigRec.memory_dynamic_min as number) + (bigRec.memory_overhead as number));
  const free = String(await call('host.compute_free_memory', m2));
  // m2's PIFs: the management one has the host's address, the other none
  const pifs = (await call('PIF.get_all_records')) as Record<string, { host: string; management: boolean; IP: string; network: string }>;
  const [bareM2Pif, bare] = Object.entries(pifs).find(([, p]) => p.host === m2 && p.IP === '')!;
  const management = Object.values(pifs).find((p) => p.host === m2 && p.management)!;
  const lonely = (await call('network.create', { name_label: 'no PIFs', name_description: '', MTU: 1500, other_config: {} })) as string;

  const script = `
import os, ssl, sys, xmlrpc.client
s = xmlrpc.client.ServerProxy(os.environ["URL"], allow_none=True, context=ssl._create_unverified_context())
session = s.session.login_with_password("root", os.environ["PASSWORD"])["Value"]
E = os.environ
def fails(expected, *args):
    r = s.VM.pool_migrate(session, *args)
    assert r["Status"] == "Failure", r
    assert r["ErrorDescription"] == expected, (r["ErrorDescription"], expected)
    print("ok", expected[0], flush=True)
fails(["VM_BAD_POWER_STATE", E["HALTED"], "running", "halted"], E["HALTED"], E["M2"], {})
fails(["HANDLE_INVALID", "host", "OpaqueRef:nope"], E["MOVER"], "OpaqueRef:nope", {})
fails(["VM_REQUIRES_SR", E["LOCAL"], E["LOCAL_SR"]], E["LOCAL"], E["M2"], {"live": "true"})
fails(["HOST_NOT_ENOUGH_FREE_MEMORY", E["NEEDED"], E["FREE"]], E["BIG_A"], E["M2"], {"live": "true"})
# options:network: the memory goes to the destination's address on that network
fails(["PIF_NOT_PRESENT", E["M2"], E["LONELY"]], E["MOVER"], E["M2"], {"network": E["LONELY"]})
fails(["INTERFACE_HAS_NO_IP", E["BARE_PIF"]], E["MOVER"], E["M2"], {"network": E["BARE_NET"]})
assert s.host.disable(session, E["M2"])["Status"] == "Success"
fails(["HOST_DISABLED", E["M2"]], E["MOVER"], E["M2"], {})
# to the host it runs on: allowed (a local live migration), even with that host disabled
assert s.host.disable(session, E["M1"])["Status"] == "Success"
domid = s.VM.get_domid(session, E["MOVER"])["Value"]
r = s.VM.pool_migrate(session, E["MOVER"], E["M1"], {"live": "true"})
assert r["Status"] == "Success", r
assert s.VM.get_resident_on(session, E["MOVER"])["Value"] == E["M1"]
assert s.VM.get_domid(session, E["MOVER"])["Value"] != domid, "a new domain"
assert s.VM.get_power_state(session, E["MOVER"])["Value"] == "Running"
print("ok same host", flush=True)
for h in (E["M1"], E["M2"]):
    assert s.host.enable(session, h)["Status"] == "Success"
# and asynchronously, back and forth, to the other member
task = s.Async.VM.pool_migrate(session, E["MOVER"], E["M2"], {"live": "true", "network": E["MANAGEMENT_NET"]})["Value"]
import time
while s.task.get_status(session, task)["Value"] == "pending":
    time.sleep(0.05)
assert s.task.get_status(session, task)["Value"] == "success", s.task.get_error_info(session, task)
print("ok async", flush=True)
`;
  const out = await python(script, {
    URL: pool.coordinator.httpsUrl,
    PASSWORD,
    HALTED: halted,
    M1: m1,
    M2: m2,
    MOVER: mover,
    LOCAL: local,
    LOCAL_SR: localSr,
    BIG_A: bigA,
    NEEDED: needed,
    FREE: free,
    LONELY: lonely,
    BARE_PIF: bareM2Pif,
    BARE_NET: bare.network,
    MANAGEMENT_NET: management.network,
  });
  assert.match(out, /ok async/);

  // Refused: each stays running where it was, nothing left marked.
  for (const vm of [local, bigA]) {
    const r = (await call('VM.get_record', vm)) as Rec;
    assert.equal(r.power_state, 'Running');
    assert.deepEqual(r.current_operations, {});
    assert.equal(r.scheduled_to_be_resident_on, NULL);
  }
  assert.equal(await call('VM.get_resident_on', local), m1);
  assert.equal(await call('VM.get_resident_on', bigA), m1);
  for (const h of [m1, m2]) assert.deepEqual(await call('host.get_current_operations', h), {});
  // the mover went to itself (a new domain), then to m2
  assert.equal(await call('VM.get_resident_on', mover), m2);
  for (const vm of [local, bigA, mover]) await call('VM.hard_shutdown', vm);
});

test('two migrations at once to a host with room for one: the reservation lets one through, the other is refused', {
  timeout: 180_000,
}, async () => {
  const [c, m1, m2] = pool.refs as [string, string, string];
  const room = (await call('host.compute_free_memory', m2)) as number;
  // each fits alone, two do not
  const size = Math.floor((room * 0.6) / MiB) * MiB;
  const a = await runningVm('half of m2 (from the coordinator)', c, { memory: size });
  const b = await runningVm('half of m2 (from m1)', m1, { memory: size });
  const outcomes = await Promise.allSettled([call('VM.pool_migrate', a, m2, {}), call('VM.pool_migrate', b, m2, {})]);
  const moved = outcomes.filter((o) => o.status === 'fulfilled').length;
  assert.equal(moved, 1, JSON.stringify(outcomes));
  const refused = outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult;
  assert.equal((refused.reason as { error: string[] }).error[0], 'HOST_NOT_ENOUGH_FREE_MEMORY');
  const places = [await call('VM.get_resident_on', a), await call('VM.get_resident_on', b)];
  assert.equal(places.filter((h) => h === m2).length, 1);
  for (const vm of [a, b]) {
    assert.equal(await call('VM.get_power_state', vm), 'Running');
    assert.deepEqual(await call('VM.get_current_operations', vm), {});
    await call('VM.hard_shutdown', vm);
  }
});

test('a source that is not live: HOST_OFFLINE; a destination that is not: HOST_NOT_LIVE', { timeout: 180_000 }, async () => {
  const [, m1, m2] = pool.refs as [string, string, string];
  const onM1 = await runningVm('on the dying member', m1, { memory: 128 * MiB });
  const onM2 = await runningVm('on the live member', m2, { memory: 128 * MiB });
  const dying = pool.hosts[1]!;
  dying.kill('SIGKILL');
  await dying.exited;
  const metrics = (await call('host.get_metrics', m1)) as string;
  await waitUntil('the killed member not live', async () => (await call('host_metrics.get_live', metrics)) === false, {
    timeoutMs: 60_000,
  });
  assert.deepEqual(await xapiFailure(call('VM.pool_migrate', onM1, m2, {})), ['HOST_OFFLINE', m1]);
  assert.deepEqual(await xapiFailure(call('VM.pool_migrate', onM2, m1, {})), ['HOST_NOT_LIVE']);
  for (const vm of [onM1, onM2]) {
    const r = (await call('VM.get_record', vm)) as Rec;
    assert.deepEqual(r.current_operations, {});
    assert.equal(r.scheduled_to_be_resident_on, NULL);
    assert.equal(r.power_state, 'Running');
  }
  assert.equal(await call('VM.get_resident_on', onM2), m2);
});
