// What the simulator holds about a VM and its domain: the records it keeps in memory and saves
// (sim-state.ts), and the facts that follow from them alone (power state, the memory squeezed
// manages, whether the guest balloons).
import type { GuestAgent, VmConfig, VmState } from '../interface.js';
import { overheadBytes } from '../overhead.js';
import type { DomainMemory } from '../squeezed.js';

/**
 * Misbehaviour to inject into a VM's guest (SimulatorBackend.inject()):
 * - 'crash': the guest crashes now; the domain goes away with lastShutdownReason 'crash'.
 * - 'guest-shutdown' / 'guest-reboot': the guest halts / reboots itself (taking shutdownTimeMs);
 *   the domain goes away with reason 'halt' / 'reboot' for xapi to apply actions_after_*.
 * - 'refuse-shutdown' (sticky): acknowledges shutdown/reboot/suspend requests but never carries
 *   them out → Failed_to_shutdown / Failed_to_suspend.
 * - 'ignore-shutdown' (sticky): never acknowledges them → Failed_to_acknowledge_shutdown_request.
 * - 'refuse-unplug' (sticky): rejects non-forced unplugs → Device_detach_rejected.
 * - { slowBootMs } (sticky): building the domain takes this long instead of bootTimeMs.
 * clearFaults() removes the sticky ones.
 */
export type Fault =
  | 'crash'
  | 'guest-shutdown'
  | 'guest-reboot'
  | 'refuse-shutdown'
  | 'ignore-shutdown'
  | 'refuse-unplug'
  | { slowBootMs: number };

export type Reason = NonNullable<VmState['lastShutdownReason']>;

/** The sticky faults a VM's guest has (see Fault). */
export interface Faults {
  refuseShutdown?: boolean;
  ignoreShutdown?: boolean;
  refuseUnplug?: boolean;
  slowBootMs?: number;
}

/** What the backend keeps about a VM beyond its configuration. */
export interface VmStatus {
  suspended: boolean;
  lastShutdownReason?: Reason;
  lastStartTime: number;
  /** Boots so far: seeds the simulated memory contents, so a reboot has different memory. */
  bootCount: number;
  faults: Faults;
}

/** A domain: what Xen + xenstore would hold. */
export interface Domain {
  domid: number;
  /** False while VM_build runs; a domain found unbuilt after a restart is torn down. */
  built: boolean;
  paused: boolean;
  vcpus: number;
  memory: DomainMemory;
  memoryTarget: number;
  memoryActual: number;
  startTime: number;
  bootCount: number;
  /** The guest OS is up and answers control/shutdown requests. */
  osUp: boolean;
  /** Deadline (Date.now) at which the OS comes up, while it is booting unpaused. */
  osUpAt?: number;
  vbds: Record<string, { position: string; backend?: string }>;
  vifs: Record<string, { position: number }>;
  /** The domain's xenstore data (VM.xenstore_data as pushed at build or since). */
  xenstore?: Record<string, string>;
  guestAgent?: GuestAgent;
  /** control/shutdown, as written by the toolstack, and whether the guest acknowledged it. */
  request?: 'halt' | 'reboot' | 'suspend';
  acked?: boolean;
  /** The guest is halting itself: when, and why. */
  haltAt?: number;
  haltReason?: Reason;
  /** Its memory is being sent to another host (a live migration, sim-migrate.ts). */
  migratingOut?: boolean;
  /** Paused by that migration for its last copy: only xapi can say where the VM belongs now. */
  pausedForMigration?: boolean;
  /** What identifies its memory contents (a boot's, or what a migration carried over). */
  memoryIdentity?: string;
  /** An incoming domain's state on the source, for when it takes over (see Vm.incoming). */
  arrival?: Arrival;
}

/** How a domain a migration brought was doing on its source, to carry on likewise here. */
export interface Arrival {
  paused: boolean;
  /** The OS was still booting: it comes up this much later. */
  osUpInMs?: number;
  /** The guest was halting itself: it halts this much later, for this reason. */
  haltInMs?: number;
  haltReason?: Reason;
  status: Pick<VmStatus, 'lastStartTime' | 'bootCount' | 'faults'>;
}

/** One VM as the backend holds it, and as it is saved. */
export interface Vm {
  config: VmConfig;
  status: VmStatus;
  domain?: Domain;
  /**
   * A domain whose whole image a live migration brought here, kept paused until the sender
   * commits the move (then it becomes `domain`) or gives up (then it goes).
   */
  incoming?: Domain;
}

export function powerState(vm: Vm): VmState['powerState'] {
  return vm.domain ? (vm.domain.paused ? 'Paused' : 'Running') : vm.status.suspended ? 'Suspended' : 'Halted';
}

/** Memory squeezed manages for the VM's domain: its dynamic range and overhead. */
export function domainMemory(c: VmConfig): DomainMemory {
  const overhead = overheadBytes({
    domainType: c.domainType,
    staticMax: c.memoryStaticMax,
    vcpus: c.vcpuMax,
    shadowMultiplier: c.shadowMultiplier,
  });
  // a PV-in-PVH guest cannot balloon inside the shim: it needs static_max (memory_check does the same)
  if (c.domainType === 'pv_in_pvh') return { dynamicMin: c.memoryStaticMax, dynamicMax: c.memoryStaticMax, overhead };
  return { dynamicMin: c.memoryDynamicMin, dynamicMax: c.memoryDynamicMax, overhead };
}

/** Whether the domain's guest balloons (its agent advertised feature-balloon). */
export function balloons(vm: Vm): boolean {
  return vm.config.domainType !== 'pv_in_pvh' && vm.domain?.guestAgent?.other['feature-balloon'] === '1';
}
