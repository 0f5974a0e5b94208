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

test('PIF.plug/unplug: the management PIF refused, networkd follows; unmanaged PIFs refused; introduce and forget with their checks', async () => {
  const { h, s, ok, err, pifs } = await setup();
  try {
    const host = h.host.hostRef;
    const eth0 = (await pifs()).get('eth0')!;
    const eth1 = (await pifs()).get('eth1')!;
    assert.deepEqual(await err('PIF.unplug', s, eth0.ref as string), ['PIF_IS_MANAGEMENT_INTERFACE', eth0.ref]);
    await ok('PIF.unplug', s, eth1.ref as string);
    assert.equal((await pifs()).get('eth1')!.currently_attached, false);
    assert.equal(await h.nm.networkd.bridge('xenbr1'), undefined);
    await ok('PIF.plug', s, eth1.ref as string);
    assert.equal((await pifs()).get('eth1')!.currently_attached, true);
    assert.ok(await h.nm.networkd.bridge('xenbr1'));
    // forget, then introduce again: unmanaged this time
    assert.deepEqual(await err('PIF.forget', s, eth0.ref as string), ['PIF_IS_MANAGEMENT_INTERFACE', eth0.ref]);
    await ok('PIF.forget', s, eth1.ref as string);
    assert.equal((await pifs()).has('eth1'), false);
    assert.equal(await h.nm.networkd.bridge('xenbr1'), undefined, 'brought down before forgotten');
    const mac = eth1.MAC as string;
    assert.deepEqual(await err('PIF.introduce', s, host, 'not-a-mac', 'eth1', true), ['MAC_INVALID', 'not-a-mac']);
    assert.deepEqual(await err('PIF.introduce', s, host, '', 'eth0', true), ['DUPLICATE_PIF_DEVICE_NAME', 'eth0']);
    assert.deepEqual(await err('PIF.introduce', s, host, '02:00:00:00:00:99', 'eth1', true), [
      'COULD_NOT_FIND_NETWORK_INTERFACE_WITH_SPECIFIED_DEVICE_NAME_AND_MAC_ADDRESS',
      'eth1',
      '02:00:00:00:00:99',
    ]);
    const unmanaged = (await ok('PIF.introduce', s, host, mac.toUpperCase(), 'eth1', false)) as string;
    assert.equal((await pifs()).get('eth1')!.MAC, mac, 'MAC lower-cased');
    assert.deepEqual(await err('PIF.plug', s, unmanaged), ['PIF_UNMANAGED', unmanaged]);
    assert.deepEqual(await err('PIF.unplug', s, unmanaged), ['PIF_UNMANAGED', unmanaged]);
    await ok('PIF.forget', s, unmanaged);
    // scan brings it back, on its old network xenbr1
    await ok('PIF.scan', s, host);
    const back = (await pifs()).get('eth1')!;
    assert.equal(back.network, eth1.network);
    assert.equal(back.managed, true);
    assert.deepEqual(await err('PIF.destroy', s, back.ref as string), ['PIF_IS_PHYSICAL']);
    assert.deepEqual(await err('PIF.create_VLAN', s, 'eth7', eth1.network as string, host, 5n), ['INVALID_VALUE', 'device', 'eth7']);
  } finally {
    await h.close();
  }
});

test('PIF.reconfigure_ip / reconfigure_ipv6 / set_primary_address_type: xapi checks, fields as given, networkd reconfigured', async () => {
  const { h, s, ok, err, pifs } = await setup();
  try {
    const eth0 = (await pifs()).get('eth0')!.ref as string;
    const eth1 = (await pifs()).get('eth1')!.ref as string;
    assert.deepEqual(await err('PIF.reconfigure_ip', s, eth1, 'Static', '10.0.0', '255.255.255.0', '', ''), [
      'INVALID_IP_ADDRESS_SPECIFIED',
      'IP',
    ]);
    assert.deepEqual(await err('PIF.reconfigure_ip', s, eth1, 'Static', '10.0.0.1', '', '', ''), [
      'INVALID_IP_ADDRESS_SPECIFIED',
      'netmask',
    ]);
    assert.deepEqual(await err('PIF.reconfigure_ip', s, eth1, 'DHCP', '', '', 'gw', ''), ['INVALID_IP_ADDRESS_SPECIFIED', 'gateway']);
    assert.deepEqual(await err('PIF.reconfigure_ip', s, eth1, 'DHCP', 'fe80::1', '', '', ''), ['INVALID_IP_ADDRESS_SPECIFIED', 'IP']);
    assert.deepEqual(await err('PIF.reconfigure_ip', s, eth0, 'None', '', '', '', ''), ['PIF_IS_MANAGEMENT_INTERFACE', eth0]);
    await ok('PIF.reconfigure_ip', s, eth1, 'Static', '192.0.2.7', '255.255.255.0', '192.0.2.1', '192.0.2.53,2001:db8::53,bad');
    const p = (await pifs()).get('eth1')!;
    assert.deepEqual(
      [p.ip_configuration_mode, p.IP, p.netmask, p.gateway, p.DNS],
      ['Static', '192.0.2.7', '255.255.255.0', '192.0.2.1', '192.0.2.53'],
    );
    assert.equal(p.currently_attached, true);
    const state = (await h.nm.networkd.interfaceState('xenbr1'))!;
    assert.deepEqual(state.ipv4, ['192.0.2.7/24']);
    assert.deepEqual(state.config.dns, { servers: ['192.0.2.53'], domains: [] });

    assert.deepEqual(await err('PIF.reconfigure_ipv6', s, eth1, 'Static', '2001:db8::7', '', ''), [
      'INVALID_CIDR_ADDRESS_SPECIFIED',
      'IPv6',
    ]);
    assert.deepEqual(await err('PIF.reconfigure_ipv6', s, eth1, 'Static', '2001:db8::7/64', '192.0.2.1', ''), [
      'INVALID_IP_ADDRESS_SPECIFIED',
      'gateway',
    ]);
    await ok('PIF.reconfigure_ipv6', s, eth1, 'Static', '2001:db8::7/64', '2001:db8::1', '2001:db8::53,192.0.2.99');
    const p6 = (await pifs()).get('eth1')!;
    assert.deepEqual(p6.IPv6, ['2001:db8::7/64']);
    assert.equal(p6.DNS, '2001:db8::53,192.0.2.53', 'the new IPv6 servers, then the IPv4 ones kept');
    assert.deepEqual((await h.nm.networkd.interfaceState('xenbr1'))!.ipv6, ['2001:db8::7/64']);
    await ok('PIF.reconfigure_ipv6', s, eth1, 'None', '', '', '');
    assert.deepEqual((await pifs()).get('eth1')!.IPv6, ['']);

    assert.deepEqual(await err('PIF.set_primary_address_type', s, eth0, 'IPv6'), ['PIF_IS_MANAGEMENT_INTERFACE', eth0]);
    await ok('PIF.set_primary_address_type', s, eth1, 'IPv6');
    assert.equal((await pifs()).get('eth1')!.primary_address_type, 'IPv6');
    // HA on: an attached PIF is not reconfigured
    const pool = ((await ok('pool.get_all', s)) as string[])[0]!;
    await h.db.update('pool', pool, { ha_enabled: true });
    assert.deepEqual(await err('PIF.reconfigure_ip', s, eth1, 'DHCP', '', '', '', ''), ['HA_IS_ENABLED']);
    assert.deepEqual(await err('PIF.unplug', s, eth1), ['HA_IS_ENABLED']);
    assert.deepEqual(await err('host.management_reconfigure', s, eth1), ['HA_IS_ENABLED']);
    await h.db.update('pool', pool, { ha_enabled: false });
  } finally {
    await h.close();
  }
});

test('VLAN.create/destroy: checks in xapi order, the VLAN device made and removed in networkd; pool.create_VLAN(_from_PIF)', async () => {
  const { h, s, ok, err, rec, pifs } = await setup();
  try {
    const host = h.host.hostRef;
    const eth0 = (await pifs()).get('eth0')!;
    const net = async (name: string, managed = true) =>
      (await ok('network.create', s, {
        name_label: name,
        name_description: '',
        MTU: 1500n,
        other_config: {},
        bridge: '',
        managed,
        tags: [],
      } as never)) as string;
    const n5 = await net('vlan 5');
    const unmanaged = await net('unmanaged', false);
    const tagged = eth0.ref as string;
    assert.deepEqual(await err('VLAN.create', s, tagged, 5n, unmanaged), ['NETWORK_UNMANAGED', unmanaged]);
    assert.deepEqual(await err('VLAN.create', s, tagged, 5n, eth0.network as string), ['NETWORK_ALREADY_CONNECTED', host, tagged]);
    assert.deepEqual(await err('VLAN.create', s, tagged, 4095n, n5), ['VLAN_TAG_INVALID', '4095']);
    assert.deepEqual(await err('VLAN.create', s, tagged, -1n, n5), ['VLAN_TAG_INVALID', '-1']);
    const vlan = (await ok('VLAN.create', s, tagged, 5n, n5)) as string;
    const v = await rec('VLAN', vlan);
    const untagged = await rec('PIF', v.untagged_PIF as string);
    assert.deepEqual(
      [untagged.device, untagged.VLAN, untagged.MAC, untagged.physical, untagged.currently_attached],
      ['eth0', 5n, 'fe:ff:ff:ff:ff:ff', false, true],
    );
    assert.equal(untagged.metrics, eth0.metrics, "the tagged PIF's metrics");
    const bridge = (await rec('network', n5)).bridge as string;
    assert.deepEqual((await h.nm.networkd.bridge(bridge))!.vlan, { parent: 'xenbr0', tag: 5 });
    assert.equal(await h.nm.networkd.hasVlan('eth0', 5), true);
    // the same tag on the PIF again, on another network
    const other = await net('vlan 5 again');
    assert.deepEqual(await err('VLAN.create', s, tagged, 5n, other), ['PIF_VLAN_EXISTS', 'eth0']);
    assert.deepEqual(await err('VLAN.create', s, v.untagged_PIF as string, 6n, other), ['PIF_IS_VLAN', v.untagged_PIF]);
    // a VLAN device networkd has without a record
    await h.nm.networkd.makeBridges([['stray', { vlan: { parent: 'xenbr0', tag: 9 }, ports: {}, otherConfig: {}, persistent: false }]]);
    assert.deepEqual(await err('VLAN.create', s, tagged, 9n, other), ['VLAN_IN_USE', 'eth0', '9']);
    await h.nm.networkd.destroyBridge('stray', true);
    // the tagged PIF cannot be forgotten while the VLAN rides on it
    await ok('VLAN.destroy', s, vlan);
    assert.equal(await h.nm.networkd.bridge(bridge), undefined);
    assert.ok(await h.nm.networkd.bridge('xenbr0'), 'the parent bridge stays');
    assert.deepEqual((await ok('VLAN.get_all', s)) as string[], []);
    assert.ok(await rec('PIF_metrics', eth0.metrics as string), "the tagged PIF's metrics stay");

    // pool-wide: one host here
    const made = (await ok('pool.create_VLAN_from_PIF', s, tagged, n5, 7n)) as string[];
    assert.equal(made.length, 1);
    assert.equal((await rec('PIF', made[0]!)).currently_attached, true);
    const eth1Net = (await pifs()).get('eth1')!.network as string;
    assert.deepEqual(await err('pool.create_VLAN_from_PIF', s, tagged, eth1Net, 8n), [
      'NETWORK_ALREADY_CONNECTED',
      host,
      (await pifs()).get('eth1')!.ref,
    ]);
    await ok('PIF.destroy', s, made[0]!);
    const viaDevice = (await ok('pool.create_VLAN', s, 'eth1', other, 8n)) as string[];
    assert.equal((await rec('PIF', viaDevice[0]!)).VLAN, 8n);
    assert.deepEqual(await err('PIF.forget', s, (await pifs()).get('eth1')!.ref as string), [
      'PIF_VLAN_STILL_EXISTS',
      (await pifs()).get('eth1')!.ref,
    ]);
    assert.deepEqual(await err('PIF.forget', s, viaDevice[0]!), ['PIF_VLAN_STILL_EXISTS', viaDevice[0]]);
  } finally {
    await h.close();
  }
});

test('management interface: reconfigure onto a configured PIF, disable, back; pool.management_reconfigure', async () => {
  const { h, s, ok, err, pifs } = await setup();
  try {
    const eth0 = (await pifs()).get('eth0')!;
    const eth1 = (await pifs()).get('eth1')!;
    assert.deepEqual(await err('host.management_reconfigure', s, eth1.ref as string), ['PIF_HAS_NO_NETWORK_CONFIGURATION', eth1.ref]);
    assert.deepEqual(await err('pool.management_reconfigure', s, eth1.network as string), ['PIF_HAS_NO_NETWORK_CONFIGURATION', eth1.ref]);
    await ok('PIF.reconfigure_ip', s, eth1.ref as string, 'Static', '127.0.0.1', '255.0.0.0', '', '');
    await ok('host.management_reconfigure', s, eth1.ref as string);
    let now = await pifs();
    assert.equal(now.get('eth1')!.management, true);
    assert.equal(now.get('eth0')!.management, false);
    assert.equal(now.get('eth0')!.currently_attached, true, 'the old one stays plugged');
    assert.equal(await h.nm.managementBridge(), 'xenbr1');
    assert.equal(await ok('host.get_management_interface', s, h.host.hostRef), eth1.ref);
    await ok('host.management_disable', s);
    now = await pifs();
    assert.ok(![...now.values()].some((p) => p.management));
    assert.equal(await h.nm.managementBridge(), '');
    await ok('pool.management_reconfigure', s, eth0.network as string);
    now = await pifs();
    assert.equal(now.get('eth0')!.management, true);
    assert.equal(now.get('eth1')!.management, false);
    assert.equal(await h.nm.managementBridge(), 'xenbr0');
    const other = (await ok('network.create', s, {
      name_label: 'no PIF',
      name_description: '',
      MTU: 1500n,
      other_config: {},
      bridge: '',
      managed: true,
      tags: [],
    } as never)) as string;
    assert.deepEqual(await err('pool.management_reconfigure', s, other), ['PIF_NOT_PRESENT', h.host.hostRef, other]);
  } finally {
    await h.close();
  }
});
