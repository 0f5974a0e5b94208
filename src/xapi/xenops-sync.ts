// Keeps the database in step with the domain manager (xapi's xapi_xenops.ml): builds the
// configuration xapi pushes for a VM, turns backend state into VM, VM_metrics, VM_guest_metrics,
// VBD/VIF and console records, follows the backend's updates, and resynchronises after an xapi
// restart. xapi never assumes an operation worked: after every operation, and on every update,
// it re-reads the backend's state and writes what it finds.
import { randomUUID } from 'node:crypto';
import type { HostContext } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { newRef } from '../api/implicit.js';
import { untyped, type Row } from '../db/interface.js';
import type { console_protocol, DbClassName, Records, VM_metrics_record, VM_record } from '../schema/generated.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { DomainError, type DomainManager, type VmConfig, type VmState } from '../xenopsd/interface.js';
import { updateAllowedOperations } from './vm-lifecycle.js';
import { clearDeviceOperations } from './device-checks.js';
import { Mutex } from '../util/mutex.js';
import type { Storage } from './storage.js';
import { updateVdiAllowedOperations } from './storage-operations.js';

/** VM.other_config `simulator_dirty_rate`: how fast a simulated guest writes its memory, bytes/s. */
function dirtyRateOf(vm: Row<'VM'>): number | undefined {
  const text = vm.other_config.simulator_dirty_rate;
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
  private token = '';
  private stopped = false;
  private loop?: Promise<void>;

  constructor(
    private readonly host: HostContext,
    readonly backend: DomainManager,
    readonly storage: Storage,
  ) {}

  /** The configuration pushed to the backend before a start (xapi's Xenopsd_metadata.push). */
  async config(vmRef: string): Promise<VmConfig> {
    const db = this.host.db;
    const vm = await db.get('VM', vmRef);
    const vbds = [];
    for (const ref of vm.VBDs) {
      const vbd = await db.get('VBD', ref);
      const vdi = vbd.VDI === NULL_REF ? undefined : await db.tryGet('VDI', vbd.VDI);
      vbds.push({
        id: vbd.uuid,
        position: vbd.userdevice === 'autodetect' ? undefined : vbd.userdevice,
        mode: vbd.mode,
        type: vbd.type,
        // vdi_attach on this host: the file the domain reads and writes
        backend: vbd.empty === true || !vdi ? undefined : await this.storage.attachPath(vbd.VDI, vbd.mode === 'RW'),
        unpluggable: vbd.unpluggable === true,
      });
    }
    const vifs = [];
    for (const ref of vm.VIFs) {
      const vif = await db.get('VIF', ref);
      const net = await db.get('network', vif.network);
      vifs.push({ id: vif.uuid, position: Number(vif.device), mac: vif.MAC, mtu: vif.MTU, bridge: net.bridge });
    }
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

  private lockOf(vmRef: string): Mutex {
    let lock = this.refreshLocks.get(vmRef);
    if (!lock) {
      lock = new Mutex();
      this.refreshLocks.set(vmRef, lock);
    }
    return lock;
  }

  /** update_vm: write what the backend says about one VM into the database. */
  async refresh(vmRef: string): Promise<void> {
    await this.lockOf(vmRef).run(() => this.refreshNow(vmRef));
  }

  /**
   * Runs an operation's backend calls with the update loop kept off the VM (xapi ignores the
   * domain manager's events for a VM it is starting, and suppresses them while it migrates
   * one): the states a domain passes through on the way (Paused while it is built, restored
   * or saved) never reach the database; the operation's own refresh writes where it ended.
   * Begins under the VM's refresh lock, so a refresh of the loop already under way finishes
   * first.
   */
  async whileOperating<T>(vmRef: string, fn: () => Promise<T>): Promise<T> {
    await this.lockOf(vmRef).run(async () => {
      this.operating.set(vmRef, (this.operating.get(vmRef) ?? 0) + 1);
    });
    try {
      return await fn();
    } finally {
      const n = (this.operating.get(vmRef) ?? 1) - 1;
      if (n > 0) this.operating.set(vmRef, n);
      else this.operating.delete(vmRef);
    }
  }

  /** A destroyed VM needs no refresh lock. */
  forget(vmRef: string): void {
    this.refreshLocks.delete(vmRef);
  }

  private async refreshNow(vmRef: string, fromLoop = false): Promise<void> {
    if (fromLoop && this.operating.has(vmRef)) return;
    const db = this.host.db;
    const vm = await db.tryGet('VM', vmRef);
    if (!vm || vm.is_control_domain === true) return;
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
    if (!live) {
      // force_state_reset: nothing is attached to a VM that is not running
      for (const ref of vm.VIFs) await this.updateChanged('VIF', ref, { currently_attached: false });
      for (const ref of vm.VBDs)
        if (await this.updateChanged('VBD', ref, { currently_attached: false })) await this.vbdAttachmentChanged(ref);
      if (power === 'Halted') changes.requires_reboot = false;
    }
    await this.updateChanged('VM', vmRef, changes);
    if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) {
      const metrics: Partial<VM_metrics_record> = {
        memory_actual: live && state ? state.memoryActual : 0,
        VCPUs_number: live && state ? state.vcpus : 0,
        current_domain_type: live && state ? state.domainType : 'unspecified',
        hvm: live && state ? state.domainType === 'hvm' : false,
      };
      // start_time stays that of the last boot once the VM stops
      if (live && state?.lastStartTime) metrics.start_time = formatDateTime(new Date(state.lastStartTime));
      // What the domain was built with decides whether it may move (xenopsd reports it at build).
      if (live && vm.power_state !== 'Running' && vm.power_state !== 'Paused') {
        const on = (key: string) => ['true', '1'].includes(vm.platform[key]?.toLowerCase() ?? '');
        metrics.nomigrate = on('nomigrate');
        metrics.nested_virt = on('nested-virt');
      }
      if (await this.updateChanged('VM_metrics', vm.metrics, metrics)) {
        await db.update('VM_metrics', vm.metrics, { last_updated: now });
      }
    }
    if (live && state?.guestAgent) await this.updateGuestMetrics(vmRef, vm, state, now);
    if (live) await this.syncDevices(vm);
    await this.syncConsoles(vmRef, live ? (state?.consoles ?? []) : []);
    await updateAllowedOperations(db, vmRef);
  }

  /**
   * Writes only the fields that differ, as xapi's update_vm compares with what it saw before:
   * an unchanged object gets no write and no event. Returns whether anything was written.
   */
  private async updateChanged<C extends DbClassName>(cls: C, ref: string, changes: Partial<Records[C]>): Promise<boolean> {
    // Field by field, by name: the database's untyped face.
    const db = untyped(this.host.db);
    const row = await db.tryGet(cls, ref);
    if (!row) return false;
    const diff = Object.fromEntries(Object.entries(changes).filter(([k, v]) => JSON.stringify(row[k]) !== JSON.stringify(v)));
    if (Object.keys(diff).length === 0) return false;
    await db.update(cls, ref, diff);
    return true;
  }

  private async updateGuestMetrics(vmRef: string, vm: Row<'VM'>, state: VmState, now: string): Promise<void> {
    const db = this.host.db;
    const ga = state.guestAgent!;
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
    const existing = vm.guest_metrics;
    if (existing !== NULL_REF && (await db.tryGet('VM_guest_metrics', existing))) {
      if (await this.updateChanged('VM_guest_metrics', existing, fields))
        await db.update('VM_guest_metrics', existing, { last_updated: now });
    } else {
      const ref = newRef();
      await db.create('VM_guest_metrics', ref, { uuid: randomUUID(), other_config: {}, disks: {}, ...fields, last_updated: now });
      await db.update('VM', vmRef, { guest_metrics: ref });
    }
  }

  /** update_vbd / update_vif: currently_attached is what the backend says is plugged. */
  private async syncDevices(vm: Row<'VM'>): Promise<void> {
    const db = this.host.db;
    for (const [cls, refs] of [
      ['VBD', vm.VBDs],
      ['VIF', vm.VIFs],
    ] as const) {
      for (const ref of refs) {
        const dev = await db.get(cls, ref);
        let plugged = false;
        try {
          plugged = (await this.backend.deviceState(vm.uuid, dev.uuid)).plugged;
        } catch (e) {
          if (!(e instanceof DomainError)) throw e;
        }
        if (dev.currently_attached !== plugged) {
          await db.update(cls, ref, { currently_attached: plugged });
          if (cls === 'VBD') await this.vbdAttachmentChanged(ref);
        }
      }
    }
  }

  /** A disk's attachment decides what may be done to its VDI (xapi's update_vbd). */
  private async vbdAttachmentChanged(vbdRef: string): Promise<void> {
    const vbd = await this.host.db.tryGet('VBD', vbdRef);
    if (vbd && !vbd.empty && vbd.VDI !== NULL_REF) await updateVdiAllowedOperations(this.host.db, vbd.VDI);
  }

  private async syncConsoles(vmRef: string, consoles: VmState['consoles']): Promise<void> {
    const db = this.host.db;
    const vm = await db.get('VM', vmRef);
    const have = new Map<console_protocol, string>();
    for (const ref of vm.consoles) {
      const c = await db.tryGet('console', ref);
      if (c) have.set(c.protocol, ref);
    }
    const want = new Set<console_protocol>(consoles.map((c) => c.protocol));
    for (const [protocol, ref] of have) {
      // a console on another host (the VM migrated here) is made again with this host's address
      const here = (await db.tryGet('console', ref))?.location.startsWith(`https://${this.host.config.address}/`);
      if (!want.has(protocol) || !here) {
        await db.destroy('console', ref);
        have.delete(protocol);
      }
    }
    for (const protocol of want) {
      if (have.has(protocol)) continue;
      const uuid = randomUUID();
      await db.create('console', newRef(), {
        uuid,
        protocol,
        location: `https://${this.host.config.address}/console?uuid=${uuid}`,
        VM: vmRef,
        other_config: {},
      });
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
          const vms = new Set<string>();
          for (const u of updates) vms.add(u.kind === 'vm' ? u.id : u.vm);
          for (const uuid of vms) {
            const ref = await this.host.db.refByUuid('VM', uuid);
            if (ref) await this.onUpdate(ref);
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
  private async onUpdate(ref: string): Promise<void> {
    const before = await this.host.db.get('VM', ref);
    await this.lockOf(ref).run(() => this.refreshNow(ref, true));
    const after = await this.host.db.get('VM', ref);
    const busy = Object.keys(after.current_operations).length > 0;
    if (busy || before.power_state === after.power_state || after.power_state !== 'Halted') return;
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
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.backend.close();
    await this.loop;
  }
}
