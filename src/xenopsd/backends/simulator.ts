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
//   what xapi was told is on disk, and one operation's many steps cost one append (sim-saver.ts).
//   On a full disk that rule holds by waiting: nothing about an unsaved change is told until
//   the save is retried successfully (see SimSaver.save()).
// - Faults can be injected for tests: see Fault and inject().
//
// This file is the domain life cycle and the DomainManager operations. Beside it: sim-model.ts
// (the records kept per VM and domain), sim-guest.ts (what the guest agent reports),
// sim-suspend-image.ts (suspend images), sim-devices.ts (device positions and media),
// sim-timers.ts (guest timers and waits), sim-updates.ts (the updates feed), sim-saver.ts (when
// the state is saved) and sim-state.ts (how it is stored).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import {
  DomainError,
  type DeviceState,
  type DomainManager,
  type HostCounters,
  type HostMemory,
  type MigrationChannel,
  type MigrationReceiveHooks,
  type MigrationReport,
  type MigrationSendHooks,
  type MigrationTarget,
  type Update,
  type VbdConfig,
  type VifConfig,
  type VmConfig,
  type VmState,
} from '../interface.js';
import { dom0MemoryBytes, type Machine } from '../machine.js';
import { Squeezed } from '../squeezed.js';
import { Mutex } from '../../util/mutex.js';
import { openDiskFile } from '../../storage/disk-file.js';
import { SimStateStore } from './sim-state.js';
import { balloons, domainMemory, powerState, type Domain, type Fault, type Reason, type Vm } from './sim-model.js';
import { guestAgentReport, meminfo } from './sim-guest.js';
import { readImage, writeImage } from './sim-suspend-image.js';
import { assertNoDuplicates, deviceStateOf, freeVbdPosition, removableVbd, storeVbd, upsert } from './sim-devices.js';
import { SimTimers } from './sim-timers.js';
import { DiskWorkload } from './sim-disk-workload.js';
import { SimCounters } from './sim-counters.js';
import { UpdateFeed } from './sim-updates.js';
import { SimSaver } from './sim-saver.js';
import { SimScreens } from './sim-screens.js';
import { DEFAULT_DIRTY_RATE, discard, install, receiveMigration, sendMigration, type SimMigrationCore } from './sim-migrate.js';

export type { Fault } from './sim-model.js';
export { ipv4ForMac, linkLocalForMac } from './sim-guest.js';

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
  /** How fast a guest writes its memory when its VM names no rate (bytes/s); default 4 MiB/s. */
  dirtyRate?: number;
}

/** Our client name with squeezed (xenopsd logs in as itself). */
const CLIENT = 'xenopsd';
/** How long a suspend waits for the guest to acknowledge and save (xenopsd's is similar). */
const SUSPEND_TIMEOUT_MS = 1_200_000;

export class SimulatorBackend implements DomainManager {
  private readonly vms = new Map<string, Vm>();
  private readonly domids = new Map<number, string>();
  private readonly squeezed: Squeezed;
  private readonly queues = new Map<string, Mutex>();
  private lastDomid = 0;
  private closed = false;
  private readonly saver: SimSaver<Vm>;

  private readonly bootTimeMs: number;
  private readonly agentDelayMs: number;
  private readonly shutdownTimeMs: number;
  private readonly maxWaitMs: number;
  private readonly now: () => number;
  private readonly agentEnabled: boolean;

  private readonly timers = new SimTimers();
  private readonly feed = new UpdateFeed();
  /** VMs a live migration is arriving for now. */
  private readonly receiving = new Set<string>();
  private readonly dirtyRate: number;
  private readonly migrationCore: SimMigrationCore;
  /** The guests' own disk writes (other_config simulator_disk_write_rate); a failed write is dropped, as a guest's I/O error would be. */
  private readonly diskWorkload = new DiskWorkload(
    () => this.vms.values(),
    () => undefined,
  );

  private readonly counting: SimCounters;
  /** The guests' text screens, which their consoles show. */
  private readonly screens = new SimScreens();

  constructor(opts: SimulatorOptions) {
    this.bootTimeMs = opts.bootTimeMs ?? 50;
    this.agentDelayMs = opts.agentDelayMs ?? this.bootTimeMs;
    this.shutdownTimeMs = opts.shutdownTimeMs ?? 50;
    this.maxWaitMs = opts.maxWaitMs ?? 1000;
    this.now = opts.now ?? Date.now;
    this.agentEnabled = opts.guestAgent ?? true;
    this.dirtyRate = opts.dirtyRate ?? DEFAULT_DIRTY_RATE;
    const dir = join(opts.stateDir, 'xenopsd');
    mkdirSync(dir, { recursive: true });
    const store = new SimStateStore<Vm>(dir);
    this.saver = new SimSaver(
      store,
      {
        record: (id) => {
          const vm = this.vms.get(id);
          return vm && { config: vm.config, status: vm.status, domain: vm.domain, incoming: vm.incoming };
        },
        lastDomid: () => this.lastDomid,
      },
      { retryMs: opts.saveRetryMs ?? 1000, onSaving: opts.onSaving },
    );
    this.squeezed = new Squeezed({
      total: opts.machine.memoryBytes,
      dom0: dom0MemoryBytes(opts.machine),
      onTarget: (domid, target) => this.onTarget(domid, target),
    });
    this.squeezed.login(CLIENT);
    this.migrationCore = this.makeMigrationCore();
    this.counting = new SimCounters(opts.machine, this.diskWorkload);
    this.load(store);
    this.saver.trySave();
  }

  // ---- persistence ----------------------------------------------------------------------------
  // A change marks its VM (saver.mark); whatever leaves the backend awaits saver.save() first.

  /** Reads the backend's "DB" back: the domains are still there, as they would be under xenopsd. */
  private load(store: SimStateStore<Vm>): void {
    const saved = store.load();
    this.lastDomid = saved.lastDomid;
    for (const [id, vm] of saved.vms) this.vms.set(id, vm);
    for (const [id, vm] of this.vms) {
      const d = vm.domain;
      if (d && !d.built) {
        // VM_create ran but VM_build never finished (the process died): like xenopsd's
        // "reboot me" marker, the half-built domain is not trusted; it is torn down.
        vm.domain = undefined;
        this.saver.mark(id);
      } else if (d) {
        this.domids.set(d.domid, id);
        this.lastDomid = Math.max(this.lastDomid, d.domid);
        this.squeezed.adoptDomain(d.domid, d.memory, d.memoryTarget, balloons(vm));
        // A migration that died during its live rounds never paused the guest: it just carries
        // on. One that paused it waits for xapi to say where the VM is (resolveMigration).
        if (d.migratingOut && !d.pausedForMigration) {
          d.migratingOut = undefined;
          this.saver.mark(id);
        }
        this.resumeGuest(vm);
      }
      if (vm.incoming) {
        // a whole image that arrived before the process died, paused until resolveMigration
        this.domids.set(vm.incoming.domid, id);
        this.lastDomid = Math.max(this.lastDomid, vm.incoming.domid);
        this.squeezed.adoptDomain(vm.incoming.domid, vm.incoming.memory, vm.incoming.memoryTarget, false);
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
    this.saver.mark(vm.config.id);
  }

  // ---- changes and the per-VM queue ---------------------------------------------------------

  /** Records a change in the updates feed, and has the waits in progress re-check their condition. */
  private changed(update: Update): void {
    if (update.kind === 'vm') {
      const vm = this.vms.get(update.id);
      if (vm) this.screens.observe(vm);
      else this.screens.forget(update.id);
    }
    this.feed.add(update);
    this.timers.kick();
  }

  /** Persist + announce a VM's change. */
  private vmChanged(vm: Vm): void {
    this.saver.mark(vm.config.id);
    this.changed({ kind: 'vm', id: vm.config.id });
  }

  /** One operation at a time per VM, in arrival order (xenopsd's per-VM queue). */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    let q = this.queues.get(id);
    if (!q) {
      q = new Mutex();
      this.queues.set(id, q);
    }
    return q.run(async () => {
      if (this.closed) throw new DomainError('Cancelled', ['backend closed']);
      try {
        return await fn();
      } finally {
        await this.saver.save(); // the caller is about to hear how it went
      }
    });
  }

  // ---- lookups ------------------------------------------------------------------------------

  private get(id: string): Vm {
    const vm = this.vms.get(id);
    if (!vm) throw new DomainError('Does_not_exist', ['VM', id]);
    return vm;
  }

  /** The VM's domain; Bad_power_state(found, 'Running') when it has none. */
  private live(vm: Vm): Domain {
    if (!vm.domain) throw new DomainError('Bad_power_state', [powerState(vm), 'Running']);
    return vm.domain;
  }

  private built(vm: Vm): Domain {
    const d = this.live(vm);
    if (!d.built) throw new DomainError('Domain_not_built', []);
    return d;
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
  private async createDomain(
    vm: Vm,
    o: { paused: boolean; bootCount: number; restore?: { memory: number; vcpus: number } },
  ): Promise<void> {
    const c = vm.config;
    const mem = domainMemory(c);
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
    await this.timers.until(() => vm.domain !== d, vm.status.faults.slowBootMs ?? this.bootTimeMs);
    if (vm.domain !== d) throw new DomainError('Cancelled', [c.id, 'the domain was destroyed while being built']);

    const order = [...c.vbds.filter((v) => v.mode === 'RW'), ...c.vbds.filter((v) => v.mode !== 'RW')];
    for (const v of order) {
      if (v.backend === undefined && v.type === 'Disk') continue; // nothing to attach
      const position = v.position ?? freeVbdPosition(vm);
      storeVbd(vm, { ...v, position });
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
    this.timers.after(ms, () => {
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
    d.guestAgent = guestAgentReport(vm.config, d);
    if (balloons(vm)) this.squeezed.setBalloon(d.domid, true);
    this.changed({ kind: 'vm', id: vm.config.id });
  }

  /** The guest shuts itself down (asked to, or on its own); after `ms` the domain is gone. */
  private scheduleHalt(vm: Vm, reason: Reason, ms: number): void {
    const d = vm.domain!;
    const at = Date.now() + ms;
    d.haltAt = at;
    d.haltReason = reason;
    this.timers.after(ms, () => {
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
    this.saver.mark(vm.config.id);
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
    const acked = await this.timers.until(() => gone() || this.canAck(vm), neverAcks ? Math.min(timeoutMs, this.maxWaitMs) : timeoutMs);
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
    const done = await this.timers.until(gone, f.refuseShutdown ? Math.min(remaining, this.maxWaitMs) : remaining);
    if (!done) {
      d.request = undefined;
      d.acked = false;
      this.vmChanged(vm);
      throw new DomainError('Failed_to_shutdown', [id, String(timeoutMs / 1000)]);
    }
    return vm.status.lastShutdownReason ?? kind;
  }

  // ---- DomainManager: VMs -------------------------------------------------------------------

  async add(config: VmConfig): Promise<void> {
    assertNoDuplicates(config);
    await this.serial(config.id, async () => {
      const vm = this.vms.get(config.id);
      // a running domain keeps what it was built with; the config is for the next build
      if (vm) vm.config = structuredClone(config);
      else
        this.vms.set(config.id, {
          config: structuredClone(config),
          status: { suspended: false, lastStartTime: 0, bootCount: 0, faults: {} },
        });
      this.saver.mark(config.id);
    });
  }

  async remove(id: string): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      if (vm.domain) throw new DomainError('Bad_power_state', [powerState(vm), 'Halted']);
      this.vms.delete(id);
      this.saver.mark(id);
      this.changed({ kind: 'vm', id });
    });
  }

  async list(): Promise<VmState[]> {
    return Promise.all([...this.vms.keys()].map((id) => this.stat(id)));
  }

  async stat(id: string): Promise<VmState> {
    await this.saver.save();
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
      powerState: powerState(vm),
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
      migration:
        vm.incoming || d?.pausedForMigration
          ? { incoming: vm.incoming?.domid, outgoing: d?.pausedForMigration ? d.domid : undefined }
          : undefined,
    };
  }

  async start(id: string, opts: { paused: boolean }): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      if (vm.domain || vm.status.suspended) throw new DomainError('Bad_power_state', [powerState(vm), 'Halted']);
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
      await this.saver.save();
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
      const acked = await this.timers.until(
        () => gone() || this.canAck(vm),
        neverAcks ? Math.min(SUSPEND_TIMEOUT_MS, this.maxWaitMs) : SUSPEND_TIMEOUT_MS,
      );
      if (gone()) throw new DomainError('Cancelled', [id, 'the domain went away while suspending']);
      if (!acked) throw failed();
      d.acked = true;
      if (f.refuseShutdown) {
        // acknowledged, but the guest never gets to its suspended state
        this.vmChanged(vm);
        await this.timers.until(gone, Math.min(SUSPEND_TIMEOUT_MS, this.maxWaitMs));
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
      if (vm.domain || (!vm.status.suspended && !vm.config.suspendImage))
        throw new DomainError('Bad_power_state', [powerState(vm), 'Suspended']);
      const path = vm.config.suspendImage;
      if (!path) throw new DomainError('Internal_error', [`VM ${id} has no suspend image path`]);
      const image = await readImage(path, id);
      await this.createDomain(vm, {
        paused: opts.paused,
        bootCount: image.bootCount,
        restore: { memory: image.memory, vcpus: image.vcpus },
      });
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

  async vbdPlug(vmId: string, vbd: VbdConfig): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.built(vm);
      if (d.vbds[vbd.id]) throw new DomainError('Device_is_connected', [vbd.id]);
      const position =
        vbd.position ?? freeVbdPosition({ ...vm, config: { ...vm.config, vbds: vm.config.vbds.filter((v) => v.id !== vbd.id) } });
      const clash =
        vm.config.vbds.find((v) => v.id !== vbd.id && v.position === position) ??
        Object.entries(d.vbds).find(([, v]) => v.position === position);
      if (clash) throw new DomainError('Already_exists', ['VBD', position]);
      storeVbd(vm, { ...vbd, position });
      d.vbds[vbd.id] = { position, backend: vbd.backend };
      this.saver.mark(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd.id });
    });
  }

  async vbdUnplug(vmId: string, vbd: string, force: boolean): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.live(vm);
      if (!d.vbds[vbd]) throw new DomainError('Device_not_connected', [vbd]);
      if (!force && vm.status.faults.refuseUnplug)
        throw new DomainError('Device_detach_rejected', ['VBD', vbd, 'the guest refused to release the device']);
      delete d.vbds[vbd];
      this.saver.mark(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd });
    });
  }

  async vbdInsert(vmId: string, vbd: string, backend: string): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const { config, plugged } = removableVbd(vm, vbd);
      if ((plugged ? plugged.backend : config.backend) !== undefined) throw new DomainError('Media_present', [vbd]);
      if (plugged) plugged.backend = backend;
      storeVbd(vm, { ...config, backend });
      this.saver.mark(vmId);
      this.changed({ kind: 'vbd', vm: vmId, id: vbd });
    });
  }

  async vbdEject(vmId: string, vbd: string): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const { config, plugged } = removableVbd(vm, vbd);
      if ((plugged ? plugged.backend : config.backend) === undefined) throw new DomainError('Media_not_present', [vbd]);
      if (plugged) plugged.backend = undefined;
      storeVbd(vm, { ...config, backend: undefined });
      this.saver.mark(vmId);
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
      if (d.guestAgent) d.guestAgent = guestAgentReport(vm.config, d); // the guest configures the new interface
      this.vmChanged(vm);
      this.changed({ kind: 'vif', vm: vmId, id: vif.id });
    });
  }

  async vifUnplug(vmId: string, vif: string, force: boolean): Promise<void> {
    await this.serial(vmId, async () => {
      const vm = this.get(vmId);
      const d = this.live(vm);
      if (!d.vifs[vif]) throw new DomainError('Device_not_connected', [vif]);
      if (!force && vm.status.faults.refuseUnplug)
        throw new DomainError('Device_detach_rejected', ['VIF', vif, 'the guest refused to release the device']);
      delete d.vifs[vif];
      if (d.guestAgent) d.guestAgent = guestAgentReport(vm.config, d);
      this.vmChanged(vm);
      this.changed({ kind: 'vif', vm: vmId, id: vif });
    });
  }

  async deviceState(vmId: string, id: string): Promise<DeviceState> {
    await this.saver.save();
    return deviceStateOf(vmId, this.get(vmId), id);
  }

  // ---- DomainManager: host, updates ---------------------------------------------------------

  attachConsole(id: string, protocol: 'rfb' | 'vt100', stream: Duplex): void {
    this.screens.attach(this.get(id), protocol, stream);
  }

  async hostMemory(): Promise<HostMemory> {
    return { total: this.squeezed.total, free: this.squeezed.free() };
  }

  async counters(): Promise<HostCounters> {
    return this.counting.read(this.now(), this.vms.values(), await this.hostMemory());
  }

  /**
   * Changes after `token`: one Update per changed object (coalesced: an object that changed
   * five times appears once), waiting up to timeoutMs when there are none. A token from
   * another backend instance (or "") gets every object the backend has seen, so nothing is
   * lost across a restart.
   */
  async updates(token: string, timeoutMs: number): Promise<{ updates: Update[]; token: string }> {
    const since = this.feed.since(token);
    await this.feed.wait(since, timeoutMs);
    await this.saver.save();
    return this.feed.after(since);
  }

  // ---- DomainManager: live migration (sim-migrate.ts) --------------------------------------

  async migrateSend(id: string, target: MigrationTarget, hooks: MigrationSendHooks): Promise<MigrationReport> {
    return this.serial(id, () => sendMigration(this.migrationCore, this.get(id), target, hooks));
  }

  /**
   * Not in the VM's queue: in a migration to this same host the sender holds it for the whole
   * migration. The receiver touches only the incoming domain until the sender says GO.
   */
  async migrateReceive(config: VmConfig, channel: MigrationChannel, hooks: MigrationReceiveHooks): Promise<void> {
    if (this.closed) throw new DomainError('Cancelled', ['backend closed']);
    assertNoDuplicates(config);
    await receiveMigration(this.migrationCore, structuredClone(config), channel, (domid) => hooks.owned(domid), this.receiving);
  }

  async resolveMigration(id: string, keep: number | undefined): Promise<void> {
    await this.serial(id, async () => {
      const vm = this.get(id);
      const d = vm.domain;
      const outgoing = d?.pausedForMigration ? d : undefined;
      if (vm.incoming && vm.incoming.domid === keep) install(this.migrationCore, vm);
      else discard(this.migrationCore, vm);
      if (outgoing && vm.domain === outgoing) {
        if (outgoing.domid === keep) {
          // it never left: it carries on here
          outgoing.migratingOut = undefined;
          outgoing.pausedForMigration = undefined;
          this.run(vm);
          this.vmChanged(vm);
        } else this.migrationCore.dropDomain(vm, outgoing);
      }
    });
  }

  /** What the migrations use of this backend's insides. */
  private makeMigrationCore(): SimMigrationCore {
    return {
      squeezed: this.squeezed,
      client: CLIENT,
      defaultDirtyRate: this.dirtyRate,
      vm: (id) => this.vms.get(id),
      adopt: (config) => {
        const vm = this.vms.get(config.id);
        if (vm) {
          if (!vm.domain) vm.config = config; // one leaving for this same host keeps its own
          return { vm, created: false };
        }
        const fresh: Vm = { config, status: { suspended: false, lastStartTime: 0, bootCount: 0, faults: {} } };
        this.vms.set(config.id, fresh);
        return { vm: fresh, created: true };
      },
      allocateDomid: () => this.allocateDomid(),
      registerDomain: (vm, d) => {
        this.domids.set(d.domid, vm.config.id);
      },
      dropDomain: (vm, d) => {
        if (vm.domain === d) vm.domain = undefined;
        if (vm.incoming === d) vm.incoming = undefined;
        if (this.domids.get(d.domid) === vm.config.id) this.domids.delete(d.domid);
        this.squeezed.releaseDomain(d.domid);
        this.vmChanged(vm);
        for (const id of Object.keys(d.vbds)) this.changed({ kind: 'vbd', vm: vm.config.id, id });
        for (const id of Object.keys(d.vifs)) this.changed({ kind: 'vif', vm: vm.config.id, id });
      },
      forget: (id) => {
        this.vms.delete(id);
        this.saver.mark(id);
        this.changed({ kind: 'vm', id });
      },
      changed: (vm) => this.vmChanged(vm),
      save: () => this.saver.save(),
      run: (vm) => this.run(vm),
      scheduleOsUp: (vm, ms) => this.scheduleOsUp(vm, ms),
      scheduleHalt: (vm, reason, ms) => this.scheduleHalt(vm, reason, ms),
      setBalloon: (vm) => {
        const d = vm.domain;
        if (d && balloons(vm)) this.squeezed.setBalloon(d.domid, true);
      },
      sleep: async (ms) => {
        await this.timers.until(() => false, ms);
      },
      diskIdle: (d) => this.diskWorkload.idle(d),
    };
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
    this.saver.mark(id);
    this.saver.trySave();
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
          this.diskWorkload.count(d, vbd, op.write.length);
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
    this.saver.mark(id);
    this.saver.trySave();
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
    const cancel = new DomainError('Cancelled', ['backend closed']);
    this.saver.close(cancel); // after a last try at saving (what it cannot save, nobody has been told of)
    this.closed = true;
    this.timers.close(cancel);
    this.diskWorkload.close();
    this.feed.close();
  }
}
