// xapi's storage side on this host (xapi's sm.ml): the SM drivers by SR type and the SR context a
// driver call gets through this host's PBD, the data path's calls (attach, reset on boot), and
// the one handle SR, PBD and VDI calls share for the rest, each in a file of its own:
// sm-errors.ts (SM failures as XenAPI errors, SR_FULL), storage-marks.ts (operation marks on SRs
// and VDIs), sr-scan.ts (records from what drivers report, scan's reconciliation), sr-gc.ts (the
// per-SR garbage collector's scheduling), storage-recovery.ts (clearing up after a dead process).
import type { Call, HostContext } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import type { Row } from '../db/interface.js';
import type { VDI_record } from '../schema/generated.js';
import type { SmDriver, SrContext, VdiInfo } from '../storage/driver.js';
import { makeDrivers } from '../storage/drivers.js';
import { smErrorToXapi, srFullError } from './sm-errors.js';
import { SrGc } from './sr-gc.js';
import { createVdiRecord, destroyVdiRecord, refreshVdiRecord, scanSr, updateSrStats, updateVdiRecord } from './sr-scan.js';
import { withStorageOp, type StorageOpTarget } from './storage-marks.js';
import { updateSrAllowedOperations, updateVdiAllowedOperations } from './storage-operations.js';
import { clearStaleOperations, sweepUnfinishedImports } from './storage-recovery.js';

export class Storage {
  readonly drivers: Map<string, SmDriver>;
  private readonly gc = new SrGc(this);

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
    return { sr, driver, ctx: { uuid: sr.uuid, deviceConfig, poolUuid: await this.poolUuid(), shared: sr.shared === true } };
  }

  /** Does the SR's driver have this SM feature? */
  hasCap(sr: Row<'SR'>, cap: string): boolean {
    const d = this.drivers.get(sr.type);
    return d !== undefined && cap in d.features;
  }

  // ---- SM failures (sm-errors.ts) ----

  /** Storage_utils.transform_storage_exn: SM failures as the XenAPI errors xapi raises. */
  error(e: unknown, srRef: string, vdiRef?: string): unknown {
    return smErrorToXapi(e, this.host.hostRef, srRef, vdiRef);
  }

  /** ENOSPC in a write into the SR as SR_FULL [requested; free]; other failures as they are. */
  async spaceError(e: unknown, srRef: string, requested: number): Promise<unknown> {
    return srFullError(e, requested, async () => {
      const { driver, ctx } = await this.context(srRef);
      const st = await driver.stat(ctx);
      return Math.max(0, st.free ?? st.physicalSize - st.physicalUtilisation);
    });
  }

  /** Runs a driver call, its failures mapped. */
  async sm<T>(srRef: string, fn: () => Promise<T>, vdiRef?: string): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw this.error(e, srRef, vdiRef);
    }
  }

  // ---- operation marks (storage-marks.ts) ----

  /** with_sr_andor_vdi: fn runs with the SR and/or VDI operation marked (see withStorageOp). */
  withOp<T>(call: Call, target: StorageOpTarget, fn: () => Promise<T>): Promise<T> {
    return withStorageOp(this.host, call, target, fn);
  }

  /** SR.allowed_operations: every operation that could start now. */
  async updateSrAllowed(srRef: string): Promise<void> {
    await updateSrAllowedOperations(this.host.db, srRef);
  }

  async updateVdiAllowed(vdiRef: string): Promise<void> {
    await updateVdiAllowedOperations(this.host.db, vdiRef);
  }

  // ---- records from what drivers report (sr-scan.ts) ----

  createVdi(srRef: string, info: VdiInfo, fields: Partial<VDI_record>): Promise<string> {
    return createVdiRecord(this, srRef, info, fields);
  }

  refreshVdi(vdiRef: string, info: VdiInfo): Promise<void> {
    return refreshVdiRecord(this.host.db, vdiRef, info);
  }

  updateVdi(vdiRef: string): Promise<void> {
    return updateVdiRecord(this, vdiRef);
  }

  updateStats(srRef: string): Promise<void> {
    return updateSrStats(this, srRef);
  }

  scan(srRef: string): Promise<void> {
    return scanSr(this, srRef);
  }

  destroyVdiRecord(vdiRef: string): Promise<void> {
    return destroyVdiRecord(this.host.db, vdiRef);
  }

  // ---- the per-SR garbage collector (sr-gc.ts) ----

  claimWriter(vdiRef: string): () => void {
    return this.gc.claimWriter(vdiRef);
  }

  inUse(srRef: string): Promise<Set<string>> {
    return this.gc.inUse(srRef);
  }

  kickGc(srRef: string): void {
    this.gc.kick(srRef);
  }

  /** This host's part of SR.forget: what it keeps in memory for the SR goes. */
  forgetSr(srRef: string): void {
    this.gc.drop(srRef);
  }

  settleGc(srRef: string): Promise<void> {
    return this.gc.settle(srRef);
  }

  runGc(srRef: string): Promise<void> {
    return this.gc.run(srRef);
  }

  // ---- at start-up (storage-recovery.ts) ----

  clearStaleOperations(): Promise<void> {
    return clearStaleOperations(this.host);
  }

  sweepUnfinishedImports(cancelled: Set<string>): Promise<void> {
    return sweepUnfinishedImports(this, cancelled);
  }

  // ---- the data path ----

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

  /** At shutdown: no more GC runs; those under way are waited for. */
  close(): Promise<void> {
    return this.gc.close();
  }
}
