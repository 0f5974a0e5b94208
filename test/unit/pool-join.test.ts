// pool.join's checks (each error with its parameters, and which wins when two fail), the merge
// of a joiner's records into the coordinator's database, and pool.eject's checks and removals,
// on two in-memory hosts: J (joining) and C (the pool's coordinator), J reaching C through C's
// dispatcher as it would through C's API.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { memoryHost } from '../../src/host/memory-host.js';
import { XapiError } from '../../src/rpc/errors.js';
import { untyped, type Db } from '../../src/db/interface.js';
import { newRef } from '../../src/api/implicit.js';
import { NULL_REF } from '../../src/schema/types.js';
import { preJoinChecks, type RemoteApi } from '../../src/xapi/pool-join-checks.js';
import { applyJoinContribution, collectJoinContribution } from '../../src/xapi/pool-join-merge.js';
import { assertCanEject, removeEjectedHost, resetEjectedStateDir, EJECT_REMOVES } from '../../src/xapi/pool-eject.js';
import type { Rpc } from '../../src/rpc/rpc.js';

type Host = Awaited<ReturnType<typeof memoryHost>>;

/** The API of `h`, logged in as root: what J holds after session.login_with_password on C. */
async function remoteOf(h: Host): Promise<RemoteApi> {
  const login = await h.dispatcher.dispatch('session.login_with_password', ['root', 'pw']);
  assert.ok(login.ok);
  const session = login.value as string;
  return {
    async call(method, params) {
      const o = await h.dispatcher.dispatch(method, [session, ...(params as Rpc[])]);
      if (!o.ok) throw new XapiError(o.error[0]!, o.error.slice(1));
      return h.host.marshal.toRpc(o.type, o.value);
    },
  };
}

async function pair() {
  const j = await memoryHost({ rootPassword: 'pw' });
  const c = await memoryHost({ rootPassword: 'pw' });
  const remote = await remoteOf(c);
  const close = async () => {
    await j.close();
    await c.close();
  };
  return { j, c, jdb: j.host.db, cdb: c.host.db, J: j.host.hostRef, C: c.host.hostRef, remote, close };
}

/** The error preJoinChecks raises (or '' when all pass), as [code, ...params]. */
async function checkError(p: Awaited<ReturnType<typeof pair>>, force = false, remote = p.remote): Promise<string[]> {
  try {
    await preJoinChecks(p.jdb, p.J, remote, force);
    return [];
  } catch (e) {
    if (!(e instanceof XapiError)) throw e;
    return [e.code, ...e.params];
  }
}

async function poolOf(db: Db): Promise<string> {
  return (await db.all('pool'))[0]![0];
}
async function managementPif(db: Db, host: string): Promise<string> {
  return (await db.find('PIF', { host, management: true }))[0]![0];
}
async function makeVm(db: Db, fields: Record<string, unknown> = {}): Promise<string> {
  const ref = newRef();
  const metrics = newRef();
  await db.create('VM_metrics', metrics, { uuid: randomUUID() });
  await untyped(db).create('VM', ref, { uuid: randomUUID(), name_label: 'vm', power_state: 'Halted', metrics, domid: -1, ...fields });
  return ref;
}

/** Each case: what to change (on J or C), the error expected. */
const cases: [
  string,
  (p: Awaited<ReturnType<typeof pair>>) => Promise<unknown>,
  string[] | ((p: Awaited<ReturnType<typeof pair>>) => string[]),
][] = [
  [
    'no management interface',
    async (p) => p.jdb.update('PIF', await managementPif(p.jdb, p.J), { management: false }),
    ['HOST_STILL_BOOTING'],
  ],
  ['HA on the joiner', async (p) => p.jdb.update('pool', await poolOf(p.jdb), { ha_enabled: true }), ['HA_IS_ENABLED']],
  ['HA on the pool', async (p) => p.cdb.update('pool', await poolOf(p.cdb), { ha_enabled: true }), ['HA_IS_ENABLED']],
  [
    'another host in the joiner',
    async (p) => p.jdb.create('host', newRef(), { uuid: randomUUID() }),
    ['JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS'],
  ],
  ['a running VM', (p) => makeVm(p.jdb, { power_state: 'Running' }), ['JOINING_HOST_CANNOT_HAVE_RUNNING_VMS']],
  [
    'a VM with an operation',
    (p) => makeVm(p.jdb, { current_operations: { t: 'clean_shutdown' } }),
    ['JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS'],
  ],
  [
    'guidance pending on the joiner',
    (p) => p.jdb.update('host', p.J, { pending_guidances: ['reboot_host'] }),
    (p) => ['HOST_PENDING_MANDATORY_GUIDANCE_NOT_EMPTY', p.J],
  ],
  [
    "guidance pending on the pool's coordinator",
    (p) => p.cdb.update('host', p.C, { pending_guidances: ['restart_toolstack'] }),
    (p) => ['HOST_PENDING_MANDATORY_GUIDANCE_NOT_EMPTY', p.C],
  ],
  [
    'another platform version',
    async (p) =>
      p.jdb.update('host', p.J, { software_version: { ...(await p.jdb.get('host', p.J)).software_version, platform_version: '9.9.9' } }),
    ['HOSTS_NOT_COMPATIBLE'],
  ],
  [
    'another xapi',
    async (p) => p.jdb.update('host', p.J, { software_version: { ...(await p.jdb.get('host', p.J)).software_version, xapi: '1.0' } }),
    ['HOSTS_NOT_HOMOGENEOUS', 'Software version differs'],
  ],
  [
    'another CPU vendor in the pool',
    async (p) =>
      p.cdb.update('pool', await poolOf(p.cdb), { cpu_info: { ...(await p.cdb.all('pool'))[0]![1].cpu_info, vendor: 'OtherVendor' } }),
    ['HOSTS_NOT_HOMOGENEOUS', 'CPUs differ'],
  ],
  [
    'a shared SR',
    async (p) => p.jdb.update('SR', (await p.jdb.find('SR', { name_label: 'Local storage' }))[0]![0], { shared: true }),
    ['JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS'],
  ],
  ['a bond', (p) => p.jdb.create('Bond', newRef(), { uuid: randomUUID() }), ['POOL_JOINING_HOST_HAS_BONDS']],
  ['a tunnel', (p) => p.jdb.create('tunnel', newRef(), { uuid: randomUUID() }), ['POOL_JOINING_HOST_HAS_TUNNELS']],
  ['a network SR-IOV', (p) => p.jdb.create('network_sriov', newRef(), { uuid: randomUUID() }), ['POOL_JOINING_HOST_HAS_NETWORK_SRIOVS']],
  [
    'a VLAN off the management interface',
    async (p) => {
      const pif = newRef();
      await p.jdb.create('PIF', pif, { uuid: randomUUID(), host: p.J, VLAN: 7, management: false });
      await p.jdb.create('VLAN', newRef(), { uuid: randomUUID(), untagged_PIF: pif, tag: 7 });
    },
    ['POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS'],
  ],
  [
    'management on another VLAN',
    async (p) => p.jdb.update('PIF', await managementPif(p.jdb, p.J), { VLAN: 5 }),
    ['POOL_JOINING_HOST_MANAGEMENT_VLAN_DOES_NOT_MATCH', '5', '-1'],
  ],
  [
    'other external authentication',
    (p) => p.jdb.update('host', p.J, { external_auth_type: 'AD' }),
    ['POOL_JOINING_EXTERNAL_AUTH_MISMATCH'],
  ],
  [
    'an edition the licensing daemon does not know',
    (p) => p.jdb.update('host', p.J, { edition: 'free' }),
    ['LICENSE_HOST_POOL_MISMATCH', 'Edition "free" from pool is not known to v6d.'],
  ],
  [
    'another network backend',
    async (p) =>
      p.jdb.update('host', p.J, {
        software_version: { ...(await p.jdb.get('host', p.J)).software_version, network_backend: 'openvswitch' },
      }),
    ['OPERATION_NOT_ALLOWED', 'Network backends differ'],
  ],
  [
    'another API version',
    (p) => p.jdb.update('host', p.J, { API_version_minor: 1 }),
    (p) => [
      'POOL_JOINING_HOST_MUST_HAVE_SAME_API_VERSION',
      `${p.jdb.schema.apiVersion.major}.1`,
      `${p.jdb.schema.apiVersion.major}.${p.jdb.schema.apiVersion.minor}`,
    ],
  ],
  [
    'no database schema',
    async (p) => {
      const { db_schema: _, ...sw } = (await p.jdb.get('host', p.J)).software_version;
      await p.jdb.update('host', p.J, { software_version: sw });
    },
    ['POOL_JOINING_HOST_MUST_HAVE_SAME_DB_SCHEMA', '', '5.909'],
  ],
  [
    'an update enforcing homogeneity',
    async (p) => {
      const u = newRef();
      await p.jdb.create('pool_update', u, { uuid: randomUUID(), enforce_homogeneity: true });
      await p.jdb.update('host', p.J, { updates: [u] });
    },
    ['HOSTS_NOT_HOMOGENEOUS', 'Updates on local host memhost and pool host memhost differ'],
  ],
  [
    'management over IPv6',
    async (p) => p.jdb.update('PIF', await managementPif(p.jdb, p.J), { primary_address_type: 'IPv6' }),
    ['OPERATION_NOT_ALLOWED', 'Primary address type differs'],
  ],
  [
    'nbd against insecure_nbd',
    async (p) => {
      await p.jdb.update('network', (await p.jdb.all('network'))[0]![0], { purpose: ['nbd'] });
      await p.cdb.update('network', (await p.cdb.all('network'))[0]![0], { purpose: ['insecure_nbd'] });
    },
    ['OPERATION_NOT_ALLOWED', 'Incompatible network purposes: nbd and insecure_nbd'],
  ],
  [
    'TLS verification on in the pool',
    async (p) => p.cdb.update('pool', await poolOf(p.cdb), { tls_verification_enabled: true }),
    ['POOL_JOINING_HOST_TLS_VERIFICATION_MISMATCH'],
  ],
  [
    'updates being applied on the joiner',
    async (p) => p.jdb.update('pool', await poolOf(p.jdb), { current_operations: { t: 'apply_updates' } }),
    ['NOT_SUPPORTED_DURING_UPGRADE'],
  ],
  [
    'updates being applied in the pool',
    async (p) => p.cdb.update('pool', await poolOf(p.cdb), { current_operations: { t: 'apply_updates' } }),
    ['NOT_SUPPORTED_DURING_UPGRADE'],
  ],
];

for (const [what, change, expected] of cases) {
  test(`pre-join checks: ${what}`, async () => {
    const p = await pair();
    try {
      assert.deepEqual(await checkError(p), [], 'two fresh hosts may join');
      await change(p);
      assert.deepEqual(await checkError(p), typeof expected === 'function' ? expected(p) : expected);
    } finally {
      await p.close();
    }
  });
}

test('pre-join checks: clustering enabled on the joiner', async () => {
  const p = await pair();
  try {
    const ch = newRef();
    await p.jdb.create('Cluster_host', ch, { uuid: randomUUID(), host: p.J, enabled: true });
    assert.deepEqual(await checkError(p), ['CLUSTERING_ENABLED', ch]);
  } finally {
    await p.close();
  }
});

test('pre-join checks: joining oneself, or a pool one coordinates', async () => {
  const p = await pair();
  try {
    const self = await remoteOf(p.j);
    assert.deepEqual(await checkError(p, false, self), ['OPERATION_NOT_ALLOWED', 'Host cannot become slave of itself']);
    // With another host known, the same call says so (and comes before JOINING_HOST_CANNOT_BE_MASTER...).
    await p.jdb.create('host', newRef(), { uuid: randomUUID() });
    assert.deepEqual(await checkError(p, false, self), ['OPERATION_NOT_ALLOWED', 'Host is already part of a pool']);
  } finally {
    await p.close();
  }
});

test('pre-join checks: SM types and features', async () => {
  const p = await pair();
  try {
    const [cSm, cRow] = (await p.cdb.find('SM', { type: 'ext' }))[0]!;
    const [jSm, jRow] = (await p.jdb.find('SM', { type: 'ext' }))[0]!;
    const [feature, version] = Object.entries(cRow.features)[0]!;
    await p.jdb.update('SM', jSm, { features: { ...jRow.features, [feature]: version - 1 } });
    assert.deepEqual(await checkError(p), ['POOL_JOINING_SM_FEATURES_INCOMPATIBLE', cSm, jSm]);
    await p.jdb.update('SM', jSm, { features: { ...jRow.features, [feature]: version + 1 } });
    assert.deepEqual(await checkError(p), [], 'a newer feature on the joiner is compatible');
    await p.jdb.destroy('SM', jSm);
    assert.deepEqual(await checkError(p), ['POOL_JOINING_SM_FEATURES_INCOMPATIBLE', cSm, '']);
  } finally {
    await p.close();
  }
});

test('pre-join checks: join_force skips only the homogeneity check', async () => {
  const p = await pair();
  try {
    const sw = (await p.jdb.get('host', p.J)).software_version;
    await p.jdb.update('host', p.J, { software_version: { ...sw, xapi: '1.0' } });
    assert.deepEqual(await checkError(p, true), []);
    await p.cdb.update('pool', await poolOf(p.cdb), { cpu_info: { vendor: 'OtherVendor' } });
    assert.deepEqual(await checkError(p, true), [], 'nor the CPU vendor');
    await p.jdb.update('host', p.J, { software_version: { ...sw, platform_version: '0' } });
    assert.deepEqual(await checkError(p, true), ['HOSTS_NOT_COMPATIBLE']);
  } finally {
    await p.close();
  }
});

test('pre-join checks: the first failing check in xapi order wins', async () => {
  const p = await pair();
  try {
    await makeVm(p.jdb, { power_state: 'Running', current_operations: { t: 'clean_reboot' } });
    assert.deepEqual(await checkError(p), ['JOINING_HOST_CANNOT_HAVE_RUNNING_VMS']);
    await p.jdb.create('host', newRef(), { uuid: randomUUID() });
    assert.deepEqual(await checkError(p), ['JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS']);
    await p.cdb.update('pool', await poolOf(p.cdb), { ha_enabled: true });
    assert.deepEqual(await checkError(p), ['HA_IS_ENABLED']);
    await p.jdb.update('PIF', await managementPif(p.jdb, p.J), { management: false });
    assert.deepEqual(await checkError(p), ['HOST_STILL_BOOTING']);
  } finally {
    await p.close();
  }
});

test('pre-join checks: paused and suspended VMs and the control domain do not stop a join', async () => {
  const p = await pair();
  try {
    await makeVm(p.jdb, { power_state: 'Paused' });
    await makeVm(p.jdb, { power_state: 'Suspended' });
    assert.equal((await p.jdb.get('VM', (await p.jdb.get('host', p.J)).control_domain)).power_state, 'Running');
    assert.deepEqual(await checkError(p), []);
  } finally {
    await p.close();
  }
});

/** Every row of every table, as class/ref, for comparing a database before and after. */
async function allRefs(db: Db): Promise<Set<string>> {
  const out = new Set<string>();
  for (const cls of db.schema.dbClasses()) for (const [ref] of await untyped(db).all(cls.name)) out.add(`${cls.name}/${ref}`);
  return out;
}

/** J with a halted VM (a disk on its local SR, a CD, an interface) and a snapshot of it. */
async function populateJoiner(p: Awaited<ReturnType<typeof pair>>) {
  const { jdb } = p;
  const [sr] = (await jdb.find('SR', { name_label: 'Local storage' }))[0]!;
  const vdi = newRef();
  await jdb.create('VDI', vdi, { uuid: randomUUID(), SR: sr, name_label: 'disk', virtual_size: 1 << 30, location: 'disk-location' });
  const snapVdi = newRef();
  await jdb.create('VDI', snapVdi, { uuid: randomUUID(), SR: sr, name_label: 'disk snap', is_a_snapshot: true, snapshot_of: vdi });
  const vm = await makeVm(jdb, { name_label: 'halted vm', affinity: p.J });
  const snap = await makeVm(jdb, { name_label: 'its snapshot', is_a_snapshot: true, snapshot_of: vm });
  const vbd = newRef();
  await jdb.create('VBD', vbd, { uuid: randomUUID(), VM: vm, VDI: vdi, userdevice: '0', type: 'Disk', mode: 'RW' });
  const cd = newRef();
  await jdb.create('VBD', cd, { uuid: randomUUID(), VM: vm, VDI: snapVdi, userdevice: '3', type: 'CD', mode: 'RO' });
  const [network] = (await jdb.find('network', { bridge: 'xenbr0' }))[0]!;
  const vif = newRef();
  await jdb.create('VIF', vif, { uuid: randomUUID(), VM: vm, network, device: '0', MAC: '00:16:3e:00:00:01' });
  return { sr, vdi, snapVdi, vm, snap, vbd, cd, vif, network };
}

test('merge: the joiner’s records appear on the coordinator, refs translated, nothing duplicated', async () => {
  const p = await pair();
  try {
    const { jdb, cdb } = p;
    const made = await populateJoiner(p);
    // A shared SR in the pool: the new host gets a PBD for it.
    const [cSr, cSrRow] = (await cdb.find('SR', { name_label: 'Local storage' }))[0]!;
    await cdb.update('SR', cSr, { shared: true });
    const [cPbd] = (await cdb.find('PBD', { SR: cSr }))[0]!;
    await cdb.update('PBD', cPbd, { device_config: { device: '/srv/shared', SRmaster: 'true' } });
    const before = await allRefs(cdb);
    const cVms = (await cdb.all('VM')).length;
    const cNetworks = (await cdb.all('network')).length;

    const doc = await collectJoinContribution(jdb, p.J);
    // The document is JSON: what goes over the wire.
    const wire = JSON.parse(JSON.stringify(doc)) as typeof doc;
    const r = await applyJoinContribution(cdb, wire);
    assert.deepEqual(r.failed, []);
    const R = (ref: string) => r.refs[ref]!;

    const jHost = await jdb.get('host', p.J);
    const host = await cdb.get('host', r.host);
    assert.equal(R(p.J), r.host);
    assert.equal(host.uuid, jHost.uuid);
    assert.equal(host.enabled, false);
    assert.equal((await cdb.get('host_metrics', host.metrics)).live, false);
    assert.equal(host.address, jHost.address);
    assert.equal((await cdb.find('host_cpu', { host: r.host })).length, (await jdb.find('host_cpu', { host: p.J })).length);

    // PIFs on the coordinator's networks with the same bridge; no network added.
    assert.equal((await cdb.all('network')).length, cNetworks);
    for (const [ref, pif] of await jdb.find('PIF', { host: p.J })) {
      const mine = await cdb.get('PIF', R(ref));
      assert.equal(mine.uuid, pif.uuid);
      assert.equal(mine.host, r.host);
      assert.equal((await cdb.get('network', mine.network)).bridge, (await jdb.get('network', pif.network)).bridge);
    }

    // The local SR, unshared, its PBD on the new host unplugged, its VDIs with their uuids.
    const sr = await cdb.get('SR', R(made.sr));
    assert.equal(sr.uuid, (await jdb.get('SR', made.sr)).uuid);
    assert.equal(sr.shared, false);
    const [[, pbd]] = (await cdb.find('PBD', { SR: R(made.sr) })) as [[string, Awaited<ReturnType<Db['get']>>]];
    assert.equal((pbd as { host: string }).host, r.host);
    assert.equal((pbd as { currently_attached: boolean }).currently_attached, false);
    const vdi = await cdb.get('VDI', R(made.vdi));
    assert.equal(vdi.uuid, (await jdb.get('VDI', made.vdi)).uuid);
    assert.equal(vdi.location, 'disk-location');
    assert.equal(vdi.SR, R(made.sr));
    assert.equal((await cdb.get('VDI', R(made.snapVdi))).snapshot_of, R(made.vdi));

    // The pool's shared SR: a PBD for the new host from the coordinator's, less SRmaster.
    const shared = (await cdb.find('PBD', { SR: cSr })).filter(([, x]) => x.host === r.host);
    assert.equal(shared.length, 1);
    assert.deepEqual(shared[0]![1].device_config, { device: '/srv/shared' });
    assert.equal(shared[0]![1].currently_attached, false);
    assert.equal(cSrRow.uuid, (await cdb.get('SR', cSr)).uuid);

    // The VM, its snapshot, devices; the control domain on the new host; templates not copied.
    const vm = await cdb.get('VM', R(made.vm));
    assert.equal(vm.uuid, (await jdb.get('VM', made.vm)).uuid);
    assert.equal(vm.power_state, 'Halted');
    assert.equal(vm.affinity, r.host);
    assert.equal((await cdb.get('VM', R(made.snap))).snapshot_of, R(made.vm));
    assert.deepEqual((await cdb.get('VM', R(made.vm))).snapshots, [R(made.snap)]);
    const vbd = await cdb.get('VBD', R(made.vbd));
    assert.equal(vbd.VM, R(made.vm));
    assert.equal(vbd.VDI, R(made.vdi));
    assert.equal((await cdb.get('VIF', R(made.vif))).network, (await cdb.find('network', { bridge: 'xenbr0' }))[0]![0]);
    const dom0 = await cdb.get('VM', host.control_domain);
    assert.equal(dom0.uuid, (await jdb.get('VM', jHost.control_domain)).uuid);
    assert.equal(dom0.is_control_domain, true);
    assert.equal(dom0.resident_on, r.host);
    assert.equal((await cdb.find('console', { VM: host.control_domain })).length, 2);
    // J's own VMs are the dom0, the VM and its snapshot; its default templates are the pool's.
    assert.equal((await cdb.all('VM')).length, cVms + 3);

    // Applied again: the same refs, no row more.
    const after = await allRefs(cdb);
    const again = await applyJoinContribution(cdb, wire);
    assert.deepEqual(again.failed, []);
    assert.equal(again.host, r.host);
    for (const [from, to] of Object.entries(r.refs)) assert.equal(again.refs[from], to, `mapping of ${from}`);
    assert.deepEqual(await allRefs(cdb), after);
    assert.ok(after.size > before.size);
  } finally {
    await p.close();
  }
});

test('merge: the new host record is Host.create’s: what it takes from the joiner, what starts afresh', async () => {
  const p = await pair();
  try {
    const { jdb, cdb } = p;
    await jdb.update('host', p.J, {
      name_label: 'joiner',
      name_description: 'my own words',
      tags: ['rack-4'],
      other_config: { kept: 'yes' },
      logging: { syslog_destination: 'somewhere' },
      guest_VCPUs_params: { mask: '1' },
      power_on_mode: 'wake-on-lan',
      power_on_config: { a: 'b' },
      ha_statefiles: ['x'],
      pending_guidances_full: ['reboot_host'],
      license_params: { restrict_vlan: 'true' },
      edition: 'xcp-ng',
    });
    const r = await applyJoinContribution(cdb, await collectJoinContribution(jdb, p.J));
    const host = await cdb.get('host', r.host);
    // taken from the joiner
    assert.equal(host.name_label, 'joiner');
    assert.deepEqual(host.other_config, { kept: 'yes' });
    assert.deepEqual(host.license_params, { restrict_vlan: 'true' });
    assert.deepEqual(host.pending_guidances_full, ['reboot_host']);
    // Host.create's own
    assert.equal(host.name_description, 'Default install');
    assert.deepEqual(host.tags, []);
    assert.deepEqual(host.logging, {});
    assert.deepEqual(host.guest_VCPUs_params, {});
    assert.equal(host.power_on_mode, '');
    assert.deepEqual(host.power_on_config, {});
    assert.deepEqual(host.ha_statefiles, []);
  } finally {
    await p.close();
  }
});

test('eject: refusals in xapi order', async () => {
  const p = await pair();
  try {
    const { cdb } = p;
    const { host } = await applyJoinContribution(cdb, await collectJoinContribution(p.jdb, p.J));
    const err = async (h: string, live?: (h: string) => Promise<boolean>) => {
      try {
        await assertCanEject(cdb, h, p.C, live);
        return [];
      } catch (e) {
        return [(e as XapiError).code, ...(e as XapiError).params];
      }
    };
    const pool = await poolOf(cdb);
    await cdb.update('pool', pool, { ha_enabled: true });
    // Just merged, the member is not live yet: HOST_OFFLINE comes first.
    assert.deepEqual(await err(host), ['HOST_OFFLINE', host]);
    // The coordinator: xapi's bare exception, before the HA check.
    assert.deepEqual(await err(p.C), ['INTERNAL_ERROR', 'Xapi_pool.Cannot_eject_master']);
    await cdb.update('host_metrics', (await cdb.get('host', host)).metrics, { live: true });
    assert.deepEqual(await err(host), ['HA_IS_ENABLED']);
    await cdb.update('pool', pool, { ha_enabled: false, current_operations: { t: 'apply_updates' } });
    assert.deepEqual(await err(host), ['NOT_SUPPORTED_DURING_UPGRADE']);
    await cdb.update('pool', pool, { current_operations: {} });
    assert.deepEqual(await err(host), [], 'its control domain runs there, which is fine');
    const vm = await makeVm(cdb, { power_state: 'Paused', resident_on: host });
    assert.deepEqual(await err(host), ['OPERATION_NOT_ALLOWED', 'VM resident on host']);
    await cdb.update('VM', vm, { power_state: 'Halted' });
    assert.deepEqual(await err(host), []);
    assert.deepEqual(await err(host, async () => false), ['HOST_OFFLINE', host], 'liveness can come from the caller');
  } finally {
    await p.close();
  }
});

test('eject: exactly the host’s records leave the pool database', async () => {
  const p = await pair();
  try {
    const { cdb } = p;
    const made = await populateJoiner(p);
    const [cSr] = (await cdb.find('SR', { name_label: 'Local storage' }))[0]!;
    await cdb.update('SR', cSr, { shared: true });
    const before = await allRefs(cdb);
    const r = await applyJoinContribution(cdb, await collectJoinContribution(p.jdb, p.J));
    const R = (ref: string) => r.refs[ref]!;
    const merged = await allRefs(cdb);

    const removed = await removeEjectedHost(cdb, r.host);
    const after = await allRefs(cdb);
    // Everything the coordinator had stays, the shared SR included.
    for (const k of before) assert.ok(after.has(k), `${k} kept`);
    assert.ok(after.has(`SR/${cSr}`));
    // What stays of the joiner's: its VMs but the control domain, their interfaces, metrics, the CD emptied.
    const stayed = [...after].filter((k) => !before.has(k)).sort();
    const vm = (await cdb.get('VM', R(made.vm))).metrics;
    const snap = (await cdb.get('VM', R(made.snap))).metrics;
    const expected = [
      `VM/${R(made.vm)}`,
      `VM/${R(made.snap)}`,
      `VM_metrics/${vm}`,
      `VM_metrics/${snap}`,
      `VBD/${R(made.cd)}`,
      `VIF/${R(made.vif)}`,
    ].sort();
    assert.deepEqual(stayed, expected);
    const cd = await cdb.get('VBD', R(made.cd));
    assert.equal(cd.VDI, NULL_REF);
    assert.equal(cd.empty, true);
    // And what went is what was reported.
    assert.deepEqual(new Set(removed.map(([cls, ref]) => `${cls}/${ref}`)), new Set([...merged].filter((k) => !after.has(k))));
    assert.ok(removed.some(([cls]) => cls === 'host_cpu'));
  } finally {
    await p.close();
  }
});

test("eject: the ejected host's state directory, ready for a fresh start", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-eject-'));
  for (const f of ['ptoken', 'xapi.db', 'xapi.db-wal', 'inventory', 'passwd', 'xapi-ssl.pem', 'xapi.log'])
    await writeFile(join(dir, f), 'x');
  await writeFile(join(dir, 'pool.conf'), 'slave:127.0.0.2');
  await mkdir(join(dir, 'storage', 'sr'), { recursive: true });
  await resetEjectedStateDir(dir);
  assert.equal(await readFile(join(dir, 'pool.conf'), 'utf8'), 'master');
  const left = (await readdir(dir)).sort();
  assert.deepEqual(left, ['inventory', 'passwd', 'pool.conf', 'xapi-ssl.pem', 'xapi.log']);
  for (const f of EJECT_REMOVES) assert.ok(!left.includes(f));
});
