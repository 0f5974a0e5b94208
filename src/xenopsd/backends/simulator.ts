// The simulator backend: domains that behave like a real host's, without Xen (in the spirit of
// xenopsd's xenops_server_simulator, but with a guest inside).
//
// - Memory comes from a finite host through a squeezed broker: a start reserves the domain's
//   footprint (dynamic range + overhead), squeezing ballooning guests toward dynamic_min, and
//   fails with Cannot_free_this_much_memory when even that cannot make room.
// - A start creates a paused domain, builds it (this takes bootTimeMs), plugs its devices and
//   unpauses it unless asked not to. The guest OS then comes up and its agent reports (OS,
//   PV drivers, IP addresses of plugged VIFs, control feature flags); from then on the guest
//   balloons co-operatively and answers shutdown/reboot/suspend requests.
// - Clean shutdown/reboot write a request the guest must acknowledge, then the guest halts
//   itself after shutdownTimeMs; a guest that never acknowledges or never halts makes the
//   operation fail as xenopsd's does.
// - Suspend writes a real, sparse memory image (logical size = the guest's memory) with a
//   header and checksummed sample pages; resume verifies it and rebuilds the domain with the
//   same memory.
// - Operations on one VM run one at a time (xenopsd's per-VM queue); hard shutdown (and the
//   destroy half of hard reboot) pre-empt them, as xapi's hard_shutdown pre-empts other ops.
// - Every change is recorded as an Update, coalesced per object and delivered by token.
// - State lives under <stateDir>/xenopsd/ (a snapshot and a journal, sim-state.ts), so a new
//   SimulatorBackend on the same directory (after the xapi process died) still has the same
//   domains — they live in the backend like xenopsd's, and guest-side timers (the OS coming
//   up, a guest halting) resume from their recorded deadlines. Changes are saved together,
//   before anything about them leaves the backend (an operation returning, stat, updates):
//   what xapi was told is on disk, and one operation's many steps cost one append (save()).
//   On a full disk that rule holds by waiting: nothing about an unsaved change is told until
//   the save is retried successfully (see save()).
// - Faults can be injected for tests: see Fault and inject().
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdir, open, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  DomainError,
  type DeviceState,
  type DomainManager,
  type GuestAgent,
  type HostMemory,
  type Update,
  type VbdConfig,
  type VifConfig,
  type VmConfig,
  type VmState,
} from '../interface.js';
import { dom0MemoryBytes, type Machine } from '../machine.js';
import { overheadBytes } from '../overhead.js';
import { Squeezed, type DomainMemory } from '../squeezed.js';
import { Mutex } from '../../util/mutex.js';
import { openDiskFile } from '../../storage/disk-file.js';
import { SimStateStore } from './sim-state.js';

/**
 * Misbehaviour to inject into a VM's guest (inject()):
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

export interface SimulatorOptions {
  machine: Machine;
  stateDir: string;
  /** Creating + building a domain (start/resume/reboot); default 50 ms. */
  bootTimeMs?: number;
  /** From a domain's first unpause to its OS being up and its agent reporting; default bootTimeMs. */
  agentDelayMs?: number;
  /** How long a guest takes to halt once it acknowledged a request; default 50 ms. */
  shutdownTimeMs?: number;
  /**
   * Simulated time compression: when the simulator knows a guest will never answer (it is
   * paused, or a fault says so), it gives up after at most this long instead of the caller's
   * full timeout (xapi's default clean-shutdown timeout is 20 minutes). Default 1000 ms.
   */
  maxWaitMs?: number;
  /** Clock for start times reported to xapi; default Date.now. */
  now?: () => number;
  /** Whether guests run an agent (PV drivers); default true. Without one, guests never balloon. */
  guestAgent?: boolean;
  /** Told when saving the state starts failing (a full disk: `cause`) and when it works again. */
  onSaving?: (works: boolean, cause?: unknown) => void;
  /** While saves fail, how often one is tried again; default 1000 ms. */
  saveRetryMs?: number;
}

type Reason = NonNullable<VmState['lastShutdownReason']>;

interface Faults {
  refuseShutdown?: boolean;
  ignoreShutdown?: boolean;
  refuseUnplug?: boolean;
  slowBootMs?: number;
}

/** What the backend keeps about a VM beyond its configuration (vm/<id>.json with the config). */
interface VmStatus {
  suspended: boolean;
  lastShutdownReason?: Reason;
  lastStartTime: number;
  /** Boots so far: seeds the simulated memory contents, so a reboot has different memory. */
  bootCount: number;
  faults: Faults;
}

/** A domain: what Xen + xenstore would hold (domain/<id>.json). */
interface Domain {
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
}

interface Vm {
  config: VmConfig;
  status: VmStatus;
  domain?: Domain;
}

/** Our client name with squeezed (xenopsd logs in as itself). */
const CLIENT = 'xenopsd';
/** How long a suspend waits for the guest to acknowledge and save (xenopsd's is similar). */
const SUSPEND_TIMEOUT_MS = 1_200_000;

export class SimulatorBackend implements DomainManager {
  private readonly dir: string;
  private readonly vms = new Map<string, Vm>();
  private readonly domids = new Map<number, string>();
  private readonly squeezed: Squeezed;
  private readonly queues = new Map<string, Mutex>();
  private lastDomid = 0;
  private closed = false;
  private readonly store: SimStateStore<Vm>;
  /** VMs whose saved state is behind (see save()). */
  private readonly unsaved = new Set<string>();
  private saveScheduled = false;
  /** Whether the last try at saving failed; then saveRetry is the timer of the next one. */
  private saveFailing = false;
  private saveRetry: NodeJS.Timeout | undefined;
  /** Those waiting for the unsaved state to be stored (save()). */
  private readonly saveWaiters = new Set<{ resolve: () => void; reject: (e: DomainError) => void }>();
  private readonly saveRetryMs: number;

  private readonly bootTimeMs: number;
  private readonly agentDelayMs: number;
  private readonly shutdownTimeMs: number;
  private readonly maxWaitMs: number;
  private readonly now: () => number;
  private readonly agentEnabled: boolean;

  // timers and waits, so close() can stop everything
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly sleepers = new Set<(e: DomainError) => void>();
  /** Internal state-change listeners (waitFor). */
  private readonly kicks = new Set<() => void>();

  // updates: the latest change per object, in sequence order
  private readonly epoch = randomBytes(4).toString('hex');
  private seq = 0;
  private readonly changes = new Map<string, { seq: number; update: Update }>();
  private updateWaiters = new Set<() => void>();

  constructor(private readonly opts: SimulatorOptions) {
    this.bootTimeMs = opts.bootTimeMs ?? 50;
    this.agentDelayMs = opts.agentDelayMs ?? this.bootTimeMs;
    this.shutdownTimeMs = opts.shutdownTimeMs ?? 50;
    this.maxWaitMs = opts.maxWaitMs ?? 1000;
    this.now = opts.now ?? Date.now;
    this.agentEnabled = opts.guestAgent ?? true;
    this.saveRetryMs = opts.saveRetryMs ?? 1000;
    this.dir = join(opts.stateDir, 'xenopsd');
    mkdirSync(this.dir, { recursive: true });
    this.store = new SimStateStore(this.dir);
    this.squeezed = new Squeezed({
      total: opts.machine.memoryBytes,
      dom0: dom0MemoryBytes(opts.machine),
      onTarget: (domid, target) => this.onTarget(domid, target),
    });
    this.squeezed.login(CLIENT);
    this.load();
    this.trySave();
  }

  // ---- persistence ----------------------------------------------------------------------------

  /** Marks a VM's saved state as behind; the next save() writes it. */
  private persist(id: string): void {
    if (this.closed) return; // a closed backend changes nothing on disk
    this.unsaved.add(id);
    if (!this.saveScheduled) {
      this.saveScheduled = true;
      setImmediate(() => this.trySave()); // for changes nobody asks about (a guest halting itself)
    }
  }

  /**
   * Writes every VM whose state changed since the last save, in one journal append
   * (sim-state.ts). Awaited before anything leaves the backend: at the end of every operation
   * and before stat, list and updates answer. So whatever xapi has heard of (and may have
   * committed to its database) is on disk first and a kill -9 finds it; a change nobody has
   * heard of yet may be lost, which to xapi is as if it never happened (a build it never saw
   * start is simply not there).
   *
   * If the state cannot be written (the disk is full), the caller waits, and the save is
   * retried every saveRetryMs until it is stored. An operation whose save fails has already
   * happened to the domain (built, destroyed...), so failing it would tell xapi something
   * untrue, and undoing it is not possible in general; so it returns only once its state is
   * stored. Its VM's queue waits with it, and so do stat and updates: xapi hears of nothing
   * while the disk is full, then of everything once space is back. (Real xenopsd keeps its
   * state on a tmpfs of its own, which a full state disk does not reach.) close() ends the
   * wait with Cancelled.
   */
  private async save(): Promise<void> {
    if (this.trySave()) return;
    // closed: what its last try could not save is lost with the process; not to be reported
    if (this.closed) throw new DomainError('Cancelled', ['backend closed']);
    await new Promise<void>((resolve, reject) => this.saveWaiters.add({ resolve, reject }));
  }

  /** One try at save(), without waiting: false if it failed (a retry is then scheduled). */
  private trySave(): boolean {
    this.saveScheduled = false;
    if (this.closed) return this.unsaved.size === 0; // a closed backend changes nothing on disk
    if (this.saveRetry) return false; // failing: the next try is the timer's
    const changed = new Map<string, Vm | undefined>();
    for (const id of this.unsaved) {
      const vm = this.vms.get(id);
      changed.set(id, vm && { config: vm.config, status: vm.status, domain: vm.domain });
    }
    try {
      this.store.save(this.lastDomid, changed);
    } catch (e) {
      // Nothing is stored (sim-state.ts): the same VMs, still unsaved, are written by a later try.
      if (!this.saveFailing) this.opts.onSaving?.(false, e);
      this.saveFailing = true;
      this.saveRetry = setTimeout(() => this.retrySave(), this.saveRetryMs).unref();
      return false;
    }
    this.unsaved.clear();
    if (this.saveFailing) {
      this.saveFailing = false;
      this.opts.onSaving?.(true);
    }
    return true;
  }

  private retrySave(): void {
    this.saveRetry = undefined;
    if (!this.trySave()) return;
    const waiters = [...this.saveWaiters];
    this.saveWaiters.clear();
    for (const w of waiters) w.resolve();
  }

  /** Reads the backend's "DB" back: the domains are still there, as they would be under xenopsd. */
  private load(): void {
    const saved = this.store.load();
    this.lastDomid = saved.lastDomid;
    for (const [id, vm] of saved.vms) this.vms.set(id, vm);
    for (const [id, vm] of this.vms) {
      const d = vm.domain;
      if (d && !d.built) {
        // VM_create ran but VM_build never finished (the process died): like xenopsd's
        // "reboot me" marker, the half-built domain is not trusted; it is torn down.
        vm.domain = undefined;
        this.persist(id);
      } else if (d) {
        this.domids.set(d.domid, id);
        this.lastDomid = Math.max(this.lastDomid, d.domid);
        this.squeezed.adoptDomain(d.domid, d.memory, d.memoryTarget, this.balloons(vm));
        this.resumeGuest(vm);
      }
      this.changed({ kind: 'vm', id }); // a fresh client ("" token) learns about every VM
      for (const v of vm.config.vbds) this.changed({ kind: 'vbd', vm: id, id: v.id });
      for (const v of vm.config.vifs) this.changed({ kind: 'vif', vm: id, id: v.id });
    }
    try {
      this.squeezed.rebalance();
    } catch {
      /* over-committed on disk: leave the domains as they are */
    }
  }

  /** Guest-side activity that was under way when the previous backend stopped carries on. */
  private resumeGuest(vm: Vm): void {
    const d = vm.domain!;
    if (d.request && !d.acked) {
      // the operation that wrote the request died with the old process; nobody waits for it
      d.request = undefined;
    }
    if (d.haltAt !== undefined) this.scheduleHalt(vm, d.haltReason ?? 'halt', Math.max(0, d.haltAt - Date.now()));
    if (!d.osUp && !d.paused) this.scheduleOsUp(vm, d.osUpAt !== undefined ? Math.max(0, d.osUpAt - Date.now()) : this.agentDelayMs);
    this.persist(vm.config.id);
  }

  // ---- updates and waiting ------------------------------------------------------------------

  private changed(update: Update): void {
    const key = update.kind === 'vm' ? `vm/${update.id}` : `${update.kind}/${update.vm}/${update.id}`;
    this.changes.delete(key); // re-insert: the map stays in sequence order, one entry per object
    this.changes.set(key, { seq: ++this.seq, update });
    const waiters = this.updateWaiters;
    this.updateWaiters = new Set();
    for (const w of waiters) w();
    for (const k of [...this.kicks]) k();
  }

  /** Persist + announce a VM's change. */
  private vmChanged(vm: Vm): void {
    this.persist(vm.config.id);
    this.changed({ kind: 'vm', id: vm.config.id });
  }

  private timer(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
  }

  /**
   * Waits until `pred` holds (re-checked on every state change) or `ms` pass; true if it held.
   * A close() meanwhile makes the waiting operation fail with Cancelled.
   */
  private waitFor(pred: () => boolean, ms: number): Promise<boolean> {
    if (pred()) return Promise.resolve(true);
    return new Promise((resolve, reject) => {
      const finish = (ok: boolean) => {
        clearTimeout(t);
        this.timers.delete(t);
        this.kicks.delete(kick);
        this.sleepers.delete(cancel);
        resolve(ok);
      };
      const kick = () => {
        if (pred()) finish(true);
      };
      const cancel = (e: DomainError) => {
        clearTimeout(t);
        this.timers.delete(t);
        this.kicks.delete(kick);
        reject(e);
      };
      const t = setTimeout(() => finish(pred()), Math.max(0, ms));
      this.timers.add(t);
      this.kicks.add(kick);
      this.sleepers.add(cancel);
    });
  }

  /** One operation at a time per VM, in arrival order (xenopsd's per-VM queue). */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    let q = this.queues.get(id);
    if (!q) this.queues.set(id, (q = new Mutex()));
    return q.run(async () => {
      if (this.closed) throw new DomainError('Cancelled', ['backend closed']);
      try {
        return await fn();
      } finally {
        await this.save(); // the caller is about to hear how it went
      }
    });
  }

  // ---- lookups ------------------------------------------------------------------------------

  private get(id: string): Vm {
    const vm = this.vms.get(id);
    if (!vm) throw new DomainError('Does_not_exist', ['VM', id]);
    return vm;
  }

  private powerState(vm: Vm): VmState['powerState'] {
    return vm.domain ? (vm.domain.paused ? 'Paused' : 'Running') : vm.status.suspended ? 'Suspended' : 'Halted';
  }

  /** The VM's domain; Bad_power_state(found, 'Running') when it has none. */
  private live(vm: Vm): Domain {
    if (!vm.domain) throw new DomainError('Bad_power_state', [this.powerState(vm), 'Running']);
    return vm.domain;
  }

  private built(vm: Vm): Domain {
    const d = this.live(vm);
    if (!d.built) throw new DomainError('Domain_not_built', []);
    return d;
  }

  /** Memory squeezed manages for the VM's domain: its dynamic range and overhead. */
  private domainMemory(c: VmConfig): DomainMemory {
    const overhead = overheadBytes({ domainType: c.domainType, staticMax: c.memoryStaticMax, vcpus: c.vcpuMax, shadowMultiplier: c.shadowMultiplier });
    // a PV-in-PVH guest cannot balloon inside the shim: it needs static_max (memory_check does the same)
    if (c.domainType === 'pv_in_pvh') return { dynamicMin: c.memoryStaticMax, dynamicMax: c.memoryStaticMax, overhead };
    return { dynamicMin: c.memoryDynamicMin, dynamicMax: c.memoryDynamicMax, overhead };
  }

  /** Whether the domain's guest balloons (its agent advertised feature-balloon). */
  private balloons(vm: Vm): boolean {
    return vm.config.domainType !== 'pv_in_pvh' && vm.domain?.guestAgent?.other['feature-balloon'] === '1';
  }

  /** Domain ids only grow (as Xen's do): max of every id handed out + 1, starting at 1. */
  private allocateDomid(): number {
    this.lastDomid += 1; // load() made it at least every existing domain's id
    return this.lastDomid;
  }

  /** squeezed moved a target: the co-operative guest follows at once. */
  private onTarget(domid: number, target: number): void {
    const id = this.domids.get(domid);
    const vm = id === undefined ? undefined : this.vms.get(id);
    const d = vm?.domain;
    if (!vm || !d || d.domid !== domid) return;
    d.memoryTarget = target;
    d.memoryActual = target;
    if (d.guestAgent) d.guestAgent = { ...d.guestAgent, memory: meminfo(target) };
    this.vmChanged(vm);
  }

  // ---- the domain life cycle ----------------------------------------------------------------

  /**
   * VM_create + VM_build + device plugs (+ unpause): reserve the footprint with squeezed,
   * create a paused domain, hand it the reservation, build it (bootTimeMs), plug VBDs (RW
   * first, then RO) and VIFs, then unpause unless `paused`. A restore starts from the image's
   * memory and vCPUs with the guest already booted.
   */
  private async createDomain(vm: Vm, o: { paused: boolean; bootCount: number; restore?: { memory: number; vcpus: number } }): Promise<void> {
    const c = vm.config;
    const mem = this.domainMemory(c);
    const [lo, hi] = o.restore ? [o.restore.memory, o.restore.memory] : [mem.dynamicMin, mem.dynamicMax];
    const res = this.squeezed.reserveMemoryRange(CLIENT, lo + mem.overhead, hi + mem.overhead);
    const domid = this.allocateDomid();
    let target: number;
    try {
      target = this.squeezed.transferReservationToDomain(CLIENT, res.id, domid, mem, o.restore?.memory);
    } catch (e) {
      this.squeezed.deleteReservation(CLIENT, res.id);
      throw e;
    }
    const d: Domain = {
      domid,
      built: false,
      paused: true,
      vcpus: o.restore?.vcpus ?? c.vcpus,
      memory: mem,
      memoryTarget: target,
      memoryActual: target,
      startTime: this.now(),
      bootCount: o.bootCount,
      osUp: o.restore !== undefined, // a resumed guest's OS was already running
      vbds: {},
      vifs: {},
      xenstore: { ...c.xenstoreData },
    };
    vm.domain = d;
    vm.status.bootCount = Math.max(vm.status.bootCount, o.bootCount);
    vm.status.lastShutdownReason = undefined;
    vm.status.lastStartTime = d.startTime;
    if (o.restore) vm.status.suspended = false;
    this.domids.set(domid, c.id);
    this.vmChanged(vm);

    // building takes its time, unless a hard shutdown or a crash ends it early
    await this.waitFor(() => vm.domain !== d, vm.status.faults.slowBootMs ?? this.bootTimeMs);
    if (vm.domain !== d) throw new DomainError('Cancelled', [c.id, 'the domain was destroyed while being built']);

    const order = [...c.vbds.filter((v) => v.mode === 'RW'), ...c.vbds.filter((v) => v.mode !== 'RW')];
    for (const v of order) {
      if (v.backend === undefined && v.type === 'Disk') continue; // nothing to attach
      const position = v.position ?? this.freeVbdPosition(vm);
      this.storeVbd(vm, { ...v, position });
      d.vbds[v.id] = { position, backend: v.backend };
      this.changed({ kind: 'vbd', vm: c.id, id: v.id });
    }
    for (const v of c.vifs) {
      d.vifs[v.id] = { position: v.position };
      this.changed({ kind: 'vif', vm: c.id, id: v.id });
    }
    d.built = true;
    if (!o.paused) this.run(vm);
    this.vmChanged(vm);
  }

  /** Unpaused: the guest OS boots (or, already up, its agent reports again). */
  private run(vm: Vm): void {
    const d = vm.domain!;
    d.paused = false;
    if (!d.osUp) this.scheduleOsUp(vm, this.agentDelayMs);
    else if (!d.guestAgent) this.osUp(vm);
  }

  private scheduleOsUp(vm: Vm, ms: number): void {
    const d = vm.domain!;
    const at = Date.now() + ms;
    d.osUpAt = at;
    this.timer(ms, () => {
      const now = vm.domain;
      if (now !== d || d.paused || d.osUpAt !== at) return; // destroyed, paused or rescheduled
      this.osUp(vm);
      this.vmChanged(vm);
    });
  }

  /** The OS is up: its agent reports, and a balloon driver joins squeezed's policy. */
  private osUp(vm: Vm): void {
    const d = vm.domain!;
    d.osUp = true;
    d.osUpAt = undefined;
    if (!this.agentEnabled) return;
    d.guestAgent = this.agentFor(vm);
    if (this.balloons(vm)) this.squeezed.setBalloon(d.domid, true);
    this.changed({ kind: 'vm', id: vm.config.id });
  }

  /** The guest shuts itself down (asked to, or on its own); after `ms` the domain is gone. */
  private scheduleHalt(vm: Vm, reason: Reason, ms: number): void {
    const d = vm.domain!;
    const at = Date.now() + ms;
    d.haltAt = at;
    d.haltReason = reason;
    this.timer(ms, () => {
      if (vm.domain !== d || d.haltAt !== at) return;
      this.destroyDomain(vm, reason);
    });
  }

  /** The domain goes away (memory back to squeezed, devices gone), recording why. */
  private destroyDomain(vm: Vm, reason: Reason): void {
    const d = vm.domain;
    if (!d) return;
    vm.domain = undefined;
    vm.status.lastShutdownReason = reason;
    this.domids.delete(d.domid);
    this.persist(vm.config.id);
    this.squeezed.releaseDomain(d.domid); // others may balloon back up (onTarget → updates)
    this.changed({ kind: 'vm', id: vm.config.id });
    for (const id of Object.keys(d.vbds)) this.changed({ kind: 'vbd', vm: vm.config.id, id });
    for (const id of Object.keys(d.vifs)) this.changed({ kind: 'vif', vm: vm.config.id, id });
  }

  /** Whether the guest can acknowledge a control/shutdown request now. */
  private canAck(vm: Vm): boolean {
    const d = vm.domain;
    return !!d && d.built && !d.paused && d.osUp && !vm.status.faults.ignoreShutdown;
  }

  /**
   * VM_shutdown_domain: write the request, wait for the guest to acknowledge it, then for the
   * domain to go away — all within timeoutMs. Returns the reason the domain went away with.
   */
  private async requestShutdown(vm: Vm, kind: 'halt' | 'reboot', timeoutMs: number): Promise<Reason> {
    const d = this.built(vm);
    const id = vm.config.id;
    const deadline = Date.now() + timeoutMs;
    const gone = () => vm.domain !== d;
    d.request = kind;
    d.acked = false;
    this.vmChanged(vm);
    const f = vm.status.faults;
    // a paused guest cannot run its drivers, and nothing can unpause it while we hold the queue
    const neverAcks = d.paused || !!f.ignoreShutdown;
    const acked = await this.waitFor(() => gone() || this.canAck(vm), neverAcks ? Math.min(timeoutMs, this.maxWaitMs) : timeoutMs);
    if (gone()) return vm.status.lastShutdownReason ?? 'halt';
    if (!acked) {
      d.request = undefined;
      this.vmChanged(vm);
      throw new DomainError('Failed_to_acknowledge_shutdown_request', [id]);
    }
    d.acked = true;
    if (!f.refuseShutdown) this.scheduleHalt(vm, kind, this.shutdownTimeMs);
    this.vmChanged(vm);
    const remaining = Math.max(0, deadline - Date.now());
    const done = await this.waitFor(gone, f.refuseShutdown ? Math.min(remaining, this.maxWaitMs) : remaining);
    if (!done) {
      d.request = undefined;
      d.acked = false;
      this.vmChanged(vm);
      throw new DomainError('Failed_to_shutdown', [id, String(timeoutMs / 1000)]);
    }
    return vm.status.lastShutdownReason ?? kind;
  }

  /** What the simulated guest agent reports once the OS is up. */
  private agentFor(vm: Vm): GuestAgent {
    const d = vm.domain!;
    const networks: Record<string, string> = {};
    for (const v of vm.config.vifs) {
      if (!d.vifs[v.id]) continue;
      networks[`${v.position}/ip`] = ipv4ForMac(v.mac);
      networks[`${v.position}/ipv4/0`] = ipv4ForMac(v.mac);
      networks[`${v.position}/ipv6/0`] = linkLocalForMac(v.mac);
    }
    const os = osFor(vm.config);
    return {
      osVersion: os.osVersion,
      pvDriversVersion: os.pvDriversVersion,
      networks,
      other: {
        'feature-shutdown': '1',
        'feature-poweroff': '1',
        'feature-reboot': '1',
        'feature-suspend': '1',
        'feature-balloon': '1',
        'feature-vcpu-hotplug': '1',
        'has-vendor-device': '0',
        'platform-feature-multiprocessor-suspend': '1',
      },
      memory: meminfo(d.memoryActual),
    };
  }

  // ---- DomainManager: VMs -------------------------------------------------------------------

  async add(config: VmConfig): Promise<void> {
    assertNoDuplicates(config);
    await this.serial(config.id, async () => {
      const vm = this.vms.get(config.id);
      // a running domain keeps what it was built with; the config is for the next build
      if (vm) vm.config = structuredClone(config);
      else this.vms.set(config.id, { config: structuredClone(config), status: { suspended: false, lastStartTime: 0, bootCount: 0, faults: {} } });
      this.persist(config.id);
    });
  }

  async remove(id: string): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      if (vm.domain) throw new DomainError('Bad_power_state', [this.powerState(vm), 'Halted']);
      this.vms.delete(id);
      this.persist(id);
      this.changed({ kind: 'vm', id });
    });
  }

  async list(): Promise<VmState[]> {
    return Promise.all([...this.vms.keys()].map((id) => this.stat(id)));
  }

  async stat(id: string): Promise<VmState> {
    await this.save();
    const vm = this.get(id);
    const d = vm.domain;
    const consoles: VmState['consoles'] = !d
      ? []
      : vm.config.domainType === 'hvm'
        ? [{ protocol: 'rfb', port: 5900 + d.domid }] // qemu's VNC server
        : [
            { protocol: 'vt100', port: 9500 + d.domid }, // xenconsoled text console
            { protocol: 'rfb', port: 5900 + d.domid }, // vncterm on top of it
          ];
    return {
      id,
      powerState: this.powerState(vm),
      domid: d ? d.domid : -1,
      memoryTarget: d ? d.memoryTarget : 0,
      memoryActual: d ? d.memoryActual : 0,
      vcpus: d ? d.vcpus : 0,
      domainType: vm.config.domainType,
      lastStartTime: vm.status.lastStartTime,
      guestAgent: d?.guestAgent ? structuredClone(d.guestAgent) : undefined,
      consoles,
      lastShutdownReason: vm.status.lastShutdownReason,
      xenstoreData: d ? { ...d.xenstore } : undefined,
    };
  }

  async start(id: string, opts: { paused: boolean }): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      if (vm.domain || vm.status.suspended) throw new DomainError('Bad_power_state', [this.powerState(vm), 'Halted']);
      await this.createDomain(vm, { paused: opts.paused, bootCount: vm.status.bootCount + 1 });
    });
  }

  async pause(id: string): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      const d = this.built(vm);
      if (d.paused) return;
      d.paused = true;
      d.osUpAt = undefined; // a booting OS makes no progress while paused
      this.vmChanged(vm);
    });
  }

  async unpause(id: string): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      const d = this.built(vm);
      if (!d.paused) return;
      this.run(vm);
      this.vmChanged(vm);
    });
  }

  async shutdown(id: string, timeoutMs?: number): Promise<void> {
    if (timeoutMs === undefined) {
      // hard: not queued — it pre-empts whatever runs (a stuck clean shutdown, a slow build)
      const vm = this.get(id);
      if (vm.domain) this.destroyDomain(vm, 'halt');
      else if (vm.status.suspended) {
        vm.status.suspended = false; // the memory image is discarded (the caller deletes it)
        vm.status.lastShutdownReason = 'halt';
        this.vmChanged(vm);
      }
      await this.save();
      return;
    }
    await this.serial(id, async () => {
      await this.requestShutdown(this.get(id), 'halt', timeoutMs);
    });
  }

  async reboot(id: string, timeoutMs?: number): Promise<void> {
    if (timeoutMs === undefined) {
      // hard: the domain goes at once (pre-empting), the new one is built in turn
      const vm = this.get(id);
      const old = this.live(vm);
      this.destroyDomain(vm, 'reboot');
      await this.serial(id, async () => {
        if (vm.domain) return; // someone started it meanwhile
        await this.createDomain(vm, { paused: false, bootCount: Math.max(old.bootCount, vm.status.bootCount) + 1 });
      });
      return;
    }
    await this.serial(id, async () => {
      const vm = this.get(id);
      const bootCount = this.built(vm).bootCount;
      const reason = await this.requestShutdown(vm, 'reboot', timeoutMs);
      // the domain went another way (hard shutdown, crash) while we waited: not ours to restart
      if (reason !== 'reboot') throw new DomainError('Cancelled', [id, `the domain went away (${reason}) during the reboot`]);
      await this.createDomain(vm, { paused: false, bootCount: Math.max(bootCount, vm.status.bootCount) + 1 });
    });
  }

  async suspend(id: string): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      const d = this.built(vm);
      const path = vm.config.suspendImage;
      if (!path) throw new DomainError('Internal_error', [`VM ${id} has no suspend image path`]);
      const gone = () => vm.domain !== d;
      d.request = 'suspend';
      d.acked = false;
      this.vmChanged(vm);
      const f = vm.status.faults;
      const failed = () => {
        d.request = undefined;
        d.acked = false;
        this.vmChanged(vm);
        return new DomainError('Failed_to_suspend', [id, String(SUSPEND_TIMEOUT_MS / 1000)]);
      };
      const neverAcks = d.paused || !!f.ignoreShutdown;
      const acked = await this.waitFor(() => gone() || this.canAck(vm), neverAcks ? Math.min(SUSPEND_TIMEOUT_MS, this.maxWaitMs) : SUSPEND_TIMEOUT_MS);
      if (gone()) throw new DomainError('Cancelled', [id, 'the domain went away while suspending']);
      if (!acked) throw failed();
      d.acked = true;
      if (f.refuseShutdown) {
        // acknowledged, but the guest never gets to its suspended state
        this.vmChanged(vm);
        await this.waitFor(gone, Math.min(SUSPEND_TIMEOUT_MS, this.maxWaitMs));
        if (gone()) throw new DomainError('Cancelled', [id, 'the domain went away while suspending']);
        throw failed();
      }
      d.paused = true; // the guest has quiesced; its memory is now stable
      this.vmChanged(vm);
      await writeImage(path, { vm: id, memory: d.memoryActual, vcpus: d.vcpus, bootCount: d.bootCount, domainType: vm.config.domainType });
      if (gone()) throw new DomainError('Cancelled', [id, 'the domain went away while suspending']);
      vm.status.suspended = true;
      this.destroyDomain(vm, 'suspend');
    });
  }

  async resume(id: string, opts: { paused: boolean }): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      // As xenopsd: a VM without a domain resumes from whatever image its configuration names
      // (a reverted checkpoint's image was written before this backend knew the VM as suspended).
      if (vm.domain || (!vm.status.suspended && !vm.config.suspendImage)) throw new DomainError('Bad_power_state', [this.powerState(vm), 'Suspended']);
      const path = vm.config.suspendImage;
      if (!path) throw new DomainError('Internal_error', [`VM ${id} has no suspend image path`]);
      const image = await readImage(path, id);
      await this.createDomain(vm, { paused: opts.paused, bootCount: image.bootCount, restore: { memory: image.memory, vcpus: image.vcpus } });
    });
  }

  async setMemoryDynamicRange(id: string, min: number, max: number): Promise<void> {
    if (!(min >= 0 && min <= max)) throw new DomainError('Internal_error', [`bad dynamic range [${min}, ${max}]`]);
    await this.serial(id, async () => {
      const vm = this.get(id);
      const old = vm.config;
      vm.config = { ...old, memoryDynamicMin: min, memoryDynamicMax: max };
      const d = vm.domain;
      if (d && vm.config.domainType !== 'pv_in_pvh') {
        try {
          this.squeezed.setDomainRange(d.domid, min, max); // rebalances; may refuse
          d.memory = { ...d.memory, dynamicMin: min, dynamicMax: max };
        } catch (e) {
          vm.config = old;
          throw e;
        }
      }
      this.vmChanged(vm);
    });
  }

  async setVcpus(id: string, n: number): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      const d = this.built(vm);
      if (!Number.isInteger(n) || n < 1 || n > vm.config.vcpuMax) throw new DomainError('Invalid_vcpus', [String(n)]);
      d.vcpus = n;
      this.vmChanged(vm);
    });
  }

  async setXenstoreData(id: string, data: Record<string, string>): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      this.built(vm).xenstore = { ...data };
      vm.config.xenstoreData = { ...data };
      this.vmChanged(vm);
    });
  }

  // ---- DomainManager: devices ---------------------------------------------------------------

  /** The lowest disk number no VBD of the VM uses (configured or plugged). */
  private freeVbdPosition(vm: Vm): string {
    const used = new Set<string>();
    for (const v of vm.config.vbds) if (v.position !== undefined) used.add(v.position);
    for (const v of Object.values(vm.domain?.vbds ?? {})) used.add(v.position);
    let n = 0;
    while (used.has(String(n))) n++;
    return String(n);
  }

  private storeVbd(vm: Vm, vbd: VbdConfig): void {
    vm.config = { ...vm.config, vbds: upsert(vm.config.vbds, vbd) };
  }

  async vbdPlug(vmId: string, vbd: VbdConfig): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.built(vm);
      if (d.vbds[vbd.id]) throw new DomainError('Device_is_connected', [vbd.id]);
      const position = vbd.position ?? this.freeVbdPosition({ ...vm, config: { ...vm.config, vbds: vm.config.vbds.filter((v) => v.id !== vbd.id) } });
      const clash = vm.config.vbds.find((v) => v.id !== vbd.id && v.position === position) ?? Object.entries(d.vbds).find(([, v]) => v.position === position);
      if (clash) throw new DomainError('Already_exists', ['VBD', position]);
      this.storeVbd(vm, { ...vbd, position });
      d.vbds[vbd.id] = { position, backend: vbd.backend };
      this.persist(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd.id });
    });
  }

  async vbdUnplug(vmId: string, vbd: string, force: boolean): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.live(vm);
      if (!d.vbds[vbd]) throw new DomainError('Device_not_connected', [vbd]);
      if (!force && vm.status.faults.refuseUnplug) throw new DomainError('Device_detach_rejected', ['VBD', vbd, 'the guest refused to release the device']);
      delete d.vbds[vbd];
      this.persist(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd });
    });
  }

  /** A removable-media VBD of the VM, and its live state if plugged. */
  private removable(vm: Vm, vbd: string): { config: VbdConfig; plugged?: { position: string; backend?: string } } {
    const config = vm.config.vbds.find((v) => v.id === vbd);
    if (!config) throw new DomainError('Does_not_exist', ['VBD', vbd]);
    if (config.type === 'Disk') throw new DomainError('Media_not_ejectable', [vbd]);
    const plugged = vm.domain?.vbds[vbd];
    if (vm.domain && !plugged) throw new DomainError('Device_not_connected', [vbd]);
    return { config, plugged };
  }

  async vbdInsert(vmId: string, vbd: string, backend: string): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const { config, plugged } = this.removable(vm, vbd);
      if ((plugged ? plugged.backend : config.backend) !== undefined) throw new DomainError('Media_present', [vbd]);
      if (plugged) plugged.backend = backend;
      this.storeVbd(vm, { ...config, backend });
      this.persist(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd });
    });
  }

  async vbdEject(vmId: string, vbd: string): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const { config, plugged } = this.removable(vm, vbd);
      if ((plugged ? plugged.backend : config.backend) === undefined) throw new DomainError('Media_not_present', [vbd]);
      if (plugged) plugged.backend = undefined;
      this.storeVbd(vm, { ...config, backend: undefined });
      this.persist(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd });
    });
  }

  async vifPlug(vmId: string, vif: VifConfig): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.built(vm);
      if (d.vifs[vif.id]) throw new DomainError('Device_is_connected', [vif.id]);
      const clash = vm.config.vifs.find((v) => v.id !== vif.id && v.position === vif.position);
      if (clash) throw new DomainError('Already_exists', ['VIF', String(vif.position)]);
      vm.config = { ...vm.config, vifs: upsert(vm.config.vifs, vif) };
      d.vifs[vif.id] = { position: vif.position };
      if (d.guestAgent) d.guestAgent = this.agentFor(vm); // the guest configures the new interface
      this.vmChanged(vm);
      this.changed({ kind: 'vif', vm: vmId, id: vif.id });
    });
  }

  async vifUnplug(vmId: string, vif: string, force: boolean): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.live(vm);
      if (!d.vifs[vif]) throw new DomainError('Device_not_connected', [vif]);
      if (!force && vm.status.faults.refuseUnplug) throw new DomainError('Device_detach_rejected', ['VIF', vif, 'the guest refused to release the device']);
      delete d.vifs[vif];
      if (d.guestAgent) d.guestAgent = this.agentFor(vm);
      this.vmChanged(vm);
      this.changed({ kind: 'vif', vm: vmId, id: vif });
    });
  }

  async deviceState(vmId: string, id: string): Promise<DeviceState> {
    await this.save();
    const vm = this.get(vmId);
    const vbd = vm.config.vbds.find((v) => v.id === id);
    const vif = vm.config.vifs.find((v) => v.id === id);
    const liveVbd = vm.domain?.vbds[id];
    const liveVif = vm.domain?.vifs[id];
    if (!vbd && !vif && !liveVbd && !liveVif) throw new DomainError('Does_not_exist', ['device', id]);
    if (vbd || liveVbd) {
      return { vm: vmId, id, plugged: !!liveVbd, position: liveVbd?.position ?? vbd?.position, backend: liveVbd ? liveVbd.backend : vbd?.backend };
    }
    return { vm: vmId, id, plugged: !!liveVif, position: String(liveVif?.position ?? vif!.position) };
  }

  // ---- DomainManager: host, updates ---------------------------------------------------------

  async hostMemory(): Promise<HostMemory> {
    return { total: this.squeezed.total, free: this.squeezed.free() };
  }

  /**
   * Changes after `token`: one Update per changed object (coalesced: an object that changed
   * five times appears once), waiting up to timeoutMs when there are none. A token from
   * another backend instance (or "") gets every object the backend has seen, so nothing is
   * lost across a restart.
   */
  async updates(token: string, timeoutMs: number): Promise<{ updates: Update[]; token: string }> {
    const [epoch, n] = token.split('/');
    const since = epoch === this.epoch ? Number(n) || 0 : 0;
    const pending = () => [...this.changes.values()].filter((c) => c.seq > since);
    if (pending().length === 0 && !this.closed) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          this.updateWaiters.delete(done);
          resolve();
        };
        const t = setTimeout(done, timeoutMs);
        this.updateWaiters.add(done);
      });
    }
    await this.save();
    return { updates: pending().map((c) => c.update), token: `${this.epoch}/${this.seq}` };
  }

  // ---- faults -------------------------------------------------------------------------------

  /** Makes a VM's guest misbehave (see Fault). Synchronous: the effect is visible at once. */
  inject(id: string, fault: Fault): void {
    const vm = this.get(id);
    const f = vm.status.faults;
    if (typeof fault === 'object') f.slowBootMs = fault.slowBootMs;
    else if (fault === 'refuse-shutdown') f.refuseShutdown = true;
    else if (fault === 'ignore-shutdown') f.ignoreShutdown = true;
    else if (fault === 'refuse-unplug') f.refuseUnplug = true;
    else if (fault === 'crash') {
      this.live(vm);
      this.destroyDomain(vm, 'crash');
    } else {
      this.built(vm);
      this.scheduleHalt(vm, fault === 'guest-reboot' ? 'reboot' : 'halt', this.shutdownTimeMs);
    }
    this.persist(id);
    this.trySave();
  }

  /**
   * The guest's own disk I/O (a workload inside the VM): reads or writes the disk plugged as
   * VBD `vbd` through its backend file, as tapdisk would for a real domain. Writes need a
   * read-write VBD; either needs a built domain with the VBD plugged.
   */
  async guestDiskIo(id: string, vbd: string, op: { offset: number; write?: Buffer; length?: number }): Promise<Buffer> {
    return this.serial(id, async () => {
      const vm = this.get(id);
      const d = this.built(vm);
      const plugged = d.vbds[vbd];
      const config = vm.config.vbds.find((v) => v.id === vbd);
      if (!plugged || !config) throw new DomainError('Device_not_connected', [vbd]);
      if (!plugged.backend) throw new DomainError('Media_not_present', [vbd]);
      if (op.write && config.mode !== 'RW') throw new DomainError('Internal_error', [`VBD ${vbd} is read-only`]);
      const disk = await openDiskFile(plugged.backend, { readOnly: !op.write });
      try {
        if (op.write) {
          await disk.write(op.offset, op.write);
          return op.write;
        }
        return await disk.read(op.offset, op.length ?? 0);
      } finally {
        await disk.close();
      }
    });
  }

  /** Removes the sticky faults (refuse/ignore shutdown, refuse unplug, slow boot). */
  clearFaults(id: string): void {
    this.get(id).status.faults = {};
    this.persist(id);
    this.trySave();
  }

  /** The squeezed broker's view, for tests and diagnostics. */
  memoryBroker(): Squeezed {
    return this.squeezed;
  }

  /**
   * Stops every timer and wait (operations in flight fail with Cancelled). The domains stay
   * recorded on disk: a new backend on the same directory finds them running.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.saveRetry);
    this.saveRetry = undefined;
    this.trySave(); // a last try (what it cannot save, nobody has been told of)
    this.closed = true;
    this.store.close();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const cancel = new DomainError('Cancelled', ['backend closed']);
    for (const w of this.saveWaiters) w.reject(cancel);
    this.saveWaiters.clear();
    for (const s of [...this.sleepers]) s(cancel);
    this.sleepers.clear();
    this.kicks.clear();
    const waiters = this.updateWaiters;
    this.updateWaiters = new Set();
    for (const w of waiters) w();
  }
}

// ---- helpers ------------------------------------------------------------------------------------

function upsert<T extends { id: string }>(list: T[], item: T): T[] {
  return list.some((x) => x.id === item.id) ? list.map((x) => (x.id === item.id ? item : x)) : [...list, item];
}

/** xenopsd's VBD.add / VIF.add refuse two devices at one position. */
function assertNoDuplicates(c: VmConfig): void {
  const seen = new Set<string>();
  for (const v of c.vbds) {
    if (v.position === undefined) continue;
    if (seen.has(v.position)) throw new DomainError('Already_exists', ['VBD', v.position]);
    seen.add(v.position);
  }
  const vifs = new Set<number>();
  for (const v of c.vifs) {
    if (vifs.has(v.position)) throw new DomainError('Already_exists', ['VIF', String(v.position)]);
    vifs.add(v.position);
  }
}

/** data/meminfo_total and data/meminfo_free, KiB, as a Linux guest reports them. */
function meminfo(bytes: number): Record<string, string> {
  const kib = Math.floor(bytes / 1024);
  return { total: String(kib), free: String(Math.floor(kib * 0.6)) };
}

/** A stable private address for a MAC: the guest's DHCP lease on the simulated network. */
export function ipv4ForMac(mac: string): string {
  const h = createHash('sha256').update(mac.toLowerCase()).digest();
  return `10.${h[0]! % 250}.${h[1]! % 250}.${(h[2]! % 250) + 2}`;
}

/** The IPv6 link-local address (EUI-64) an interface with this MAC configures for itself. */
export function linkLocalForMac(mac: string): string {
  const b = mac.split(':').map((x) => parseInt(x, 16));
  if (b.length !== 6 || b.some((x) => Number.isNaN(x))) return 'fe80::1';
  const eui = [b[0]! ^ 0x02, b[1]!, b[2]!, 0xff, 0xfe, b[3]!, b[4]!, b[5]!];
  const groups = [0, 2, 4, 6].map((i) => ((eui[i]! << 8) | eui[i + 1]!).toString(16));
  return `fe80::${groups.join(':')}`;
}

/** The OS a simulated guest runs, guessed from the VM's name (as installed from its template). */
function osFor(c: VmConfig): { osVersion: Record<string, string>; pvDriversVersion: Record<string, string> } {
  const name = c.name.toLowerCase();
  const linuxTools = { major: '8', minor: '4', micro: '0', build: '1' };
  if (/windows|\bwin(10|11|20\d\d)\b/.test(name)) {
    const desktop = /(windows|win) ?1[01]\b/.exec(name);
    return {
      osVersion: desktop
        ? { name: `Microsoft Windows ${desktop[0].endsWith('11') ? '11' : '10'} Pro|C:\\Windows|\\Device\\Harddisk0\\Partition2`, distro: 'windows', major: '10', minor: '0', spmajor: '0', spminor: '0' }
        : { name: 'Microsoft Windows Server 2022 Standard|C:\\Windows|\\Device\\Harddisk0\\Partition2', distro: 'windows', major: '10', minor: '0', spmajor: '0', spminor: '0' },
      pvDriversVersion: { major: '9', minor: '4', micro: '0', build: '146' },
    };
  }
  if (/ubuntu/.test(name)) {
    return { osVersion: { name: 'Ubuntu 22.04.4 LTS', distro: 'ubuntu', major: '22', minor: '04', uname: '5.15.0-simulated' }, pvDriversVersion: linuxTools };
  }
  if (/centos|rhel|red ?hat|rocky|alma|oracle/.test(name)) {
    return { osVersion: { name: 'Rocky Linux 9.3 (Blue Onyx)', distro: 'rocky', major: '9', minor: '3', uname: '5.14.0-simulated.el9' }, pvDriversVersion: linuxTools };
  }
  return { osVersion: { name: 'Debian GNU/Linux 12', distro: 'debian', major: '12', minor: '0', uname: '6.1.0-simulated' }, pvDriversVersion: linuxTools };
}

// ---- suspend images -----------------------------------------------------------------------------
//
// Layout: page 0 holds a JSON header (magic, VM id, memory size, vCPUs, boot count, sample
// offsets, SHA-256 of the sample pages); a few pages of pseudo-random "guest memory" (seeded by
// the VM id and boot count) sit at offsets spread over the image, the last at its very end; the
// rest is a hole. The file's logical size is the guest's memory, its allocation a few pages.

const IMAGE_MAGIC = 'xapi-ts simulated suspend image';
const IMAGE_VERSION = 1;
const PAGE = 4096;
const SAMPLE_PAGES = 8;

interface ImageHeader {
  magic: string;
  version: number;
  vm: string;
  memory: number;
  vcpus: number;
  bootCount: number;
  domainType: string;
  offsets: number[];
  sha256: string;
}

/** A page of the guest's simulated memory: deterministic for (VM, boot, page number). */
function memoryPage(vm: string, bootCount: number, n: number): Buffer {
  const out = Buffer.alloc(PAGE);
  let block = createHash('sha256').update(`${vm}/${bootCount}/${n}`).digest();
  for (let off = 0; off < PAGE; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** Where the sample pages go: spread over [PAGE, memory), the last one at the end. */
function sampleOffsets(memory: number): number[] {
  const pages = Math.floor(memory / PAGE);
  if (pages < 2) return [];
  const count = Math.min(SAMPLE_PAGES, pages - 1);
  const offsets = new Set<number>();
  for (let i = 0; i < count; i++) offsets.add((1 + Math.floor(((pages - 2) * i) / Math.max(1, count - 1))) * PAGE);
  return [...offsets].sort((a, b) => a - b);
}

function samplesDigest(vm: string, bootCount: number, offsets: number[]): string {
  const sum = createHash('sha256');
  offsets.forEach((_, i) => sum.update(memoryPage(vm, bootCount, i)));
  return sum.digest('hex');
}

async function writeImage(path: string, h: { vm: string; memory: number; vcpus: number; bootCount: number; domainType: string }): Promise<void> {
  const offsets = sampleOffsets(h.memory);
  const header: ImageHeader = { magic: IMAGE_MAGIC, version: IMAGE_VERSION, ...h, offsets, sha256: samplesDigest(h.vm, h.bootCount, offsets) };
  const head = Buffer.alloc(PAGE);
  const json = Buffer.from(JSON.stringify(header));
  if (json.length > PAGE) throw new DomainError('Internal_error', ['suspend image header too large']);
  json.copy(head);
  if (path.endsWith('.vhd')) {
    // A suspend VDI: xapi made it at least as large as the memory. The header goes last, so an
    // image cut short by a crash never verifies.
    const disk = await openDiskFile(path, { readOnly: false });
    try {
      if (disk.size < h.memory) throw new DomainError('Internal_error', [`suspend VDI ${path} is smaller than the memory (${h.memory})`]);
      for (const [i, off] of offsets.entries()) await disk.write(off, memoryPage(h.vm, h.bootCount, i));
      await disk.write(0, head);
    } finally {
      await disk.close();
    }
    return;
  }
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.partial`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.truncate(h.memory); // the logical size: all of the guest's memory, as a hole
    for (const [i, off] of offsets.entries()) await fh.write(memoryPage(h.vm, h.bootCount, i), 0, PAGE, off);
    await fh.write(head, 0, PAGE, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  // a crash mid-write leaves the .partial file, never a plausible-looking truncated image
  await rename(tmp, path);
}

/** Reads and verifies a memory image; any damage is Internal_error (the VM stays Suspended). */
async function readImage(path: string, vm: string): Promise<{ memory: number; vcpus: number; bootCount: number }> {
  const bad = (why: string) => new DomainError('Internal_error', [`suspend image ${path}: ${why}`]);
  let disk;
  try {
    disk = await openDiskFile(path, { readOnly: true });
  } catch (e) {
    throw bad(`cannot open: ${(e as Error).message}`);
  }
  // A raw image file is exactly the memory; a suspend VDI may be larger (rounded to its blocks).
  const exact = !path.endsWith('.vhd');
  try {
    const size = disk.size;
    if (size < PAGE) throw bad('truncated (no header)');
    const head = await disk.read(0, PAGE);
    let h: ImageHeader;
    try {
      const end = head.indexOf(0);
      h = JSON.parse(head.subarray(0, end === -1 ? PAGE : end).toString('utf8')) as ImageHeader;
    } catch {
      throw bad('corrupt header');
    }
    if (h.magic !== IMAGE_MAGIC || h.version !== IMAGE_VERSION) throw bad('not a suspend image');
    if (h.vm !== vm) throw bad(`belongs to VM ${h.vm}`);
    if (exact ? size !== h.memory : size < h.memory) throw bad(`is ${size} bytes, the header says ${h.memory} (truncated?)`);
    if (JSON.stringify(h.offsets) !== JSON.stringify(sampleOffsets(h.memory))) throw bad('corrupt header');
    const sum = createHash('sha256');
    for (const off of h.offsets) sum.update(await disk.read(off, PAGE));
    const digest = sum.digest('hex');
    // the pages must match the header, and the header must match the memory the VM had
    if (digest !== h.sha256 || digest !== samplesDigest(vm, h.bootCount, h.offsets)) throw bad('checksum mismatch');
    return { memory: h.memory, vcpus: h.vcpus, bootCount: h.bootCount };
  } finally {
    await disk.close();
  }
}
