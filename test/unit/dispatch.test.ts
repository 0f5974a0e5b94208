// The API core in-process: dispatch, implicit messages, errors with xapi's parameters, RBAC,
// tasks and events, against a host whose database lives in memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct, isStruct, type Rpc, type RpcStruct } from '../../src/rpc/rpc.js';
import { permissionsOfRoles } from '../../src/api/rbac.js';
import { XapiError } from '../../src/rpc/errors.js';
import { apiClient, struct } from './api-client.js';
import { countCalls, waitUntil, within } from '../wait.js';

async function setup() {
  const h = await memoryHost({ rootPassword: 'pw' });
  const { call, ok, err } = apiClient(h);
  const session = (await ok('session.login_with_password', 'root', 'pw')) as string;
  return { ...h, call, ok, err, session };
}

async function controlDomain(ok: (m: string, ...p: Rpc[]) => Promise<Rpc>, s: string): Promise<string> {
  const where = (await ok('VM.get_all_records_where', s, 'field "is_control_domain" = "true"')) as RpcStruct;
  return Object.keys(where)[0]!;
}

async function waitTask(ok: (m: string, ...p: Rpc[]) => Promise<Rpc>, s: string, task: string): Promise<RpcStruct> {
  return waitUntil(`task ${task} to finish`, async () => {
    const rec = (await ok('task.get_record', s, task)) as RpcStruct;
    return rec.status !== 'pending' ? rec : undefined;
  });
}

test('login, logout and SESSION_INVALID', async () => {
  const t = await setup();
  assert.match(t.session, /^OpaqueRef:[0-9a-f-]{36}$/);
  assert.deepEqual(await t.err('session.login_with_password', 'root', 'wrong'), [
    'SESSION_AUTHENTICATION_FAILED',
    'root',
    'Authentication failure',
  ]);
  const rec = (await t.ok('session.get_record', t.session, t.session)) as RpcStruct;
  assert.equal(rec.is_local_superuser, true);
  assert.equal(rec.auth_user_name, 'root');
  await t.ok('session.logout', t.session);
  assert.deepEqual(await t.err('host.get_all', t.session), ['SESSION_INVALID', t.session]);
  assert.deepEqual(await t.err('host.get_all', 'OpaqueRef:bogus'), ['SESSION_INVALID', 'OpaqueRef:bogus']);
});

test('parameter count, unknown methods, async mode', async () => {
  const t = await setup();
  assert.deepEqual(await t.err('VM.get_record', t.session), ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '0']);
  assert.deepEqual(await t.err('VM.get_record', t.session, 'a', 'b'), ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '2']);
  assert.deepEqual(await t.err('VM.no_such_thing', t.session), ['MESSAGE_METHOD_UNKNOWN', 'VM.no_such_thing']);
  assert.deepEqual(await t.err('VM.no_such_thing'), ['MESSAGE_METHOD_UNKNOWN', 'VM.no_such_thing']);
  assert.deepEqual(await t.err('VM.no_such_thing', 'OpaqueRef:bad'), ['SESSION_INVALID', 'OpaqueRef:bad']);
  // RO fields have no setter
  assert.deepEqual(await t.err('VM.set_power_state', t.session, 'x', 'Halted'), ['MESSAGE_METHOD_UNKNOWN', 'VM.set_power_state']);
  assert.deepEqual(await t.err('Async.VM.get_record', t.session, 'x'), [
    'Fault',
    'No async mode for this operation (rpc: Async.VM.get_record)',
  ]);
  // defaults: login's version and originator may be omitted; the alternative wire name works
  assert.match((await t.ok('session_login_with_password', 'root', 'pw')) as string, /^OpaqueRef:/);
  assert.equal(await t.ok('system.isAlive', 'hello'), 'hello');
  const methods = (await t.ok('system.listMethods')) as string[];
  assert.ok(methods.includes('VM.get_all_records'));
  assert.ok(!methods.some((m) => m.startsWith('Async.')));
});

test('implicit messages: getters, setters, maps, sets, lookups', async () => {
  const t = await setup();
  const dom0 = await controlDomain(t.ok, t.session);
  const rec = (await t.ok('VM.get_record', t.session, dom0)) as RpcStruct;
  assert.equal(rec.is_control_domain, true);
  assert.equal(rec.power_state, 'Running');
  assert.equal(typeof rec.memory_static_max, 'bigint');
  assert.equal(await t.ok('VM.get_by_uuid', t.session, rec.uuid as string), dom0);
  const missing = randomUUID();
  assert.deepEqual(await t.err('VM.get_by_uuid', t.session, missing), ['UUID_INVALID', 'VM', missing]);
  assert.deepEqual(await t.err('VM.get_record', t.session, 'OpaqueRef:nope'), ['HANDLE_INVALID', 'VM', 'OpaqueRef:nope']);
  assert.deepEqual(await t.ok('VM.get_by_name_label', t.session, rec.name_label as string), [dom0]);

  await t.ok('VM.set_name_label', t.session, dom0, 'renamed');
  assert.equal(await t.ok('VM.get_name_label', t.session, dom0), 'renamed');
  await t.ok('VM.add_to_other_config', t.session, dom0, 'k', 'v');
  assert.deepEqual(await t.err('VM.add_to_other_config', t.session, dom0, 'k', 'v2'), [
    'MAP_DUPLICATE_KEY',
    'VM',
    'other_config',
    dom0,
    'k',
  ]);
  await t.ok('VM.remove_from_other_config', t.session, dom0, 'k');
  await t.ok('VM.remove_from_other_config', t.session, dom0, 'absent');
  await t.ok('VM.add_tags', t.session, dom0, 'a');
  await t.ok('VM.add_tags', t.session, dom0, 'a');
  assert.deepEqual(await t.ok('VM.get_tags', t.session, dom0), ['a']);
  await t.ok('VM.remove_tags', t.session, dom0, 'a');
  assert.deepEqual(await t.ok('VM.get_tags', t.session, dom0), []);

  // int params accept decimal strings; wrong types fail as xapi's unmarshaller does
  await t.ok('VM.set_VCPUs_max', t.session, dom0, '3').catch(() => undefined);
  assert.deepEqual(await t.err('VM.set_name_label', t.session, dom0, 5n), ['INTERNAL_ERROR', `Failure("Expected string, got 'I(5)'")`]);
  const where = (await t.ok(
    'VM.get_all_records_where',
    t.session,
    'field "is_control_domain" = "true" and not (field "name__label" = "x")',
  )) as RpcStruct;
  assert.deepEqual(Object.keys(where), [dom0]);
  const bad = await t.err('VM.get_all_records_where', t.session, 'field "is_control_domain" =');
  assert.equal(bad[0], 'INVALID_VALUE');
  assert.equal(bad[1], 'field "is_control_domain" =');
});

test('generated create/destroy with defaults, and the Async twin', async () => {
  const t = await setup();
  const net = (await t.ok(
    'network.create',
    t.session,
    struct({ name_label: 'n1', name_description: '', MTU: 1500n, other_config: newStruct() }),
  )) as string;
  const rec = (await t.ok('network.get_record', t.session, net)) as RpcStruct;
  assert.equal(rec.name_label, 'n1');
  assert.equal(rec.MTU, 1500n);
  assert.deepEqual(rec.VIFs, []);
  const e = await t.err('VM.create', t.session, newStruct());
  assert.equal(e[0], 'INTERNAL_ERROR');
  assert.match(e[1]!, /Dispatcher_FieldNotFound/);

  const task = (await t.ok(
    'Async.network.create',
    t.session,
    struct({ name_label: 'n2', name_description: '', MTU: 9000n, other_config: newStruct() }),
  )) as string;
  const done = await waitTask(t.ok, t.session, task);
  assert.equal(done.status, 'success');
  assert.equal(done.name_label, 'Async.network.create');
  assert.match(done.result as string, /^<value>OpaqueRef:[0-9a-f-]{36}<\/value>$/);
  assert.equal(done.progress, 1);

  const failing = (await t.ok('Async.network.destroy', t.session, 'OpaqueRef:gone')) as string;
  const failed = await waitTask(t.ok, t.session, failing);
  assert.equal(failed.status, 'failure');
  assert.deepEqual(failed.error_info, ['HANDLE_INVALID', 'network', 'OpaqueRef:gone']);

  await t.ok('network.destroy', t.session, net);
  assert.deepEqual(await t.err('network.get_record', t.session, net), ['HANDLE_INVALID', 'network', net]);
});

test('one-to-many fields follow the many side', async () => {
  const t = await setup();
  const hosts = (await t.ok('host.get_all', t.session)) as string[];
  const cpus = (await t.ok('host.get_host_CPUs', t.session, hosts[0]!)) as string[];
  assert.equal(cpus.length, 4);
  const pifs = (await t.ok('host.get_PIFs', t.session, hosts[0]!)) as string[];
  assert.equal(pifs.length, 2);
});

test('RBAC: a read-only session can read but not write', async () => {
  const t = await setup();
  const ref = `OpaqueRef:${randomUUID()}`;
  await t.db.create('session', ref, {
    uuid: randomUUID(),
    is_local_superuser: false,
    auth_user_name: 'alice',
    auth_user_sid: 'S-1',
    last_active: '20990101T00:00:00Z',
    rbac_permissions: permissionsOfRoles(t.host.schema, ['read-only']),
  });
  const vms = (await t.ok('VM.get_all', ref)) as string[];
  const denied = await t.err('VM.set_name_label', ref, vms[0]!, 'x');
  assert.equal(denied[0], 'RBAC_PERMISSION_DENIED');
  assert.equal(denied[1], 'vm.set_name_label');
  assert.match(
    denied[2]!,
    /^No permission in user session\. \(Roles with this permission: pool-admin, pool-operator, vm-power-admin, vm-admin\)$/,
  );
});

test('task.cancel reaches a running call', async () => {
  const t = await setup();
  // A long-running implementation that polls for cancellation, as real long operations do.
  t.registry.implement('VM.start', async (call) => {
    for (;;) {
      await call.checkCancelled();
      await sleep(2); // the operation's own work between two checks: not a wait for anything
    }
  });
  const dom0 = await controlDomain(t.ok, t.session);
  const task = (await t.ok('Async.VM.start', t.session, dom0!, false, false)) as string;
  const rec = (await t.ok('task.get_record', t.session, task)) as RpcStruct;
  // xapi creates every task without `cancel` allowed; work that can be cancelled says so itself
  assert.deepEqual(rec.allowed_operations, []);
  await t.ok('task.cancel', t.session, task);
  const done = await waitTask(t.ok, t.session, task);
  assert.equal(done.status, 'cancelled');
  assert.deepEqual(done.error_info, ['TASK_CANCELLED', task]);
  // xapi refuses no cancel of one's own task: on a finished one the request is recorded, nothing more
  await t.ok('task.cancel', t.session, task);
  assert.equal(await t.ok('task.get_status', t.session, task), 'cancelled');
  assert.deepEqual(Object.values((await t.ok('task.get_current_operations', t.session, task)) as RpcStruct), ['cancel']);
});

test('event.from: initial sync, then one coalesced event per object', async () => {
  const t = await setup();
  const first = (await t.ok('event.from', t.session, ['*'], '', 1)) as RpcStruct;
  const events = first.events as RpcStruct[];
  assert.ok(events.length > 10);
  assert.ok(events.every((e) => e.operation === 'add' && isStruct(e.snapshot!)));
  assert.ok(events.some((e) => e.class === 'vm'));
  assert.ok(isStruct(first.valid_ref_counts!));
  assert.equal((first.valid_ref_counts as RpcStruct).vm, BigInt(((await t.ok('VM.get_all', t.session)) as string[]).length));
  const token = first.token as string;
  assert.match(token, /^\d{20},\d{20}$/);

  const mk = (label: string) =>
    t.ok('network.create', t.session, struct({ name_label: label, name_description: '', MTU: 1500n, other_config: newStruct() }));
  const dom0 = await controlDomain(t.ok, t.session);
  const existing = (await mk('old')) as string;
  const afterExisting = ((await t.ok('event.from', t.session, ['network'], token, 1)) as RpcStruct).token as string;

  const created = (await mk('new')) as string;
  await t.ok('network.set_name_label', t.session, created, 'new2'); // add + mod -> add
  const transient = (await mk('tmp')) as string;
  await t.ok('network.destroy', t.session, transient); // add + del -> nothing
  await t.ok('network.destroy', t.session, existing); // existed at token -> del
  await t.ok('VM.set_name_label', t.session, dom0!, 'not watched');

  const batch = (await t.ok('event.from', t.session, ['network'], afterExisting, 1)) as RpcStruct;
  const got = (batch.events as RpcStruct[]).map((e) => [e.operation, e.ref]);
  assert.deepEqual(got, [
    ['add', created],
    ['del', existing],
  ]);
  const add = (batch.events as RpcStruct[])[0]!;
  assert.equal((add.snapshot as RpcStruct).name_label, 'new2');
  assert.ok(!('snapshot' in (batch.events as RpcStruct[])[1]!));

  // nothing new: returns empty after the timeout with a token
  const empty = (await t.ok('event.from', t.session, ['network'], batch.token as string, 0.2)) as RpcStruct;
  assert.deepEqual(empty.events, []);

  // a watcher blocked in event.from wakes for a change
  const blocks = countCalls(t.db, 'waitForChange');
  const waiting = t.ok('event.from', t.session, [`vm/${dom0}`], empty.token as string, 30);
  await within('the watcher to block', blocks.calls(1)); // it found nothing and waits
  blocks.restore();
  await t.ok('VM.set_name_label', t.session, dom0!, 'wake');
  const woke = (await waiting) as RpcStruct;
  assert.deepEqual(
    (woke.events as RpcStruct[]).map((e) => [e.operation, e.class, e.ref]),
    [['mod', 'vm', dom0]],
  );

  assert.deepEqual(await t.err('event.from', t.session, ['*'], 'garbage', 1), ['EVENT_FROM_TOKEN_PARSE_FAILURE', 'garbage']);
});

test('event.inject and the legacy register/next', async () => {
  const t = await setup();
  const [pool] = (await t.ok('pool.get_all', t.session)) as string[];
  const token = (await t.ok('event.inject', t.session, 'pool', pool!)) as string;
  const batch = (await t.ok('event.from', t.session, ['pool'], token, 1)) as RpcStruct;
  assert.deepEqual(
    (batch.events as RpcStruct[]).map((e) => [e.operation, e.class]),
    [['mod', 'pool']],
  );
  assert.deepEqual(await t.err('event.inject', t.session, 'pool', 'OpaqueRef:x'), ['HANDLE_INVALID', 'pool', 'OpaqueRef:x']);

  assert.deepEqual(await t.err('event.next', t.session), ['SESSION_NOT_REGISTERED', t.session]);
  await t.ok('event.register', t.session, ['vm']);
  const dom0 = await controlDomain(t.ok, t.session);
  await t.ok('VM.set_name_label', t.session, dom0!, 'x');
  const evs = (await t.ok('event.next', t.session)) as RpcStruct[];
  assert.deepEqual(
    evs.map((e) => [e.operation, e.class, e.ref]),
    [['mod', 'vm', dom0]],
  );
  assert.match(evs[0]!.timestamp as string, /^\d+\.$/);
  await t.ok('event.unregister', t.session, ['vm']);
});

test('XapiError carries the description', () => {
  assert.deepEqual(new XapiError('X', [1, 'a']).description, ['X', '1', 'a']);
});

test('a blocked event.from ends with SESSION_INVALID when its session logs out', async () => {
  const t = await setup();
  const first = (await t.ok('event.from', t.session, ['vm'], '', 1)) as RpcStruct;
  const blocks = countCalls(t.db, 'waitForChange');
  // the longest wait event.from allows (a day): only the logout can end it within the test
  const waiting = t.call('event.from', t.session, ['vm'], first.token as string, 86400);
  await within('the watcher to block', blocks.calls(1));
  blocks.restore();
  await t.ok('session.logout', t.session);
  const outcome = await within('the logout to end the blocked event.from', waiting);
  assert.deepEqual(outcome.ok ? [] : outcome.error, ['SESSION_INVALID', t.session]);
});

test('roles: the static roles and their permissions', async () => {
  const t = await setup();
  const [admin] = (await t.ok('role.get_by_name_label', t.session, 'pool-admin')) as string[];
  const rec = (await t.ok('role.get_record', t.session, admin!)) as RpcStruct;
  assert.equal(rec.uuid, '0165f154-ba3e-034e-6b27-5d271af109ba');
  const [readOnly] = (await t.ok('role.get_by_name_label', t.session, 'read-only')) as string[];
  const names = (await t.ok('role.get_permissions_name_label', t.session, readOnly!)) as string[];
  assert.ok(names.includes('vm.get_record'));
  assert.ok(!names.includes('vm.set_name_label'));
  const holders = (await t.ok('role.get_by_permission_name_label', t.session, 'vm.set_name_label')) as string[];
  const holderNames = await Promise.all(holders.map(async (r) => ((await t.ok('role.get_record', t.session, r)) as RpcStruct).name_label));
  assert.deepEqual(holderNames.sort(), ['pool-admin', 'pool-operator', 'vm-admin', 'vm-power-admin']);
});

test('idle watchers cost nothing: writes to other classes wake none of them', async () => {
  const t = await setup();
  const first = (await t.ok('event.from', t.session, ['pool'], '', 1)) as RpcStruct;
  let scans = 0;
  const original = t.db.changesSince.bind(t.db);
  // Scans made for these watchers (other code, network.create's bridge names, reads the log too).
  t.db.changesSince = (since, wanted) => {
    if (wanted('pool', '')) scans++;
    return original(since, wanted);
  };
  const waits = countCalls(t.db, 'waitForChange');
  // A timeout long enough never to end a wait here: only the pool write at the end does.
  const watchers = Array.from({ length: 200 }, () => t.call('event.from', t.session, ['pool'], first.token as string, 600));
  await within('every watcher to block', waits.calls(200)); // each made its first scan and sleeps
  const afterStart = scans;
  for (let i = 0; i < 50; i++) {
    await t.ok('network.create', t.session, struct({ name_label: `n${i}`, name_description: '', MTU: 1500n, other_config: newStruct() }));
  }
  // Wake-ups run in a microtask right after each write, so a wrong one has happened by now.
  assert.equal(waits.settled, 0, 'a write to another class woke a watcher');
  assert.equal(scans, afterStart, 'a write to another class woke a watcher');
  const [pool] = (await t.ok('pool.get_all', t.session)) as string[];
  await t.ok('pool.set_name_label', t.session, pool!, 'wake up');
  const results = await Promise.all(watchers);
  assert.ok(results.every((r) => r.ok && Array.isArray((t.host.marshal.toRpc(r.type, r.value) as RpcStruct).events)));
  assert.ok(scans > afterStart);
});

test('pool logins, password change and removed messages', async () => {
  const t = await setup();
  const [host] = (await t.ok('host.get_all', t.session)) as string[];
  const pool = (await t.ok('session.slave_login', host!, 'memory-pool-secret')) as string;
  const rec = (await t.ok('session.get_record', pool, pool)) as RpcStruct;
  assert.equal(rec.pool, true);
  assert.equal(rec.auth_user_name, host);
  assert.deepEqual(await t.err('session.slave_login', host!, 'wrong'), [
    'SESSION_AUTHENTICATION_FAILED',
    host!,
    'Pool credentials invalid',
  ]);

  // xapi does not check old_pwd: the local superuser's session is the credential.
  await t.ok('session.change_password', t.session, 'not-the-password', 'new-pw');
  assert.match((await t.ok('session.login_with_password', 'root', 'new-pw')) as string, /^OpaqueRef:/);
  assert.equal((await t.err('session.login_with_password', 'root', 'pw'))[0], 'SESSION_AUTHENTICATION_FAILED');

  const removed = [...t.host.schema.messages.values()].find((m) => m.lifecycle === 'Removed' && m.sessionChecked && m.requiredCount === 0);
  assert.ok(removed, 'the datamodel has removed messages');
  assert.deepEqual(await t.err(removed.wire, t.session), ['MESSAGE_REMOVED']);
});

test("another user's task needs task.destroy/any", async () => {
  const t = await setup();
  const task = (await t.ok('task.create', t.session, 'mine', '')) as string;
  const ref = `OpaqueRef:${randomUUID()}`;
  await t.db.create('session', ref, {
    uuid: randomUUID(),
    is_local_superuser: false,
    auth_user_name: 'bob',
    auth_user_sid: 'S-2',
    last_active: '20990101T00:00:00Z',
    rbac_permissions: permissionsOfRoles(t.host.schema, ['vm-admin']),
  });
  assert.deepEqual(await t.err('task.destroy', ref, task), [
    'RBAC_PERMISSION_DENIED',
    'task.destroy/any',
    'No permission in user session. (Roles with this permission: pool-admin, pool-operator)',
  ]);
  await t.ok('task.destroy', t.session, task);
});
