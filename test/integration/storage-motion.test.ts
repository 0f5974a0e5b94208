// Storage motion in a pool of three real processes (issue 11 item 3): a running VM's disk moves
// from one member's local SR to the other's with VM.migrate_send through Xen Orchestra's
// connector, while the simulated guest writes it (other_config simulator_disk_write_rate): the
// guest's writes during the copy are mirrored, and both hosts read their image at the switch and
// find the same digest (the source's migrations.log). VDI.pool_migrate moves a running VM's disk
// to a shared SR on its own host; then host.migrate_receive's and migrate_send's errors through
// Python's xmlrpc.client, in xapi's order and with their parameters.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { jsonCall, putBody, xapiFailure } from './client.js';
import { PASSWORD } from './harness.js';
import { createSharedSr, localSrOf, startPool, type TestPool } from './pool-harness.js';
import { simulatorVms } from './sim-state.js';
import { vbdRecord, vdiRecord, vifRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const NULL = 'OpaqueRef:NULL';
type Rec = Record<string, unknown>;

let pool: TestPool;
let url: string;
let s: string;
let sharedDir: string;
let isoDir: string;
let shared: string;
let iso: string;
let network: string;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

before(async () => {
  // the switch compares both images' digests (a test's check: XAPI_TEST_VERIFY_MIRRORS)
  pool = await startPool(3, { env: { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200', XAPI_TEST_VERIFY_MIRRORS: '1' } });
  url = pool.coordinator.url;
  s = pool.session;
  ({ sr: shared, dir: sharedDir } = await createSharedSr(call, pool.refs[0]!, 'xapi-sxm-sr-'));
  isoDir = await mkdtemp(join(tmpdir(), 'xapi-sxm-iso-'));
  iso = (await call('SR.create', pool.refs[0], { location: isoDir }, 0, 'isos', '', 'iso', 'iso', false, {})) as string;
  const nets = (await call('network.get_all_records')) as Record<string, { PIFs: string[] }>;
  for (const [ref, n] of Object.entries(nets)) {
    const pifs = await Promise.all(n.PIFs.map((p) => call('PIF.get_record', p) as Promise<Rec>));
    if (new Set(pifs.map((p) => p.host)).size === 3 && pifs.every((p) => p.management === true)) network = ref;
  }
  assert.ok(network, 'the management network');
});

after(async () => {
  await pool?.stop();
  await rm(sharedDir, { recursive: true, force: true });
  await rm(isoDir, { recursive: true, force: true });
});

/** A disk of `size` on `sr` holding `data` MiB of a pattern, uploaded to the host that has the SR. */
async function diskWith(name: string, sr: string, size: number, dataMiB: number, hostUrl: string): Promise<string> {
  const vdi = (await call('VDI.create', vdiRecord(sr, size, name))) as string;
  if (dataMiB > 0) {
    const data = Buffer.alloc(dataMiB * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    assert.equal(await putBody(hostUrl, `/import_raw_vdi?session_id=${s}&vdi=${vdi}&format=raw`, data), 200);
  }
  return vdi;
}

/** A running VM on `host` with the disk `vdi`, its guest writing it at `rate` bytes/s (0: not at all). */
async function runningVm(name: string, host: string, vdi: string, rate = 0): Promise<string> {
  const other = rate > 0 ? { simulator_disk_write_rate: String(rate) } : {};
  const vm = (await call('VM.create', vmRecord(name, { memory: 64 * MiB }, { other_config: other }))) as string;
  await call('VBD.create', vbdRecord(vm, vdi));
  await call('VIF.create', vifRecord(vm, network));
  await call('VM.start_on', vm, host, false, false);
  await waitUntil('the guest agent reporting', async () => (await call('VM.get_guest_metrics', vm)) !== NULL);
  return vm;
}

async function migrationLog(stateDir: string): Promise<Rec[]> {
  const text = await readFile(join(stateDir, 'migrations.log'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l)
    .map((l) => JSON.parse(l) as Rec);
}

/** No VDI anywhere is a copy left half made. */
async function assertNoHalfCopies(): Promise<void> {
  const vdis = (await call('VDI.get_all_records')) as Record<string, { sm_config: Rec }>;
  for (const [ref, v] of Object.entries(vdis)) assert.equal(v.sm_config.migrate_task, undefined, `${ref} is a copy left behind`);
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

test('VM.migrate_send through the xen-api connector: the disk moves member to member while the guest writes it', {
  timeout: 240_000,
}, async () => {
  const [, m1, m2] = pool.refs as [string, string, string];
  const [, p1] = pool.hosts as [unknown, (typeof pool.hosts)[0], (typeof pool.hosts)[0]];
  const from = await localSrOf(call, m1);
  const to = await localSrOf(call, m2);
  const disk = await diskWith('moving disk', from, 64 * MiB, 48, p1.url);
  const vm = await runningVm('storage motion', m1, disk, 4 * MiB);
  const uuid = (await call('VM.get_uuid', vm)) as string;
  // a snapshot: its disk goes with the disk it is a snapshot of
  const snapshot = (await call('VM.snapshot', vm, 'before the move')) as string;
  const [snapVbd] = (await call('VM.get_VBDs', snapshot)) as string[];
  const snapDisk = (await call('VBD.get_VDI', snapVbd)) as string;
  const before = (await call('VM.get_record', vm)) as Rec;
  const progress: number[] = [];
  let { token } = (await call('event.from', ['task'], '', 0)) as { token: string };
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const batch = (await call('event.from', ['task'], token, 1)) as { token: string; events: Rec[] };
      token = batch.token;
      for (const e of batch.events) {
        const snap = e.snapshot as Rec | undefined;
        if (snap?.name_label === 'Async.VM.migrate_send') progress.push(snap.progress as number);
      }
    }
  })();

  const xapi = new Xapi({ url: pool.coordinator.httpsUrl, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true });
  let result: unknown;
  try {
    await xapi.connect();
    const dest = (await xapi.call('host.migrate_receive', m2, network, {})) as Record<string, string>;
    assert.deepEqual(Object.keys(dest).sort(), ['SM', 'host', 'master', 'session_id', 'xenops']);
    assert.equal(dest.host, m2);
    assert.match(dest.xenops!, new RegExp(`^http://${pool.hosts[2]!.address.replace(/\./g, '\\.')}(:\\d+)?/services/xenops\\?session_id=`));
    assert.match(dest.master!, new RegExp(`^http://${pool.coordinator.address.replace(/\./g, '\\.')}`));
    await xapi.call('VM.assert_can_migrate', vm, dest, true, { [disk]: to }, {}, {});
    result = await xapi.callAsync('VM.migrate_send', vm, dest, true, { [disk]: to }, {}, {});
  } finally {
    await xapi.disconnect();
  }
  watching = false;
  await call('task.get_all');
  await watcher;
  assert.equal(result, vm);

  const after = (await call('VM.get_record', vm)) as Rec;
  assert.equal(after.power_state, 'Running');
  assert.equal(after.resident_on, m2);
  assert.deepEqual(after.current_operations, {});
  assert.equal(after.guest_metrics, before.guest_metrics, 'the guest did not restart');
  const [vbd] = after.VBDs as string[];
  const moved = (await call('VBD.get_VDI', vbd)) as string;
  assert.notEqual(moved, disk);
  assert.equal(await call('VDI.get_SR', moved), to);
  assert.equal(await call('VBD.get_currently_attached', vbd), true);
  assert.deepEqual(await xapiFailure(call('VDI.get_record', disk)), ['HANDLE_INVALID', 'VDI', disk], 'the source disk is gone');
  const snapMoved = (await call('VBD.get_VDI', snapVbd)) as string;
  assert.notEqual(snapMoved, snapDisk);
  assert.equal(await call('VDI.get_SR', snapMoved), to);
  assert.equal(await call('VDI.get_is_a_snapshot', snapMoved), true);
  assert.equal(await call('VDI.get_snapshot_of', snapMoved), moved);
  assert.deepEqual(await xapiFailure(call('VDI.get_record', snapDisk)), ['HANDLE_INVALID', 'VDI', snapDisk]);
  await assertNoHalfCopies();
  // the domain is m2's, on the new disk's file
  const there = simulatorVms(pool.hosts[2]!.stateDir).get(uuid);
  assert.equal(there?.domain?.paused, false);
  assert.match(String(Object.values(there?.domain?.vbds ?? {})[0]?.backend), new RegExp((await call('VDI.get_uuid', moved)) as string));
  assert.equal(simulatorVms(pool.hosts[1]!.stateDir).get(uuid)?.domain, undefined);

  // The guest wrote during the copy: its writes were mirrored, and at the switch both hosts read
  // the same image (each its own file).
  const [line] = (await migrationLog(pool.hosts[1]!.stateDir)).filter((l) => l.vm === uuid);
  assert.ok(line, 'a line in the source host migrations.log');
  const d = (line.disks as Rec[]).find((x) => x.vdi === disk);
  assert.ok(d, JSON.stringify(line.disks));
  assert.equal(d!.to, moved);
  assert.ok((d!.bytes as number) >= 48 * MiB, JSON.stringify(d));
  assert.ok((d!.mirroredWrites as number) > 0, JSON.stringify(d));
  assert.match(String(d!.sourceSha256), /^[0-9a-f]{64}$/);
  assert.equal(d!.destinationSha256, d!.sourceSha256);

  assert.ok(
    progress.some((p) => p > 0 && p < 1),
    JSON.stringify(progress),
  );
  assert.ok(
    progress.every((p, i) => i === 0 || p >= progress[i - 1]!),
    JSON.stringify(progress),
  );
  const messages = (await call('message.get_all_records')) as Record<string, Rec>;
  assert.ok(Object.values(messages).some((m) => m.name === 'VM_MIGRATED' && m.obj_uuid === uuid));
  await call('VM.hard_shutdown', vm);
});

test('VDI.pool_migrate: a running VM’s disk to a shared SR, on its own host', { timeout: 180_000 }, async () => {
  const [, m1] = pool.refs as [string, string, string];
  const disk = await diskWith('to shared', await localSrOf(call, m1), 32 * MiB, 16, pool.hosts[1]!.url);
  const vm = await runningVm('disk mover', m1, disk, 2 * MiB);
  const uuid = (await call('VM.get_uuid', vm)) as string;
  const moved = (await call('VDI.pool_migrate', disk, shared, {})) as string;
  assert.notEqual(moved, disk);
  assert.equal(await call('VDI.get_SR', moved), shared);
  const r = (await call('VM.get_record', vm)) as Rec;
  assert.equal(r.resident_on, m1);
  assert.equal(r.power_state, 'Running');
  assert.equal(await call('VBD.get_VDI', (r.VBDs as string[])[0]), moved);
  assert.deepEqual(await xapiFailure(call('VDI.get_record', disk)), ['HANDLE_INVALID', 'VDI', disk]);
  assert.deepEqual(await call('VDI.get_current_operations', moved), {});
  await assertNoHalfCopies();
  const [line] = (await migrationLog(pool.hosts[1]!.stateDir)).filter((l) => l.vm === uuid);
  const [d] = line!.disks as Rec[];
  assert.equal(d!.destinationSha256, d!.sourceSha256);
  // the VM's domain on this host now uses the new disk
  const dom = simulatorVms(pool.hosts[1]!.stateDir).get(uuid)?.domain;
  assert.match(String(Object.values(dom?.vbds ?? {})[0]?.backend), new RegExp((await call('VDI.get_uuid', moved)) as string));
  await call('VM.hard_shutdown', vm);
});

test("migrate_receive's and migrate_send's errors through Python's xmlrpc.client; the VM stays where it was", {
  timeout: 180_000,
}, async () => {
  const [, m1, m2] = pool.refs as [string, string, string];
  const from = await localSrOf(call, m1);
  const to = await localSrOf(call, m2);
  const disk = await diskWith('staying disk', from, 16 * MiB, 0, pool.hosts[1]!.url);
  const vm = await runningVm('staying', m1, disk);
  const [vif] = (await call('VM.get_VIFs', vm)) as string[];
  const loose = await diskWith('no VM', from, 8 * MiB, 0, pool.hosts[1]!.url);
  const pifs = (await call('PIF.get_all_records')) as Record<
    string,
    { host: string; IP: string; network: string; ip_configuration_mode: string }
  >;
  const [barePif, bare] = Object.entries(pifs).find(([, p]) => p.host === m2 && p.IP === '')!;
  const lonely = (await call('network.create', { name_label: 'no PIFs', name_description: '', MTU: 1500, other_config: {} })) as string;
  const script = `
import os, ssl, xmlrpc.client
s = xmlrpc.client.ServerProxy(os.environ["URL"], allow_none=True, context=ssl._create_unverified_context())
session = s.session.login_with_password("root", os.environ["PASSWORD"])["Value"]
E = os.environ
def fails(expected, r):
    assert r["Status"] == "Failure", r
    assert r["ErrorDescription"] == expected, (r["ErrorDescription"], expected)
    print("ok", expected[0], flush=True)
fails(["HOST_CANNOT_ATTACH_NETWORK", E["M2"], E["LONELY"]], s.host.migrate_receive(session, E["M2"], E["LONELY"], {}))
fails([E["BARE_ERROR"], E["BARE_PIF"]], s.host.migrate_receive(session, E["M2"], E["BARE_NET"], {}))
dest = s.host.migrate_receive(session, E["M2"], E["NET"], {})["Value"]
fails(["VDI_NOT_IN_MAP", E["DISK"]], s.VM.migrate_send(session, E["VM"], dest, True, {}, {}, {}, {}))
fails(["VDI_NOT_IN_MAP", E["DISK"]], s.VM.assert_can_migrate(session, E["VM"], dest, True, {}, {}, {}, {}))
fails(["SR_DOES_NOT_SUPPORT_MIGRATION", E["ISO"], "VDI_SNAPSHOT;VDI_MIRROR_IN"], s.VM.migrate_send(session, E["VM"], dest, True, {E["DISK"]: E["ISO"]}, {}, {}, {}))
fails(["OPERATION_NOT_ALLOWED", "VIF mapping is not allowed for intra-pool migration -all VIFs must be on the same network"],
      s.VM.migrate_send(session, E["VM"], dest, True, {E["DISK"]: E["TO"]}, {E["VIF"]: E["NET"]}, {}, {}))
fails(["OPERATION_NOT_ALLOWED", "Copy mode is disallowed on intra pool storage migration, try efficient alternatives, for example, VM.copy/clone."],
      s.VM.migrate_send(session, E["VM"], dest, True, {E["DISK"]: E["TO"]}, {}, {"copy": "true"}, {}))
fails(["VDI_NEEDS_VM_FOR_MIGRATE", E["LOOSE"]], s.VDI.pool_migrate(session, E["LOOSE"], E["TO"], {}))
r = s.VM.assert_can_migrate(session, E["VM"], dest, True, {E["DISK"]: E["TO"]}, {}, {}, {})
assert r["Status"] == "Success", r
print("ok assert_can_migrate", flush=True)
`;
  const out = await python(script, {
    URL: pool.coordinator.httpsUrl,
    PASSWORD,
    M2: m2,
    LONELY: lonely,
    BARE_PIF: barePif,
    BARE_NET: bare.network,
    BARE_ERROR: bare.ip_configuration_mode === 'None' ? 'PIF_HAS_NO_NETWORK_CONFIGURATION' : 'INTERFACE_HAS_NO_IP',
    NET: network,
    VM: vm,
    DISK: disk,
    ISO: iso,
    TO: to,
    VIF: vif!,
    LOOSE: loose,
  });
  assert.match(out, /ok assert_can_migrate/);
  const r = (await call('VM.get_record', vm)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, m1);
  assert.deepEqual(r.current_operations, {});
  assert.equal(r.scheduled_to_be_resident_on, NULL);
  assert.equal(await call('VBD.get_VDI', (r.VBDs as string[])[0]), disk);
  await assertNoHalfCopies();
  await call('VM.hard_shutdown', vm);

  // Halted, its disk moves all the same (copied, nothing to mirror), and it starts there.
  const dest = await call('host.migrate_receive', m2, network, {});
  await call('VM.migrate_send', vm, dest, false, { [disk]: to }, {}, {}, {});
  const moved = (await call('VBD.get_VDI', (r.VBDs as string[])[0])) as string;
  assert.notEqual(moved, disk);
  assert.equal(await call('VDI.get_SR', moved), to);
  assert.deepEqual(await xapiFailure(call('VDI.get_record', disk)), ['HANDLE_INVALID', 'VDI', disk]);
  assert.equal(await call('VM.get_power_state', vm), 'Halted');
  await assertNoHalfCopies();
  await call('VM.start_on', vm, m2, false, false);
  await call('VM.hard_shutdown', vm);
});
