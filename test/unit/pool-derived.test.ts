// The pool fields derived from its hosts (create_pool_cpuinfo, update_pool_features): the fold
// itself, then on two in-memory hosts, a joiner's first start as a member counting it and its
// eject or destroy no longer counting it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryHost } from '../../src/host/memory-host.js';
import { syncDatabase } from '../../src/host/dbsync.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { intersectFeatures, poolCpuInfo, poolRestrictions, xcpNgLicenseParams } from '../../src/xapi/pool-derived.js';
import { applyJoinContribution, collectJoinContribution } from '../../src/xapi/pool-join-merge.js';
import { removeEjectedHost, removeHostRecords } from '../../src/xapi/pool-eject.js';

const PV = '1fc9cbf5-80b82201-2991cbf5-00000003';
const HVM = '1fcbfbff-80b82221-2993fbff-00000403';

const cpu = (o: Record<string, string>) => ({
  capabilities: ['xen-3.0-x86_64', 'hvm-3.0-x86_32'],
  cpu_info: { vendor: 'GenuineIntel', cpu_count: '4', socket_count: '1', features_pv_host: PV, features_hvm_host: HVM, ...o },
});

test('intersection of featuresets: word by word, the shorter zero-extended, "" no constraint', () => {
  assert.equal(intersectFeatures('ffff0000-0000ffff', '0ff00ff0-0ff00ff0'), '0ff00000-00000ff0');
  assert.equal(intersectFeatures('ffffffff', '0000000f-00000001'), '0000000f-00000000');
  assert.equal(intersectFeatures('', PV), PV);
  assert.equal(intersectFeatures(PV, ''), PV);
});

test('pool cpu_info: counts summed, the common features, the last host’s vendor, in xapi’s key order', () => {
  const info = poolCpuInfo([
    cpu({}),
    cpu({ cpu_count: '8', socket_count: '2', features_pv_host: '1fc9cbf5-00000000-2991cbf5', vendor: 'AuthenticAMD' }),
  ]);
  assert.deepEqual(Object.entries(info), [
    ['features_hvm_host', HVM],
    ['features_pv_host', '1fc9cbf5-00000000-2991cbf5-00000000'],
    ['socket_count', '3'],
    ['cpu_count', '12'],
    ['vendor', 'AuthenticAMD'],
  ]);
  // a host that cannot run HVM guests does not narrow their features
  const pvOnly = { ...cpu({ features_hvm_host: '00000001' }), capabilities: ['xen-3.0-x86_64'] };
  assert.equal(poolCpuInfo([cpu({}), pvOnly]).features_hvm_host, HVM);
  // a host without the featureset keys (an older format) is left out altogether
  const { features_pv_host: _, ...old } = cpu({}).cpu_info;
  assert.deepEqual(poolCpuInfo([cpu({}), { ...cpu({}), cpu_info: old }]), poolCpuInfo([cpu({})]));
});

test('pool restrictions: a feature every host grants; the coordinator’s extra flags restricted unless every host lifts them', () => {
  const xcp = xcpNgLicenseParams();
  const one = poolRestrictions([{ license_params: xcp }], xcp);
  // XCP-ng: everything but corosync clustering, HA as granted (enable_xha, the one positive flag)
  assert.equal(one.restrict_vlan, 'false');
  assert.equal(one.enable_xha, 'true');
  assert.equal(one.restrict_corosync, 'true');
  assert.equal(one.restrict_vswitch_controller, 'false');
  assert.deepEqual(Object.keys(one).slice(0, 2), ['restrict_vswitch_controller', 'restrict_lab']);
  // one host that does not grant VLANs or HA, and knows nothing of the extra flags
  const other = { restrict_vlan: 'true', enable_xha: 'false' };
  const two = poolRestrictions([{ license_params: xcp }, { license_params: other }], xcp);
  assert.equal(two.restrict_vlan, 'true');
  assert.equal(two.enable_xha, 'false');
  assert.equal(two.restrict_lab, 'true');
  // flags absent from a host: only the few xapi grants when unknown stay granted
  assert.equal(two.restrict_qos, 'true');
  assert.equal(two.restrict_xen_motion, 'false');
  assert.equal(two.restrict_vm_start, 'false');
});

test('a joiner counts from its first start as a member; eject and host.destroy stop it counting', async () => {
  const j = await memoryHost({ rootPassword: 'pw' });
  const c = await memoryHost({ rootPassword: 'pw' });
  try {
    const cdb = c.host.db;
    const pool = async () => (await cdb.all('pool'))[0]![1];
    const alone = await pool();
    assert.equal(alone.cpu_info.cpu_count, '4');
    assert.equal(alone.cpu_info.features_pv_host, simulatedMachine({ seed: 'x' }).cpu.featuresPvHost);
    assert.deepEqual(alone.restrictions, poolRestrictions([{ license_params: xcpNgLicenseParams() }], xcpNgLicenseParams()));

    const joinAndStart = async (machine = simulatedMachine({ seed: 'j', cpus: 2 })) => {
      const { host } = await applyJoinContribution(cdb, await collectJoinContribution(j.host.db, j.host.hostRef));
      const uuid = (await cdb.get('host', host)).uuid;
      await syncDatabase(cdb, c.host.schema, { uuid, hostname: 'j', address: '127.0.0.2', machine }, 'slave');
      return host;
    };
    // a joiner whose CPU lacks a feature the coordinator's has
    const base = simulatedMachine({ seed: 'j', cpus: 2 });
    const words = base.cpu.featuresPvHost.split('-');
    words[1] = '00000000';
    const joined = await joinAndStart({ ...base, cpu: { ...base.cpu, featuresPvHost: words.join('-') } });
    const two = await pool();
    assert.equal(two.cpu_info.cpu_count, '6');
    assert.equal(two.cpu_info.socket_count, '2');
    assert.equal(two.cpu_info.features_pv_host, words.join('-'));

    await removeEjectedHost(cdb, joined);
    assert.deepEqual((await pool()).cpu_info, alone.cpu_info);

    // again, through host.destroy's removal, and a license that lifts less
    const again = await joinAndStart();
    assert.equal((await pool()).cpu_info.cpu_count, '6');
    const login = await c.dispatcher.dispatch('session.login_with_password', ['root', 'pw']);
    assert.ok(login.ok);
    const set = await c.dispatcher.dispatch('host.set_license_params', [
      login.value as string,
      again,
      { ...xcpNgLicenseParams(), restrict_vlan: 'true' },
    ]);
    assert.ok(set.ok, JSON.stringify(set));
    assert.equal((await pool()).restrictions.restrict_vlan, 'true');
    await removeHostRecords(cdb, again, { forgetLocalSrs: false });
    assert.deepEqual((await pool()).cpu_info, alone.cpu_info);
    assert.deepEqual((await pool()).restrictions, alone.restrictions);
  } finally {
    await j.close();
    await c.close();
  }
});
