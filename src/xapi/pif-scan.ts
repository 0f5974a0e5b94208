// A host's PIFs from what its network daemon reports (xapi_pif.ml scan, introduce_internal,
// refresh_all), and what every start does with them (xapi.ml, dbsync_slave.ml, network-init on
// first boot): network.md §2.
import { randomUUID } from 'node:crypto';
import type { Db } from '../db/interface.js';
import type { Ref } from '../schema/generated.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { newRef } from '../api/implicit.js';
import type { NicInfo } from '../networkd/interface.js';
import type { Nm } from './nm.js';

/** Default PIF properties of physical PIFs and bond masters (xapi_pif.ml default_properties). */
export const DEFAULT_PROPERTIES = { gro: 'on' };

/** bridge_naming_convention: xenbr<position>, else br<device>. */
export function bridgeFor(nic: NicInfo): string {
  return nic.position !== undefined ? `xenbr${nic.position}` : `br${nic.device}`;
}

/**
 * The name a NIC's new network gets. xapi's choose_network_name_for_pif names it "Pool-wide
 * network <position>" when networkd knows positions, as at this commit it always does for ethN;
 * the hosts XCP-ng ships (and every client and test of ours) know them as "Pool-wide network
 * associated with <device>", which is what we keep.
 */
export function networkNameFor(nic: NicInfo): string {
  return `Pool-wide network associated with ${nic.device}`;
}

/** PIF_metrics as the monitor fills them from the device (monitor_master.ml). */
async function writeMetrics(db: Db, ref: Ref<'PIF_metrics'>, nic: NicInfo | undefined): Promise<void> {
  await db.update('PIF_metrics', ref, {
    carrier: nic?.carrier ?? false,
    speed: nic?.speedMbit ?? 0,
    duplex: nic?.duplex ?? false,
    vendor_name: nic?.vendorName ?? '',
    device_name: nic?.deviceName ?? '',
    vendor_id: nic?.vendorId ?? '',
    device_id: nic?.deviceId ?? '',
    pci_bus_path: nic?.pciBusPath ?? '',
    last_updated: formatDateTime(new Date()),
  });
}

/** A PIF's metrics record, empty until networkd's readings fill it. */
export async function makeMetrics(db: Db): Promise<Ref<'PIF_metrics'>> {
  const ref = newRef() as Ref<'PIF_metrics'>;
  await db.create('PIF_metrics', ref, {
    uuid: randomUUID(),
    carrier: false,
    vendor_name: '',
    device_name: '',
    vendor_id: '',
    device_id: '',
    speed: 0,
    duplex: false,
    pci_bus_path: '',
    io_read_kbs: 0,
    io_write_kbs: 0,
    other_config: {},
  });
  return ref;
}

/**
 * introduce_internal: a PIF for a physical device, on the network with its bridge (made if
 * none), unattached with no IP; the management PIF if its bridge is the inventory's.
 */
export async function introduceInternal(db: Db, nm: Nm, host: string, nic: NicInfo, managed: boolean): Promise<Ref<'PIF'>> {
  const bridge = managed ? bridgeFor(nic) : '';
  const found = await db.find('network', { bridge });
  let network: string;
  if (found.length === 1) network = found[0]![0];
  else {
    network = newRef();
    await db.create('network', network, {
      uuid: randomUUID(),
      name_label: networkNameFor(nic),
      name_description: '',
      MTU: 1500,
      bridge,
      managed,
      other_config: {},
    });
  }
  const metrics = await makeMetrics(db);
  await writeMetrics(db, metrics, nic);
  const ref = newRef() as Ref<'PIF'>;
  await db.create('PIF', ref, {
    uuid: randomUUID(),
    device: nic.device,
    network,
    host,
    MAC: nic.mac,
    MTU: nic.mtu,
    VLAN: -1,
    metrics,
    physical: true,
    currently_attached: false,
    igmp_snooping_status: 'unknown',
    ip_configuration_mode: 'None',
    IP: '',
    netmask: '',
    gateway: '',
    DNS: '',
    management: false,
    other_config: {},
    disallow_unplug: false,
    ipv6_configuration_mode: 'None',
    IPv6: [],
    ipv6_gateway: '',
    primary_address_type: await nm.managementAddressType(),
    managed,
    properties: { ...DEFAULT_PROPERTIES },
    capabilities: [],
  });
  if (bridge !== '' && bridge === (await nm.managementBridge())) {
    await db.update('PIF', ref, { management: true, currently_attached: true });
  }
  return ref;
}

/** refresh_all: MAC and MTU of this host's physical PIFs re-read from networkd; metrics too. */
export async function refreshAll(db: Db, nm: Nm, host: string): Promise<void> {
  const nics = new Map((await nm.networkd.physicalDevices()).map((n) => [n.device, n]));
  for (const [ref, pif] of await db.find('PIF', { host })) {
    const nic = nics.get(pif.device);
    if (pif.physical && nic && nic.mac !== pif.MAC) await db.update('PIF', ref, { MAC: nic.mac });
    if (pif.physical && pif.metrics !== NULL_REF && (await db.tryGet('PIF_metrics', pif.metrics))) await writeMetrics(db, pif.metrics, nic);
  }
}

/** PIF.scan: a PIF for each physical device that has none on this host yet, then the management flags. */
export async function scan(db: Db, nm: Nm, host: string): Promise<void> {
  await refreshAll(db, nm, host);
  const known = new Set((await db.find('PIF', { host, physical: true })).map(([, p]) => p.device));
  for (const nic of await nm.networkd.physicalDevices()) {
    if (!known.has(nic.device)) await introduceInternal(db, nm, host, nic, true);
  }
  await nm.updateManagementFlags(db, host);
}

/**
 * A host's first start (scripts/network-init): its NICs scanned into PIFs, the first one given
 * the host's address and made the management interface, on which the host is reached.
 */
export async function firstStartNetworking(db: Db, nm: Nm, host: string, address: string): Promise<void> {
  const [first] = await nm.networkd.physicalDevices();
  await nm.setManagement(first ? bridgeFor(first) : '', 'IPv4');
  await scan(db, nm, host);
  const [mgmt] = await db.find('PIF', { host, management: true });
  if (mgmt) await db.update('PIF', mgmt[0], { ip_configuration_mode: 'Static', IP: address, netmask: '255.0.0.0', gateway: '', DNS: '' });
}

/** xapi's calculate_pifs_required_at_start_of_day: what every start brings up. */
async function pifsRequiredAtStart(db: Db, host: string): Promise<Ref<'PIF'>[]> {
  const pifs = [];
  for (const [ref, p] of await db.find('PIF', { host })) {
    const wanted =
      p.managed &&
      p.bond_slave_of === NULL_REF &&
      (p.bond_master_of.length > 0 || p.physical || p.ip_configuration_mode !== 'None' || p.ipv6_configuration_mode !== 'None');
    if (wanted || p.sriov_logical_PIF_of.length > 0) pifs.push(ref);
  }
  return pifs;
}

/** create_networks: the host-internal management network exists. */
async function ensureHimn(db: Db): Promise<void> {
  const himn = (await db.all('network')).some(([, n]) => n.other_config.is_host_internal_management_network === 'true');
  if (himn) return;
  await db.create('network', newRef(), {
    uuid: randomUUID(),
    name_label: 'Host internal management network',
    name_description: 'Network on which guests will be assigned a private link-local IP address which can be used to talk XenAPI',
    bridge: 'xenapi',
    MTU: 1500,
    managed: true,
    other_config: {
      is_guest_installer_network: 'true',
      is_host_internal_management_network: 'true',
      ip_begin: '169.254.0.1',
      ip_end: '169.254.255.254',
      netmask: '255.255.0.0',
    },
  });
}

/**
 * Every start: currently_attached from the bridges networkd has, the management flags, the
 * devices re-read, the host-internal management network, then the PIFs a host needs brought up
 * (best effort: a PIF that fails is logged and left down).
 */
export async function startNetworking(db: Db, nm: Nm, host: string, warn: (err: unknown, pif: string) => void): Promise<void> {
  if (!(await nm.managementKnown())) {
    // A state directory from before the inventory named it: the database's management PIF says.
    const [mgmt] = await db.find('PIF', { host, management: true });
    const net = mgmt && (await db.tryGet('network', mgmt[1].network));
    await nm.setManagement(net?.bridge ?? '', 'IPv4');
  }
  const bridges = new Set(await nm.networkd.bridges());
  for (const [ref, p] of await db.find('PIF', { host })) {
    const net = await db.tryGet('network', p.network);
    const attached = net !== undefined && bridges.has(net.bridge);
    if (p.currently_attached !== attached) await db.update('PIF', ref, { currently_attached: attached });
  }
  await nm.updateManagementFlags(db, host);
  await refreshAll(db, nm, host);
  await ensureHimn(db);
  const management = await nm.managementBridge();
  for (const ref of await pifsRequiredAtStart(db, host)) {
    try {
      const p = await db.get('PIF', ref);
      const net = await db.get('network', p.network);
      await nm.bringPifUp(db, ref, net.bridge === management && management !== '');
    } catch (e) {
      warn(e, ref);
    }
  }
}
