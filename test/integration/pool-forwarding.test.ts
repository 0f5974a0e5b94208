// Forwarding in a pool of three real processes (test/integration/pool-harness.ts): the coordinator keeps
// the checks and marks and hands the work to the host that must do it. A VM whose disk is on a
// member's local SR is placed on that member and runs in its simulator; its shutdown is
// forwarded there; VM.start_on a member (through Python's xmlrpc.client); the member's disk
// exported through the coordinator's 302 (Python's urllib follows it); event.from on the
// coordinator sees what the member did; a member killed mid forwarded VM.start gives the caller
// CANNOT_CONTACT_HOST and leaves nothing in current_operations; the member's half runs under
// the coordinator's task.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { RpcFailure, jsonCall, waitTask } from './client.js';
import { localSrOf, startPool, type TestPool } from './pool-harness.js';
import { waitUntil } from '../wait.js';
import { vbdRecord, vdiRecord, vmRecord } from '../vm-record.js';

const NULL = 'OpaqueRef:NULL';
const MiB = 1024 * 1024;
let pool: TestPool;
let url: string;
let s: string;

const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);

/** What the simulator of a host keeps on disk (its snapshot and journal), to see which VMs it has. */
async function simulatorState(stateDir: string): Promise<string> {
  const read = (f: string) => readFile(join(stateDir, 'xenopsd', f), 'utf8').catch(() => '');
  return (await read('state.json')) + (await read('journal'));
}

async function createVm(name: string): Promise<string> {
  return (await call('VM.create', vmRecord(name, { memory: 256 * MiB }))) as string;
}

function python(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`python3 exited ${code}:\n${out}`))));
  });
}

before(async () => {
  // host 2 boots domains slowly, so it can be killed in the middle of a start
  pool = await startPool(3, { hostArgs: [[], [], ['--sim-boot-ms', '60000']] });
  url = pool.coordinator.url;
  s = pool.session;
});

after(async () => {
  await pool?.stop();
});

let diskVm: string;
let memberDisk: string;

test('VM.start places a VM whose disk is on a member SR there; event.from on the coordinator sees it run', {
  timeout: 120_000,
}, async () => {
  const member = pool.refs[1]!;
  const sr = await localSrOf(call, member);
  // VDI.create runs on the SR's master: the member, whose state directory holds the SR
  memberDisk = (await call('VDI.create', vdiRecord(sr, MiB, 'member disk'))) as string;
  diskVm = await createVm('on member storage');
  await call('VBD.create', vbdRecord(diskVm, memberDisk));
  assert.deepEqual(await call('VM.get_possible_hosts', diskVm), [member]);

  const { token } = (await call('event.from', ['VM', 'VM_guest_metrics'], '', 0)) as { token: string };
  await call('VM.start', diskVm, false, false);
  const vm = (await call('VM.get_record', diskVm)) as Record<string, unknown>;
  assert.equal(vm.power_state, 'Running');
  assert.equal(vm.resident_on, member);
  assert.deepEqual(vm.current_operations, {});
  const uuid = vm.uuid as string;
  assert.match(await simulatorState(pool.hosts[1]!.stateDir), new RegExp(uuid));
  assert.doesNotMatch(await simulatorState(pool.coordinator.stateDir), new RegExp(uuid));

  // The member's domain manager reports the guest; its writes reach the coordinator's watchers.
  let from = token;
  let running = false;
  let metrics = false;
  while (!(running && metrics)) {
    const batch = (await call('event.from', ['VM', 'VM_guest_metrics'], from, 30)) as {
      token: string;
      events: { class: string; ref: string; operation: string; snapshot?: Record<string, unknown> }[];
    };
    assert.ok(batch.events.length > 0, 'event.from timed out before the member-started VM was seen');
    from = batch.token;
    for (const e of batch.events) {
      if (e.class === 'vm' && e.ref === diskVm && e.snapshot?.power_state === 'Running' && e.snapshot.resident_on === member)
        running = true;
      if (e.class === 'vm_guest_metrics' && e.operation === 'add') metrics = true;
    }
  }
  const gm = (await call('VM.get_guest_metrics', diskVm)) as string;
  assert.notEqual(gm, NULL);
});

test("the member's disk is exported through the coordinator's 302, followed by Python's urllib", { timeout: 60_000 }, async () => {
  const member = pool.hosts[1]!;
  const path = `/export_raw_vdi?session_id=${s}&vdi=${memberDisk}&format=raw`;
  const res = await fetch(`${url}${path}`, { redirect: 'manual' });
  await res.body?.cancel();
  assert.equal(res.status, 302);
  const location = new URL(res.headers.get('location')!);
  assert.equal(location.origin, `https://${member.address}:${member.httpsPort}`);
  assert.equal(location.pathname, '/export_raw_vdi');
  assert.equal(location.searchParams.get('vdi'), memberDisk);
  assert.equal(location.searchParams.get('session_id'), s);
  assert.ok(location.searchParams.get('task_id'), 'the task made on the coordinator goes with the redirect');

  // A real client follows it and gets the disk from the member; the member completes the task.
  const out = await python(
    `
import ssl, sys, urllib.request
url = sys.argv[1]
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
with opener.open(url) as r:
    data = r.read()
    print(r.geturl().split('/')[2], len(data), data.count(0), r.headers['task-id'])
`,
    [`${url}${path}`],
  );
  const [origin, length, zeros, task] = out.trim().split(' ');
  const size = Number(await call('VDI.get_virtual_size', memberDisk));
  assert.equal(origin, `${member.address}:${member.httpsPort}`);
  assert.equal(Number(length), size);
  assert.equal(Number(zeros), size);
  const rec = await waitTask(url, s, task!);
  assert.equal(rec.status, 'success');
});

test('a member-started VM is shut down on its host (forwarded) and VM.start_on a member works from xmlrpc.client', {
  timeout: 120_000,
}, async () => {
  await call('VM.shutdown', diskVm);
  const vm = (await call('VM.get_record', diskVm)) as Record<string, unknown>;
  assert.equal(vm.power_state, 'Halted');
  assert.equal(vm.resident_on, NULL);
  assert.deepEqual(vm.current_operations, {});

  const plain = await createVm('start_on member');
  const member = pool.refs[1]!;
  const out = await python(
    `
import sys, xmlrpc.client
url, session, vm, host = sys.argv[1:]
x = xmlrpc.client.ServerProxy(url)
r = x.VM.start_on(session, vm, host, False, False)
assert r['Status'] == 'Success', r
print(x.VM.get_resident_on(session, vm)['Value'])
print(x.VM.get_power_state(session, vm)['Value'])
r = x.VM.hard_shutdown(session, vm)
assert r['Status'] == 'Success', r
print(x.VM.get_power_state(session, vm)['Value'])
`,
    [url, s, plain, member],
  );
  assert.deepEqual(out.trim().split('\n'), [member, 'Running', 'Halted']);
});

test('a member killed mid forwarded VM.start: CANNOT_CONTACT_HOST, and no marks left', { timeout: 120_000 }, async () => {
  const slow = pool.hosts[2]!;
  const vm = await createVm('start on a dying member');
  const uuid = (await call('VM.get_uuid', vm)) as string;
  const task = (await call('Async.VM.start_on', vm, pool.refs[2], false, false)) as string;
  // the member's simulator has the VM: it is building the domain (60 s)
  await waitUntil('the slow member to be building the domain', async () => new RegExp(uuid).test(await simulatorState(slow.stateDir)), {
    intervalMs: 50,
  });
  // the member runs its half under the coordinator's task (header task-id), which says where it
  // went (resident_on the member, as xapi's forwarded task): no task of the member's own
  const tasks = (await call('task.get_all_records')) as Record<string, { resident_on: string; name_label: string }>;
  assert.deepEqual(
    Object.entries(tasks)
      .filter(([, t]) => t.resident_on === pool.refs[2])
      .map(([ref]) => ref),
    [task],
  );
  slow.kill('SIGKILL');
  const result = await waitTask(url, s, task, 60_000);
  assert.equal(result.status, 'failure');
  assert.deepEqual(result.error_info, ['CANNOT_CONTACT_HOST', pool.refs[2]]);
  const row = (await call('VM.get_record', vm)) as Record<string, unknown>;
  assert.deepEqual(row.current_operations, {});
  assert.equal(row.scheduled_to_be_resident_on, NULL);
  const host = (await call('host.get_record', pool.refs[2])) as Record<string, unknown>;
  assert.deepEqual(host.current_operations, {});
  // the host is not yet declared dead: the next attempt is forwarded and fails the same way
  await assert.rejects(call('VM.start_on', vm, pool.refs[2], false, false), (e: unknown) => {
    assert.ok(e instanceof RpcFailure);
    assert.deepEqual(e.error, ['CANNOT_CONTACT_HOST', pool.refs[2]]);
    return true;
  });
  assert.deepEqual(await call('VM.get_current_operations', vm), {});
});
