// What SR, PBD and VDI calls share (xapi's sm.ml, storage_utils.ml, message_forwarding.ml
// with_sr_andor_vdi): the drivers by SR type, the SR context a driver call gets from this host's
// PBD, SM errors as XenAPI errors, marking operations on SRs and VDIs (waiting while another
// runs, as xapi retries; the checks are storage-operations.ts), scan reconciliation, and the
// per-SR garbage collector.
import { randomUUID } from 'node:crypto';
import type { Call, HostContext } from '../api/context.js';
import { XapiError } from '../api/errors.js';
import { newRef } from '../api/implicit.js';
import { untyped, type Row } from '../db/interface.js';
import type { storage_operations, vdi_operations, VDI_record } from '../schema/generated.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { SmError, type SmDriver, type SrContext, type VdiInfo } from '../storage/driver.js';
import { makeDrivers } from '../storage/drivers.js';
import { gateOf, retryWithGlobalLock, withGlobalLock } from './retry.js';
import { untilStored } from '../db/until-stored.js';
import { srOperationError, updateSrAllowedOperations, updateVdiAllowedOperations, vdiOperationError } from './storage-operations.js';

const GC_DELAY_MS = 200;

export class Storage {
  readonly drivers: Map<string, SmDriver>;
  private readonly gcTimers = new Map<string, NodeJS.Timeout>();
  private readonly gcRunning = new Map<string, Promise<void>>();
  /** VDIs open for writing on the data path (import, copy target), by ref: how many handles. */
  private readonly writers = new Map<string, number>();
  private closed = false;

  constructor(readonly host: HostContext) {
    this.drivers = makeDrivers();
  }

  driver(type: string): SmDriver {
    const d = this.drivers.get(type.toLowerCase());
    if (!d) throw new XapiError('SR_UNKNOWN_DRIVER', [type]);
    return d;
  }

  async poolUuid(): Promise<string> {
    return (await this.host.db.get('pool', this.host.poolRef)).uuid;
  }

  /** This host's PBD for an SR (Sm.get_my_pbd_for_sr): SR_HAS_NO_PBDS if there is none. */
  async myPbd(srRef: string): Promise<[string, Row<'PBD'>]> {
    const pbds = await this.host.db.find('PBD', { SR: srRef, host: this.host.hostRef });
    if (pbds.length === 0) throw new XapiError('SR_HAS_NO_PBDS', [srRef]);
    return pbds[0]!;
  }

  /** The SR as a driver call sees it, through this host's PBD. `plugged` asserts the PBD is attached. */
  async context(srRef: string, opts: { plugged?: boolean } = {}): Promise<{ sr: Row<'SR'>; driver: SmDriver; ctx: SrContext }> {
    const sr = await this.host.db.get('SR', srRef);
    const driver = this.driver(sr.type);
    const [, pbd] = await this.myPbd(srRef);
    if (opts.plugged !== false && pbd.currently_attached !== true) throw new XapiError('SR_HAS_NO_PBDS', [srRef]);
    const deviceConfig = { ...pbd.device_config, SRmaster: 'true' };
    return { sr, driver, ctx: { uuid: sr.uuid, deviceConfig, poolUuid: await this.poolUuid() } };
  }

  /** Storage_utils.transform_storage_exn: SM failures as the XenAPI errors xapi raises. */
  error(e: unknown, srRef: string, vdiRef?: string): unknown {
    if (e instanceof XapiError) return e;
    if (!(e instanceof SmError)) {
      const msg = e instanceof Error ? e.message : String(e);
      const err = new XapiError('SR_BACKEND_FAILURE', ['', msg, '']);
      err.cause = e; // the driver's own failure and its stack, for whoever logs this
      return err;
    }
    switch (e.code) {
      case 'VDI_MISSING':
        return new XapiError('VDI_MISSING', [srRef, vdiRef ?? e.params[0] ?? '']);
      case 'VDI_LOCATION_MISSING':
        return new XapiError('VDI_LOCATION_MISSING', [srRef, e.params[0] ?? '']);
      case 'LOCATION_NOT_UNIQUE':
        return new XapiError('LOCATION_NOT_UNIQUE', [srRef, e.params[0] ?? '']);
      case 'SR_OPERATION_NOT_SUPPORTED':
        return new XapiError('SR_OPERATION_NOT_SUPPORTED', [srRef]);
      case 'SR_OWNED_BY_ANOTHER_POOL':
        return new XapiError('SR_NOT_SHARABLE', [srRef, this.host.hostRef]);
      default:
        return new XapiError(e.code, e.params);
    }
  }

  /**
   * A write into an SR that found no space (ENOSPC) as SR_FULL [requested; maximum]: the bytes
   * the operation needed and those still free on the SR. Other failures are returned as they are.
   */
  async spaceError(e: unknown, srRef: string, requested: number): Promise<unknown> {
    if ((e as NodeJS.ErrnoException | undefined)?.code !== 'ENOSPC') return e;
    let free = 0;
    try {
      const { driver, ctx } = await this.context(srRef);
      const st = await driver.stat(ctx);
      free = Math.max(0, st.free ?? st.physicalSize - st.physicalUtilisation);
    } catch {
      // the SR cannot say: report nothing free
    }
    return new XapiError('SR_FULL', [String(requested), String(free)]);
  }

  /** Runs a driver call, its failures mapped. */
  async sm<T>(srRef: string, fn: () => Promise<T>, vdiRef?: string): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw this.error(e, srRef, vdiRef);
    }
  }

  /** Does the SR's driver have this SM feature? */
  hasCap(sr: Row<'SR'>, cap: string): boolean {
    const d = this.drivers.get(sr.type);
    return d !== undefined && cap in d.features;
  }

  /**
   * with_sr_andor_vdi: marks the SR and/or VDI operation, runs fn, unmarks. While another
   * operation holds them the call waits (xapi's retry on OTHER_OPERATION_IN_PROGRESS, woken
   * when an operation ends) and can be cancelled meanwhile; other refusals are raised at once.
   * `precheck` runs first under the same lock (PBD.unplug's check of the SR's VDIs).
   */
  async withOp<T>(
    call: Call,
    target: { sr?: [string, storage_operations]; vdi?: [string, vdi_operations]; precheck?: () => Promise<void> },
    fn: () => Promise<T>,
  ): Promise<T> {
    const db = this.host.db;
    await retryWithGlobalLock(call, async () => {
      await target.precheck?.();
      if (target.sr) {
        const err = await srOperationError(db, target.sr[0], target.sr[1]);
        if (err) throw err;
        await this.mark('SR', target.sr[0], call.task, target.sr[1]);
      }
      if (target.vdi) {
        const err = await vdiOperationError(db, target.vdi[0], target.vdi[1]);
        if (err) {
          if (target.sr) await this.mark('SR', target.sr[0], call.task, undefined);
          throw err;
        }
        await this.mark('VDI', target.vdi[0], call.task, target.vdi[1]);
      }
    });
    try {
      return await fn();
    } finally {
      // the marks must come off even if the database refuses writes just now (a full disk)
      await untilStored(db, () =>
        withGlobalLock(this.host, async () => {
          if (target.vdi) await this.mark('VDI', target.vdi[0], call.task, undefined);
          if (target.sr) await this.mark('SR', target.sr[0], call.task, undefined);
        }),
      ).catch((e) => this.host.log.warn({ err: e }, 'unmarking a storage operation failed'));
      gateOf(this.host).broadcast();
    }
  }

  private async mark(cls: 'SR' | 'VDI', ref: string, task: string, op: storage_operations | vdi_operations | undefined): Promise<void> {
    // Either class: the same field, written through the database's by-name face.
    const db = untyped(this.host.db);
    const row = await db.tryGet(cls, ref);
    if (!row) return;
    const ops = { ...(row.current_operations as Record<string, string>) };
    if (op) ops[task] = op;
    else delete ops[task];
    await db.update(cls, ref, { current_operations: ops });
    if (cls === 'SR') await this.updateSrAllowed(ref);
    else await this.updateVdiAllowed(ref);
  }

  /** SR.allowed_operations: every operation that could start now. */
  async updateSrAllowed(srRef: string): Promise<void> {
    await updateSrAllowedOperations(this.host.db, srRef);
  }

  async updateVdiAllowed(vdiRef: string): Promise<void> {
    await updateVdiAllowedOperations(this.host.db, vdiRef);
  }

  /** A VDI record for what a driver reported (xapi fills the rest from the call). */
  async createVdi(srRef: string, info: VdiInfo, fields: Partial<VDI_record>): Promise<string> {
    // A background scan (after a GC run) may have met the new node first and made its record:
    // take that one over rather than make a second record for one location.
    const [found] = await this.host.db.find('VDI', { SR: srRef, location: info.location });
    const ref = found?.[0] ?? newRef();
    const smConfig: Record<string, string> = { ...(fields.sm_config ?? {}), vdi_type: info.vdiType };
    if (info.vhdParent) smConfig['vhd-parent'] = info.vhdParent;
    else delete smConfig['vhd-parent'];
    const row: Partial<VDI_record> = {
      type: 'user',
      sharable: false,
      other_config: {},
      xenstore_data: {},
      tags: [],
      managed: true,
      missing: false,
      on_boot: 'persist',
      snapshot_time: formatDateTime(new Date(0)),
      ...fields,
      uuid: info.uuid || randomUUID(),
      SR: srRef,
      location: info.location,
      virtual_size: info.virtualSize,
      physical_utilisation: info.physicalUtilisation,
      read_only: info.readOnly || fields.read_only === true,
      sm_config: smConfig,
    };
    if (found) await this.host.db.update('VDI', ref, { ...row, uuid: found[1].uuid });
    else await this.host.db.create('VDI', ref, { name_label: '', name_description: '', ...row });
    await this.updateVdiAllowed(ref);
    return ref;
  }

  /** Writes what the driver says now about a VDI (size, usage, parent) into its record. */
  async refreshVdi(vdiRef: string, info: VdiInfo): Promise<void> {
    const vdi = await this.host.db.get('VDI', vdiRef);
    const smConfig: Record<string, string> = { ...vdi.sm_config, vdi_type: info.vdiType };
    if (info.vhdParent) smConfig['vhd-parent'] = info.vhdParent;
    else delete smConfig['vhd-parent'];
    await this.host.db.update('VDI', vdiRef, {
      virtual_size: info.virtualSize,
      physical_utilisation: info.physicalUtilisation,
      sm_config: smConfig,
    });
  }

  /** VDI.update's work: what the driver says about the VDI now, written into its record. */
  async updateVdi(vdiRef: string): Promise<void> {
    const vdi = await this.host.db.get('VDI', vdiRef);
    const { driver, ctx } = await this.context(vdi.SR);
    await this.refreshVdi(vdiRef, await this.sm(vdi.SR, () => driver.vdiStat(ctx, vdi.location), vdiRef));
  }

  /** SR.update / the end of a scan: physical_size and physical_utilisation from the driver. */
  async updateStats(srRef: string): Promise<void> {
    const { driver, ctx } = await this.context(srRef);
    const st = await this.sm(srRef, () => driver.stat(ctx));
    let allocation = 0;
    for (const ref of (await this.host.db.get('SR', srRef)).VDIs) {
      const v = await this.host.db.tryGet('VDI', ref);
      if (v) allocation += v.virtual_size;
    }
    await this.host.db.update('SR', srRef, { physical_size: st.physicalSize, physical_utilisation: st.physicalUtilisation, virtual_allocation: allocation });
  }

  /**
   * sr_scan and xapi's reconciliation (xapi_sr.ml scan): records whose location vanished are
   * destroyed, new locations get records, existing ones are refreshed.
   */
  async scan(srRef: string): Promise<void> {
    const { driver, ctx } = await this.context(srRef);
    const found = await this.sm(srRef, () => driver.scan(ctx));
    const db = this.host.db;
    const byLocation = new Map(found.map((v) => [v.location, v]));
    for (const ref of (await db.get('SR', srRef)).VDIs) {
      const vdi = await db.tryGet('VDI', ref);
      if (!vdi) continue;
      const info = byLocation.get(vdi.location);
      if (info) {
        byLocation.delete(vdi.location);
        await this.refreshVdi(ref, info);
      } else if (Object.keys(vdi.current_operations).length === 0) {
        await this.destroyVdiRecord(ref);
      }
    }
    for (const info of byLocation.values()) {
      await this.createVdi(srRef, info, { name_label: info.vdiType === 'iso' ? info.location : '', read_only: info.readOnly });
    }
    await this.updateStats(srRef);
    const sr = await db.get('SR', srRef);
    const other = { ...sr.other_config };
    if ('dirty' in other) {
      delete other.dirty;
      await db.update('SR', srRef, { other_config: other });
    }
    // the SR's disks decide whether it may be destroyed
    await this.updateSrAllowed(srRef);
  }

  /** Drops a VDI record and what refers to it: its VBDs go, suspend_VDI links become null. */
  async destroyVdiRecord(vdiRef: string): Promise<void> {
    const db = this.host.db;
    const vdi = await db.tryGet('VDI', vdiRef);
    if (!vdi) return;
    for (const vbd of vdi.VBDs) if (await db.tryGet('VBD', vbd)) await db.destroy('VBD', vbd);
    for (const [vm] of await db.find('VM', { suspend_VDI: vdiRef })) await db.update('VM', vm, { suspend_VDI: NULL_REF });
    await db.destroy('VDI', vdiRef);
  }

  /** A VDI is open for writing until `release` (the GC leaves its chain alone meanwhile). */
  claimWriter(vdiRef: string): () => void {
    this.writers.set(vdiRef, (this.writers.get(vdiRef) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.writers.get(vdiRef) ?? 1) - 1;
      if (n > 0) this.writers.set(vdiRef, n);
      else this.writers.delete(vdiRef);
    };
  }

  /**
   * The locations of an SR's VDIs that something uses right now, which the GC must not
   * re-parent or replace: attached to a domain, written on the data path, under an operation of
   * their own (copy, set_on_boot, resize...) or of a VM of theirs (a start attaching them, a
   * clone or export reading them), or reset at each boot (merging a run's writes into the
   * parent would make them persist). The GC asks under the SR lock before every step.
   */
  async inUse(srRef: string): Promise<Set<string>> {
    const db = this.host.db;
    const used = new Set<string>();
    const sr = await db.tryGet('SR', srRef);
    for (const ref of sr?.VDIs ?? []) {
      const vdi = await db.tryGet('VDI', ref);
      if (!vdi) continue;
      const busy = vdi.on_boot === 'reset' || Object.keys(vdi.current_operations).length > 0 || this.writers.has(ref) || (await this.usedByVm(vdi));
      if (busy) used.add(vdi.location);
    }
    return used;
  }

  private async usedByVm(vdi: Row<'VDI'>): Promise<boolean> {
    for (const vbdRef of vdi.VBDs) {
      const vbd = await this.host.db.tryGet('VBD', vbdRef);
      if (!vbd) continue;
      if (vbd.currently_attached === true) return true;
      const vm = await this.host.db.tryGet('VM', vbd.VM);
      if (vm && Object.keys(vm.current_operations).length > 0) return true;
    }
    return false;
  }

  /** Is this VDI in use by a running domain (an attached VBD)? */
  async isActive(vdiRef: string): Promise<boolean> {
    const vdi = await this.host.db.tryGet('VDI', vdiRef);
    if (!vdi) return false;
    for (const vbd of vdi.VBDs) {
      const row = await this.host.db.tryGet('VBD', vbd);
      if (row && row.currently_attached === true) return true;
    }
    return false;
  }

  /**
   * At start-up: operations marked on SRs and VDIs by a process that died with them are not
   * running any more (xapi's cancel_tasks at dbsync); left marked they would block the objects.
   */
  async clearStaleOperations(): Promise<void> {
    for (const cls of ['SR', 'VDI'] as const) {
      for (const [ref, row] of await this.host.db.all(cls)) {
        if (Object.keys(row.current_operations).length === 0) continue;
        await this.host.db.update(cls, ref, { current_operations: {} });
        if (cls === 'SR') await this.updateSrAllowed(ref);
        else await this.updateVdiAllowed(ref);
      }
    }
  }

  /**
   * At start-up: disks (and VMs) an import or copy was filling when the process died. They carry
   * xapi's `import_task` key (VDI sm_config, VM other_config) naming a task that was still
   * pending, so is cancelled now; a half-written disk is not worth keeping.
   */
  async sweepUnfinishedImports(cancelled: Set<string>): Promise<void> {
    const db = this.host.db;
    for (const [ref, vm] of await db.all('VM')) {
      if (!cancelled.has(vm.other_config.import_task ?? '')) continue;
      for (const vbd of vm.VBDs) if (await db.tryGet('VBD', vbd)) await db.destroy('VBD', vbd);
      for (const vif of vm.VIFs) if (await db.tryGet('VIF', vif)) await db.destroy('VIF', vif);
      if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) await db.destroy('VM_metrics', vm.metrics);
      await db.destroy('VM', ref);
      this.host.log.warn({ vm: ref }, 'removed a VM whose import did not finish');
    }
    for (const [ref, vdi] of await db.all('VDI')) {
      if (!cancelled.has(vdi.sm_config.import_task ?? '')) continue;
      try {
        const { driver, ctx } = await this.context(vdi.SR);
        await driver.vdiDelete(ctx, vdi.location);
        this.kickGc(vdi.SR);
      } catch (e) {
        this.host.log.warn({ err: e, vdi: ref }, 'the data of an unfinished import could not be deleted');
      }
      await this.destroyVdiRecord(ref);
      this.host.log.warn({ vdi: ref }, 'removed a disk whose import did not finish');
    }
  }

  /** Kicks the SR's garbage collector soon (debounced); it runs only here, on the SR master. */
  kickGc(srRef: string): void {
    if (this.closed) return;
    clearTimeout(this.gcTimers.get(srRef));
    const t = setTimeout(() => {
      this.gcTimers.delete(srRef);
      void this.runGc(srRef).catch((e) => this.host.log.warn({ err: e, sr: srRef }, 'SR garbage collection failed'));
    }, GC_DELAY_MS);
    t.unref();
    this.gcTimers.set(srRef, t);
  }

  /** Runs a kicked GC now instead of after its delay, and waits until the SR's GC runs are done. */
  async settleGc(srRef: string): Promise<void> {
    const pending = this.gcTimers.get(srRef);
    if (pending) {
      clearTimeout(pending);
      this.gcTimers.delete(srRef);
      await this.runGc(srRef);
    }
    await this.gcRunning.get(srRef);
  }

  /** One GC run of an SR (serialised per SR); then a scan so records show the new tree. */
  async runGc(srRef: string): Promise<void> {
    const prev = this.gcRunning.get(srRef) ?? Promise.resolve();
    const run = prev.then(async () => {
      if (this.closed) return;
      const sr = await this.host.db.tryGet('SR', srRef);
      if (!sr) return;
      const { driver, ctx } = await this.context(srRef).catch(() => ({ driver: undefined, ctx: undefined }));
      if (!driver?.gc || !ctx) return;
      // Asked afresh at every step: a VM may start, or a copy begin, while the GC runs.
      const { changed } = await driver.gc(ctx, { inUse: () => this.inUse(srRef) });
      if (changed) {
        await this.scan(srRef);
        await this.host.db.commit();
      }
    });
    this.gcRunning.set(srRef, run.catch(() => undefined));
    return run;
  }

  /** Before a boot: an on_boot=reset VDI loses the writes of its previous run. */
  async resetOnBoot(vdiRef: string): Promise<void> {
    const vdi = await this.host.db.get('VDI', vdiRef);
    if (vdi.on_boot !== 'reset') return;
    const { driver, ctx } = await this.context(vdi.SR);
    await this.sm(vdi.SR, async () => driver.vdiReset?.(ctx, vdi.location), vdiRef);
    await this.updateVdi(vdiRef);
  }

  /** The file a domain uses for a VDI (vdi_attach on this host). */
  async attachPath(vdiRef: string, writable: boolean): Promise<string> {
    const vdi = await this.host.db.get('VDI', vdiRef);
    const { driver, ctx } = await this.context(vdi.SR);
    const r = await this.sm(vdi.SR, () => driver.vdiAttach(ctx, vdi.location, writable), vdiRef);
    return r.path;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.gcTimers.values()) clearTimeout(t);
    await Promise.all(this.gcRunning.values());
  }
}
