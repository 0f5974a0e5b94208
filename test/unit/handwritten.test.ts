// The implicit messages xapi implements by hand (the reference's custom constructors,
// destructors and getters, MessageDef.handWritten) are never served by the generic database
// action: each is implemented here or answers NOT_IMPLEMENTED. And what those implementations
// do for the classes without devices: roles, consoles, subjects, secrets, users, appliances,
// snapshot schedules, a VM's xenstore data; plus the host/pool/session messages clients call
// routinely.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { memoryHost } from '../../src/host/memory-host.js';
import { syncDatabase } from '../../src/host/dbsync.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { Registry } from '../../src/api/context.js';
import { Dispatcher } from '../../src/api/dispatch.js';
import { newStruct, type Rpc, type RpcStruct } from '../../src/rpc/rpc.js';
import type { Type } from '../../src/schema/types.js';
import { apiClient, struct } from './api-client.js';
import { vmStruct } from '../vm-record.js';

const GiB = 1024 ** 3;
const NULL = 'OpaqueRef:NULL';

async function setup() {
  const h = await memoryHost({ rootPassword: 'pw' });
  const { call, ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const rec = async (cls: string, ref: string) => (await ok(`${cls}.get_record`, s, ref)) as RpcStruct;
  return { ...h, call, ok, err, s, rec };
}

/** Some well-typed argument of each type, for calls whose answer comes before any lookup. */
function someArgument(t: Type): Rpc {
  switch (t.k) {
    case 'record':
    case 'map':
      return newStruct();
    case 'set':
      return [];
    case 'int':
      return 0n;
    case 'bool':
      return false;
    case 'ref':
      return NULL;
    default:
      return '';
  }
}

test('every implicit message xapi implements by hand is hand-registered or answers NOT_IMPLEMENTED', async () => {
  const t = await setup();
  try {
    const handWritten = [...t.host.schema.messages.values()].filter((m) => m.handWritten);
    assert.ok(handWritten.length >= 40, `the schema marks xapi's custom implicit messages (${handWritten.length})`);
    // The dispatcher itself never gives them the generic database action.
    const bare = new Registry();
    new Dispatcher(t.host, bare);
    for (const m of handWritten) assert.ok(!bare.has(m.wire), `${m.wire} got the generic implementation`);
    for (const m of [...t.host.schema.messages.values()].filter((m) => m.implicit && !m.handWritten)) {
      assert.ok(bare.has(m.wire), `${m.wire} (not hand-written) is served generically`);
    }
    // Any the host does not implement says so, whatever the arguments.
    const missing: string[] = [];
    for (const m of handWritten) {
      if (t.registry.has(m.wire)) continue;
      missing.push(m.wire);
      const answer = await t.err(m.wire, t.s, ...m.params.map((p) => someArgument(p.type)));
      assert.deepEqual(answer, m.lifecycle === 'Removed' ? ['MESSAGE_REMOVED'] : ['NOT_IMPLEMENTED', m.wire]);
    }
    // What is left for later (VM.set_is_a_template is being implemented elsewhere): the PVS cache
    // and tracing observers, which need a PVS proxy and a tracing exporter; VMPP is removed.
    assert.deepEqual(missing.filter((w) => w !== 'VM.set_is_a_template').sort(), [
      'Observer.create',
      'Observer.destroy',
      'PVS_cache_storage.create',
      'PVS_cache_storage.destroy',
      'VMPP.create',
      'VMPP.destroy',
    ]);
  } finally {
    await t.close();
  }
});

test("a database from before the static roles loses its role rows at the coordinator's start", async () => {
  const { host, close } = await memoryHost({ rootPassword: 'pw' });
  try {
    const row = { uuid: randomUUID(), name_label: 'vm.start', name_description: '', subroles: [], is_internal: false };
    await host.db.create('role', 'OpaqueRef:old-role-row', row);
    const me = await host.db.get('host', host.hostRef);
    await syncDatabase(host.db, host.schema, {
      uuid: me.uuid,
      hostname: me.hostname,
      address: me.address,
      machine: simulatedMachine({ seed: 'x' }),
    });
    assert.deepEqual(await host.db.all('role'), []);
  } finally {
    await close();
  }
});

test('role getters serve the static list: permissions then roles; where-queries as xapi reads them', async () => {
  const t = await setup();
  try {
    const all = (await t.ok('role.get_all', t.s)) as string[];
    const records = (await t.ok('role.get_all_records', t.s)) as RpcStruct;
    assert.deepEqual(Object.keys(records), all);
    const isRole = (ref: string) => ((records[ref] as RpcStruct).subroles as string[]).length > 0;
    const firstRole = all.findIndex(isRole);
    assert.ok(firstRole > 0 && all.slice(firstRole).every(isRole), 'permissions first, then roles');
    const roles = (await t.ok('role.get_all_where', t.s, 'subroles<>[]')) as string[];
    assert.deepEqual(roles, all.slice(firstRole));
    assert.deepEqual(Object.keys((await t.ok('role.get_all_records_where', t.s, 'subroles=[]')) as RpcStruct), all.slice(0, firstRole));
    // Any other expression, even one the generic parser would refuse, gives every record.
    assert.deepEqual(await t.ok('role.get_all_where', t.s, 'field "name_label" = "pool-admin"'), all);
    assert.deepEqual(await t.ok('role.get_all_where', t.s, 'not an expression'), all);
    const [admin] = (await t.ok('role.get_by_name_label', t.s, 'pool-admin')) as string[];
    assert.equal(await t.ok('role.get_uuid', t.s, admin!), '0165f154-ba3e-034e-6b27-5d271af109ba');
    // xapi's static refs: "OpaqueRef:" and the uuid, the same in every pool; none is a database row.
    assert.equal(admin, 'OpaqueRef:0165f154-ba3e-034e-6b27-5d271af109ba');
    assert.ok(all.every((ref) => ref === `OpaqueRef:${(records[ref] as RpcStruct).uuid}`));
    assert.deepEqual(await t.db.all('role'), []);
    assert.equal(await t.ok('role.get_by_uuid', t.s, '0165f154-ba3e-034e-6b27-5d271af109ba'), admin);
    assert.deepEqual(await t.err('role.get_record', t.s, 'OpaqueRef:nope'), ['HANDLE_INVALID', 'role', 'OpaqueRef:nope']);
    assert.deepEqual(await t.err('role.get_by_uuid', t.s, 'nope'), ['UUID_INVALID', 'role', 'nope']);
    assert.deepEqual(await t.err('role.get_by_permission', t.s, admin!.replace('0', '1')), [
      'HANDLE_INVALID',
      'role',
      admin!.replace('0', '1'),
    ]);
  } finally {
    await t.close();
  }
});

test('console, subject, secret, user and VM_appliance constructors answer as xapi', async () => {
  const t = await setup();
  try {
    // xapi refuses console.create and console.destroy, naming them "Console.*".
    assert.deepEqual(await t.err('console.create', t.s, struct({ other_config: newStruct() })), ['NOT_IMPLEMENTED', 'Console.create']);
    const [console] = (await t.ok('console.get_all', t.s)) as string[];
    assert.deepEqual(await t.err('console.destroy', t.s, console!), ['NOT_IMPLEMENTED', 'Console.destroy']);
    // Without external authentication a subject cannot be resolved, and nothing is created.
    assert.deepEqual(await t.err('subject.create', t.s, struct({ subject_identifier: 'S-1-5-21-1', other_config: newStruct() })), [
      'AUTH_IS_DISABLED',
    ]);
    assert.deepEqual(await t.ok('subject.get_all', t.s), []);
    // A subject already there is refused first.
    const ref = `OpaqueRef:${randomUUID()}`;
    await t.db.create('subject', ref, { uuid: randomUUID(), subject_identifier: 'S-1-5-21-2', other_config: {}, roles: [] });
    assert.deepEqual(await t.err('subject.create', t.s, struct({ subject_identifier: 'S-1-5-21-2', other_config: newStruct() })), [
      'SUBJECT_ALREADY_EXISTS',
    ]);
    await t.ok('subject.destroy', t.s, ref);
    // secret, user, VM_appliance: the database action xapi's own code performs.
    const secret = (await t.ok('secret.create', t.s, struct({ value: 'hush', other_config: newStruct() }))) as string;
    assert.equal(await t.ok('secret.get_value', t.s, secret), 'hush');
    await t.ok('secret.destroy', t.s, secret);
    const user = (await t.ok('user.create', t.s, struct({ short_name: 'u', fullname: 'U' }))) as string;
    await t.ok('user.destroy', t.s, user);
    const app = (await t.ok('VM_appliance.create', t.s, struct({ name_label: 'app', name_description: '' }))) as string;
    assert.deepEqual((await t.rec('VM_appliance', app)).allowed_operations, []);
    await t.ok('VM_appliance.destroy', t.s, app);
  } finally {
    await t.close();
  }
});

test('VMSS.create checks and completes the schedule; VMSS.destroy refuses while VMs use it', async () => {
  const t = await setup();
  try {
    const vmss = (frequency: string, schedule: Record<string, string>, retained = 7n) =>
      struct({
        name_label: 'every',
        name_description: '',
        type: 'snapshot',
        frequency,
        retained_snapshots: retained,
        schedule: struct(schedule),
      });
    const daily = (await t.ok('VMSS.create', t.s, vmss('daily', { min: '15' }))) as string;
    assert.deepEqual((await t.rec('VMSS', daily)).schedule, struct({ hour: '0', min: '15' }));
    const weekly = (await t.ok('VMSS.create', t.s, vmss('weekly', { days: 'monday,Friday', hour: '23' }))) as string;
    assert.deepEqual((await t.rec('VMSS', weekly)).schedule, struct({ hour: '23', min: '0', days: 'Monday,Friday' }));
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('hourly', { hour: '1' })), ['INVALID_VALUE', 'schedule:hour', '1']);
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('daily', { hour: '24' })), ['INVALID_VALUE', 'schedule:hour', '24']);
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('hourly', { min: '10' })), ['INVALID_VALUE', 'schedule:min', '10']);
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('weekly', { days: 'Monday,Someday' })), [
      'INVALID_VALUE',
      'schedule:days',
      'Someday',
    ]);
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('weekly', { days: 'Monday,monday' })), [
      'INVALID_VALUE',
      'schedule:days',
      'Monday,monday',
    ]);
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('daily', {}, 0n)), ['INVALID_VALUE', 'retained_snapshots', '0']);
    assert.deepEqual(await t.err('VMSS.create', t.s, vmss('daily', {}, 11n)), ['INVALID_VALUE', 'retained_snapshots', '11']);

    const [template] = (await t.ok('VM.get_by_name_label', t.s, 'Debian Bookworm 12')) as string[];
    const vm = (await t.ok('VM.clone', t.s, template!, 'scheduled')) as string;
    await t.db.update('VM', vm, { snapshot_schedule: daily });
    assert.deepEqual(await t.err('VMSS.destroy', t.s, daily), ['VMSS_HAS_VM']);
    await t.db.update('VM', vm, { snapshot_schedule: NULL });
    const uuid = (await t.rec('VMSS', daily)).uuid as string;
    const message = (await t.ok('message.create', t.s, 'VMSS_SNAPSHOT_SUCCEEDED', 3n, 'VMSS', uuid, 'done')) as string;
    await t.ok('VMSS.destroy', t.s, daily);
    assert.equal((await t.err('message.get_record', t.s, message))[0], 'HANDLE_INVALID');
  } finally {
    await t.close();
  }
});

test('VM.set_xenstore_data is recorded, and reaches a running domain', async () => {
  const t = await setup();
  t.xenops.start();
  try {
    const vm = (await t.ok(
      'VM.create',
      t.s,
      vmStruct('xs', { memory: GiB }, { xenstore_data: struct({ 'vm-data/boot': 'yes' }) }),
    )) as string;
    const uuid = (await t.rec('VM', vm)).uuid as string;
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual((await t.domains.stat(uuid)).xenstoreData, { 'vm-data/boot': 'yes' });
    await t.ok('VM.set_xenstore_data', t.s, vm, struct({ 'vm-data/now': 'live' }));
    assert.deepEqual((await t.rec('VM', vm)).xenstore_data, struct({ 'vm-data/now': 'live' }));
    assert.deepEqual((await t.domains.stat(uuid)).xenstoreData, { 'vm-data/now': 'live' });
    await t.ok('VM.hard_shutdown', t.s, vm);
    // Halted: the database only; the next boot brings it.
    await t.ok('VM.set_xenstore_data', t.s, vm, struct({ 'vm-data/next': 'boot' }));
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual((await t.domains.stat(uuid)).xenstoreData, { 'vm-data/next': 'boot' });
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('session.change_password ignores old_pwd as xapi does, and needs the local superuser', async () => {
  const t = await setup();
  try {
    await t.ok('session.change_password', t.s, 'anything at all', 'new-pw');
    assert.match((await t.ok('session.login_with_password', 'root', 'new-pw')) as string, /^OpaqueRef:/);
    // A session granted the permission but not the local superuser's is refused by the check itself.
    const other = `OpaqueRef:${randomUUID()}`;
    await t.db.create('session', other, {
      uuid: randomUUID(),
      this_host: t.host.hostRef,
      this_user: NULL,
      last_active: '20260101T00:00:00Z',
      pool: false,
      other_config: {},
      is_local_superuser: false,
      subject: NULL,
      validation_time: '20260101T00:00:00Z',
      auth_user_sid: 'S-1',
      auth_user_name: 'alice',
      rbac_permissions: ['session.change_password'],
      parent: NULL,
      originator: '',
      client_certificate: false,
    });
    assert.deepEqual(await t.err('session.change_password', other, 'x', 'y'), [
      'USER_IS_NOT_LOCAL_SUPERUSER',
      'Failed to change password for user root',
    ]);
  } finally {
    await t.close();
  }
});

test('host.get_servertime, get_server_localtime, call_plugin and pool.get_license_state answer as xapi', async () => {
  const t = await setup();
  try {
    const host = t.host.hostRef;
    const before = Date.now();
    const o = await t.call('host.get_servertime', t.s, host);
    assert.ok(o.ok);
    // A datetime in xapi's UTC form, sent as such.
    const text = String(o.value);
    assert.match(text, /^\d{8}T\d{2}:\d{2}:\d{2}Z$/);
    const at = Date.UTC(
      +text.slice(0, 4),
      +text.slice(4, 6) - 1,
      +text.slice(6, 8),
      +text.slice(9, 11),
      +text.slice(12, 14),
      +text.slice(15, 17),
    );
    assert.ok(at >= Math.floor(before / 1000) * 1000 && at <= Date.now(), 'the server clock');
    const local = await t.call('host.get_server_localtime', t.s, host);
    assert.ok(local.ok);
    assert.match(String(local.value), /^\d{8}T\d{2}:\d{2}:\d{2}$/);
    const missing = `OpaqueRef:${randomUUID()}`;
    assert.deepEqual(await t.err('host.get_servertime', t.s, missing), ['HANDLE_INVALID', 'host', missing]);
    // No plugin is installed: every name is missing, "extauth-hook" included.
    for (const plugin of ['updater.py', 'extauth-hook', '../../bin/sh']) {
      assert.deepEqual(await t.err('host.call_plugin', t.s, host, plugin, 'check_update', newStruct()), ['XENAPI_MISSING_PLUGIN', plugin]);
    }
    // XCP-ng's licensing daemon has one edition, never expiring; the pool argument is not read.
    const [pool] = (await t.ok('pool.get_all', t.s)) as string[];
    assert.deepEqual(await t.ok('pool.get_license_state', t.s, pool!), struct({ edition: 'xcp-ng', expiry: 'never' }));
    assert.deepEqual(await t.ok('pool.get_license_state', t.s, NULL), struct({ edition: 'xcp-ng', expiry: 'never' }));
    await t.db.update('host', host, { license_params: { expiry: '20300102T03:04:05Z' } });
    assert.deepEqual(await t.ok('pool.get_license_state', t.s, pool!), struct({ edition: 'xcp-ng', expiry: '20300102T03:04:05Z' }));
    await t.db.update('host', host, { license_params: { expiry: '21000101T00:00:00Z' } });
    assert.deepEqual(await t.ok('pool.get_license_state', t.s, pool!), struct({ edition: 'xcp-ng', expiry: 'never' }));
  } finally {
    await t.close();
  }
});
