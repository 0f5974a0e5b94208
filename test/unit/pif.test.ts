// PIFs in-process against xapi's rules (xapi_pif.ml, nm.ml; network.md §2-3): the first start's
// scan (networks and bridges named as xapi names them, one management PIF with the host's
// address, PIF_metrics filled), every start bringing the PIFs up through networkd, and the PIF
// messages with xapi's checks in xapi's order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryHost } from '../../src/host/memory-host.js';
import { apiClient } from './api-client.js';
import type { RpcStruct } from '../../src/rpc/rpc.js';

async function setup() {
  const h = await memoryHost({ rootPassword: 'pw' });
  const { call, ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const rec = async (cls: string, ref: string) => (await ok(`${cls}.get_record`, s, ref)) as RpcStruct;
  const pifs = async () => {
    const all = (await ok('PIF.get_all_records', s)) as Record<string, RpcStruct>;
    return new Map(Object.entries(all).map(([ref, p]): [string, Record<string, unknown>] => [p.device as string, { ...p, ref }]));
  };
  return { h, call, ok, err, s, rec, pifs };
}

test('first start: a PIF per NIC on xenbr<N>, the first the management interface with the host address, metrics filled, bridges up', async () => {
  const { h, s, ok, rec, pifs } = await setup();
  try {
    const byDevice = await pifs();
    assert.deepEqual([...byDevice.keys()].sort(), ['eth0', 'eth1']);
    const eth0 = byDevice.get('eth0')!;
    const eth1 = byDevice.get('eth1')!;
    assert.equal(eth0.management, true);
    assert.equal(eth1.management, false);
    assert.equal(eth0.ip_configuration_mode, 'Static');
    assert.equal(eth0.IP, '127.0.0.1');
    assert.equal(eth1.ip_configuration_mode, 'None');
    for (const p of [eth0, eth1]) {
      assert.equal(p.currently_attached, true, `${p.device} brought up at start`);
      assert.equal(p.physical, true);
      assert.equal(p.VLAN, -1n);
      assert.deepEqual({ ...(p.properties as object) }, { gro: 'on' });
      assert.equal(p.igmp_snooping_status, 'disabled');
    }
    const net0 = await rec('network', eth0.network as string);
    assert.equal(net0.bridge, 'xenbr0');
    assert.equal(net0.name_label, 'Pool-wide network associated with eth0');
    assert.equal(net0.MTU, 1500n);
    const metrics = await rec('PIF_metrics', eth0.metrics as string);
    assert.equal(metrics.carrier, true);
    assert.equal(metrics.speed, 10000n);
    assert.equal(metrics.vendor_name, 'Simulated');
    assert.equal(metrics.device_name, 'Simulated Ethernet');
    // networkd holds the bridges, each with its NIC as port; the management bridge has the address
    assert.deepEqual((await h.nm.networkd.bridges()).sort(), ['xenbr0', 'xenbr1']);
    assert.deepEqual(Object.keys((await h.nm.networkd.bridge('xenbr1'))!.ports), ['eth1']);
    assert.deepEqual((await h.nm.networkd.interfaceState('xenbr0'))!.ipv4, ['127.0.0.1/8']);
    assert.equal(await h.nm.managementBridge(), 'xenbr0');
    // the host-internal management network is there too
    const [himn] = (await ok('network.get_by_name_label', s, 'Host internal management network')) as string[];
    assert.equal((await rec('network', himn!)).bridge, 'xenapi');
  } finally {
    await h.close();
  }
});

test('every start: what networkd lost is brought up again, currently_attached follows the bridges', async () => {
  const first = await setup();
  const stateDir = first.h.host.config.stateDir;
  // networkd forgets xenbr1 behind xapi's back (a reboot without persistence, say)
  await first.h.nm.networkd.destroyBridge('xenbr1', true);
  const again = await memoryHost({ rootPassword: 'pw', stateDir, db: first.h.db });
  try {
    assert.deepEqual((await again.nm.networkd.bridges()).sort(), ['xenbr0', 'xenbr1']);
    const { ok } = apiClient(again);
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    const all = Object.values((await ok('PIF.get_all_records', s)) as Record<string, RpcStruct>);
    assert.equal(all.length, 2, 'no PIF made twice');
    assert.ok(all.every((p) => p.currently_attached === true));
  } finally {
    await again.close();
    await first.h.close();
  }
});
