// The domain manager, in the spirit of xenopsd: xapi pushes a VM's configuration, asks for
// operations, and learns the outcome from the backend's state and events, never by assuming an
// operation worked. A backend (the simulator; later QEMU) implements DomainManager. Ids are
// XenAPI VM uuids; devices are (vm id, device position).
import type { Duplex, Readable, Writable } from 'node:stream';

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
  /** VM.HVM_shadow_multiplier (the overhead model's multiplier); 1 when absent. */
  shadowMultiplier?: number;
  /** Where a suspend image is written / read (a file path on this host). */
  suspendImage?: string;
  platform: Record<string, string>;
  /** VM.xenstore_data: keys the domain finds in its xenstore area when it is built. */
  xenstoreData?: Record<string, string>;
  vbds: VbdConfig[];
  vifs: VifConfig[];
  /**
   * For a simulated guest: how fast it writes its memory (bytes/s), which decides how many
   * pre-copy rounds a live migration needs (VM.other_config `simulator_dirty_rate`). Absent:
   * the backend's default.
   */
  simDirtyRate?: number;
  /**
   * For a simulated guest: how fast it writes its read-write disks (bytes/s, random 4 KiB
   * blocks), so a storage migration has writes to mirror (VM.other_config
   * `simulator_disk_write_rate`). Absent or 0: it writes nothing by itself.
   */
  simDiskWriteRate?: number;
  /**
   * For a simulated guest: how busy its vCPUs are besides the work its memory and disk writes
   * cost (a fraction, VM.other_config `simulator_cpu_load`), and how many bytes/s each of its
   * VIFs receives (sending half as many; VM.other_config `simulator_net_rate`).
   */
  simCpuLoad?: number;
  simNetRate?: number;
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
  /** What the domain's xenstore area holds of VM.xenstore_data (absent without a domain). */
  xenstoreData?: Record<string, string>;
  /** Why the last domain went away, so xapi can apply actions_after_shutdown/reboot/crash. */
  lastShutdownReason?: 'halt' | 'reboot' | 'crash' | 'suspend';
  /**
   * A live migration left half done by a process that died, waiting for xapi to say which
   * domain is the VM (resolveMigration): `incoming`, the id of a domain whose whole image
   * arrived here, kept paused (the VM itself may have no domain here: powerState says Halted);
   * `outgoing`, the id of this host's domain, paused for its last copy to another host.
   */
  migration?: { incoming?: number; outgoing?: number };
}

export interface DeviceState {
  vm: string;
  id: string;
  plugged: boolean;
  /** The device number the backend uses (a VBD's position, chosen at plug time when it had none). */
  position?: string;
  /** For a plugged VBD: the medium in the drive now (undefined = empty), after insert/eject. */
  backend?: string;
}

/** A change the backend reports: xapi re-reads the object's state (like xenopsd's UPDATES). */
export type Update = { kind: 'vm'; id: string } | { kind: 'vbd'; vm: string; id: string } | { kind: 'vif'; vm: string; id: string };

/**
 * Errors as xenopsd's Errors.error; xapi maps them to XenAPI errors (src/xapi/xenops-sync.ts).
 * Argument conventions (all strings):
 * - Does_not_exist [kind ('VM' | 'VBD' | 'device' | ...), id]; Already_exists [kind, id or position]
 * - Bad_power_state [found, expected] as PowerState names ('Halted', 'Running', ...)
 * - Domain_not_built []; Invalid_vcpus [n]
 * - Cannot_free_this_much_memory [needed bytes, free bytes]
 * - Failed_to_shutdown [vm id, timeout in seconds]; Failed_to_suspend [vm id, timeout in seconds];
 *   Failed_to_acknowledge_shutdown_request [vm id]
 * - Device_is_connected / Device_not_connected / Media_present / Media_not_present /
 *   Media_not_ejectable [device id]; Device_detach_rejected [kind ('VBD' | 'VIF'), device id, message]
 * - Cancelled [vm id?, why]; Internal_error [message]
 * - Failed_to_contact_remote_service [url]: a migration could not reach the destination
 */
export class DomainError extends Error {
  constructor(
    readonly kind:
      | 'Does_not_exist'
      | 'Already_exists'
      | 'Bad_power_state'
      | 'Domain_not_built'
      | 'Invalid_vcpus'
      | 'Cannot_free_this_much_memory'
      | 'Failed_to_shutdown'
      | 'Failed_to_acknowledge_shutdown_request'
      | 'Failed_to_suspend'
      | 'Device_is_connected'
      | 'Device_not_connected'
      | 'Device_detach_rejected'
      | 'Media_present'
      | 'Media_not_present'
      | 'Media_not_ejectable'
      | 'Cancelled'
      | 'Failed_to_contact_remote_service'
      | 'Internal_error',
    readonly args: string[] = [],
  ) {
    super(`${kind}(${args.join(', ')})`);
  }
}

/**
 * What a domain has done so far, as xcp-rrdd reads it off Xen and the backends (running
 * counters, never reset while the domain lives; the reader takes differences).
 */
export interface DomainCounters {
  /** The VM's uuid and name. */
  id: string;
  name: string;
  domid: number;
  /** Busy time per vCPU, seconds. */
  vcpuSeconds: number[];
  memoryActual: number;
  memoryTarget: number;
  /** Free memory inside the guest, bytes, as its agent reports it (absent without an agent). */
  memoryInternalFree?: number;
  /** Per VBD by device name (xvda...): bytes and requests so far. */
  vbds: { device: string; readBytes: number; writeBytes: number; reads: number; writes: number }[];
  /** Per VIF by device number: bytes the guest received and sent so far. */
  vifs: { position: number; rxBytes: number; txBytes: number; rxErrors: number; txErrors: number }[];
}

/** The host's own counters and every domain's, read at one instant. */
export interface HostCounters {
  /** When they were read, ms since the epoch. */
  time: number;
  /** Busy time per physical CPU, seconds. */
  cpuSeconds: number[];
  /** Runnable vCPUs, averaged over the last minute. */
  loadavg: number;
  memoryTotal: number;
  memoryFree: number;
  /** Per NIC: bytes received and sent so far. */
  pifs: { device: string; rxBytes: number; txBytes: number; rxErrors: number; txErrors: number }[];
  domains: DomainCounters[];
}

export interface HostMemory {
  /** Total host memory, bytes. */
  total: number;
  /** Free now (total - dom0 - domains - reservations), bytes. */
  free: number;
}

/** Where a live migration sends a VM: the destination host's memory-receive endpoint. */
export interface MigrationTarget {
  /**
   * The URL the source opens (xenopsd's /migrate/vm/<id> on the destination), carrying in its
   * query what the receiver authenticates (a session of the pool). HTTPS with the pool's
   * self-signed certificates, which are not verified (as xapi's default).
   */
  url: string;
}

/** One round of a migration's memory copy. */
export interface MigrationRound {
  /** Pages sent (4 KiB each) and bytes on the wire for them. */
  pages: number;
  bytes: number;
  ms: number;
  /** The stop-and-copy round, with the guest paused. */
  final: boolean;
}

/** What a live migration did, for the logs and the benchmark. */
export interface MigrationReport {
  /** The live pre-copy rounds, then the final one. */
  rounds: MigrationRound[];
  /** Every byte sent to the destination. */
  bytes: number;
  memoryBytes: number;
  /** The guest's memory write rate during the migration, bytes/s. */
  dirtyRate: number;
  /** From pausing the guest here to the destination confirming it runs there. */
  downtimeMs: number;
  totalMs: number;
  destinationDomid: number;
}

/**
 * Thrown by a migration's commit hook that cannot tell whether the move became the truth (the
 * other pool's answer to its claim was lost): the guest does not resume here, its domain goes,
 * and the destination, told neither GO nor ABORT, settles its copy by asking its own side.
 */
export class CommitInDoubt extends Error {}

export interface MigrationSendHooks {
  /**
   * The destination holds the whole image, paused, and the guest is paused here: make the move
   * the truth (xapi: the VM's resident_on, durably) before the destination unpauses it. Throwing
   * aborts the migration: the destination drops its copy and the guest resumes here; throwing
   * CommitInDoubt leaves the outcome to the destination.
   */
  commit(destinationDomid: number): Promise<void>;
  /** Progress of the copy, 0..1. */
  progress?(fraction: number): void;
}

export interface MigrationReceiveHooks {
  /**
   * The sender went away after the whole image had arrived, as domain `domid`: is that domain
   * the VM now (the sender committed it)? true: it runs; false: it is dropped; undefined: not
   * known yet (asked again a second later).
   */
  owned(domid: number): Promise<boolean | undefined>;
}

/** The receiving end of one migration connection: what the sender sends, and the replies. */
export interface MigrationChannel {
  input: Readable;
  output: Writable;
}

export interface DomainManager {
  /**
   * Stores (or replaces) a VM's configuration, as xenopsd's VM.add + device adds. A running
   * domain keeps what it was built with; the configuration is for the next build. Two VBDs (or
   * VIFs) at one position → Already_exists.
   */
  add(config: VmConfig): Promise<void>;
  /** Forgets a VM without a domain (Halted or Suspended); Bad_power_state while it has one. */
  remove(id: string): Promise<void>;
  /** Every VM the backend knows about (running or not), for resync after a restart. */
  list(): Promise<VmState[]>;
  stat(id: string): Promise<VmState>;

  /**
   * VM_create (reserve memory) + VM_build + plug devices; resolves once the domain is built,
   * Running (or left Paused if `paused`). The guest agent reports later, once the OS is up.
   * Raises Cannot_free_this_much_memory; Cancelled if a hard shutdown pre-empts the build.
   */
  start(id: string, opts: { paused: boolean }): Promise<void>;
  pause(id: string): Promise<void>;
  unpause(id: string): Promise<void>;
  /**
   * Clean when timeoutMs is given: asks the guest, which must acknowledge
   * (Failed_to_acknowledge_shutdown_request) and halt within timeoutMs (Failed_to_shutdown).
   * Hard otherwise: the domain is destroyed at once, pre-empting any operation in progress on
   * the VM; on a Suspended VM it discards the suspended state; on a Halted VM it does nothing.
   */
  shutdown(id: string, timeoutMs?: number): Promise<void>;
  /** As shutdown, then a new domain (new domid), Running. */
  reboot(id: string, timeoutMs?: number): Promise<void>;
  /** Writes the memory image to config.suspendImage and destroys the domain (Failed_to_suspend if the guest does not co-operate). */
  suspend(id: string): Promise<void>;
  /** Rebuilds the domain from config.suspendImage (verified: a damaged image is Internal_error and the VM stays Suspended). */
  resume(id: string, opts: { paused: boolean }): Promise<void>;
  /** Updates the configuration; for a running domain also rebalances memory (Cannot_free_this_much_memory leaves all unchanged). */
  setMemoryDynamicRange(id: string, min: number, max: number): Promise<void>;
  /** vCPU hotplug on a running domain, 1..vcpuMax (Invalid_vcpus). */
  setVcpus(id: string, n: number): Promise<void>;
  /** Replaces the xenstore data of a built domain (xenopsd's VM.set_xsdata). */
  setXenstoreData(id: string, data: Record<string, string>): Promise<void>;

  /** Hotplug into a running/paused domain; a VBD without a position gets the lowest free one. */
  vbdPlug(vm: string, vbd: VbdConfig): Promise<void>;
  /** `force` skips the guest's consent (Device_detach_rejected otherwise possible). */
  vbdUnplug(vm: string, vbd: string, force: boolean): Promise<void>;
  /** CD/floppy media change; on a VM without a domain only the configuration changes. */
  vbdInsert(vm: string, vbd: string, backend: string): Promise<void>;
  vbdEject(vm: string, vbd: string): Promise<void>;
  vifPlug(vm: string, vif: VifConfig): Promise<void>;
  vifUnplug(vm: string, vif: string, force: boolean): Promise<void>;
  deviceState(vm: string, id: string): Promise<DeviceState>;

  /**
   * Serves the domain's console of `protocol` on `stream` until either ends (qemu's VNC server
   * for rfb, xenconsoled's text console for vt100; xapi reaches them through VM.stat's console
   * ports): Bad_power_state without a domain, Does_not_exist when it offers no such console.
   */
  attachConsole(id: string, protocol: 'rfb' | 'vt100', stream: Duplex): void;

  hostMemory(): Promise<HostMemory>;
  /** The host's and the running domains' counters now (what xcp-rrdd samples every 5 s). */
  counters(): Promise<HostCounters>;

  /**
   * Live migration, the sender (xenopsd's VM_migrate): streams the running domain's memory to
   * `target` in pre-copy rounds while the guest runs, pauses it for a last round and its device
   * state, lets `hooks.commit` decide, then has the destination unpause it and destroys the
   * domain here (the VM is forgotten here too). Any failure before the commit leaves the guest
   * running here. Failed_to_contact_remote_service when the destination cannot be reached;
   * Cannot_free_this_much_memory when it has no room; Cancelled when the domain goes away
   * meanwhile (a hard shutdown).
   */
  migrateSend(id: string, target: MigrationTarget, hooks: MigrationSendHooks): Promise<MigrationReport>;
  /**
   * Live migration, the receiver (xenopsd's VM_receive_memory): serves one sender on `channel`,
   * building the VM's domain here from what arrives, with `config` (this host's paths for its
   * disks). Resolves when the connection is over, whichever way it went.
   */
  migrateReceive(config: VmConfig, channel: MigrationChannel, hooks: MigrationReceiveHooks): Promise<void>;
  /**
   * Settles a migration a dead process left half done (VmState.migration): the domain `keep`
   * is the VM (xapi's domid for a VM resident here) and carries on, running; the other one
   * goes. `keep` undefined, or naming neither: both go (the VM is another host's).
   */
  resolveMigration(id: string, keep: number | undefined): Promise<void>;
  /**
   * Waits up to timeoutMs for changes after `token` (initially ""); returns them and the next
   * token. Updates are coalesced per object (only ids: re-read the object with stat /
   * deviceState) and never lost. "" or a token from another backend instance returns every
   * object known, so a client restarting from scratch re-reads everything.
   */
  updates(token: string, timeoutMs: number): Promise<{ updates: Update[]; token: string }>;
  /** Stops timers and waits (operations in flight fail with Cancelled); the domains live on in the backend's state. */
  close(): Promise<void>;
}
