// The objects of a VM export and their import (xapi's export.ml, import.ml): the VM, its VBDs
// (not CDs), VIFs, disk VDIs, their SRs and the VIFs' networks, each under an export-local id
// "Ref:<n>", references between them rewritten to those ids (others become NULL). Import makes
// the VDIs on one SR, finds networks by uuid or name (or makes them), then the VM and its
// devices; without `restore` the VM gets a new uuid and new MACs.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Call } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { newRef } from '../api/implicit.js';
import type { Rpc, RpcStruct } from '../rpc/rpc.js';
import { pickFields, type AnyRow, type Row } from '../db/interface.js';
import type { DbClassName, Records } from '../schema/generated.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { releaseVersions } from './version.js';
import { XVA_EXPORT_VSN, type XvaHeader, type XvaObject } from '../storage/xva/index.js';
import { createVdi, destroyVdi } from './vdi.js';
import { randomMac } from './vif.js';
import { updateAllowedOperations } from './vm-lifecycle.js';
import { vmOverhead } from './memory.js';
import type { Storage } from './storage.js';

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
    return { class: cls, id: ids.get(ref)!, snapshot: rec };
  });
  return { objects, disks: new Map(disks.map((v) => [ids.get(v)!, v])) };
}

/** A record from the archive as database values (fields that do not parse keep their defaults). */
export function fieldsOf<C extends DbClassName>(call: Call, cls: C, snapshot: Rpc): Partial<Records[C]> {
  const out: Record<string, unknown> = {};
  const rec = snapshot as RpcStruct;
  for (const f of call.host.schema.cls(cls).fields) {
    if (!(f.name in rec)) continue;
    try {
      out[f.name] = call.host.marshal.fromRpc(f.type, rec[f.name]!, f.name);
    } catch {
      // an older or newer exporter's value; the default will do
    }
  }
  // each value unmarshalled by its field's type, as dispatch does for a record parameter
  return out as Partial<Records[C]>;
}

export interface VmImport {
  vms: string[];
  /** Export id -> the new VDI the archive's data goes into. */
  disks: Map<string, string>;
  /** Undoes everything the import made (for a failed import without `force`). */
  undo(): Promise<void>;
}

export async function importObjects(
  storage: Storage,
  call: Call,
  objects: XvaObject[],
  opts: { sr: string; restore: boolean },
): Promise<VmImport> {
  const db = call.db;
  const made: Array<[DbClassName, string]> = [];
  const disks = new Map<string, string>();
  const refs = new Map<string, string>(); // export id -> new ref
  const byClass = (cls: string) => objects.filter((o) => o.class === cls);
  const undo = async () => {
    for (const [cls, ref] of made.reverse()) {
      if (cls === 'VDI') await destroyVdi(storage, call, ref).catch(() => undefined);
      else if (await db.tryGet(cls, ref)) await db.destroy(cls, ref);
    }
  };
  try {
    const sr = await db.get('SR', opts.sr);
    if (sr.content_type === 'iso') throw new XapiError('SR_OPERATION_NOT_SUPPORTED', [opts.sr]);
    for (const o of byClass('VDI')) {
      const f = fieldsOf(call, 'VDI', o.snapshot);
      const vdi = await createVdi(storage, call, opts.sr, Number(f.virtual_size ?? 0), {
        name_label: f.name_label ?? '',
        name_description: f.name_description ?? '',
        type: f.type ?? 'user',
        sharable: f.sharable === true,
        read_only: false,
        other_config: f.other_config ?? {},
        xenstore_data: f.xenstore_data ?? {},
        sm_config: { import_task: call.task },
        tags: f.tags ?? [],
      });
      made.push(['VDI', vdi]);
      refs.set(o.id, vdi);
      disks.set(o.id, vdi);
    }
    for (const o of byClass('network')) {
      const f = fieldsOf(call, 'network', o.snapshot);
      const existing =
        (f.uuid ? await db.refByUuid('network', f.uuid) : undefined) ?? (await db.find('network', { name_label: f.name_label }))[0]?.[0];
      if (existing) {
        refs.set(o.id, existing);
        continue;
      }
      const net = newRef();
      await db.create('network', net, {
        uuid: randomUUID(),
        name_label: f.name_label,
        name_description: f.name_description ?? '',
        bridge: `xapi${(await db.count('network')) + 1}`,
        MTU: f.MTU ?? 1500,
        other_config: f.other_config ?? {},
        managed: true,
      });
      made.push(['network', net]);
      refs.set(o.id, net);
    }
    const ref = (v: string | undefined) => (v === undefined ? undefined : refs.get(v)) ?? NULL_REF;
    const vms: string[] = [];
    for (const o of byClass('VM')) {
      const f = fieldsOf(call, 'VM', o.snapshot);
      if (opts.restore && f.uuid && (await db.refByUuid('VM', f.uuid))) throw new XapiError('DUPLICATE_VM', [f.uuid]);
      const vm = newRef();
      const keep = pickFields(call.host.schema, 'VM', f, (fd) => fd.qualifier !== 'RO/runtime');
      await db.create('VM', vm, {
        ...keep,
        uuid: opts.restore && f.uuid ? f.uuid : randomUUID(),
        // as xapi's import: the task that made it (a restart after a crash mid-import removes it),
        // and unless restoring, a fresh seed for the MACs of VIFs created later
        other_config: { ...(keep.other_config ?? {}), ...(opts.restore ? {} : { mac_seed: randomUUID() }), import_task: call.task },
        power_state: 'Halted',
        domid: -1,
        suspend_VDI: NULL_REF,
        affinity: NULL_REF,
        parent: NULL_REF,
        snapshot_of: NULL_REF,
        is_a_snapshot: false,
        allowed_operations: [],
        current_operations: {},
      });
      made.push(['VM', vm]);
      const metrics = newRef();
      await db.create('VM_metrics', metrics, { uuid: randomUUID(), other_config: {} });
      made.push(['VM_metrics', metrics]);
      await db.update('VM', vm, { metrics, memory_overhead: vmOverhead(await db.get('VM', vm)) });
      refs.set(o.id, vm);
      vms.push(vm);
    }
    for (const o of byClass('VBD')) {
      const f = fieldsOf(call, 'VBD', o.snapshot);
      const vdi = ref(f.VDI);
      const vbd = newRef();
      await db.create('VBD', vbd, {
        ...f,
        uuid: randomUUID(),
        VM: ref(f.VM),
        VDI: vdi,
        empty: vdi === NULL_REF,
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
      });
      made.push(['VBD', vbd]);
    }
    for (const o of byClass('VIF')) {
      const f = fieldsOf(call, 'VIF', o.snapshot);
      const vif = newRef();
      await db.create('VIF', vif, {
        ...f,
        uuid: randomUUID(),
        VM: ref(f.VM),
        network: ref(f.network),
        MAC: opts.restore ? f.MAC : randomMac(),
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
      });
      made.push(['VIF', vif]);
    }
    for (const vm of vms) await updateAllowedOperations(db, vm);
    if (vms.length === 0) throw new XapiError('IMPORT_ERROR', ['the archive holds no VM']);
    return { vms, disks, undo };
  } catch (e) {
    await undo();
    throw e;
  }
}
