// The PIF messages (xapi_pif.ml; network.md §3): plug, unplug, reconfigure_ip(v6),
// set_primary_address_type, scan, introduce, forget, the deprecated create_VLAN and destroy, and
// the database-only db_introduce, pool_introduce and db_forget. Each check is xapi's, in its
// order; the work runs on the PIF's host (message_forwarding.ml), which asks its networkd.
import { isIP } from 'node:net';
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { Messages, Ref } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import { newRef } from '../api/implicit.js';
import type { Rpc } from '../rpc/rpc.js';
import { isForwardedHere, runOn } from './forward.js';
import { type Nm, pifKind } from './nm.js';
import { introduceInternal, makeMetrics, scan } from './pif-scan.js';
import { Mutex } from '../util/mutex.js';

/** The work of a call on `host` (do_op_on): here, or forwarded there; a forwarded call runs here. */
export async function onHost<T>(call: Call, host: string, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T> {
  if (isForwardedHere(call)) return local();
  return (await runOn(call, host, wire, args, local)) as T;
}

/** assert_pif_is_managed */
export function assertManaged(ref: string, pif: Row<'PIF'>): void {
  if (!pif.managed) throw new XapiError('PIF_UNMANAGED', [ref]);
}

/** assert_no_protection_enabled: an attached PIF is not reconfigured under HA or the redo log. */
export async function assertNoProtection(db: Db, pif: Row<'PIF'>): Promise<void> {
  if (!pif.currently_attached) return;
  const pool = (await db.all('pool'))[0]?.[1];
  if (pool?.ha_enabled) throw new XapiError('HA_IS_ENABLED', []);
  if (pool?.redo_log_enabled) throw new XapiError('REDO_LOG_IS_ENABLED', []);
}

/** assert_no_clustering_enabled_on: an enabled Cluster_host on the PIF. */
async function assertNoClustering(db: Db, ref: string): Promise<void> {
  for (const [ch, row] of await db.find('Cluster_host', { PIF: ref })) {
    if (row.enabled) throw new XapiError('CLUSTERING_ENABLED', [ch]);
  }
}

/** assert_network_has_no_vifs_in_use_on_me: a VIF of a live VM here, or being attached here. */
export async function assertNoVifsInUse(db: Db, host: string, network: string): Promise<void> {
  const net = await db.get('network', network);
  for (const vif of net.VIFs) {
    const row = await db.tryGet('VIF', vif);
    if (!row) continue;
    const vm = await db.tryGet('VM', row.VM);
    if (!vm) continue;
    if (Object.values(row.current_operations).includes('attach') && (vm.resident_on === host || vm.scheduled_to_be_resident_on === host)) {
      throw new XapiError('VIF_IN_USE', [network, vif]);
    }
    if (row.currently_attached && vm.resident_on === host && (vm.power_state === 'Running' || vm.power_state === 'Paused')) {
      throw new XapiError('VIF_IN_USE', [network, vif]);
    }
  }
}

/** Comma-separated addresses of one family (restrict_to). */
function restrictTo(family: 4 | 6, dns: string): string[] {
  return dns.split(',').filter((a) => a !== '' && isIP(a) === family);
}

/** Helpers.assert_is_valid_ip */
function assertIp(family: 4 | 6, field: string, address: string): void {
  if (isIP(address) !== family) throw new XapiError('INVALID_IP_ADDRESS_SPECIFIED', [field]);
}

/** An IPv6 address with a prefix length (assert_is_valid_cidr). */
function validCidr6(cidr: string): boolean {
  const m = /^(.+)\/(\d{1,3})$/.exec(cidr);
  return m !== null && isIP(m[1]!) === 6 && Number(m[2]) <= 128;
}

/** Helpers.is_valid_MAC: six pairs of hex digits, colon-separated. */
export function validMac(mac: string): boolean {
  return /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac);
}

export class PifService {
  /** xapi's scan mutex: two scans of one host never introduce the same device twice. */
  private readonly scanLock = new Mutex();

  constructor(readonly nm: Nm) {}

  /** PIF.plug, on the PIF's host. */
  async plug(call: Call, ref: Ref<'PIF'>): Promise<void> {
    const db = call.db;
    const pif = await db.get('PIF', ref);
    assertManaged(ref, pif);
    const k = pifKind(pif);
    if (k.kind === 'tunnel-access') {
      const tunnel = await db.get('tunnel', k.tunnel);
      const transport = await db.get('PIF', tunnel.transport_PIF);
      if (transport.ip_configuration_mode === 'None') throw new XapiError('TRANSPORT_PIF_NOT_CONFIGURED', [tunnel.transport_PIF]);
      await this.plug(call, tunnel.transport_PIF);
    } else if (k.kind === 'physical' && pif.bond_slave_of !== NULL_REF) {
      if (pif.sriov_physical_PIF_of.length === 0) throw new XapiError('CANNOT_PLUG_BOND_SLAVE', [ref]);
      await this.plug(call, (await db.get('Bond', pif.bond_slave_of)).master);
    }
    if (pif.bond_slave_of === NULL_REF) await this.nm.bringPifUp(db, ref, false);
  }

  /** PIF.unplug, on the PIF's host. */
  async unplug(call: Call, ref: Ref<'PIF'>): Promise<void> {
    const db = call.db;
    const pif = await db.get('PIF', ref);
    assertManaged(ref, pif);
    await assertNoProtection(db, pif);
    if (pif.management) throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [ref]);
    await assertNoVifsInUse(db, call.host.hostRef, pif.network);
    if (pif.disallow_unplug) throw new XapiError('PIF_DOES_NOT_ALLOW_UNPLUG', [ref]);
    // (xapi's FCoE check needs an FCoE driver, which no simulated NIC has.)
    for (const tunnel of pif.tunnel_transport_PIF_of) {
      const t = await db.tryGet('tunnel', tunnel);
      if (t) await this.unplug(call, t.access_PIF);
    }
    // A bond member goes down with its bond, not on its own.
    if (pif.bond_slave_of === NULL_REF) await this.nm.bringPifDown(db, ref);
  }

  /** PIF.reconfigure_ip, on the PIF's host. */
  async reconfigureIp(
    call: Call,
    ref: Ref<'PIF'>,
    mode: Row<'PIF'>['ip_configuration_mode'],
    ip: string,
    netmask: string,
    gateway: string,
    dns: string,
  ): Promise<void> {
    const db = call.db;
    const pif = await db.get('PIF', ref);
    assertManaged(ref, pif);
    const dnsOnly =
      mode === 'Static' && pif.ip_configuration_mode === mode && pif.IP === ip && pif.netmask === netmask && pif.gateway === gateway;
    if (!dnsOnly) {
      await assertNoProtection(db, pif);
      await assertNoClustering(db, ref);
    }
    if (mode === 'Static') {
      assertIp(4, 'IP', ip);
      assertIp(4, 'netmask', netmask);
    }
    for (const [field, value] of [
      ['IP', ip],
      ['netmask', netmask],
      ['gateway', gateway],
    ] as const) {
      if (value !== '') assertIp(4, field, value);
    }
    if (pif.management && mode === 'None' && pif.primary_address_type === 'IPv4') throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [ref]);
    const DNS = [...restrictTo(4, dns), ...restrictTo(6, pif.DNS)].join(',');
    await db.update('PIF', ref, { ip_configuration_mode: mode, IP: ip, netmask, gateway, DNS });
    await this.reapply(db, ref, pif);
  }

  /** PIF.reconfigure_ipv6, on the PIF's host. */
  async reconfigureIpv6(
    call: Call,
    ref: Ref<'PIF'>,
    mode: Row<'PIF'>['ipv6_configuration_mode'],
    ipv6: string,
    gateway: string,
    dns: string,
  ): Promise<void> {
    const db = call.db;
    const pif = await db.get('PIF', ref);
    assertManaged(ref, pif);
    const unchanged =
      mode === 'Static' &&
      pif.ipv6_configuration_mode === mode &&
      pif.IPv6.length === 1 &&
      pif.IPv6[0] === ipv6 &&
      pif.ipv6_gateway === gateway;
    if (!unchanged) {
      await assertNoProtection(db, pif);
      await assertNoClustering(db, ref);
    }
    if (gateway !== '') assertIp(6, 'gateway', gateway);
    if (ipv6 !== '' && !validCidr6(ipv6)) throw new XapiError('INVALID_CIDR_ADDRESS_SPECIFIED', ['IPv6']);
    if (pif.management && mode === 'None' && pif.primary_address_type === 'IPv6') throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [ref]);
    const DNS = [...restrictTo(6, dns), ...restrictTo(4, pif.DNS)].join(',');
    await db.update('PIF', ref, { ipv6_configuration_mode: mode, ipv6_gateway: gateway, IPv6: [ipv6], DNS });
    await this.reapply(db, ref, pif);
  }

  /** An attached PIF whose IP configuration changed is brought up again (as management if it is). */
  private async reapply(db: Db, ref: Ref<'PIF'>, before: Row<'PIF'>): Promise<void> {
    if (!before.currently_attached) return;
    await db.update('PIF', ref, { currently_attached: false });
    await this.nm.bringPifUp(db, ref, before.management);
  }

  /** PIF.set_primary_address_type, on the PIF's host. */
  async setPrimaryAddressType(call: Call, ref: Ref<'PIF'>, type: Row<'PIF'>['primary_address_type']): Promise<void> {
    const pif = await call.db.get('PIF', ref);
    await assertNoProtection(call.db, pif);
    if (pif.management) throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [ref]);
    await call.db.update('PIF', ref, { primary_address_type: type });
  }

  /** PIF.scan, on `host`. */
  scan(call: Call, host: Ref<'host'>): Promise<void> {
    return this.scanLock.run(() => scan(call.db, this.nm, host));
  }

  /** PIF.introduce, on `host`. */
  introduce(call: Call, host: Ref<'host'>, givenMac: string, device: string, managed: boolean): Promise<Ref<'PIF'>> {
    return this.scanLock.run(async () => {
      const db = call.db;
      const nics = await this.nm.networkd.physicalDevices();
      const nic = nics.find((n) => n.device === device);
      const mac = givenMac === '' ? (nic?.mac ?? '') : givenMac.toLowerCase();
      if (!validMac(mac)) throw new XapiError('MAC_INVALID', [mac]);
      if ((await db.find('PIF', { host, physical: true })).some(([, p]) => p.device === device)) {
        throw new XapiError('DUPLICATE_PIF_DEVICE_NAME', [device]);
      }
      if (!nic || nic.mac !== mac)
        throw new XapiError('COULD_NOT_FIND_NETWORK_INTERFACE_WITH_SPECIFIED_DEVICE_NAME_AND_MAC_ADDRESS', [device, mac]);
      return introduceInternal(db, this.nm, host, nic, managed);
    });
  }

  /** PIF.forget, on the PIF's host. */
  async forget(call: Call, ref: Ref<'PIF'>): Promise<void> {
    const db = call.db;
    const pif = await db.get('PIF', ref);
    if (pif.management) throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [ref]);
    if ((pif.bond_slave_of !== NULL_REF && (await db.tryGet('Bond', pif.bond_slave_of))) || pif.bond_master_of.length > 0) {
      throw new XapiError('PIF_ALREADY_BONDED', [ref]);
    }
    if (pif.VLAN_slave_of.length > 0) throw new XapiError('PIF_VLAN_STILL_EXISTS', [ref]);
    if (pif.VLAN !== -1) throw new XapiError('PIF_VLAN_STILL_EXISTS', [ref]);
    if (pif.tunnel_transport_PIF_of.length > 0 || pif.tunnel_access_PIF_of.length > 0)
      throw new XapiError('PIF_TUNNEL_STILL_EXISTS', [ref]);
    if (call.host.role.kind === 'slave' && pif.currently_attached && pif.management)
      throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [ref]);
    await assertNoProtection(db, pif);
    if (pif.sriov_logical_PIF_of.length > 0) throw new XapiError('CANNOT_FORGET_SRIOV_LOGICAL', [ref]);
    if (pif.sriov_physical_PIF_of.length > 0) throw new XapiError('PIF_SRIOV_STILL_EXISTS', [ref]);
    await forgetInternal(db, this.nm, ref);
  }

  /** PIF.db_introduce / pool_introduce: a row, nothing brought up. */
  async dbIntroduce(call: Call, a: Messages['PIF.db_introduce']['params']): Promise<Ref<'PIF'>> {
    const [device, network, host, MAC, MTU, VLAN, physical, ip_configuration_mode, IP, netmask, gateway, DNS] = a;
    const [, vlanMasterOf, management, other_config, disallow_unplug, ipv6_configuration_mode, IPv6, ipv6_gateway] = a.slice(12) as [
      unknown,
      Ref<'VLAN'>,
      boolean,
      Record<string, string>,
      boolean,
      Row<'PIF'>['ipv6_configuration_mode'],
      string[],
      string,
    ];
    const [primary_address_type, managed, properties] = a.slice(20) as [
      Row<'PIF'>['primary_address_type'],
      boolean,
      Record<string, string>,
    ];
    // (xapi refuses a VLAN PIF on a network whose VIFs carry trunks: VIFs of this datamodel have none.)
    const metrics = await makeMetrics(call.db);
    const ref = newRef() as Ref<'PIF'>;
    await call.db.create('PIF', ref, {
      uuid: randomUUID(),
      device,
      network,
      host,
      MAC,
      MTU,
      VLAN,
      metrics,
      physical,
      currently_attached: false,
      igmp_snooping_status: 'unknown',
      ip_configuration_mode,
      IP,
      netmask,
      gateway,
      DNS,
      VLAN_master_of: vlanMasterOf,
      management,
      other_config,
      disallow_unplug,
      ipv6_configuration_mode,
      IPv6,
      ipv6_gateway,
      primary_address_type,
      managed,
      properties,
      capabilities: [],
    });
    return ref;
  }
}

/** forget_internal: brought down if managed, then the metrics and the row go. */
export async function forgetInternal(db: Db, nm: Nm, ref: Ref<'PIF'>): Promise<void> {
  await assertNoClustering(db, ref);
  const pif = await db.get('PIF', ref);
  if (pif.managed) await nm.bringPifDown(db, ref);
  if (pif.metrics !== NULL_REF) await db.destroy('PIF_metrics', pif.metrics).catch(() => undefined);
  await db.destroy('PIF', ref);
}

export function register(
  r: Registry,
  svc: PifService,
  vlans: { destroyPif(call: Call, pif: Ref<'PIF'>): Promise<void>; createFromDevice: PifCreateVlan },
): void {
  const onPifHost = async <T>(call: Call, ref: Ref<'PIF'>, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T> =>
    onHost(call, (await call.db.get('PIF', ref)).host, wire, args, local);
  r.implement('PIF.plug', (call, [self]) => onPifHost(call, self, 'PIF.plug', [self], () => svc.plug(call, self)))
    .implement('PIF.unplug', (call, [self]) => onPifHost(call, self, 'PIF.unplug', [self], () => svc.unplug(call, self)))
    .implement('PIF.reconfigure_ip', (call, [self, mode, ip, netmask, gateway, dns]) =>
      onPifHost(call, self, 'PIF.reconfigure_ip', [self, mode, ip, netmask, gateway, dns], () =>
        svc.reconfigureIp(call, self, mode, ip, netmask, gateway, dns),
      ),
    )
    .implement('PIF.reconfigure_ipv6', (call, [self, mode, ipv6, gateway, dns]) =>
      onPifHost(call, self, 'PIF.reconfigure_ipv6', [self, mode, ipv6, gateway, dns], () =>
        svc.reconfigureIpv6(call, self, mode, ipv6, gateway, dns),
      ),
    )
    .implement('PIF.set_primary_address_type', (call, [self, type]) =>
      onPifHost(call, self, 'PIF.set_primary_address_type', [self, type], () => svc.setPrimaryAddressType(call, self, type)),
    )
    .implement('PIF.scan', (call, [host]) => onHost(call, host, 'PIF.scan', [host], () => svc.scan(call, host)))
    .implement('PIF.introduce', (call, [host, mac, device, managed]) =>
      onHost(call, host, 'PIF.introduce', [host, mac, device, managed], () => svc.introduce(call, host, mac, device, managed)),
    )
    .implement('PIF.forget', (call, [self]) => onPifHost(call, self, 'PIF.forget', [self], () => svc.forget(call, self)))
    .implement('PIF.destroy', (call, [self]) => onPifHost(call, self, 'PIF.destroy', [self], () => vlans.destroyPif(call, self)))
    .implement('PIF.create_VLAN', (call, [device, network, host, tag]) =>
      onHost(call, host, 'PIF.create_VLAN', [device, network, host, tag], () => vlans.createFromDevice(call, device, network, host, tag)),
    )
    .implement('PIF.db_introduce', (call, args) => svc.dbIntroduce(call, args))
    .implement('PIF.pool_introduce', (call, args) => svc.dbIntroduce(call, args))
    .implement('PIF.db_forget', async (call, [self]) => {
      await call.db.destroy('PIF', self);
    });
}

/** PIF.create_VLAN's work: the device's untagged PIF on `host` carries the new VLAN. */
export type PifCreateVlan = (call: Call, device: string, network: Ref<'network'>, host: Ref<'host'>, tag: number) => Promise<Ref<'PIF'>>;
