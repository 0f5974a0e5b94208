// High availability in a pool of three real processes (issue 14, first part): pool.enable_ha
// through Xen Orchestra's connector on a shared SR (the statefile VDI made there as xapi makes
// it, every host's daemon in the liveset); xapi's errors through Python's xmlrpc.client before
// and after; disable_ha (every daemon stops, nobody fenced); then, HA on again at T = 10: a
// partition of one host against two (heartbeats dropped by the daemons' fault switch: the single
// host fences itself, the others drop it from the liveset), and a member's xapi stopped
// (SIGSTOP: its watchdog, a process of its own, kills it and ends its domains; the coordinator's
// liveset drops it).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { jsonCall } from './client.js';
import { PASSWORD, type XapiProcess } from './harness.js';
import { createSharedSr, localSrOf, runningVmOn, startPool, type TestPool } from './pool-harness.js';
import { simulatorVms } from './sim-state.js';
import { vbdRecord, vdiRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
type Rec = Record<string, unknown>;

let pool: TestPool;
let url: string;
let s: string;
let sharedDir: string;
let shared: string;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

before(async () => {
  pool = await startPool(3);
  url = pool.coordinator.url;
  s = pool.session;
  ({ sr: shared, dir: sharedDir } = await createSharedSr(call, pool.refs[0]!, 'xapi-ha-sr-'));
});

after(async () => {
  await pool?.stop();
  await rm(sharedDir, { recursive: true, force: true });
});

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

const PY_PRELUDE = `
import os, ssl, sys, xmlrpc.client
E = os.environ
s = xmlrpc.client.ServerProxy(E["URL"], allow_none=True, context=ssl._create_unverified_context())
session = s.session.login_with_password("root", E["PASSWORD"])["Value"]
def fails(expected, method, *args):
    f = s
    for part in method.split("."):
        f = getattr(f, part)
    r = f(session, *args)
    assert r["Status"] == "Failure", (method, r)
    assert r["ErrorDescription"] == expected, (method, r["ErrorDescription"], expected)
    print("ok", method, expected[0], flush=True)
`;

async function enableThroughXo(configuration: Record<string, string>): Promise<void> {
  const xapi = new Xapi({ url: pool.coordinator.httpsUrl, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true });
  try {
    await xapi.connect();
    await xapi.call('pool.enable_ha', [shared], configuration);
  } finally {
    await xapi.disconnect();
  }
}

async function isLive(host: string): Promise<boolean> {
  return (await call('host_metrics.get_live', await call('host.get_metrics', host))) === true;
}

/** Drops heartbeats between `a` and each of `others`, both ways, through the daemons' fault switch. */
async function partition(a: XapiProcess, aUuid: string, others: Array<[XapiProcess, string]>): Promise<void> {
  await writeFile(join(a.stateDir, 'ha-fault.json'), JSON.stringify({ dropHeartbeats: others.map(([, u]) => u) }));
  for (const [o] of others) await writeFile(join(o.stateDir, 'ha-fault.json'), JSON.stringify({ dropHeartbeats: [aUuid] }));
}

test("enable_ha's and friends' errors through Python's xmlrpc.client, before HA is on", { timeout: 120_000 }, async () => {
  const [c] = pool.refs as [string];
  const localSr = await localSrOf(call, c);
  const vm = (await call('VM.create', vmRecord('ha errors', { memory: 128 * MiB }))) as string;
  const script = `${PY_PRELUDE}
fails(["SR_NO_PBDS", E["LOCAL_SR"]], "pool.enable_ha", [E["LOCAL_SR"]], {})
fails(["INTERNAL_ERROR", 'Failure("int_of_string")'], "pool.enable_ha", [E["SHARED"]], {"timeout": "ten"})
fails(["INTERNAL_ERROR", 'Failure("constraint violation: timeout >= 10")'], "pool.enable_ha", [E["SHARED"]], {"timeout": "9"})
fails(["HA_NOT_ENABLED"], "pool.disable_ha")
fails(["INVALID_VALUE", "ha_host_failures_to_tolerate", "-1"], "pool.set_ha_host_failures_to_tolerate", E["POOL"], "-1")
fails(["INVALID_VALUE", "ha_restart_priority", "always"], "VM.set_ha_restart_priority", E["VM"], "always")
fails(["INVALID_VALUE", "order must be non-negative", "-1"], "VM.set_order", E["VM"], "-1")
fails(["INVALID_VALUE", "ha_restart_priority", "sometimes"], "pool.ha_compute_hypothetical_max_host_failures_to_tolerate", {E["VM"]: "sometimes"})
assert s.VM.set_order(session, E["VM"], "3")["Status"] == "Success"
assert s.VM.set_ha_restart_priority(session, E["VM"], "best-effort")["Status"] == "Success"
assert s.VM.get_ha_always_run(session, E["VM"])["Value"] == False
# no protected VM: any number of failures up to the number of hosts
assert s.pool.ha_compute_max_host_failures_to_tolerate(session)["Value"] == "3"
assert s.pool.ha_failover_plan_exists(session, "2")["Value"] == True
print("ok all", flush=True)
`;
  const [poolRef] = (await call('pool.get_all')) as [string];
  const out = await python(script, { URL: url, PASSWORD, LOCAL_SR: localSr, SHARED: shared, POOL: poolRef, VM: vm });
  assert.match(out, /ok all/);
  assert.equal(await call('VM.get_order', vm), 3);
  assert.equal(await call('VM.get_ha_restart_priority', vm), 'best-effort');
  // A refused enable leaves HA off (the statefile it made stays for the next attempt, as in xapi).
  assert.equal(await call('pool.get_ha_enabled', poolRef), false);
});

test('enable_ha through the xen-api connector; HA_IS_ENABLED while on; disable_ha stops every daemon unfenced', {
  timeout: 180_000,
}, async () => {
  const [poolRef] = (await call('pool.get_all')) as [string];
  await enableThroughXo({ timeout: '10' });
  const p = (await call('pool.get_record', poolRef)) as Rec;
  assert.equal(p.ha_enabled, true);
  assert.deepEqual(p.ha_configuration, { timeout: '10' });
  assert.equal(p.ha_plan_exists_for, 0);
  assert.equal(p.ha_overcommitted, false);
  assert.equal(p.ha_cluster_stack, 'xhad');
  const [statefile] = p.ha_statefiles as [string];
  const vdi = (await call('VDI.get_record', statefile)) as Rec;
  assert.equal(vdi.type, 'ha_statefile');
  assert.equal(vdi.name_label, 'Statefile for HA');
  // 266,240 bytes asked; the SR rounds it up to its own unit
  assert.ok((vdi.virtual_size as number) >= 266_240);
  assert.equal(vdi.SR, shared);
  const vdis = (await call('VDI.get_all_records')) as Record<string, Rec>;
  const metadata = Object.values(vdis).find((v) => v.type === 'redo_log');
  assert.equal(metadata?.name_label, 'Metadata for HA');
  assert.equal(metadata?.SR, shared);
  assert.equal(
    (await stat(join(sharedDir, (await call('SR.get_uuid', shared)) as string, `${vdi.uuid as string}.statefile`))).size,
    266_240,
  );
  const uuids: string[] = [];
  for (const h of pool.refs) uuids.push((await call('host.get_uuid', h)) as string);
  await waitUntil('every host with its statefile and network peers', async () => {
    for (const h of pool.refs) {
      const r = (await call('host.get_record', h)) as Rec;
      if ((r.ha_statefiles as string[]).join() !== statefile) return false;
      if ([...(r.ha_network_peers as string[])].sort().join() !== [...uuids].sort().join()) return false;
    }
    return true;
  });
  for (const h of pool.refs) assert.equal(await isLive(h), true);

  // While HA is on.
  const member = pool.members[0]!;
  const script = `${PY_PRELUDE}
fails(["HA_IS_ENABLED"], "pool.enable_ha", [E["SHARED"]], {})
fails(["HA_IS_ENABLED"], "pool.eject", E["M1"])
# the emergency calls, with a local session on the member
m = xmlrpc.client.ServerProxy(E["MEMBER"], allow_none=True, context=ssl._create_unverified_context())
local = m.session.slave_local_login_with_password("root", E["PASSWORD"])["Value"]
r = m.pool.emergency_transition_to_master(local)
assert r["ErrorDescription"] == ["HA_IS_ENABLED"], r
r = m.pool.emergency_reset_master(local, "127.0.0.1")
assert r["ErrorDescription"] == ["HA_IS_ENABLED"], r
print("ok all", flush=True)
`;
  assert.match(await python(script, { URL: url, PASSWORD, SHARED: shared, M1: pool.refs[1]!, MEMBER: member.url }), /ok all/);

  await call('pool.disable_ha');
  assert.equal(await call('pool.get_ha_enabled', poolRef), false);
  for (const h of pool.refs) {
    assert.equal(await isLive(h), true);
  }
  // every host still runs: the pool state INVALID stopped the daemons without fencing
  for (const h of pool.hosts) assert.equal(h.proc.exitCode, null);
  for (const h of pool.hosts) assert.equal(h.proc.signalCode, null);
});

test('HA on at T = 10: one host cut off from the other two fences itself; a stopped xapi is fenced by its watchdog', {
  timeout: 300_000,
}, async () => {
  const [, m1, m2] = pool.refs as [string, string, string];
  const [c, h1, h2] = pool.hosts as [XapiProcess, XapiProcess, XapiProcess];
  const uuids: string[] = [];
  for (const h of pool.refs) uuids.push((await call('host.get_uuid', h)) as string);
  // Guests on both members: a fence ends them.
  const onM1 = await runningVmOn(c, s, h1, 'on m1');
  const onM2 = await runningVmOn(c, s, h2, 'on m2');
  const uuidOnM1 = (await call('VM.get_uuid', onM1)) as string;
  const uuidOnM2 = (await call('VM.get_uuid', onM2)) as string;
  assert.ok(simulatorVms(h2.stateDir).get(uuidOnM2)?.domain);
  // a disk on the shared SR too, for the planner to find the VM agile
  const disk = (await call('VDI.create', vdiRecord(shared, 8 * MiB, 'on m1 disk'))) as string;
  await call('VBD.create', { ...vbdRecord(onM1, disk), userdevice: '1' });

  await enableThroughXo({ timeout: '10' });

  // 1 vs 2: m2 hears nobody, nobody hears m2; the statefile is intact.
  await partition(h2, uuids[2]!, [
    [c, uuids[0]!],
    [h1, uuids[1]!],
  ]);
  const fenced = await h2.exited;
  assert.equal(fenced, 'SIGKILL', 'killed by its watchdog');
  assert.equal(simulatorVms(h2.stateDir).get(uuidOnM2)?.domain, undefined, "the fenced host's domain is gone");
  await waitUntil('m2 out of the liveset', async () => !(await isLive(m2)), { timeoutMs: 90_000, intervalMs: 200 });
  assert.equal(await isLive(m1), true);
  assert.equal(c.proc.exitCode, null);
  assert.equal(h1.proc.exitCode, null);

  // m1's xapi stops answering (SIGSTOP): its watchdog is not petted, and fences it.
  assert.ok(simulatorVms(h1.stateDir).get(uuidOnM1)?.domain);
  h1.kill('SIGSTOP');
  assert.equal(await h1.exited, 'SIGKILL');
  assert.equal(simulatorVms(h1.stateDir).get(uuidOnM1)?.domain, undefined, "the fenced host's domain is gone");
  await waitUntil('m1 out of the liveset', async () => !(await isLive(m1)), { timeoutMs: 90_000, intervalMs: 200 });
  // The coordinator alone: still in its own liveset, still serving.
  assert.equal(await isLive(pool.refs[0]!), true);
  assert.equal(c.proc.exitCode, null);

  // HA off again with two hosts gone: the survivors' part succeeds, the rest is logged.
  await call('pool.disable_ha');
  assert.equal(await call('pool.get_ha_enabled', ((await call('pool.get_all')) as string[])[0]), false);
});
