// Cross-pool migration with real processes (issue 11 item 4): pool A of two hosts and pool B, a
// standalone host (each its own xapi processes on their own 127.x addresses; B's release newer).
// A running VM on A's member, its disk on that host's local SR with the guest writing it, a VIF
// and a snapshot, goes live to B through Xen Orchestra's connector, as XO drives it: B's
// host.migrate_receive, its map passed unchanged to A's assert_can_migrate and migrate_send. The
// disk's copy is checked at the switch (both hosts' digests, a test's check), the VM's record,
// VIFs, VBDs, snapshot and messages arrive mapped, it runs on B's host and A has nothing of it
// left. Then the errors of
// the cross-pool checks through Python's xmlrpc.client, with their parameters.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { jsonCall, login, putBody, xapiFailure } from './client.js';
import { PASSWORD, stopHosts, type XapiProcess } from './harness.js';
import { hostRef, joinPool, localSrOf, startHosts } from './pool-harness.js';
import { simulatorVms } from './sim-state.js';
import { vbdRecord, vdiRecord, vifRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const NULL = 'OpaqueRef:NULL';
type Rec = Record<string, unknown>;

let hosts: XapiProcess[];
/** Pool A: its coordinator, member; pool B: one host. */
let a0: XapiProcess;
let a1: XapiProcess;
let b: XapiProcess;
let sa: string;
let sb: string;
let isoDir: string;

const callA = (method: string, ...params: unknown[]) => jsonCall(a0.url, method, [sa, ...params]);
const callB = (method: string, ...params: unknown[]) => jsonCall(b.url, method, [sb, ...params]);

before(async () => {
  // the switch compares both images' digests (a test's check: XAPI_TEST_VERIFY_MIRRORS)
  const env = { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200', XAPI_TEST_VERIFY_MIRRORS: '1' };
  hosts = await startHosts(3, { env, hostArgs: [[], [], ['--platform-version', '3.5.0']] });
  [a0, a1, b] = hosts as [XapiProcess, XapiProcess, XapiProcess];
  await joinPool(a0, a1);
  sa = await login(a0.url, PASSWORD);
  sb = await login(b.url, PASSWORD);
  isoDir = await mkdtemp(join(tmpdir(), 'xapi-xpool-iso-'));
});

after(async () => {
  await stopHosts(hosts ?? []);
  await rm(isoDir, { recursive: true, force: true });
});

/** The management network of a pool (the network of the coordinator's management PIF). */
async function managementNetwork(call: typeof callA): Promise<string> {
  const pifs = (await call('PIF.get_all_records')) as Record<string, { management: boolean; network: string }>;
  return Object.values(pifs).find((p) => p.management)!.network;
}

/** A disk on A's `sr` holding `dataMiB` MiB of a pattern, uploaded to the host that has the SR. */
async function diskWith(name: string, sr: string, size: number, dataMiB: number, hostUrl: string): Promise<string> {
  const vdi = (await callA('VDI.create', vdiRecord(sr, size, name))) as string;
  if (dataMiB > 0) {
    const data = Buffer.alloc(dataMiB * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    assert.equal(await putBody(hostUrl, `/import_raw_vdi?session_id=${sa}&vdi=${vdi}&format=raw`, data), 200);
  }
  return vdi;
}

/** A running VM of pool A on `host` with the disk `vdi` and a VIF on `network`, its guest writing at `rate` bytes/s. */
async function runningVm(name: string, host: string, vdi: string, network: string, rate = 0): Promise<string> {
  const other = { 'migration test': name, ...(rate > 0 ? { simulator_disk_write_rate: String(rate) } : {}) };
  const vm = (await callA('VM.create', vmRecord(name, { memory: 64 * MiB, vcpus: 2 }, { other_config: other }))) as string;
  await callA('VBD.create', vbdRecord(vm, vdi));
  await callA('VIF.create', vifRecord(vm, network));
  await callA('VM.start_on', vm, host, false, false);
  await waitUntil('the guest agent reporting', async () => (await callA('VM.get_guest_metrics', vm)) !== NULL);
  return vm;
}

async function migrationLog(stateDir: string): Promise<Rec[]> {
  const text = await readFile(join(stateDir, 'migrations.log'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l)
    .map((l) => JSON.parse(l) as Rec);
}

/** No VDI of the pool is a copy a migration left half made. */
async function assertNoHalfCopies(call: typeof callA): Promise<void> {
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

test('a running VM goes live to another pool through the xen-api connector: disk, records, memory', { timeout: 300_000 }, async () => {
  const hostA1 = await hostRef(a0, sa, a1);
  const hostB = await hostRef(b, sb, b);
  const netA = await managementNetwork(callA);
  const netB = await managementNetwork(callB);
  const from = await localSrOf(callA, hostA1);
  const to = await localSrOf(callB, hostB);
  const disk = await diskWith('crossing disk', from, 64 * MiB, 48, a1.url);
  const vm = await runningVm('cross-pool', hostA1, disk, netA, 4 * MiB);
  const uuid = (await callA('VM.get_uuid', vm)) as string;
  const snapshot = (await callA('VM.snapshot', vm, 'before crossing')) as string;
  const snapshotUuid = (await callA('VM.get_uuid', snapshot)) as string;
  const [snapVbd] = (await callA('VM.get_VBDs', snapshot)) as string[];
  const snapDisk = (await callA('VBD.get_VDI', snapVbd)) as string;
  const before = (await callA('VM.get_record', vm)) as Rec;
  const [vif] = before.VIFs as string[];
  const [vbd] = before.VBDs as string[];
  const mac = (await callA('VIF.get_MAC', vif)) as string;
  // a message of the VM's goes with it (xapi's send_messages)
  const message = (await callA('message.create', 'CROSSING', 3, 'VM', uuid, 'a message <of> the VM & its pool')) as string;
  const messageUuid = ((await callA('message.get_record', message)) as Rec).uuid;

  const xb = new Xapi({ url: b.httpsUrl, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true });
  const xa = new Xapi({ url: a0.httpsUrl, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true });
  let result: unknown;
  try {
    await xb.connect();
    await xa.connect();
    const dest = (await xb.call('host.migrate_receive', hostB, netB, {})) as Record<string, string>;
    assert.equal(dest.host, hostB);
    assert.match(dest.master!, new RegExp(`^http://${b.address.replace(/\./g, '\\.')}`));
    // the map goes to the other pool unchanged, as XO passes it
    await xa.call('VM.assert_can_migrate', vm, dest, true, { [disk]: to }, { [vif!]: netB }, {});
    result = await xa.callAsync('VM.migrate_send', vm, dest, true, { [disk]: to }, { [vif!]: netB }, {});
  } finally {
    await xa.disconnect();
    await xb.disconnect();
  }

  // In pool B: the VM, running on its host, its record as it was.
  const there = (await callB('VM.get_by_uuid', uuid)) as string;
  assert.equal(result, there, "migrate_send's result is the VM's reference in the other pool");
  const r = (await callB('VM.get_record', there)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, hostB);
  assert.equal(r.scheduled_to_be_resident_on, NULL);
  assert.equal(r.name_label, 'cross-pool');
  assert.equal(r.memory_static_max, 64 * MiB);
  assert.equal(r.memory_dynamic_min, 64 * MiB);
  assert.equal(r.VCPUs_max, 2);
  assert.equal((r.other_config as Rec)['migration test'], 'cross-pool');
  assert.equal((r.other_config as Rec).migrate_task, undefined);
  assert.deepEqual(r.current_operations, {});
  const [vifB] = r.VIFs as string[];
  assert.equal(await callB('VIF.get_network', vifB), netB);
  assert.equal(await callB('VIF.get_MAC', vifB), mac);
  const [vbdB] = r.VBDs as string[];
  const diskB = (await callB('VBD.get_VDI', vbdB)) as string;
  assert.equal(await callB('VDI.get_SR', diskB), to);
  assert.equal(await callB('VBD.get_currently_attached', vbdB), true);
  // its snapshot came too, its disk a snapshot of the VM's copy
  const snapB = (await callB('VM.get_by_uuid', snapshotUuid)) as string;
  assert.equal(await callB('VM.get_snapshot_of', snapB), there);
  assert.equal(await callB('VM.get_is_a_snapshot', snapB), true);
  const snapDiskB = (await callB('VBD.get_VDI', ((await callB('VM.get_VBDs', snapB)) as string[])[0])) as string;
  assert.equal(await callB('VDI.get_SR', snapDiskB), to);
  assert.equal(await callB('VDI.get_is_a_snapshot', snapDiskB), true);
  assert.equal(await callB('VDI.get_snapshot_of', snapDiskB), diskB);
  await assertNoHalfCopies(callB);
  // the domain is B's, unpaused, on the copy's file; A's host has none
  const dom = simulatorVms(b.stateDir).get(uuid)?.domain;
  assert.equal(dom?.paused, false);
  assert.match(String(Object.values(dom?.vbds ?? {})[0]?.backend), new RegExp((await callB('VDI.get_uuid', diskB)) as string));
  assert.equal(simulatorVms(a1.stateDir).get(uuid)?.domain, undefined);

  // Its message is B's now, as it was (ref, uuid, body); A has none of it.
  const messagesB = (await callB('message.get', 'VM', uuid, '19700101T00:00:00Z')) as Record<string, Rec>;
  assert.deepEqual(Object.keys(messagesB), [message]);
  assert.equal(messagesB[message]!.uuid, messageUuid);
  assert.equal(messagesB[message]!.name, 'CROSSING');
  assert.equal(messagesB[message]!.body, 'a message <of> the VM & its pool');
  assert.deepEqual(await callA('message.get', 'VM', uuid, '19700101T00:00:00Z'), {});

  // Pool A has nothing of it left: VM, snapshot, their VBDs, VIFs and disks.
  assert.deepEqual(await xapiFailure(callA('VM.get_by_uuid', uuid)), ['UUID_INVALID', 'VM', uuid]);
  assert.deepEqual(await xapiFailure(callA('VM.get_record', snapshot)), ['HANDLE_INVALID', 'VM', snapshot]);
  assert.deepEqual(await xapiFailure(callA('VBD.get_record', vbd)), ['HANDLE_INVALID', 'VBD', vbd]);
  assert.deepEqual(await xapiFailure(callA('VIF.get_record', vif)), ['HANDLE_INVALID', 'VIF', vif]);
  assert.deepEqual(await xapiFailure(callA('VDI.get_record', disk)), ['HANDLE_INVALID', 'VDI', disk]);
  assert.deepEqual(await xapiFailure(callA('VDI.get_record', snapDisk)), ['HANDLE_INVALID', 'VDI', snapDisk]);

  // The guest wrote during the copy: its writes were mirrored, and at the switch both hosts read
  // the same image, each its own file.
  const [line] = (await migrationLog(a1.stateDir)).filter((l) => l.vm === uuid);
  assert.ok(line, 'a line in the source host migrations.log');
  const d = (line.disks as Rec[]).find((x) => x.vdi === disk);
  assert.ok(d, JSON.stringify(line.disks));
  assert.equal(d!.to, diskB);
  assert.ok((d!.bytes as number) >= 48 * MiB, JSON.stringify(d));
  assert.ok((d!.mirroredWrites as number) > 0, JSON.stringify(d));
  assert.match(String(d!.sourceSha256), /^[0-9a-f]{64}$/);
  assert.equal(d!.destinationSha256, d!.sourceSha256);

  // It runs on in B: a clean shutdown there works.
  await callB('VM.hard_shutdown', there);
  assert.equal(await callB('VM.get_power_state', there), 'Halted');
});

test("the cross-pool checks' errors through Python's xmlrpc.client; the VM stays where it was", { timeout: 180_000 }, async () => {
  const hostA1 = await hostRef(a0, sa, a1);
  const hostA0 = await hostRef(a0, sa, a0);
  const hostB = await hostRef(b, sb, b);
  const netA = await managementNetwork(callA);
  const netB = await managementNetwork(callB);
  const from = await localSrOf(callA, hostA1);
  const to = await localSrOf(callB, hostB);
  const isoB = (await callB('SR.create', hostB, { location: isoDir }, 0, 'isos', '', 'iso', 'iso', false, {})) as string;
  const disk = await diskWith('staying disk', from, 16 * MiB, 0, a1.url);
  const vm = await runningVm('staying', hostA1, disk, netA);
  const [vif] = (await callA('VM.get_VIFs', vm)) as string[];
  // a halted VM with more VCPUs than B's host has CPUs
  const cpus = Number(((await callB('host.get_cpu_info', hostB)) as Rec).cpu_count);
  const wide = (await callA('VM.create', vmRecord('wide', { memory: 64 * MiB, vcpus: cpus + 1 }))) as string;
  // a VM of B, which cannot go to A's older release
  const newer = (await callB('VM.create', vmRecord('newer', { memory: 64 * MiB }))) as string;
  const script = `
import os, ssl, xmlrpc.client
ctx = ssl._create_unverified_context()
A = xmlrpc.client.ServerProxy(os.environ["URL_A"], allow_none=True, context=ctx)
B = xmlrpc.client.ServerProxy(os.environ["URL_B"], allow_none=True, context=ctx)
sa = A.session.login_with_password("root", os.environ["PASSWORD"])["Value"]
sb = B.session.login_with_password("root", os.environ["PASSWORD"])["Value"]
E = os.environ
def fails(expected, r):
    assert r["Status"] == "Failure", r
    assert r["ErrorDescription"] == expected, (r["ErrorDescription"], expected)
    print("ok", expected[0], flush=True)
dest = B.host.migrate_receive(sb, E["HOST_B"], E["NET_B"], {})["Value"]
vdis = {E["DISK"]: E["TO"]}
vifs = {E["VIF"]: E["NET_B"]}
fails(["VDI_NOT_IN_MAP", E["DISK"]], A.VM.assert_can_migrate(sa, E["VM"], dest, True, {}, vifs, {}, {}))
fails(["VIF_NOT_IN_MAP", E["VIF"]], A.VM.assert_can_migrate(sa, E["VM"], dest, True, vdis, {}, {}, {}))
fails(["VIF_NOT_IN_MAP", E["VIF"]], A.VM.migrate_send(sa, E["VM"], dest, True, vdis, {}, {}, {}))
fails(["SR_DOES_NOT_SUPPORT_MIGRATION", E["ISO_B"], "VDI_SNAPSHOT;VDI_MIRROR_IN"],
      A.VM.assert_can_migrate(sa, E["VM"], dest, True, {E["DISK"]: E["ISO_B"]}, vifs, {}, {}))
fails(["VM_BAD_POWER_STATE", E["VM"], "halted", "running"], A.VM.assert_can_migrate(sa, E["VM"], dest, True, vdis, vifs, {"copy": "true"}, {}))
fails(["HOST_NOT_ENOUGH_PCPUS", E["WIDE_VCPUS"], E["CPUS"]], A.VM.assert_can_migrate(sa, E["WIDE"], dest, False, {}, {}, {}, {}))
assert B.host.disable(sb, E["HOST_B"])["Status"] == "Success"
fails(["HOST_DISABLED", E["HOST_B"]], A.VM.assert_can_migrate(sa, E["VM"], dest, True, vdis, vifs, {}, {}))
fails(["HOST_DISABLED", E["HOST_B"]], A.VM.migrate_send(sa, E["VM"], dest, True, vdis, vifs, {}, {}))
assert B.host.enable(sb, E["HOST_B"])["Status"] == "Success"
back = A.host.migrate_receive(sa, E["HOST_A0"], E["NET_A"], {})["Value"]
fails(["VM_HOST_INCOMPATIBLE_VERSION_MIGRATE", E["NEWER"], E["HOST_A0"]], B.VM.assert_can_migrate(sb, E["NEWER"], back, False, {}, {}, {}, {}))
r = A.VM.assert_can_migrate(sa, E["VM"], dest, True, vdis, vifs, {}, {})
assert r["Status"] == "Success", r
print("ok assert_can_migrate", flush=True)
`;
  const out = await python(script, {
    URL_A: a0.httpsUrl,
    URL_B: b.httpsUrl,
    PASSWORD,
    HOST_A0: hostA0,
    HOST_B: hostB,
    NET_A: netA,
    NET_B: netB,
    VM: vm,
    DISK: disk,
    TO: to,
    VIF: vif!,
    ISO_B: isoB,
    WIDE: wide,
    WIDE_VCPUS: String(cpus + 1),
    CPUS: String(cpus),
    NEWER: newer,
  });
  assert.match(out, /ok assert_can_migrate/);
  const r = (await callA('VM.get_record', vm)) as Rec;
  assert.equal(r.power_state, 'Running');
  assert.equal(r.resident_on, hostA1);
  assert.deepEqual(r.current_operations, {});
  assert.equal(await callA('VBD.get_VDI', (r.VBDs as string[])[0]), disk);
  // the dry runs made nothing in B
  assert.deepEqual(await xapiFailure(callB('VM.get_by_uuid', r.uuid)), ['UUID_INVALID', 'VM', r.uuid as string]);
  await assertNoHalfCopies(callA);
  await assertNoHalfCopies(callB);
  await callA('VM.hard_shutdown', vm);
});

test('options copy=true: a halted VM copied to another pool (new uuid and MACs there, the source kept); then moved', {
  timeout: 180_000,
}, async () => {
  const hostA1 = await hostRef(a0, sa, a1);
  const hostB = await hostRef(b, sb, b);
  const netA = await managementNetwork(callA);
  const netB = await managementNetwork(callB);
  const disk = await diskWith('copied disk', await localSrOf(callA, hostA1), 32 * MiB, 8, a1.url);
  const vm = (await callA('VM.create', vmRecord('copied', { memory: 64 * MiB }, { other_config: { kept: 'yes' } }))) as string;
  await callA('VBD.create', vbdRecord(vm, disk));
  const vif = (await callA('VIF.create', vifRecord(vm, netA))) as string;
  const uuid = (await callA('VM.get_uuid', vm)) as string;
  const to = await localSrOf(callB, hostB);
  const dest = await callB('host.migrate_receive', hostB, netB, {});
  const copy = (await callA('VM.migrate_send', vm, dest, false, { [disk]: to }, { [vif]: netB }, { copy: 'true' }, {})) as string;

  // the source is as it was
  const r = (await callA('VM.get_record', vm)) as Rec;
  assert.equal(r.power_state, 'Halted');
  assert.deepEqual(r.current_operations, {});
  assert.equal(await callA('VBD.get_VDI', (r.VBDs as string[])[0]), disk);
  // the copy in B: another uuid, the same record, its disk on B's SR holding the same bytes
  const c = (await callB('VM.get_record', copy)) as Rec;
  assert.notEqual(c.uuid, uuid);
  assert.equal(c.name_label, 'copied');
  assert.equal(c.power_state, 'Halted');
  assert.equal((c.other_config as Rec).kept, 'yes');
  assert.equal((c.other_config as Rec).migrate_task, undefined);
  const [vifB] = c.VIFs as string[];
  assert.equal(await callB('VIF.get_network', vifB), netB);
  assert.notEqual(await callB('VIF.get_MAC', vifB), await callA('VIF.get_MAC', vif));
  const diskB = (await callB('VBD.get_VDI', (c.VBDs as string[])[0])) as string;
  assert.equal(await callB('VDI.get_SR', diskB), to);
  const bytes = async (url: string, s: string, v: string) =>
    Buffer.from(await (await fetch(`${url}/export_raw_vdi?session_id=${s}&vdi=${v}&format=raw`)).arrayBuffer());
  assert.ok((await bytes(a1.url, sa, disk)).equals(await bytes(b.url, sb, diskB)), 'the copy holds the same bytes');
  await assertNoHalfCopies(callB);
  // it starts there
  await callB('VM.start', copy, false, false);
  assert.equal(await callB('VM.get_resident_on', copy), hostB);
  await callB('VM.hard_shutdown', copy);

  // Without copy, the halted VM itself moves: the same uuid there, nothing left here.
  const mac = (await callA('VIF.get_MAC', vif)) as string;
  const dest2 = await callB('host.migrate_receive', hostB, netB, {});
  const moved = (await callA('VM.migrate_send', vm, dest2, false, { [disk]: to }, { [vif]: netB }, {}, {})) as string;
  assert.equal(await callB('VM.get_uuid', moved), uuid);
  assert.equal(await callB('VM.get_power_state', moved), 'Halted');
  assert.equal(await callB('VIF.get_MAC', ((await callB('VM.get_VIFs', moved)) as string[])[0]), mac);
  assert.deepEqual(await xapiFailure(callA('VM.get_by_uuid', uuid)), ['UUID_INVALID', 'VM', uuid]);
  assert.deepEqual(await xapiFailure(callA('VDI.get_record', disk)), ['HANDLE_INVALID', 'VDI', disk]);
  await assertNoHalfCopies(callB);
});
