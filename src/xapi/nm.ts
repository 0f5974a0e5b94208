// What xapi asks the network daemon to do for a PIF (xapi's nm.ml): bring it up (the bridges,
// ports, bonds and VLAN devices it needs, then its bridge's IP configuration) or down, one PIF
// at a time on this host; the management interface's inventory keys; and what follows a change
// of dom0's networking (the host's address from its management PIF). network.md §5.
import type { Db, Row } from '../db/interface.js';
import type { Ref } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import { XapiError } from '../rpc/errors.js';
import { Mutex } from '../util/mutex.js';
import {
  type BridgeConfig,
  type InterfaceConfig,
  type Ipv4Config,
  type Ipv6Config,
  type NetworkDaemon,
  NetworkdError,
} from '../networkd/interface.js';
import { MANAGEMENT_ADDRESS_TYPE, MANAGEMENT_INTERFACE, readInventory, writeInventoryKeys } from './inventory.js';

/** Xapi_pif_helpers.get_pif_type: what a PIF is, tested in xapi's order. */
export type PifKind =
  | { kind: 'tunnel-access'; tunnel: string }
  | { kind: 'vlan'; vlan: string }
  | { kind: 'sriov-logical'; sriov: string }
  | { kind: 'bond-master'; bond: string }
  | { kind: 'physical' };

export function pifKind(pif: Row<'PIF'>): PifKind {
  if (pif.tunnel_access_PIF_of.length > 0) return { kind: 'tunnel-access', tunnel: pif.tunnel_access_PIF_of[0]! };
  if (pif.VLAN_master_of !== NULL_REF) return { kind: 'vlan', vlan: pif.VLAN_master_of };
  if (pif.sriov_logical_PIF_of.length > 0) return { kind: 'sriov-logical', sriov: pif.sriov_logical_PIF_of[0]! };
  if (pif.bond_master_of.length > 0) return { kind: 'bond-master', bond: pif.bond_master_of[0]! };
  return { kind: 'physical' };
}

/** is_dom0_interface: what networkd keeps across the machine's reboots. */
function persistent(pif: Row<'PIF'>): boolean {
  return pif.ip_configuration_mode !== 'None' || pif.ipv6_configuration_mode !== 'None' || pif.physical || pif.bond_master_of.length > 0;
}

/** determine_mtu: the network's, unless the PIF's other_config:mtu says otherwise. */
function mtuOf(pif: Row<'PIF'>, network: Row<'network'>): number {
  const n = Number(pif.other_config.mtu);
  return pif.other_config.mtu !== undefined && Number.isInteger(n) ? n : network.MTU;
}

/** The bond properties a bond of two or more members runs with (create_bond). */
function bondProperties(bond: Row<'Bond'>, master: Row<'PIF'>, members: number): Record<string, string> {
  if (members < 2) return {};
  const props: Record<string, string> = {
    mode: bond.mode,
    miimon: '100',
    downdelay: '200',
    updelay: '31000',
    use_carrier: '1',
    'hashing-algorithm': bond.properties.hashing_algorithm ?? 'tcpudp_ports',
  };
  if (bond.mode === 'lacp') {
    for (const [k, v] of Object.entries(bond.properties)) if (k.startsWith('lacp-')) props[k] = v;
  } else props['rebalance-interval'] = '1800000';
  for (const [k, v] of Object.entries(master.other_config)) if (k.startsWith('bond-')) props[k.slice(5)] = v;
  return props;
}

interface Plan {
  cleanup: [string, boolean][];
  bridges: [string, BridgeConfig][];
  interfaces: [string, InterfaceConfig][];
}

export class Nm {
  /** xapi's local lock: one PIF brought up or down at a time on this host. */
  readonly lock = new Mutex();

  constructor(
    readonly networkd: NetworkDaemon,
    private readonly stateDir: string,
  ) {}

  /** The management bridge named in the inventory ("" = none). */
  async managementBridge(): Promise<string> {
    return (await readInventory(this.stateDir))[MANAGEMENT_INTERFACE] ?? '';
  }

  async managementAddressType(): Promise<'IPv4' | 'IPv6'> {
    return (await readInventory(this.stateDir))[MANAGEMENT_ADDRESS_TYPE] === 'IPv6' ? 'IPv6' : 'IPv4';
  }

  /** Whether the inventory names a management interface at all (a state directory from before it did not). */
  async managementKnown(): Promise<boolean> {
    return MANAGEMENT_INTERFACE in (await readInventory(this.stateDir));
  }

  async setManagement(bridge: string, addressType?: 'IPv4' | 'IPv6'): Promise<void> {
    await writeInventoryKeys(this.stateDir, {
      [MANAGEMENT_INTERFACE]: bridge,
      ...(addressType ? { [MANAGEMENT_ADDRESS_TYPE]: addressType } : {}),
    });
  }

  /** create_bridges: what networkd must make for a PIF, by its kind. */
  private async plan(db: Db, pif: Row<'PIF'>, network: Row<'network'>): Promise<Plan> {
    const mtu = mtuOf(pif, network);
    const keep = persistent(pif);
    const pool = (await db.all('pool'))[0]?.[1];
    const otherConfig = { ...pool?.other_config, ...network.other_config, ...pif.other_config, 'network-uuids': network.uuid };
    const k = pifKind(pif);
    switch (k.kind) {
      case 'tunnel-access':
        return { cleanup: [], bridges: [[network.bridge, { mac: pif.MAC, ports: {}, otherConfig, persistent: keep }]], interfaces: [] };
      case 'vlan': {
        const vlan = await db.get('VLAN', k.vlan);
        const tagged = await db.get('PIF', vlan.tagged_PIF);
        const taggedNet = await db.get('network', tagged.network);
        const below = await this.plan(db, tagged, taggedNet);
        const bridge: BridgeConfig = {
          mac: tagged.MAC,
          vlan: { parent: taggedNet.bridge, tag: Number(vlan.tag) },
          ports: {},
          otherConfig: { ...otherConfig, 'network-uuids': `${network.uuid};${taggedNet.uuid}` },
          persistent: keep,
        };
        return {
          cleanup: below.cleanup,
          bridges: [[network.bridge, bridge], ...below.bridges],
          interfaces: [
            [`${pif.device}.${pif.VLAN}`, { ipv4: { mode: 'none' }, ipv6: { mode: 'none' }, mtu, persistent: keep }],
            ...below.interfaces,
          ],
        };
      }
      case 'bond-master': {
        const bond = await db.get('Bond', k.bond);
        const cleanup: [string, boolean][] = [];
        const devices: string[] = [];
        for (const ref of bond.slaves) {
          const slave = await db.get('PIF', ref);
          devices.push(slave.device);
          const slaveNet = await db.tryGet('network', slave.network);
          if (slaveNet && slaveNet.bridge !== network.bridge) cleanup.push([slaveNet.bridge, false]);
        }
        const port = { interfaces: devices, bondMac: pif.MAC, bondProperties: bondProperties(bond, pif, devices.length) };
        return {
          cleanup,
          bridges: [[network.bridge, { mac: pif.MAC, ports: { [pif.device]: port }, otherConfig, persistent: keep }]],
          interfaces: [
            [pif.device, { ipv4: { mode: 'none' }, ipv6: { mode: 'none' }, mtu, persistent: keep }],
            ...devices.map((d): [string, InterfaceConfig] => [
              d,
              { ipv4: { mode: 'none' }, ipv6: { mode: 'none' }, mtu, persistent: keep },
            ]),
          ],
        };
      }
      case 'physical': {
        const cleanup: [string, boolean][] = [];
        if (pif.bond_slave_of !== NULL_REF) {
          // The bond's bridge goes first, forced (destroy_bond).
          const bond = await db.tryGet('Bond', pif.bond_slave_of);
          const master = bond && (await db.tryGet('PIF', bond.master));
          const masterNet = master && (await db.tryGet('network', master.network));
          if (masterNet) cleanup.push([masterNet.bridge, true]);
        }
        return {
          cleanup,
          bridges: [
            [network.bridge, { mac: pif.MAC, ports: { [pif.device]: { interfaces: [pif.device] } }, otherConfig, persistent: keep }],
          ],
          interfaces: [[pif.device, { ipv4: { mode: 'none' }, ipv6: { mode: 'none' }, mtu, persistent: keep }]],
        };
      }
      case 'sriov-logical':
        throw new XapiError('INTERNAL_ERROR', ['no bridge is made for an SR-IOV logical PIF']);
    }
  }

  /** destroy_bridges: the bridges a PIF's bring-down removes. */
  private async teardown(db: Db, pif: Row<'PIF'>, bridge: string): Promise<[string, boolean][]> {
    const k = pifKind(pif);
    if (k.kind === 'vlan') {
      const vlan = await db.get('VLAN', k.vlan);
      const own: [string, boolean] = [bridge, false];
      const tagged = await db.tryGet('PIF', vlan.tagged_PIF);
      if (tagged && !tagged.currently_attached) {
        const taggedNet = await db.get('network', tagged.network);
        return [...(await this.teardown(db, tagged, taggedNet.bridge)), own];
      }
      return [own];
    }
    return [[bridge, false]];
  }

  /** Networkd's refusals as xapi raises them (network.ml transform_networkd_exn). */
  private async guarded<T>(pif: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof NetworkdError && e.kind === 'vlan-in-use') throw new XapiError('VLAN_IN_USE', e.detail);
      if (e instanceof XapiError) throw e;
      throw new XapiError('PIF_CONFIGURATION_ERROR', [pif, e instanceof NetworkdError ? e.message : '']);
    }
  }

  /** Nm.bring_pif_up: the PIF's bridges made and its IP configured; attached afterwards. */
  bringPifUp(db: Db, ref: Ref<'PIF'>, management = false): Promise<void> {
    return this.lock.run(async () => {
      let pif = await db.get('PIF', ref);
      const network = await db.get('network', pif.network);
      const k = pifKind(pif);
      if (k.kind === 'bond-master') {
        // The members go down with the bond up, on the bond's MTU.
        const bond = await db.get('Bond', k.bond);
        for (const slave of bond.slaves) {
          await db.update('PIF', slave, { currently_attached: false });
          const slaveNet = (await db.get('PIF', slave)).network;
          const net = await db.tryGet('network', slaveNet);
          if (net && net.MTU !== network.MTU) await db.update('network', slaveNet, { MTU: network.MTU });
        }
        pif = await db.get('PIF', ref);
      }
      await this.guarded(ref, async () => {
        const plan = await this.plan(db, pif, network);
        for (const [name, force] of plan.cleanup) await this.networkd.destroyBridge(name, force);
        await this.networkd.makeBridges(plan.bridges);
        await this.networkd.makeInterfaces(plan.interfaces);
        await this.networkd.makeInterfaces([[network.bridge, this.ipConfig(pif, network)]]);
      });
      if (!pif.currently_attached || management) {
        await db.update('PIF', ref, { currently_attached: true });
        if (pif.bond_slave_of !== NULL_REF) {
          const bond = await db.tryGet('Bond', pif.bond_slave_of);
          if (bond) await db.update('PIF', bond.master, { currently_attached: false });
        }
        await this.dom0NetworkingChange(db, pif.host);
      }
      if (pif.VLAN === -1) {
        const pool = (await db.all('pool'))[0]?.[1];
        const status = pool?.igmp_snooping_enabled ? 'enabled' : 'disabled';
        if (pif.igmp_snooping_status !== status) await db.update('PIF', ref, { igmp_snooping_status: status });
      }
    });
  }

  /** The bridge's interface configuration from the PIF's IP settings. */
  private ipConfig(pif: Row<'PIF'>, network: Row<'network'>): InterfaceConfig {
    const ipv4: Ipv4Config =
      pif.ip_configuration_mode === 'Static'
        ? { mode: 'static', address: pif.IP, netmask: pif.netmask, ...(pif.gateway ? { gateway: pif.gateway } : {}) }
        : pif.ip_configuration_mode === 'DHCP'
          ? { mode: 'dhcp' }
          : { mode: 'none' };
    const ipv6: Ipv6Config =
      pif.ipv6_configuration_mode === 'Static'
        ? { mode: 'static', addresses: pif.IPv6.filter((a) => a !== ''), ...(pif.ipv6_gateway ? { gateway: pif.ipv6_gateway } : {}) }
        : pif.ipv6_configuration_mode === 'DHCP'
          ? { mode: 'dhcp' }
          : pif.ipv6_configuration_mode === 'Autoconf'
            ? { mode: 'autoconf' }
            : { mode: 'none' };
    const static_ =
      pif.primary_address_type === 'IPv4'
        ? pif.ip_configuration_mode === 'Static'
        : pif.ipv6_configuration_mode === 'Static' || pif.ipv6_configuration_mode === 'Autoconf';
    const domains = pif.other_config.domain ? pif.other_config.domain.split(',') : [];
    const dns = static_ ? { servers: pif.DNS === '' ? [] : pif.DNS.split(','), domains } : undefined;
    return { ipv4, ipv6, mtu: mtuOf(pif, network), ...(dns ? { dns } : {}), persistent: persistent(pif) };
  }

  /** Nm.bring_pif_down: its bridges destroyed (unforced: one carrying VLANs stays), detached. */
  bringPifDown(db: Db, ref: Ref<'PIF'>): Promise<void> {
    return this.lock.run(async () => {
      const pif = await db.get('PIF', ref);
      const network = await db.get('network', pif.network);
      await this.guarded(ref, async () => {
        for (const [name, force] of await this.teardown(db, pif, network.bridge)) await this.networkd.destroyBridge(name, force);
      });
      await db.update('PIF', ref, { currently_attached: false });
    });
  }

  /**
   * update_management_flags: the host's PIF on the network whose bridge the inventory names is
   * its management PIF, no other.
   */
  async updateManagementFlags(db: Db, host: string): Promise<void> {
    const bridge = await this.managementBridge();
    const [net] = bridge === '' ? [] : await db.find('network', { bridge });
    const should = net ? (await db.find('PIF', { host, network: net[0] })).map(([r]) => r) : [];
    const are = (await db.find('PIF', { host, management: true })).map(([r]) => r);
    for (const r of should) if (!are.includes(r)) await db.update('PIF', r, { management: true });
    for (const r of are) if (!should.includes(r)) await db.update('PIF', r, { management: false });
  }

  /**
   * on_dom0_networking_change: the host's address follows its management PIF's (a simulated
   * host's sockets stay where `--address` put them: give the PIF that address to stay reachable).
   */
  async dom0NetworkingChange(db: Db, host: string): Promise<void> {
    const [mgmt] = await db.find('PIF', { host, management: true });
    if (!mgmt) return;
    const p = mgmt[1];
    const ip = p.primary_address_type === 'IPv6' ? (p.IPv6[0] ?? '').split('/')[0]! : p.IP;
    if (ip === '') return;
    const row = await db.get('host', host);
    if (row.address !== ip) await db.update('host', host, { address: ip });
  }
}
