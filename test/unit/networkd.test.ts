// The simulated network daemon: NICs from the host's settings, bridges with their ports, VLAN
// devices on a parent bridge's port, bonds, interface configuration, networkd's rule that an
// unforced destroy keeps a bridge carrying VLANs, and the state outliving a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SimulatedNetworkd, type SimNic } from '../../src/networkd/sim.js';
import { NetworkdError } from '../../src/networkd/interface.js';
import { simulatedNic } from '../../src/xenopsd/machine.js';
import { UsageError, hostOptions } from '../../src/cli/flags.js';

const nics: SimNic[] = [
  { device: 'eth0', mac: '02:00:00:00:00:01', mtu: 1500, speedMbit: 10000, carrier: true },
  { device: 'eth1', mac: '02:00:00:00:00:02', mtu: 9000, speedMbit: 1000, carrier: false },
  { device: 'eth2', mac: '02:00:00:00:00:03', mtu: 1500, speedMbit: 1000, carrier: true },
];

const physical = (dev: string) => ({ ports: { [dev]: { interfaces: [dev] } }, otherConfig: {}, persistent: true });

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'networkd-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('NIC descriptions: defaults, MAC, MTU, speed, carrier; bad settings refused', () => {
  const plain = simulatedNic('eth0', 'seed');
  assert.equal(plain.mtu, 1500);
  assert.equal(plain.carrier, true);
  assert.match(plain.mac, /^02(:[0-9a-f]{2}){5}$/);
  assert.deepEqual(simulatedNic('eth3:mac=02-AA-bb-cc-dd-ee:mtu=9000:speed=1000:carrier=down', 's'), {
    device: 'eth3',
    mac: '02:aa:bb:cc:dd:ee',
    mtu: 9000,
    speedMbit: 1000,
    carrier: false,
  });
  assert.throws(() => simulatedNic('eth0:mtu=big', 's'), /bad NIC setting/);
  assert.throws(() => simulatedNic('eth0:colour=red', 's'), /bad NIC setting/);
  assert.throws(() => simulatedNic(':mtu=1500', 's'), /bad NIC name/);
  // xapi serve checks them before starting anything
  assert.deepEqual(hostOptions({ 'sim-nics': 'eth0,eth1:carrier=down' }).sim?.nics, ['eth0', 'eth1:carrier=down']);
  assert.throws(() => hostOptions({ 'sim-nics': 'eth0,eth1:speed=fast' }), UsageError);
});

test('physical devices in position order, carrier and speed as the NIC reports', async () => {
  const d = await SimulatedNetworkd.open(nics, undefined);
  const devices = await d.physicalDevices();
  assert.deepEqual(
    devices.map((n) => [n.device, n.position, n.carrier, n.speedMbit, n.mtu]),
    [
      ['eth0', 0, true, 10000, 1500],
      ['eth1', 1, false, 0, 9000],
      ['eth2', 2, true, 1000, 1500],
    ],
  );
});

test('bridges, VLAN devices, unforced destroy kept while VLANs ride on it, state survives a restart', async () => {
  await withDir(async (dir) => {
    const d = await SimulatedNetworkd.open(nics, dir);
    await d.makeBridges([['xenbr0', { ...physical('eth0'), mac: '02:00:00:00:00:01' }]]);
    await d.makeBridges([['xapi1', { vlan: { parent: 'xenbr0', tag: 42 }, ports: {}, otherConfig: {}, persistent: false }]]);
    assert.deepEqual(Object.keys((await d.bridge('xapi1'))!.ports), ['eth0.42']);
    assert.equal(await d.hasVlan('eth0', 42), true);
    assert.equal(await d.hasVlan('eth0', 43), false);
    assert.equal(await d.exists('eth0.42'), true);
    // the same VLAN device for another bridge is refused
    await assert.rejects(
      d.makeBridges([['xapi2', { vlan: { parent: 'xenbr0', tag: 42 }, ports: {}, otherConfig: {}, persistent: false }]]),
      (e: unknown) => e instanceof NetworkdError && e.kind === 'vlan-in-use' && e.detail.join() === 'eth0,42',
    );
    // a VLAN needs its parent bridge
    await assert.rejects(
      d.makeBridges([['xapi3', { vlan: { parent: 'xenbr9', tag: 1 }, ports: {}, otherConfig: {}, persistent: false }]]),
      (e: unknown) => e instanceof NetworkdError && e.kind === 'not-found',
    );
    await d.makeInterfaces([
      [
        'xenbr0',
        { ipv4: { mode: 'static', address: '192.0.2.5', netmask: '255.255.255.0' }, ipv6: { mode: 'none' }, mtu: 1500, persistent: true },
      ],
    ]);
    assert.deepEqual((await d.interfaceState('xenbr0'))!.ipv4, ['192.0.2.5/24']);
    await d.destroyBridge('xenbr0', false);
    assert.deepEqual((await d.bridges()).sort(), ['xapi1', 'xenbr0'], 'kept: a VLAN rides on it');

    const again = await SimulatedNetworkd.open(nics, dir);
    assert.deepEqual((await again.bridges()).sort(), ['xapi1', 'xenbr0']);
    assert.deepEqual((await again.interfaceState('xenbr0'))!.ipv4, ['192.0.2.5/24']);
    await again.destroyBridge('xapi1', false);
    await again.destroyBridge('xenbr0', false);
    assert.deepEqual(await again.bridges(), []);
    assert.equal(await again.interfaceState('xenbr0'), undefined);
    assert.deepEqual(await (await SimulatedNetworkd.open(nics, dir)).bridges(), []);
  });
});

test('a bond is a port of several devices; a device moves to the bridge that takes it', async () => {
  const d = await SimulatedNetworkd.open(nics, undefined);
  await d.makeBridges([
    ['xenbr1', physical('eth1')],
    ['xenbr2', physical('eth2')],
  ]);
  await d.makeBridges([
    [
      'xapi0',
      {
        ports: { bond0: { interfaces: ['eth1', 'eth2'], bondMac: '02:00:00:00:00:02', bondProperties: { mode: 'balance-slb' } } },
        otherConfig: {},
        persistent: true,
      },
    ],
  ]);
  assert.deepEqual(Object.keys((await d.bridge('xenbr1'))!.ports), []);
  assert.equal(await d.exists('bond0'), true);
  await d.makeBridges([['xapi5', { vlan: { parent: 'xapi0', tag: 5 }, ports: {}, otherConfig: {}, persistent: false }]]);
  assert.equal(await d.hasVlan('bond0', 5), true);
  await assert.rejects(d.makeBridges([['xenbr9', physical('eth9')]]), (e: unknown) => e instanceof NetworkdError && e.kind === 'not-found');
  await d.resetState();
  assert.deepEqual(await d.bridges(), []);
});
