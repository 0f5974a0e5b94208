// The objects of a VM export (xapi's export.ml): the VM, its VBDs (not CDs), VIFs, disk VDIs,
// their SRs and the VIFs' networks, each under an export-local id "Ref:<n>", references between
// them rewritten to those ids (others become NULL). Their import is vm-object-import.ts.
import { hostname } from 'node:os';
import type { Call } from '../api/context.js';
import type { Rpc, RpcStruct } from '../rpc/rpc.js';
import type { AnyRow, Row } from '../db/interface.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { releaseVersions } from './version.js';
import { XVA_EXPORT_VSN, type XvaHeader, type XvaObject } from '../storage/xva/index.js';

export function exportHeader(call: Call): XvaHeader {
  const { major, minor } = call.host.schema.apiVersion;
  return {
    hostname: hostname(),
    date: formatDateTime(new Date(call.host.now())),
    // the release of the exporting host
    product_version: releaseVersions(call.host.config.platformVersion).product,
    product_brand: 'XCP-ng',
    build_number: 'xapi-ts',
    xapi_major: major,
    xapi_minor: minor,
    export_vsn: XVA_EXPORT_VSN,
  };
}

export interface VmExport {
  objects: XvaObject[];
  /** Export id -> VDI ref, for the VDIs whose data goes into the archive. */
  disks: Map<string, string>;
}

/** What an export of a VM's metadata for a cross-pool migration adds (xapi's storage_migrate map keys). */
export interface MigrationMaps {
  /** Local VDI -> the VDI the destination pool holds its copy in. */
  vdis: Map<string, string>;
  /** Local VIF -> the network of the destination pool it goes on. */
  vifs: Map<string, string>;
  /** The migration's mark for what the destination makes (each VM's other_config migrate_task). */
  mark?: string;
}

/** The other_config key naming a migrated object's counterpart in the destination pool (Constants.storage_migrate_*_map_key). */
export const MAPS_TO = 'maps_to';

/**
 * The objects describing a VM (export.ml's make_all for one VM): with `snapshots`, its snapshots
 * and theirs devices too. With `maps`, each VDI and VIF mapped carries other_config:maps_to, what
 * the destination of a cross-pool migration finds its copy or network by.
 */
export async function exportObjects(
  call: Call,
  vmRef: string,
  opts: { withSuspendImage: boolean; snapshots?: boolean; maps?: MigrationMaps },
): Promise<VmExport> {
  const db = call.db;
  const vm = await db.get('VM', vmRef);
  const vms: Array<[string, Row<'VM'>]> = [[vmRef, vm]];
  if (opts.snapshots) for (const s of vm.snapshots) vms.push([s, await db.get('VM', s)]);
  const rows: Array<[string, string, AnyRow]> = vms.map(([ref, row]) => ['VM', ref, row]);
  const disks: string[] = [];
  const vifs: string[] = [];
  for (const [, row] of vms) {
    for (const r of row.VBDs) {
      const vbd = await db.get('VBD', r);
      if (vbd.type === 'CD') continue; // CDs are not exported
      rows.push(['VBD', r, vbd]);
      if (vbd.VDI !== NULL_REF && !disks.includes(vbd.VDI)) disks.push(vbd.VDI);
    }
    if (opts.withSuspendImage && row.suspend_VDI !== NULL_REF && !disks.includes(row.suspend_VDI)) disks.push(row.suspend_VDI);
    vifs.push(...row.VIFs);
  }
  const srs = new Set<string>();
  for (const v of disks) {
    const vdi = await db.get('VDI', v);
    rows.push(['VDI', v, vdi]);
    srs.add(vdi.SR);
  }
  for (const sr of srs) rows.push(['SR', sr, await db.get('SR', sr)]);
  const nets = new Set<string>();
  for (const r of vifs) {
    const vif = await db.get('VIF', r);
    rows.push(['VIF', r, vif]);
    nets.add(vif.network);
  }
  for (const n of nets) rows.push(['network', n, await db.get('network', n)]);

  const ids = new Map(rows.map(([, ref], i) => [ref, `Ref:${i}`]));
  const rewrite = (v: Rpc): Rpc => {
    if (typeof v === 'string') return v.startsWith('OpaqueRef:') ? (ids.get(v) ?? NULL_REF) : v;
    if (Array.isArray(v)) return v.filter((x) => !(typeof x === 'string' && x.startsWith('OpaqueRef:') && !ids.has(x))).map(rewrite);
    return v;
  };
  const objects = rows.map(([cls, ref, row]) => {
    const rec = call.host.marshal.recordToRpc(cls, row);
    for (const k of Object.keys(rec)) rec[k] = rewrite(rec[k]!);
    const mapped = cls === 'VDI' ? opts.maps?.vdis.get(ref) : cls === 'VIF' ? opts.maps?.vifs.get(ref) : undefined;
    if (mapped) rec.other_config = { ...(rec.other_config as RpcStruct), [MAPS_TO]: mapped };
    if (cls === 'VM' && opts.maps?.mark) rec.other_config = { ...(rec.other_config as RpcStruct), migrate_task: opts.maps.mark };
    return { class: cls, id: ids.get(ref)!, snapshot: rec };
  });
  return { objects, disks: new Map(disks.map((v) => [ids.get(v)!, v])) };
}
