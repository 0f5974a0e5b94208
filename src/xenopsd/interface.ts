// The domain manager, in the spirit of xenopsd: xapi pushes a VM's configuration, asks for
// operations, and learns the outcome from the backend's state and events, never by assuming an
// operation worked. A backend (the simulator; later QEMU) implements DomainManager. Ids are
// XenAPI VM uuids; devices are (vm id, device position).

export type PowerState = 'Running' | 'Halted' | 'Suspended' | 'Paused';
export type DomainType = 'hvm' | 'pv' | 'pvh' | 'pv_in_pvh';

export interface VbdConfig {
  /** The XenAPI VBD uuid. */
  id: string;
  /** Device number ("0", "1", ...), or undefined to take the next free one. */
  position?: string;
  mode: 'RO' | 'RW';
  type: 'Disk' | 'CD' | 'Floppy';
  /** Path of the disk image on this host (a VHD or ISO file), or undefined for an empty drive. */
  backend?: string;
  unpluggable: boolean;
}

export interface VifConfig {
  /** The XenAPI VIF uuid. */
  id: string;
  position: number;
  mac: string;
  mtu: number;
  /** Bridge of the network. */
  bridge: string;
}

export interface VmConfig {
  /** The XenAPI VM uuid. */
  id: string;
  name: string;
  domainType: DomainType;
  memoryStaticMax: number;
  memoryDynamicMax: number;
  memoryDynamicMin: number;
  vcpuMax: number;
  vcpus: number;
  /** Where a suspend image is written / read (a file path on this host). */
  suspendImage?: string;
  platform: Record<string, string>;
  vbds: VbdConfig[];
  vifs: VifConfig[];
}

export interface GuestAgent {
  osVersion: Record<string, string>;
  pvDriversVersion: Record<string, string>;
  /** "0/ip", "0/ipv4/0", ... -> address, as xapi's guest metrics networks map. */
  networks: Record<string, string>;
  /** control/feature-* flags and data-* keys, as VM_guest_metrics.other. */
  other: Record<string, string>;
  memory: Record<string, string>;
}

export interface VmState {
  id: string;
  powerState: PowerState;
  domid: number;
  memoryTarget: number;
  memoryActual: number;
  vcpus: number;
  domainType: DomainType;
  /** Milliseconds since the epoch of the last start (0 if never). */
  lastStartTime: number;
  /** Present once the guest agent has reported. */
  guestAgent?: GuestAgent;
  consoles: { protocol: 'rfb' | 'vt100'; port: number }[];
  /** Why the last domain went away, so xapi can apply actions_after_shutdown/reboot/crash. */
  lastShutdownReason?: 'halt' | 'reboot' | 'crash' | 'suspend';
}

export interface DeviceState {
  vm: string;
  id: string;
  plugged: boolean;
}

/** A change the backend reports: xapi re-reads the object's state (like xenopsd's UPDATES). */
export type Update =
  | { kind: 'vm'; id: string }
  | { kind: 'vbd'; vm: string; id: string }
  | { kind: 'vif'; vm: string; id: string };

/** Errors as xenopsd's Errors.error; xapi maps them to XenAPI errors (src/xapi/vm.ts). */
export class DomainError extends Error {
  constructor(
    readonly kind:
      | 'Does_not_exist'
      | 'Already_exists'
      | 'Bad_power_state'
      | 'Cannot_free_this_much_memory'
      | 'Failed_to_shutdown'
      | 'Failed_to_acknowledge_shutdown_request'
      | 'Device_is_connected'
      | 'Device_not_connected'
      | 'Media_present'
      | 'Media_not_present'
      | 'Cancelled'
      | 'Internal_error',
    readonly args: string[] = [],
  ) {
    super(`${kind}(${args.join(', ')})`);
  }
}

export interface HostMemory {
  /** Total host memory, bytes. */
  total: number;
  /** Free now (total - dom0 - domains - reservations), bytes. */
  free: number;
}

export interface DomainManager {
  /** Stores (or replaces) a VM's configuration, as xenopsd's VM.add + device adds. */
  add(config: VmConfig): Promise<void>;
  /** Forgets a halted VM's configuration. */
  remove(id: string): Promise<void>;
  /** Every VM the backend knows about (running or not), for resync after a restart. */
  list(): Promise<VmState[]>;
  stat(id: string): Promise<VmState>;

  /** Builds and starts the domain (left paused if `paused`). Raises Cannot_free_this_much_memory. */
  start(id: string, opts: { paused: boolean }): Promise<void>;
  pause(id: string): Promise<void>;
  unpause(id: string): Promise<void>;
  /** Clean (asks the guest, waits up to timeoutMs) when timeoutMs is given, else hard. */
  shutdown(id: string, timeoutMs?: number): Promise<void>;
  reboot(id: string, timeoutMs?: number): Promise<void>;
  /** Writes the memory image to config.suspendImage and destroys the domain. */
  suspend(id: string): Promise<void>;
  /** Rebuilds the domain from config.suspendImage. */
  resume(id: string, opts: { paused: boolean }): Promise<void>;
  setMemoryDynamicRange(id: string, min: number, max: number): Promise<void>;
  setVcpus(id: string, n: number): Promise<void>;

  vbdPlug(vm: string, vbd: VbdConfig): Promise<void>;
  vbdUnplug(vm: string, vbd: string, force: boolean): Promise<void>;
  vbdInsert(vm: string, vbd: string, backend: string): Promise<void>;
  vbdEject(vm: string, vbd: string): Promise<void>;
  vifPlug(vm: string, vif: VifConfig): Promise<void>;
  vifUnplug(vm: string, vif: string, force: boolean): Promise<void>;
  deviceState(vm: string, id: string): Promise<DeviceState>;

  hostMemory(): Promise<HostMemory>;
  /** Waits for changes after `token` (initially ""); returns them and the next token. */
  updates(token: string, timeoutMs: number): Promise<{ updates: Update[]; token: string }>;
  close(): Promise<void>;
}
