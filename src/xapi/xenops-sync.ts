// Keeps the database in step with the domain manager (xapi's xapi_xenops.ml): builds the
// configuration xapi pushes for a VM, turns backend state into VM, VM_metrics, VM_guest_metrics,
// VBD/VIF and console records, follows the backend's updates, and resynchronises after an xapi
// restart. xapi never assumes an operation worked: after every operation, and on every update,
// it re-reads the backend's state and writes what it finds.
import { randomUUID } from 'node:crypto';
import type { HostContext } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { newRef } from '../api/implicit.js';
import { untyped, type Db, type Row } from '../db/interface.js';
import type { console_protocol, DbClassName, Records, VM_metrics_record, VM_record, vm_power_state } from '../schema/generated.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { DomainError, type DomainManager, type VmConfig, type VmState } from '../xenopsd/interface.js';
import { updateAllowedOperations } from './vm-lifecycle.js';
import { clearDeviceOperations } from './device-checks.js';
import { Mutex } from '../util/mutex.js';
import type { Storage } from './storage.js';
import type { Rrdd } from '../rrdd/service.js';
import { updateVdiAllowedOperations } from './storage-operations.js';

/**
 * A simulated guest's setting from VM.other_config (a number >= 0): `simulator_dirty_rate`, how
 * fast it writes its memory, bytes/s; the others named where they are read.
 */
function dirtyRateOf(vm: Row<'VM'>, key = 'simulator_dirty_rate'): number | undefined {
  const text = vm.other_config[key];
  const rate = text === undefined ? Number.NaN : Number(text);
  return Number.isFinite(rate) && rate >= 0 ? rate : undefined;
}

/** xapi's transform_xenops_exn: backend errors as XenAPI errors. */
export function xenopsError(vmRef: string, e: unknown, deviceRef?: string): unknown {
  if (!(e instanceof DomainError)) return e;
  switch (e.kind) {
    case 'Device_detach_rejected':
      return new XapiError('DEVICE_DETACH_REJECTED', [e.args[0] ?? '', deviceRef ?? '', e.args[2] ?? '']);
    case 'Failed_to_suspend':
      return new XapiError('VM_SUSPEND_TIMEOUT', [vmRef, e.args[1] ?? '']);
    case 'Cannot_free_this_much_memory':
      return new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', e.args);
    case 'Failed_to_shutdown':
      return new XapiError('VM_SHUTDOWN_TIMEOUT', [vmRef, e.args[1] ?? e.args[0] ?? '']);
    case 'Failed_to_acknowledge_shutdown_request':
      return new XapiError('VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT', [vmRef]);
    case 'Bad_power_state':
      return new XapiError('VM_BAD_POWER_STATE', [vmRef, (e.args[1] ?? '').toLowerCase(), (e.args[0] ?? '').toLowerCase()]);
    case 'Cancelled':
      return new XapiError('TASK_CANCELLED', e.args);
    case 'Failed_to_contact_remote_service':
      return new XapiError('VM_MIGRATE_CONTACT_REMOTE_SERVICE_FAILED', []);
    default:
      return new XapiError('INTERNAL_ERROR', [e.message]);
  }
}

export class XenopsSync {
  /** This host's xcp-rrdd, told when a VM stops here (its RRD is archived); absent in unit tests. */
  rrdd?: Pick<Rrdd, 'vmStopped' | 'vmMigrated' | 'vmDestroyed'>;
  private token = '';
  private stopped = false;
  private loop?: Promise<void>;

  constructor(
    private readonly host: HostContext,
    readonly backend: DomainManager,
    readonly storage: Storage,
  ) {}

  /**
   * The configuration pushed to the backend before a start (xapi's Xenopsd_metadata.push);
   * `row`, the VM's row when the caller has just read it.
   */
  async config(vmRef: string, row?: Row<'VM'>, vdiMap: Record<string, string> = {}): Promise<VmConfig> {
    const db = this.host.db;
    const vm = row ?? (await db.get('VM', vmRef));
    this.refOfUuid.set(vm.uuid, vmRef); // the updates of the domain it makes name it by uuid
    // the devices' rows read at once (on a pool member: one request to the coordinator)
    const [disks, nics] = await Promise.all([
      Promise.all(
        vm.VBDs.map(async (ref) => {
          const vbd = await db.get('VBD', ref);
          // a storage migration's destination builds the domain on the disks' new VDIs
          const vdiRef = vdiMap[vbd.VDI] ?? vbd.VDI;
          return { vbd, vdiRef, vdi: vdiRef === NULL_REF ? undefined : await db.tryGet('VDI', vdiRef) };
        }),
      ),
      Promise.all(
        vm.VIFs.map(async (ref) => {
          const vif = await db.get('VIF', ref);
          return { vif, net: await db.get('network', vif.network) };
        }),
      ),
    ]);
    const vbds = [];
    for (const { vbd, vdiRef, vdi } of disks) {
      vbds.push({
        id: vbd.uuid,
        position: vbd.userdevice === 'autodetect' ? undefined : vbd.userdevice,
        mode: vbd.mode,
        type: vbd.type,
        // vdi_attach on this host: the file the domain reads and writes
        backend: vbd.empty === true || !vdi ? undefined : await this.storage.attachPath(vdiRef, vbd.mode === 'RW'),
        unpluggable: vbd.unpluggable === true,
      });
    }
    const vifs = nics.map(({ vif, net }) => ({
      id: vif.uuid,
      position: Number(vif.device),
      mac: vif.MAC,
      mtu: vif.MTU,
      bridge: net.bridge,
    }));
    return {
      id: vm.uuid,
      name: vm.name_label,
      domainType: vm.domain_type === 'unspecified' ? 'hvm' : vm.domain_type,
      memoryStaticMax: vm.memory_static_max,
      memoryDynamicMax: vm.memory_dynamic_max,
      memoryDynamicMin: vm.memory_dynamic_min,
      vcpuMax: vm.VCPUs_max,
      vcpus: vm.VCPUs_at_startup,
      shadowMultiplier: vm.HVM_shadow_multiplier,
      suspendImage: await this.suspendImagePath(vm),
      platform: vm.platform,
      xenstoreData: vm.xenstore_data,
      vbds,
      vifs,
      simDirtyRate: dirtyRateOf(vm),
      simDiskWriteRate: dirtyRateOf(vm, 'simulator_disk_write_rate'),
      simCpuLoad: dirtyRateOf(vm, 'simulator_cpu_load'),
      simNetRate: dirtyRateOf(vm, 'simulator_net_rate'),
    };
  }

  /** Where a VM's memory image lives while it is suspended: its suspend VDI, attached here. */
  async suspendImagePath(vm: Row<'VM'>): Promise<string | undefined> {
    const vdi = vm.suspend_VDI;
    if (vdi === NULL_REF || !(await this.host.db.tryGet('VDI', vdi))) return undefined;
    return this.storage.attachPath(vdi, true);
  }

  async stat(vm: Row<'VM'>): Promise<VmState | undefined> {
    try {
      return await this.backend.stat(vm.uuid);
    } catch (e) {
      if (e instanceof DomainError && e.kind === 'Does_not_exist') return undefined;
      throw e;
    }
  }

  /** Refreshes of one VM run one at a time: the API's and the update loop's would race. */
  private readonly refreshLocks = new Map<string, Mutex>();
  /** VMs an API operation is driving through the backend now, with how many operations. */
  private readonly operating = new Map<string, number>();
  /** Of those, how many operations refresh the VM once their backend calls are done. */
  private readonly refreshFollows = new Map<string, number>();
  /** A counter ordering the loop's receipts of updates and the refreshes' reads of the backend. */
  private tick = 0;
  /** Per VM, the tick at which a refresh last read the backend's state of it. */
  private readonly statTick = new Map<string, number>();
  /** The refs of the VMs refreshed here, by uuid (what the update loop is told of). */
  private readonly refOfUuid = new Map<string, string>();

  private lockOf(vmRef: string): Mutex {
    let lock = this.refreshLocks.get(vmRef);
    if (!lock) {
      lock = new Mutex();
      this.refreshLocks.set(vmRef, lock);
    }
    return lock;
  }

  /**
   * update_vm: write what the backend says about one VM into the database. `known`, the VM's
   * row as the caller last read it: the rows the refresh compares with are read together with
   * the VM (on a pool member, one request to the coordinator rather than two), and read again
   * only if the VM turns out to point at other rows.
   */
  async refresh(vmRef: string, known?: Row<'VM'>): Promise<void> {
    await this.lockOf(vmRef).run(() => this.refreshNow(vmRef, false, known));
  }

  /**
   * Runs an operation's backend calls with the update loop kept off the VM (xapi ignores the
   * domain manager's events for a VM it is starting, and suppresses them while it migrates
   * one): the states a domain passes through on the way (Paused while it is built, restored
   * or saved) never reach the database; the operation's own refresh writes where it ended.
   * Begins under the VM's refresh lock, so a refresh of the loop already under way finishes
   * first. `refreshFollows`: the caller refreshes the VM once this returns, which covers every
   * update the loop received meanwhile (see start).
   */
  async whileOperating<T>(vmRef: string, fn: () => Promise<T>, refreshFollows = false): Promise<T> {
    await this.lockOf(vmRef).run(async () => {
      count(this.operating, vmRef, 1);
      if (refreshFollows) count(this.refreshFollows, vmRef, 1);
    });
    try {
      return await fn();
    } finally {
      count(this.operating, vmRef, -1);
      if (refreshFollows) count(this.refreshFollows, vmRef, -1);
    }
  }

  /** A destroyed VM needs no refresh lock. */
  forget(vmRef: string): void {
    this.refreshLocks.delete(vmRef);
    this.statTick.delete(vmRef);
    for (const [uuid, ref] of this.refOfUuid) if (ref === vmRef) this.refOfUuid.delete(uuid);
  }

  /**
   * The refresh itself; returns the power state the VM had and the one written, 'gone' if the
   * VM is not in the database, undefined if it was left alone (an operation drives it, it is
   * the control domain or it is another host's).
   */
  private async refreshNow(
    vmRef: string,
    fromLoop = false,
    known?: Row<'VM'>,
  ): Promise<[vm_power_state, vm_power_state] | 'gone' | undefined> {
    if (fromLoop && this.operating.has(vmRef)) return;
    const db = this.host.db;
    // started in the same turn as the VM's read, so both share a request
    const early = known && this.comparedRows(known);
    early?.catch(() => undefined); // awaited below unless the refresh stops first
    const vm = await db.tryGet('VM', vmRef);
    if (!vm) return 'gone';
    if (vm.is_control_domain === true) return;
    this.refOfUuid.set(vm.uuid, vmRef);
    this.statTick.set(vmRef, ++this.tick);
    const state = await this.stat(vm);
    // A live migration not settled yet (a paused copy waiting for resolveMigration): nothing
    // to report until it is, or the VM would show Halted or on two hosts meanwhile.
    if (state?.migration) return;
    // A VM that runs on another host of the pool is that host's domain manager's to report.
    const elsewhere = vm.resident_on !== NULL_REF && vm.resident_on !== this.host.hostRef;
    if (elsewhere && (!state || state.powerState === 'Halted')) return;
    const now = formatDateTime(new Date(this.host.now()));
    let power = state?.powerState ?? 'Halted';
    // A domain-less VM with a memory image stays Suspended: the backend only knows it has no domain.
    if (power === 'Halted' && vm.power_state === 'Suspended' && (!state || vm.suspend_VDI !== NULL_REF)) power = 'Suspended';
    const live = power === 'Running' || power === 'Paused';
    const changes: Partial<VM_record> = {
      power_state: power,
      domid: live && state ? state.domid : -1,
      resident_on: live ? this.host.hostRef : NULL_REF,
      scheduled_to_be_resident_on: NULL_REF,
    };
    if (state && live) changes.memory_target = state.memoryTarget;
    if (power === 'Halted') changes.requires_reboot = false;
    const guestAgent = live ? state?.guestAgent : undefined;

    const [vifs, vbds, metrics, guestRow, consoles] =
      early && sameComparedRefs(vm, known!) ? await early : await this.comparedRows(vm, guestAgent !== undefined);
    const guest = guestAgent ? guestRow : undefined;

    // What the backend says, as writes of the fields that differ (xapi's update_vm compares with
    // what it saw before: an unchanged object gets no write and no event). They go out together
    // and touch distinct fields, so the order they land in does not matter.
    const writes: (() => Promise<unknown>)[] = [];
    const update = <C extends DbClassName>(cls: C, ref: string, row: Row<C> | undefined, fields: Partial<Records[C]>, stamp?: object) => {
      const diff = row && changedFields(row, fields);
      if (!diff) return false;
      writes.push(() => untyped(db).update(cls, ref, { ...diff, ...stamp }));
      return true;
    };
    /** VBDs whose attachment changes: what may be done to their VDIs follows (xapi's update_vbd). */
    const reattached: Row<'VBD'>[] = [];
    if (!live) {
      // force_state_reset: nothing is attached to a VM that is not running
      for (const [ref, vif] of vifs) update('VIF', ref, vif, { currently_attached: false });
      for (const [ref, vbd] of vbds) if (update('VBD', ref, vbd, { currently_attached: false })) reattached.push(vbd!);
    }
    const vmChanges = changedFields(vm, changes);
    if (!live && (vm.power_state === 'Running' || vm.power_state === 'Paused') && !elsewhere) {
      this.rrdd
        ?.vmStopped(vm.uuid)
        .catch((e: unknown) => this.host.log.warn({ err: e, vm: vmRef }, 'archiving the RRD of a stopped VM failed'));
    }
    if (vmChanges) writes.push(() => db.update('VM', vmRef, vmChanges));
    if (metrics) {
      const fields: Partial<VM_metrics_record> = {
        memory_actual: live && state ? state.memoryActual : 0,
        VCPUs_number: live && state ? state.vcpus : 0,
        current_domain_type: live && state ? state.domainType : 'unspecified',
        hvm: live && state ? state.domainType === 'hvm' : false,
      };
      // start_time stays that of the last boot once the VM stops
      if (live && state?.lastStartTime) fields.start_time = formatDateTime(new Date(state.lastStartTime));
      // What the domain was built with decides whether it may move (xenopsd reports it at build).
      if (live && vm.power_state !== 'Running' && vm.power_state !== 'Paused') {
        const on = (key: string) => ['true', '1'].includes(vm.platform[key]?.toLowerCase() ?? '');
        fields.nomigrate = on('nomigrate');
        fields.nested_virt = on('nested-virt');
      }
      update('VM_metrics', vm.metrics, metrics, fields, { last_updated: now });
    }
    const madeGuestMetrics = guestAgent && this.guestMetricsWrites(vmRef, guest && [vm.guest_metrics, guest], guestAgent, now, writes);
    if (live) {
      // update_vbd / update_vif: currently_attached is what the backend says is plugged
      for (const [ref, vbd] of vbds) {
        if (vbd && update('VBD', ref, vbd, { currently_attached: await this.plugged(vm, vbd.uuid) })) reattached.push(vbd);
      }
      for (const [ref, vif] of vifs) if (vif) update('VIF', ref, vif, { currently_attached: await this.plugged(vm, vif.uuid) });
    }
    this.consoleWrites(vmRef, consoles, live ? (state?.consoles ?? []) : [], writes);
    // Nothing differs: the rows allowed_operations are worked out from are as they were, and so
    // is the list (xapi's update_vm recomputes it only when the power state, the domain or the
    // guest agent's report changed). An update loop's refresh after an operation's own ends here.
    if (writes.length === 0) return [vm.power_state, power];
    await Promise.all(writes.map((w) => w()));
    await Promise.all(reattached.map((vbd) => (vbd.empty || vbd.VDI === NULL_REF ? undefined : updateVdiAllowedOperations(db, vbd.VDI))));
    // the VM's row as read, or as this refresh's writes should have made it (read again)
    const written =
      vmChanges || madeGuestMetrics ? { ...vm, ...vmChanges, ...(madeGuestMetrics && { guest_metrics: madeGuestMetrics }) } : undefined;
    await updateAllowedOperations(db, vmRef, written ? { expected: written as Row<'VM'> } : { row: vm });
    return [vm.power_state, power];
  }

  /**
   * Every row a refresh compares with, read at once (on a pool member: one request to the
   * coordinator rather than one per row).
   */
  private comparedRows(vm: Row<'VM'>, guest = true) {
    const db = this.host.db;
    return Promise.all([
      rowsOf(db, 'VIF', vm.VIFs),
      rowsOf(db, 'VBD', vm.VBDs),
      vm.metrics !== NULL_REF ? db.tryGet('VM_metrics', vm.metrics) : undefined,
      guest && vm.guest_metrics !== NULL_REF ? db.tryGet('VM_guest_metrics', vm.guest_metrics) : undefined,
      rowsOf(db, 'console', vm.consoles),
    ]);
  }

  /** Whether the backend has a VM's device plugged (a device it does not know is not). */
  private async plugged(vm: Row<'VM'>, deviceUuid: string): Promise<boolean> {
    try {
      return (await this.backend.deviceState(vm.uuid, deviceUuid)).plugged;
    } catch (e) {
      if (!(e instanceof DomainError)) throw e;
      return false;
    }
  }

  /** The guest agent's report into the VM's guest metrics, made if it has none (returns the new one's ref). */
  private guestMetricsWrites(
    vmRef: string,
    existing: [string, Row<'VM_guest_metrics'>] | undefined,
    ga: NonNullable<VmState['guestAgent']>,
    now: string,
    writes: (() => Promise<unknown>)[],
  ): string | undefined {
    const db = this.host.db;
    const fields = {
      os_version: ga.osVersion,
      PV_drivers_version: ga.pvDriversVersion,
      PV_drivers_up_to_date: Object.keys(ga.pvDriversVersion).length > 0,
      PV_drivers_detected: Object.keys(ga.pvDriversVersion).length > 0,
      networks: ga.networks,
      other: ga.other,
      memory: ga.memory,
      live: true,
      can_use_hotplug_vbd: 'yes',
      can_use_hotplug_vif: 'yes',
    } as const;
    if (existing) {
      const [ref, row] = existing;
      const diff = changedFields(row, fields);
      if (diff) writes.push(() => db.update('VM_guest_metrics', ref, { ...diff, last_updated: now }));
      return undefined;
    }
    const ref = newRef();
    writes.push(
      () => db.create('VM_guest_metrics', ref, { uuid: randomUUID(), other_config: {}, disks: {}, ...fields, last_updated: now }),
      () => db.update('VM', vmRef, { guest_metrics: ref }),
    );
    return ref;
  }

  /** The VM's consoles made and destroyed to match the protocols the backend offers. */
  private consoleWrites(
    vmRef: string,
    rows: [string, Row<'console'> | undefined][],
    consoles: VmState['consoles'],
    writes: (() => Promise<unknown>)[],
  ): void {
    const db = this.host.db;
    const want = new Set<console_protocol>(consoles.map((c) => c.protocol));
    const here = `https://${this.host.config.address}/`;
    const have = new Map<console_protocol, string>();
    for (const [ref, c] of rows) {
      if (!c) continue;
      // A console made on another host (the VM migrated here) is made again with this host's address.
      if (want.has(c.protocol) && c.location.startsWith(here)) have.set(c.protocol, ref);
      else writes.push(() => db.destroy('console', ref));
    }
    for (const protocol of want) {
      if (have.has(protocol)) continue;
      const uuid = randomUUID();
      writes.push(() =>
        db.create('console', newRef(), {
          uuid,
          protocol,
          location: `https://${this.host.config.address}/console?uuid=${uuid}`,
          VM: vmRef,
          other_config: {},
        }),
      );
    }
  }

  /**
   * on_xapi_restart: the backend is the truth about what runs. VMs it runs that the database
   * does not place here are shut down; VMs the database places here that it does not run are
   * Halted; half-done operations are forgotten.
   */
  async resync(): Promise<void> {
    const db = this.host.db;
    const known = new Map((await this.backend.list()).map((s) => [s.id, s]));
    // Operations are the coordinator's, in its memory in xapi: they end when it restarts, not
    // when a member does.
    const coordinator = this.host.role.kind === 'master';
    for (const [ref, vm] of await db.all('VM')) {
      if (coordinator) {
        if (Object.keys(vm.current_operations).length > 0) await db.update('VM', ref, { current_operations: {} });
        await clearDeviceOperations(db, vm);
      }
      if (vm.is_control_domain === true) {
        if (coordinator) await updateAllowedOperations(db, ref);
        continue;
      }
      let state = known.get(vm.uuid);
      known.delete(vm.uuid);
      if (state?.migration) {
        // A live migration this host's previous process left half done: the database says which
        // domain is the VM (the commit wrote resident_on and domid); the other one goes.
        const keep = vm.resident_on === this.host.hostRef ? vm.domid : undefined;
        await this.backend
          .resolveMigration(vm.uuid, keep)
          .catch((e) => this.host.log.warn({ err: e, vm: ref }, 'settling a migration failed'));
        state = await this.stat(vm);
      }
      const here = vm.resident_on === this.host.hostRef || vm.resident_on === NULL_REF;
      if (state && state.powerState !== 'Halted' && !here) {
        await this.backend.shutdown(state.id).catch(() => undefined);
      }
      // a member looks only at what it runs or has a domain for (the rest is not its to report)
      if (coordinator || state || vm.resident_on === this.host.hostRef) await this.refresh(ref);
    }
    for (const orphan of known.values()) {
      if (orphan.powerState !== 'Halted') await this.backend.shutdown(orphan.id).catch(() => undefined);
      await this.backend.remove(orphan.id).catch(() => undefined);
    }
  }

  /** Follows the backend's updates until stop(). */
  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          const { updates, token } = await this.backend.updates(this.token, 5_000);
          // Updates a refresh reading the backend after they were made covers already: one
          // that began since they were received, or the one an operation driving the VM now
          // makes when its backend calls are done (and that operation's outcome is its own to
          // write, not a change the guest made). Re-reading and comparing every row of the VM
          // again would find nothing to write.
          const received = ++this.tick;
          const operated = new Set(this.refreshFollows.keys());
          const covered = (ref: string) => operated.has(ref) || (this.statTick.get(ref) ?? 0) > received;
          const uuids = new Set<string>();
          for (const u of updates) uuids.add(u.kind === 'vm' ? u.id : u.vm);
          // A VM refreshed here before is known by its uuid (a VM keeps its uuid and its ref
          // for life); the others are looked up together (on a pool member, one request).
          const refs = await Promise.all([...uuids].map((uuid) => this.refOfUuid.get(uuid) ?? this.host.db.refByUuid('VM', uuid)));
          for (const [i, ref] of refs.entries()) {
            if (ref && !covered(ref) && !(await this.onUpdate(ref))) {
              // gone: a VM made since with the same uuid is another row
              const uuid = [...uuids][i]!;
              if (this.refOfUuid.get(uuid) === ref) this.refOfUuid.delete(uuid);
              const now = await this.host.db.refByUuid('VM', uuid);
              if (now && now !== ref && !covered(now)) await this.onUpdate(now);
            }
          }
          await this.host.db.commit();
          // Only once stored: if the database refused them (a full disk), the same updates
          // come again on the next round, so what the domains did still reaches the database.
          this.token = token;
        } catch (e) {
          if (this.stopped) return;
          this.host.log.error({ err: e }, 'xenopsd update loop');
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    })();
  }

  /** A change the API did not ask for (guest agent data, a guest-initiated halt or reboot, a crash). */
  /** Returns false if the VM is not in the database (any more). */
  private async onUpdate(ref: string): Promise<boolean> {
    const refreshed = await this.lockOf(ref).run(() => this.refreshNow(ref, true));
    if (refreshed === 'gone') return false;
    // only a VM this refresh found halted, not by an operation, may have its action carried out
    if (!refreshed || refreshed[0] === refreshed[1] || refreshed[1] !== 'Halted') return true;
    const after = await this.host.db.get('VM', ref);
    const busy = Object.keys(after.current_operations).length > 0;
    if (busy || after.power_state !== 'Halted') return true;
    const state = await this.stat(after);
    const reason = state?.lastShutdownReason;
    const action =
      reason === 'reboot' ? after.actions_after_reboot : reason === 'crash' ? after.actions_after_crash : after.actions_after_shutdown;
    if (action === 'restart' || action === 'coredump_and_restart') {
      await this.backend.add(await this.config(ref));
      await this.backend
        .start(after.uuid, { paused: false })
        .catch((e) => this.host.log.warn({ err: e }, 'restart after guest shutdown failed'));
      await this.refresh(ref);
    }
    return true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.backend.close();
    await this.loop;
  }
}

/** Rows of `refs`, read at once (a missing one as undefined). */
function rowsOf<C extends DbClassName>(db: Db, cls: C, refs: string[]): Promise<[string, Row<C> | undefined][]> {
  return Promise.all(refs.map(async (ref) => [ref, await untyped(db).tryGet(cls, ref)] as [string, Row<C> | undefined]));
}

/** The fields of `changes` whose values differ from the row's, or undefined if none does. */
function changedFields(row: object, changes: object): Record<string, unknown> | undefined {
  const current = row as Record<string, unknown>;
  const diff = Object.fromEntries(Object.entries(changes).filter(([k, v]) => JSON.stringify(current[k]) !== JSON.stringify(v)));
  return Object.keys(diff).length > 0 ? diff : undefined;
}

/** Whether two readings of a VM point at the same rows a refresh compares with. */
function sameComparedRefs(a: Row<'VM'>, b: Row<'VM'>): boolean {
  const same = (x: readonly string[], y: readonly string[]) => x.length === y.length && x.every((r, i) => r === y[i]);
  return (
    a.metrics === b.metrics &&
    a.guest_metrics === b.guest_metrics &&
    same(a.VIFs, b.VIFs) &&
    same(a.VBDs, b.VBDs) &&
    same(a.consoles, b.consoles)
  );
}

/** Adds `by` to a per-VM count, dropping the VM at zero. */
function count(counts: Map<string, number>, vmRef: string, by: number): void {
  const n = (counts.get(vmRef) ?? 0) + by;
  if (n > 0) counts.set(vmRef, n);
  else counts.delete(vmRef);
}
