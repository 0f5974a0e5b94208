// Database records from what an SR's driver reports, as xapi turns SMAPIv1 results into records:
// a new VDI's record, a VDI's size, usage and parent refreshed, the SR's figures (SR.update), and
// scan's reconciliation of the records with the locations the driver finds (xapi_sr.ml scan).
import { randomUUID } from 'node:crypto';
import { newRef } from '../api/implicit.js';
import type { Db } from '../db/interface.js';
import type { VDI_record } from '../schema/generated.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import type { VdiInfo } from '../storage/driver.js';
import type { Storage } from './storage.js';
import { updateSrAllowedOperations, updateVdiAllowedOperations } from './storage-operations.js';

/** A VDI record for what a driver reported (xapi fills the rest from the call). */
export async function createVdiRecord(storage: Storage, srRef: string, info: VdiInfo, fields: Partial<VDI_record>): Promise<string> {
  const db = storage.host.db;
  // A background scan (after a GC run) may have met the new node first and made its record:
  // take that one over rather than make a second record for one location.
  const [found] = await db.find('VDI', { SR: srRef, location: info.location });
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
  if (found) await db.update('VDI', ref, { ...row, uuid: found[1].uuid });
  else await db.create('VDI', ref, { name_label: '', name_description: '', ...row });
  await updateVdiAllowedOperations(db, ref);
  return ref;
}

/** Writes what the driver says now about a VDI (size, usage, parent) into its record. */
export async function refreshVdiRecord(db: Db, vdiRef: string, info: VdiInfo): Promise<void> {
  const vdi = await db.get('VDI', vdiRef);
  const smConfig: Record<string, string> = { ...vdi.sm_config, vdi_type: info.vdiType };
  if (info.vhdParent) smConfig['vhd-parent'] = info.vhdParent;
  else delete smConfig['vhd-parent'];
  await db.update('VDI', vdiRef, {
    virtual_size: info.virtualSize,
    physical_utilisation: info.physicalUtilisation,
    sm_config: smConfig,
  });
}

/** VDI.update's work: what the driver says about the VDI now, written into its record. */
export async function updateVdiRecord(storage: Storage, vdiRef: string): Promise<void> {
  const vdi = await storage.host.db.get('VDI', vdiRef);
  const { driver, ctx } = await storage.context(vdi.SR);
  await refreshVdiRecord(storage.host.db, vdiRef, await storage.sm(vdi.SR, () => driver.vdiStat(ctx, vdi.location), vdiRef));
}

/** SR.update / the end of a scan: physical_size and physical_utilisation from the driver. */
export async function updateSrStats(storage: Storage, srRef: string): Promise<void> {
  const db = storage.host.db;
  const { driver, ctx } = await storage.context(srRef);
  const st = await storage.sm(srRef, () => driver.stat(ctx));
  let allocation = 0;
  for (const ref of (await db.get('SR', srRef)).VDIs) {
    const v = await db.tryGet('VDI', ref);
    if (v) allocation += v.virtual_size;
  }
  await db.update('SR', srRef, {
    physical_size: st.physicalSize,
    physical_utilisation: st.physicalUtilisation,
    virtual_allocation: allocation,
  });
}

/**
 * sr_scan and xapi's reconciliation (xapi_sr.ml scan): records whose location vanished are
 * destroyed, new locations get records, existing ones are refreshed.
 */
export async function scanSr(storage: Storage, srRef: string): Promise<void> {
  const { driver, ctx } = await storage.context(srRef);
  const found = await storage.sm(srRef, () => driver.scan(ctx));
  const db = storage.host.db;
  const byLocation = new Map(found.map((v) => [v.location, v]));
  for (const ref of (await db.get('SR', srRef)).VDIs) {
    const vdi = await db.tryGet('VDI', ref);
    if (!vdi) continue;
    const info = byLocation.get(vdi.location);
    if (info) {
      byLocation.delete(vdi.location);
      await refreshVdiRecord(db, ref, info);
    } else if (Object.keys(vdi.current_operations).length === 0) {
      await destroyVdiRecord(db, ref);
    }
  }
  for (const info of byLocation.values()) {
    await createVdiRecord(storage, srRef, info, { name_label: info.vdiType === 'iso' ? info.location : '', read_only: info.readOnly });
  }
  await updateSrStats(storage, srRef);
  const sr = await db.get('SR', srRef);
  const other = { ...sr.other_config };
  if ('dirty' in other) {
    delete other.dirty;
    await db.update('SR', srRef, { other_config: other });
  }
  // the SR's disks decide whether it may be destroyed
  await updateSrAllowedOperations(db, srRef);
}

/** Drops a VDI record and what refers to it: its VBDs go, suspend_VDI links become null. */
export async function destroyVdiRecord(db: Db, vdiRef: string): Promise<void> {
  const vdi = await db.tryGet('VDI', vdiRef);
  if (!vdi) return;
  for (const vbd of vdi.VBDs) if (await db.tryGet('VBD', vbd)) await db.destroy('VBD', vbd);
  for (const [vm] of await db.find('VM', { suspend_VDI: vdiRef })) await db.update('VM', vm, { suspend_VDI: NULL_REF });
  await db.destroy('VDI', vdiRef);
}
