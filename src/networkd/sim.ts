// The simulated network daemon: the machine's NICs come from the host's settings (--sim-nics);
// bridges, ports, bonds, VLAN devices and interface configurations are kept in
// `<state-dir>/networkd/state.json`, written atomically after each change, so they outlive a
// restart of the host's process as a real host's kernel state outlives xapi's. Nothing carries
// traffic: the model is what a test asks about (which bridge exists, what is plugged where).
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/files.js';
import { Mutex } from '../util/mutex.js';
import {
  type BridgeConfig,
  type BridgeState,
  type InterfaceConfig,
  type InterfaceState,
  type NetworkDaemon,
  NetworkdError,
  type NicInfo,
} from './interface.js';

/** A simulated NIC as the host's settings describe it. */
export interface SimNic {
  device: string;
  mac: string;
  mtu: number;
  speedMbit: number;
  carrier: boolean;
}

interface SimState {
  bridges: Record<string, BridgeConfig>;
  interfaces: Record<string, InterfaceConfig>;
}

const STATE_DIR = 'networkd';
const STATE_FILE = 'state.json';

/** Netmask "255.255.255.0" as a prefix length (24); a malformed one counts its leading ones. */
function prefixOf(netmask: string): number {
  let bits = 0;
  for (const part of netmask.split('.')) {
    let n = Number(part);
    for (let i = 0; i < 8 && n & 0x80; i++, n = (n << 1) & 0xff) bits++;
  }
  return bits;
}

export class SimulatedNetworkd implements NetworkDaemon {
  private readonly lock = new Mutex();
  private state: SimState = { bridges: {}, interfaces: {} };

  private constructor(
    private readonly nics: SimNic[],
    /** Where the state is kept; undefined: in memory only. */
    private readonly dir: string | undefined,
  ) {}

  /** A daemon keeping its state in memory only (tools and unit tests). */
  static memory(nics: SimNic[]): SimulatedNetworkd {
    return new SimulatedNetworkd(nics, undefined);
  }

  /** The daemon of a host whose state directory is `stateDir`, with what it kept there before. */
  static async open(nics: SimNic[], stateDir: string | undefined): Promise<SimulatedNetworkd> {
    const d = new SimulatedNetworkd(nics, stateDir === undefined ? undefined : join(stateDir, STATE_DIR));
    if (d.dir) {
      const text = await readFile(join(d.dir, STATE_FILE), 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      });
      if (text !== undefined) d.state = JSON.parse(text) as SimState;
    }
    return d;
  }

  private async save(): Promise<void> {
    if (!this.dir) return;
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(join(this.dir, STATE_FILE), JSON.stringify(this.state));
  }

  /** Changes the state and saves it, one change at a time. */
  private change(fn: (s: SimState) => void): Promise<void> {
    return this.lock.run(async () => {
      // Applied to a copy: a refused change leaves nothing half done.
      const next = structuredClone(this.state);
      fn(next);
      this.state = next;
      await this.save();
    });
  }

  async physicalDevices(): Promise<NicInfo[]> {
    return this.nics.map((n) => {
      const m = /^eth(\d+)$/.exec(n.device);
      return {
        device: n.device,
        mac: n.mac,
        mtu: n.mtu,
        carrier: n.carrier,
        speedMbit: n.carrier ? n.speedMbit : 0,
        duplex: n.carrier,
        vendorName: 'Simulated',
        deviceName: 'Simulated Ethernet',
        vendorId: '5853',
        deviceId: '0001',
        pciBusPath: `0000:00:${(4 + this.nics.indexOf(n)).toString(16).padStart(2, '0')}.0`,
        position: m ? Number(m[1]) : undefined,
      };
    });
  }

  /** The devices of the machine now: NICs, bridges, bonds and VLAN devices. */
  private devices(s: SimState): Set<string> {
    const names = new Set(this.nics.map((n) => n.device));
    for (const [name, b] of Object.entries(s.bridges)) {
      names.add(name);
      for (const port of Object.keys(b.ports)) names.add(port);
    }
    return names;
  }

  async exists(name: string): Promise<boolean> {
    return this.devices(this.state).has(name);
  }

  async bridges(): Promise<string[]> {
    return Object.keys(this.state.bridges);
  }

  async bridge(name: string): Promise<BridgeState | undefined> {
    const b = this.state.bridges[name];
    return b && { name, ...structuredClone(b) };
  }

  /** VLAN devices are ports named `<device>.<tag>` of VLAN bridges. */
  async hasVlan(device: string, tag: number): Promise<boolean> {
    return Object.values(this.state.bridges).some((b) => `${device}.${tag}` in b.ports);
  }

  /** The device a bridge's VLANs are made on: its one port (a NIC or a bond). */
  private static lowerDevice(s: SimState, bridge: string): string {
    const parent = s.bridges[bridge];
    if (!parent) throw new NetworkdError('not-found', `no bridge ${bridge}`, [bridge]);
    const [port] = Object.keys(parent.ports);
    if (port === undefined) throw new NetworkdError('invalid', `bridge ${bridge} has no port to carry a VLAN`, [bridge]);
    return port;
  }

  makeBridges(configs: [string, BridgeConfig][]): Promise<void> {
    return this.change((s) => {
      // networkd makes plain bridges before the VLAN bridges that ride on them.
      const ordered = [...configs.filter(([, c]) => !c.vlan), ...configs.filter(([, c]) => c.vlan)];
      for (const [name, given] of ordered) {
        const config = structuredClone(given);
        if (config.vlan) {
          const lower = SimulatedNetworkd.lowerDevice(s, config.vlan.parent);
          const device = `${lower}.${config.vlan.tag}`;
          const holder = Object.entries(s.bridges).find(([other, b]) => other !== name && device in b.ports);
          if (holder) throw new NetworkdError('vlan-in-use', `${device} is a port of ${holder[0]}`, [lower, String(config.vlan.tag)]);
          config.ports = { [device]: { interfaces: [device] } };
        }
        const known = this.devices(s);
        for (const port of Object.values(config.ports)) {
          for (const dev of port.interfaces) {
            if (!known.has(dev) && !(config.vlan && dev.endsWith(`.${config.vlan.tag}`))) {
              throw new NetworkdError('not-found', `no device ${dev}`, [dev]);
            }
          }
        }
        // A device is a port of one bridge at a time: it leaves any other (xapi destroys those first).
        const taken = new Set(Object.values(config.ports).flatMap((p) => p.interfaces));
        for (const [other, b] of Object.entries(s.bridges)) {
          if (other === name) continue;
          for (const [port, p] of Object.entries(b.ports)) if (p.interfaces.some((i) => taken.has(i))) delete b.ports[port];
        }
        s.bridges[name] = config;
      }
    });
  }

  makeInterfaces(configs: [string, InterfaceConfig][]): Promise<void> {
    return this.change((s) => {
      const known = this.devices(s);
      for (const [name, config] of configs) {
        if (!known.has(name)) throw new NetworkdError('not-found', `no interface ${name}`, [name]);
        s.interfaces[name] = structuredClone(config);
      }
    });
  }

  async interfaceState(name: string): Promise<InterfaceState | undefined> {
    const config = this.state.interfaces[name];
    if (!config) return undefined;
    const ipv4 = config.ipv4.mode === 'static' ? [`${config.ipv4.address}/${prefixOf(config.ipv4.netmask)}`] : [];
    const ipv6 = config.ipv6.mode === 'static' ? [...config.ipv6.addresses] : [];
    return { name, config: structuredClone(config), ipv4, ipv6 };
  }

  destroyBridge(name: string, force: boolean): Promise<void> {
    return this.change((s) => {
      const bridge = s.bridges[name];
      if (!bridge) return;
      const lower = Object.keys(bridge.ports)[0];
      const vlansOnTop = lower !== undefined && Object.entries(s.bridges).some(([n, b]) => n !== name && b.vlan?.parent === name);
      if (vlansOnTop && !force) return;
      // Forced: the VLAN bridges on top lose their device (as the kernel removes it with its parent).
      if (vlansOnTop) for (const b of Object.values(s.bridges)) if (b.vlan?.parent === name) b.ports = {};
      delete s.bridges[name];
      delete s.interfaces[name];
    });
  }

  resetState(): Promise<void> {
    return this.change((s) => {
      s.bridges = {};
      s.interfaces = {};
    });
  }

  async close(): Promise<void> {
    await this.lock.run(async () => undefined);
  }

  /** The state directory's networkd folder goes (the host forgets its network set-up). */
  static async forget(stateDir: string): Promise<void> {
    await rm(join(stateDir, STATE_DIR), { recursive: true, force: true });
  }
}
