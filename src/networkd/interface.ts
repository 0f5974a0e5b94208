// The host's network daemon, in the spirit of xcp-networkd: it owns the host's bridges, their
// ports (a device, or a bond of devices), VLAN devices and the IP configuration of each
// interface. xapi tells it declaratively what a PIF needs (make_config, destroy) and asks it what
// the machine has (devices, their MAC, carrier, speed; which bridges exist). A backend implements
// NetworkDaemon: the simulator (sim.ts) keeps the state in a file; a backend on Linux network
// namespaces (veth pairs, bridges, VLAN devices) can take its place. Knows no database.

/** A physical NIC as the daemon reads it off the machine (Interface.get_all and friends). */
export interface NicInfo {
  device: string;
  mac: string;
  mtu: number;
  carrier: boolean;
  speedMbit: number;
  duplex: boolean;
  vendorName: string;
  deviceName: string;
  vendorId: string;
  deviceId: string;
  pciBusPath: string;
  /** Interface.get_interface_positions: ethN is at position N (no other order configured). */
  position?: number;
}

/** One port of a bridge: one device, or a bond of several (the port's name is then the bond's). */
export interface PortConfig {
  interfaces: string[];
  /** A bond's MAC (the bond master PIF's). */
  bondMac?: string;
  /** A bond's properties (mode, miimon, lacp-*...). */
  bondProperties?: Record<string, string>;
}

/** Bridge.make_config: what one bridge must be. */
export interface BridgeConfig {
  mac?: string;
  /** A VLAN bridge: the parent bridge and the tag; its port is the `<device>.<tag>` device. */
  vlan?: { parent: string; tag: number };
  ports: Record<string, PortConfig>;
  otherConfig: Record<string, string>;
  /** Brought back at the machine's boot (a PIF with an IP, a physical PIF, a bond master). */
  persistent: boolean;
}

export type Ipv4Config = { mode: 'none' } | { mode: 'dhcp' } | { mode: 'static'; address: string; netmask: string; gateway?: string };

export type Ipv6Config =
  | { mode: 'none' }
  | { mode: 'dhcp' }
  | { mode: 'autoconf' }
  | { mode: 'static'; addresses: string[]; gateway?: string };

/** Interface.make_config: the IP configuration and MTU of an interface (a bridge, for xapi). */
export interface InterfaceConfig {
  ipv4: Ipv4Config;
  ipv6: Ipv6Config;
  mtu: number;
  /** Static modes only: name servers and search domains. */
  dns?: { servers: string[]; domains: string[] };
  persistent: boolean;
}

/** What a bridge is now (for xapi's queries and for tests). */
export interface BridgeState extends BridgeConfig {
  name: string;
}

/** What an interface is now: its configuration and the addresses it holds. */
export interface InterfaceState {
  name: string;
  config: InterfaceConfig;
  /** IPv4 addresses with their prefix ("192.0.2.1/24"); DHCP gets none on the simulated wire. */
  ipv4: string[];
  ipv6: string[];
}

/** A request the daemon refuses (xapi turns these into VLAN_IN_USE, PIF_CONFIGURATION_ERROR). */
export class NetworkdError extends Error {
  constructor(
    readonly kind: 'vlan-in-use' | 'not-found' | 'invalid',
    message: string,
    readonly detail: string[] = [],
  ) {
    super(message);
    this.name = 'NetworkdError';
  }
}

export interface NetworkDaemon {
  /** The physical NICs, in position order. */
  physicalDevices(): Promise<NicInfo[]>;
  /** Whether a device (physical, VLAN device, bond, bridge) exists. */
  exists(name: string): Promise<boolean>;
  /** Bridge.get_all. */
  bridges(): Promise<string[]>;
  bridge(name: string): Promise<BridgeState | undefined>;
  /** Interface.has_vlan: a VLAN device with `tag` exists on `device` (a NIC or bond). */
  hasVlan(device: string, tag: number): Promise<boolean>;
  /** Bridge.make_config: each bridge made (or changed) to match its configuration, in order. */
  makeBridges(configs: [string, BridgeConfig][]): Promise<void>;
  /** Interface.make_config. */
  makeInterfaces(configs: [string, InterfaceConfig][]): Promise<void>;
  interfaceState(name: string): Promise<InterfaceState | undefined>;
  /**
   * Bridge.destroy: the bridge, its ports' devices and its interface configuration go; unforced,
   * a bridge carrying VLANs stays (networkd's rule).
   */
  destroyBridge(name: string, force: boolean): Promise<void>;
  /** reset_state (pool.eject): everything but the NICs forgotten. */
  resetState(): Promise<void>;
  close(): Promise<void>;
}
