// A rolling pool upgrade with real processes (issue 11 item 5): a pool of three hosts of one
// release is upgraded host by host, as an operator does it: each host stopped and started again
// alone, on its own state directory, with `--platform-version` of the next release. The
// coordinator goes first, and its state directory is made the older store format first (an
// older host's), which the newer host upgrades as it opens it. While the versions differ the pool
// says so in other_config:rolling_upgrade_in_progress, and xapi's guards hold, checked through
// Python's xmlrpc.client: VMs migrate only from older hosts to newer ones, start only on the
// newest, the storage and import operations older releases lack are refused. A member newer than
// its coordinator does not come up (HOST_XAPI_VERSION_HIGHER_THAN_COORDINATOR). When every host
// runs the new release the mark goes. Last, a member's database backup in the older store
// format becomes a coordinator's database (emergency_transition_to_master), upgraded on open.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { jsonCall, login, RpcFailure, xapiFailure } from './client.js';
import { PASSWORD, startXapi, stopHosts, stopXapi, type XapiProcess } from './harness.js';
import { createSharedSr, loginWhenServing, poolWideNetwork, startPool } from './pool-harness.js';
import { vbdRecord, vdiRecord, vifRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const NULL = 'OpaqueRef:NULL';
const OLD = '3.4.0';
const NEW = '3.5.0';
type Rec = Record<string, unknown>;

/** Short liveness and GC periods: the coordinator looks at its hosts' versions every GC pass. */
const ENV = { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200' };

/** The hosts as they run now (replaced as each is restarted). */
let hosts: XapiProcess[] = [];
let refs: string[] = [];
let url: string;
let s: string;
let sharedDir: string;
let shared: string;
let network: string;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

before(async () => {
  const pool = await startPool(3, { env: ENV });
  hosts = pool.hosts;
  refs = pool.refs;
  url = pool.coordinator.url;
  s = pool.session;
  ({ sr: shared, dir: sharedDir } = await createSharedSr(call, refs[0]!, 'xapi-rpu-sr-'));
  network = await poolWideNetwork(call, 3);
});

after(async () => {
  await stopHosts(hosts);
  await rm(sharedDir, { recursive: true, force: true });
});

/** A VM with a disk on the shared SR and a VIF, halted. */
async function haltedVm(name: string): Promise<{ vm: string; vdi: string }> {
  const vm = (await call('VM.create', vmRecord(name, { memory: 128 * MiB }))) as string;
  const vdi = (await call('VDI.create', vdiRecord(shared, 8 * MiB, `${name} disk`))) as string;
  await call('VBD.create', vbdRecord(vm, vdi));
  await call('VIF.create', vifRecord(vm, network));
  return { vm, vdi };
}

/** Started on `host`, its guest agent up (an HVM guest without one cannot migrate). */
async function startOn(vm: string, host: string): Promise<void> {
  await call('VM.start_on', vm, host, false, false);
  await waitUntil('the guest agent reporting', async () => (await call('VM.get_guest_metrics', vm)) !== NULL);
}

/** Makes a stopped host's database the older store format (1: no datamodel version in meta). */
function makeFormat1(stateDir: string): void {
  const db = new Database(join(stateDir, 'xapi.db'), { fileMustExist: true });
  try {
    assert.equal((db.prepare("SELECT value FROM meta WHERE key = 'store_format'").get() as { value: string }).value, '2');
    db.prepare("DELETE FROM meta WHERE key = 'db_schema'").run();
    db.prepare("UPDATE meta SET value = '1' WHERE key = 'store_format'").run();
  } finally {
    db.close();
  }
}

/** The meta table of a stopped host's database. */
function storeMeta(path: string): Record<string, string> {
  const db = new Database(path, { fileMustExist: true, readonly: true });
  try {
    return Object.fromEntries(
      (db.prepare('SELECT key, value FROM meta').all() as { key: string; value: string }[]).map((r) => [r.key, r.value]),
    );
  } finally {
    db.close();
  }
}

/** Stops host i and starts it again alone, on its state directory, as release `version`. */
async function restartAs(i: number, version: string, waitFor?: RegExp): Promise<XapiProcess> {
  const old = hosts[i]!;
  await stopXapi(old, true);
  const next = await startXapi({
    address: old.address,
    httpPort: old.httpPort,
    httpsPort: old.httpsPort,
    stateDir: old.stateDir,
    env: ENV,
    args: ['--platform-version', version],
    waitFor,
  });
  hosts[i] = next;
  return next;
}

/** Until the coordinator lists host i enabled and live again, with the release it now runs. */
async function waitBack(i: number, version: string): Promise<void> {
  await waitUntil(`host ${i} back, enabled and live, as ${version}`, async () => {
    const h = (await call('host.get_record', refs[i])) as Rec;
    const sw = h.software_version as Record<string, string>;
    return h.enabled === true && sw.platform_version === version && (await call('host_metrics.get_live', h.metrics)) === true;
  });
}

const thePool = async () => ((await call('pool.get_all')) as string[])[0]!;
const poolOtherConfig = async () => (await call('pool.get_other_config', await thePool())) as Record<string, string>;
const upgrading = async () => 'rolling_upgrade_in_progress' in (await poolOtherConfig());

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

test('a rolling upgrade, coordinator first: the mark, the guards, a member too new refused, the mark gone when all match', {
  timeout: 300_000,
}, async () => {
  const [c, m1, m2] = refs as [string, string, string];
  const sw = async (h: string) => (await call('host.get_software_version', h)) as Record<string, string>;
  assert.equal((await sw(c)).platform_version, OLD);
  assert.equal((await sw(c)).xapi_build, '25.4.0');
  assert.equal(await upgrading(), false);
  const mover = await haltedVm('mover');
  const halted = await haltedVm('halted');
  await startOn(mover.vm, m1);
  const hostOpsBefore = (await call('host.get_allowed_operations', m2)) as string[];
  assert.ok(hostOpsBefore.includes('vm_start'), 'VMs may start on a host outside an upgrade');
  // an enabled member recomputed its list when it was enabled (consider_enabling_host)
  assert.ok(!hostOpsBefore.includes('shutdown'), 'an enabled host is not shut down');

  // 1. The coordinator: its state directory made the older store format, started as the new release.
  const coordinatorDb = join(hosts[0]!.stateDir, 'xapi.db');
  await stopXapi(hosts[0]!, true);
  makeFormat1(hosts[0]!.stateDir);
  hosts[0] = await startXapi({
    address: hosts[0]!.address,
    httpPort: hosts[0]!.httpPort,
    httpsPort: hosts[0]!.httpsPort,
    stateDir: hosts[0]!.stateDir,
    env: ENV,
    args: ['--platform-version', NEW],
  });
  url = hosts[0]!.url;
  s = await loginWhenServing(url);
  const mine = await sw(c);
  assert.equal(mine.platform_version, NEW);
  assert.equal(mine.product_version, '8.5.0');
  assert.equal(mine.xapi, '25.5');
  assert.equal(mine.xapi_build, '25.5.0');
  // what it ran before is all there (the VMs, the SR), and the mark is set at its start
  assert.equal(await call('VM.get_power_state', mover.vm), 'Running');
  assert.equal(await call('VM.get_resident_on', mover.vm), m1);
  assert.equal((await poolOtherConfig()).rolling_upgrade_in_progress, 'true');
  for (const i of [1, 2]) await waitBack(i, OLD);

  // what older releases cannot do is not offered
  assert.deepEqual(
    ((await call('host.get_allowed_operations', m2)) as string[]).filter((op) => !['evacuate', 'provision'].includes(op)),
    [],
  );
  const srOps = (await call('SR.get_allowed_operations', shared)) as string[];
  assert.ok(srOps.includes('vdi_create') && !srOps.includes('vdi_set_on_boot') && !srOps.includes('vdi_enable_cbt'), srOps.join());
  const vmOps = (await call('VM.get_allowed_operations', halted.vm)) as string[];
  assert.ok(vmOps.includes('start') && !vmOps.includes('snapshot'), vmOps.join());
  const poolOps = (await call('pool.get_allowed_operations', await thePool())) as string[];
  assert.ok(!poolOps.includes('cluster_create') && !poolOps.includes('tls_verification_enable'), poolOps.join());

  // the guards, through Python's xmlrpc.client
  const script = `
import os, ssl, xmlrpc.client
E = os.environ
s = xmlrpc.client.ServerProxy(E["URL"], context=ssl._create_unverified_context())
session = s.session.login_with_password("root", E["PASSWORD"])["Value"]
def fails(expected, r):
    assert r["Status"] == "Failure", r
    assert r["ErrorDescription"] == expected, (r["ErrorDescription"], expected)
NS = ["NOT_SUPPORTED_DURING_UPGRADE"]
# start_on / resume_on only on a host with the highest version
fails(NS, s.VM.start_on(session, E["HALTED"], E["M1"], False, False))
assert s.VM.get_power_state(session, E["HALTED"])["Value"] == "Halted"
assert s.VM.get_current_operations(session, E["HALTED"])["Value"] == {}
fails(NS, s.VM.resume_on(session, E["HALTED"], E["M2"], False, False))
# assert_can_boot_here: a host of another release than the coordinator's
fails(["VM_HOST_INCOMPATIBLE_VERSION", E["M1"], E["HALTED"]], s.VM.assert_can_boot_here(session, E["HALTED"], E["M1"]))
# the placement chooses among the newest only: here the coordinator, every time
for _ in range(3):
    assert s.VM.start(session, E["HALTED"], False, False)["Status"] == "Success"
    assert s.VM.get_resident_on(session, E["HALTED"])["Value"] == E["C"]
    assert s.VM.hard_shutdown(session, E["HALTED"])["Status"] == "Success"
# storage: no new SR, no operation older releases lack
fails(NS, s.SR.create(session, E["M1"], {"location": E["SR_DIR"]}, "0", "another", "", "file", "user", False, {}))
fails(NS, s.VDI.set_on_boot(session, E["HALTED_VDI"], "reset"))
assert s.VDI.get_on_boot(session, E["HALTED_VDI"])["Value"] == "persist"
print("ok guards", flush=True)
`;
  const out = await python(script, {
    URL: hosts[0]!.httpsUrl,
    PASSWORD,
    HALTED: halted.vm,
    HALTED_VDI: halted.vdi,
    C: c,
    M1: m1,
    M2: m2,
    SR_DIR: sharedDir,
  });
  assert.match(out, /ok guards/);

  // no VM import during the upgrade (xapi answers 400, the task fails)
  const res = await fetch(`${url}/import?session_id=${s}`, { method: 'PUT', body: Buffer.alloc(512) });
  assert.equal(res.status, 400);
  await res.body?.cancel();

  // migration: from the older member to the newer coordinator, not back
  await call('VM.pool_migrate', mover.vm, c, { live: 'true' });
  assert.equal(await call('VM.get_resident_on', mover.vm), c);
  assert.deepEqual(await xapiFailure(call('VM.pool_migrate', mover.vm, m2, { live: 'true' })), ['NOT_SUPPORTED_DURING_UPGRADE']);
  // nor with its disks (storage motion checks the versions, upgrade or not)
  const pifs = (await call('PIF.get_all_records')) as Record<string, { host: string; management: boolean; network: string }>;
  const m2Network = Object.values(pifs).find((p) => p.host === m2 && p.management)!.network;
  const dest = await call('host.migrate_receive', m2, m2Network, {});
  const vdiMap = { [mover.vdi]: (await call('VDI.get_SR', mover.vdi)) as string };
  assert.deepEqual(await xapiFailure(call('VM.migrate_send', mover.vm, dest, true, vdiMap, {}, {}, {})), ['NOT_SUPPORTED_DURING_UPGRADE']);
  assert.equal(await call('VM.get_resident_on', mover.vm), c);
  assert.deepEqual(await call('VM.get_current_operations', mover.vm), {});

  // 2. A member newer than its coordinator does not come up: it says why, and the pool is told.
  const tooNew = await restartAs(2, '3.6.0', /host ready/);
  const refused = await waitUntil('the member refusing to start as one', async () => {
    try {
      await login(tooNew.url, PASSWORD);
      return undefined;
    } catch (e) {
      if (e instanceof RpcFailure && e.error[0] === 'HOST_XAPI_VERSION_HIGHER_THAN_COORDINATOR') return e.error;
      if (e instanceof RpcFailure && e.error[0] === 'HOST_STILL_BOOTING') return undefined;
      throw e;
    }
  });
  assert.deepEqual(refused, ['HOST_XAPI_VERSION_HIGHER_THAN_COORDINATOR', '25.6.0']);
  const m2Uuid = (await call('host.get_uuid', m2)) as string;
  const messages = await waitUntil('the message on the member', async () => {
    const all = (await call('message.get_all_records')) as Record<string, Rec>;
    const found = Object.values(all).filter((m) => m.name === 'XAPI_STARTUP_BLOCKED_AS_VERSION_HIGHER_THAN_COORDINATOR');
    return found.length > 0 ? found : undefined;
  });
  assert.equal(messages.length, 1);
  assert.equal(messages[0]!.obj_uuid, m2Uuid);
  assert.equal(messages[0]!.priority, 2);
  assert.equal(messages[0]!.cls, 'Host');
  assert.match(String(messages[0]!.body), /is blocked as its xapi version \(25\.6\.0\) is higher than xapi version in pool coordinator/);
  // its record still says what it ran last
  assert.equal((await sw(m2)).platform_version, OLD);

  // 3. The members, one by one, as the coordinator's release.
  await restartAs(1, NEW);
  await waitBack(1, NEW);
  assert.equal(await upgrading(), true, 'one member still runs the old release');
  await restartAs(2, NEW);
  await waitBack(2, NEW);
  await waitUntil('the mark gone', async () => !(await upgrading()));

  // over: the operations are back (recomputed once the mark is gone, as xapi's db_gc does, so
  // a moment after it), and what was refused works
  await waitUntil('the host operations back', async () =>
    ((await call('host.get_allowed_operations', m2)) as string[]).includes('vm_start'),
  );
  assert.ok(((await call('VM.get_allowed_operations', halted.vm)) as string[]).includes('snapshot'));
  assert.ok(((await call('SR.get_allowed_operations', shared)) as string[]).includes('vdi_set_on_boot'));
  await call('VDI.set_on_boot', halted.vdi, 'reset');
  await startOn(halted.vm, m1);
  await call('VM.pool_migrate', mover.vm, m2, { live: 'true' });
  assert.equal(await call('VM.get_resident_on', mover.vm), m2);

  // every member's backup brought up to date (the next test starts one from it)
  await call('pool.sync_database');
  // the coordinator's database was upgraded to the current store format when it opened it
  await stopXapi(hosts[0]!, true);
  const meta = storeMeta(coordinatorDb);
  assert.equal(meta.store_format, '2');
  assert.equal(meta.db_schema, '5.909');
});

test("a member's backup in the older store format becomes a coordinator's database, upgraded as it is opened", {
  timeout: 120_000,
}, async () => {
  // The pool's coordinator is gone (stopped above, and here should the test above have failed
  // first). The last member keeps the backup its coordinator sent; made the older format, as an
  // older coordinator would have sent it.
  await stopXapi(hosts[0]!, true);
  const member = hosts[2]!;
  await stopXapi(member, true);
  const backup = join(member.stateDir, 'xapi.db');
  makeFormat1(member.stateDir);
  const alone = await startXapi({
    address: member.address,
    httpPort: member.httpPort,
    httpsPort: member.httpsPort,
    stateDir: member.stateDir,
    env: ENV,
    args: ['--platform-version', NEW],
  });
  hosts[2] = alone;
  const local = (await jsonCall(alone.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
  await jsonCall(alone.url, 'pool.emergency_transition_to_master', [local]);
  const session = await waitUntil('the member serving as coordinator', async () => {
    try {
      return await login(alone.url, PASSWORD);
    } catch (e) {
      if (e instanceof RpcFailure) return undefined;
      if (e instanceof TypeError) return undefined; // restarting: nothing listens for a moment
      throw e;
    }
  });
  const vms = Object.values((await jsonCall(alone.url, 'VM.get_all_records', [session])) as Record<string, Rec>);
  assert.ok(
    vms.some((v) => v.name_label === 'mover'),
    'the VMs of the backup',
  );
  const [pool] = (await jsonCall(alone.url, 'pool.get_all', [session])) as string[];
  const master = (await jsonCall(alone.url, 'pool.get_master', [session, pool])) as string;
  assert.equal(await jsonCall(alone.url, 'host.get_address', [session, master]), alone.address);
  await stopXapi(alone, true);
  const meta = storeMeta(backup);
  assert.equal(meta.store_format, '2');
  assert.equal(meta.db_schema, '5.909');
});
