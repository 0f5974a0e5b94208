// The import of a VM export's objects (xapi's import.ml): one importer for both of xapi's import
// types. A full import (an XVA archive, PUT /import) makes each VDI on one SR, the archive's data
// then written into them. A metadata import (PUT /import_metadata; a cross-pool migration's
// metadata transfer) finds each VDI already in this pool: by other_config:maps_to (the copy a
// migration made), else by SR and location. Both then take the classes in xapi's order: SRs,
// VDIs, the VMs' checks (a VM of the same uuid with `restore`, and for a live import the
// memory and the CPU), the VMs (Halted, or Suspended on their suspend image), networks (found
// by uuid, name or bridge, else made), VBDs, VIFs. A dry run (metadata only) stops after the
// checks. `restore` keeps uuids and MACs; `force` lets a VM that cannot be replaced be skipped
// and a missing disk be left out. A live import's running VM is reserved on this host
// (scheduled_to_be_resident_on); a migration's export carries its mark in each VM's
// other_config migrate_task, kept (live imports only) until the source's commit claims the VM
// (vm-migrate.ts).
import { randomUUID } from 'node:crypto';
import type { Call } from '../api/context.js';
import { newRef } from '../api/implicit.js';
import { pickFields, type Row } from '../db/interface.js';
import { XapiError } from '../rpc/errors.js';
import type { Rpc, RpcStruct } from '../rpc/rpc.js';
import type { DbClassName, Records } from '../schema/generated.js';
import type { XvaObject } from '../storage/xva/index.js';
import { NULL_REF } from '../schema/types.js';
import { computeFreeMemory, vmOverhead } from './memory.js';
import type { Storage } from './storage.js';
import { createVdi, destroyVdi } from './vdi.js';
import { randomMac } from './vif.js';
import { MAPS_TO } from './vm-export.js';
import { updateAllowedOperations } from './vm-lifecycle.js';
import { assertCpuCompatible } from './vm-migrate.js';

/** xapi's import types: the disks made here on one SR and filled from the archive, or found here. */
export type ImportType =
  | { kind: 'full'; storage: Storage; sr: string }
  | {
      kind: 'metadata';
      /** Only the checks; nothing is made. */
      dryRun: boolean;
      /** The preparation of a live migration: the memory (and with `checkCpu` the CPU) checked here. */
      live: boolean;
      checkCpu: boolean;
    };

export interface ImportConfig {
  type: ImportType;
  /** Keep the export's uuids and MACs (xapi's full_restore); an older VM of the same uuid is replaced. */
  restore: boolean;
  force: boolean;
}

export interface ObjectImport {
  /** The VMs made (none for a dry run). */
  vms: string[];
  /** A full import's: export id -> the new VDI the archive's data goes into. */
  disks: Map<string, string>;
  /** Undoes everything the import made (for a later failure, unless `force`). */
  undo(): Promise<void>;
}

/** The VM other_config key marking a VM a cross-pool migration is bringing in, not yet committed. */
export const MIGRATE_TASK = 'migrate_task';

/** A record from the export as database values (fields that do not parse keep their defaults). */
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

/**
 * Imports `objects`: checks, then records, class by class in xapi's order. A failure undoes what
 * was made unless `force` (xapi keeps a forced import's leftovers).
 */
export async function importObjects(call: Call, objects: XvaObject[], config: ImportConfig): Promise<ObjectImport> {
  const db = call.db;
  const { type, restore, force } = config;
  const full = type.kind === 'full' ? type : undefined;
  const meta = type.kind === 'metadata' ? type : undefined;
  const live = meta?.live === true;
  const byClass = (cls: string) => objects.filter((x) => x.class === cls);
  const refs = new Map<string, string>(); // export id -> ref here
  const disks = new Map<string, string>();
  const made: Array<[DbClassName, string]> = [];
  const undo = async () => {
    for (const [cls, ref] of made.splice(0).reverse()) {
      if (cls === 'VDI' && full) await destroyVdi(full.storage, call, ref).catch(() => undefined);
      else if (await db.tryGet(cls, ref)) await db.destroy(cls, ref);
    }
  };
  /** A uuid kept with `restore`, unless another record holds it already. */
  const uuidFor = async (cls: 'VBD' | 'VIF', uuid: string | undefined) =>
    restore && uuid && !(await db.refByUuid(cls, uuid)) ? uuid : randomUUID();

  try {
    // SRs: a full import's disks all go to its SR; a metadata import's are found by uuid
    if (full) {
      if ((await db.get('SR', full.sr)).content_type === 'iso') throw new XapiError('SR_OPERATION_NOT_SUPPORTED', [full.sr]);
    } else {
      for (const x of byClass('SR')) {
        const f = fieldsOf(call, 'SR', x.snapshot);
        const here = f.uuid ? await db.refByUuid('SR', f.uuid) : undefined;
        if (here) refs.set(x.id, here);
      }
    }

    // VDIs: made (full), else the mapped copy or the one at the same SR and location
    for (const x of byClass('VDI')) {
      const f = fieldsOf(call, 'VDI', x.snapshot);
      if (full) {
        const vdi = await createVdi(full.storage, call, full.sr, Number(f.virtual_size ?? 0), {
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
        refs.set(x.id, vdi);
        disks.set(x.id, vdi);
        continue;
      }
      const mapped = f.other_config?.[MAPS_TO];
      let found: string | undefined;
      if (mapped && (await db.tryGet('VDI', mapped))) found = mapped;
      const sr = f.SR ? refs.get(f.SR) : undefined;
      if (!found && sr) found = (await db.find('VDI', { SR: sr, location: f.location ?? '' }))[0]?.[0];
      if (found) {
        refs.set(x.id, found);
        continue;
      }
      // a live migration's dry run: the disks are copied later
      if (meta?.dryRun && live) continue;
      if (force) continue;
      throw sr ? new XapiError('VDI_LOCATION_MISSING', [sr, f.location ?? '']) : new XapiError('VDI_CONTENT_ID_MISSING', []);
    }

    // The VMs' checks (the VM handler's precheck), every VM before any is made
    const vms = byClass('VM').map((x) => ({ x, f: fieldsOf(call, 'VM', x.snapshot) }));
    const replace = new Map<string, string>();
    const skip = new Set<string>();
    for (const { x, f } of vms) {
      const existing = restore && f.uuid ? await db.refByUuid('VM', f.uuid) : undefined;
      if (existing) {
        const row = await db.get('VM', existing);
        if (row.power_state !== 'Halted') {
          if (force) {
            skip.add(x.id);
            continue;
          }
          throw new XapiError('VM_BAD_POWER_STATE', [existing, 'Halted', row.power_state]);
        }
        if (row.version >= (f.version ?? 0) && !force)
          throw new XapiError('VM_TO_IMPORT_IS_NOT_NEWER_VERSION', [existing, String(row.version), String(f.version ?? 0)]);
        replace.set(x.id, existing);
      }
      const asRow = { ...f, power_state: f.power_state ?? 'Halted' } as Row<'VM'>;
      if (live && (asRow.power_state === 'Running' || asRow.power_state === 'Paused')) {
        const needed = (f.memory_dynamic_min ?? 0) + vmOverhead(asRow);
        const available = await computeFreeMemory(db, call.host.hostRef);
        if (needed > available) throw new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', [String(needed), String(available)]);
      }
      if (meta?.checkCpu && asRow.power_state !== 'Halted' && !(asRow.is_a_snapshot === true && asRow.domain_type === 'unspecified'))
        await assertCpuCompatible(call, NULL_REF, { ...asRow, last_boot_CPU_flags: f.last_boot_CPU_flags ?? {} }, call.host.hostRef);
    }
    if (meta?.dryRun) return { vms: [], disks, undo };

    // The VMs, Halted; an existing one of the same uuid replaced (its VIFs and VBDs go with it)
    for (const [, existing] of replace) {
      const row = await db.get('VM', existing);
      for (const v of row.VIFs) if (await db.tryGet('VIF', v)) await db.destroy('VIF', v);
      for (const v of row.VBDs) if (await db.tryGet('VBD', v)) await db.destroy('VBD', v);
      await db.destroy('VM', existing);
    }
    const madeVms: string[] = [];
    for (const { x, f } of vms) {
      if (skip.has(x.id)) continue;
      const vm = newRef();
      const keep = pickFields(call.host.schema, 'VM', f, (fd) => fd.qualifier !== 'RO/runtime');
      // a migration's mark means something only to the live import it was sent with
      const { [MIGRATE_TASK]: mark, ...otherConfig } = keep.other_config ?? {};
      await db.create('VM', vm, {
        ...keep,
        uuid: restore && f.uuid ? f.uuid : randomUUID(),
        // the task that made it (a restart after a crash mid-import removes it), unless restoring a
        // fresh seed for the MACs of VIFs created later, and a migration's mark
        other_config: {
          ...otherConfig,
          ...(restore ? {} : { mac_seed: randomUUID() as string }),
          import_task: call.task,
          ...(mark !== undefined && live ? { [MIGRATE_TASK]: mark } : {}),
        },
        power_state: 'Halted',
        domid: -1,
        suspend_VDI: NULL_REF,
        affinity: NULL_REF,
        parent: NULL_REF,
        snapshot_of: NULL_REF,
        is_a_snapshot: f.is_a_snapshot === true,
        snapshot_time: f.snapshot_time ?? keep.snapshot_time,
        snapshot_info: f.snapshot_info ?? {},
        transportable_snapshot_id: f.transportable_snapshot_id ?? '',
        last_booted_record: f.last_booted_record ?? '',
        last_boot_CPU_flags: f.last_boot_CPU_flags ?? {},
        bios_strings: f.bios_strings ?? {},
        // a full restore counts the restores; else the version starts again
        version: restore ? (f.version ?? 0) + 1 : 0,
        allowed_operations: [],
        current_operations: {},
      });
      made.push(['VM', vm]);
      const metrics = newRef();
      await db.create('VM_metrics', metrics, { uuid: randomUUID(), other_config: {} });
      made.push(['VM_metrics', metrics]);
      const row = await db.get('VM', vm);
      // a live migration's VM: its memory reserved on this host until it arrives (allocate_resources_for_vm)
      const reserve = live && (f.power_state === 'Running' || f.power_state === 'Paused') && f.is_a_snapshot !== true;
      await db.update('VM', vm, {
        metrics,
        memory_overhead: vmOverhead(row),
        ...(reserve ? { scheduled_to_be_resident_on: call.host.hostRef } : {}),
      });
      refs.set(x.id, vm);
      madeVms.push(vm);
    }
    // snapshots to the VMs they are of, suspend images (a suspended VM or a checkpoint)
    for (const { x, f } of vms) {
      const vm = refs.get(x.id);
      if (!vm) continue;
      const of = f.snapshot_of ? refs.get(f.snapshot_of) : undefined;
      const suspend = f.suspend_VDI ? refs.get(f.suspend_VDI) : undefined;
      if (of) await db.update('VM', vm, { snapshot_of: of });
      if (f.power_state === 'Suspended' && suspend) await db.update('VM', vm, { power_state: 'Suspended', suspend_VDI: suspend });
    }
    // the copies of snapshot disks linked to the copies of the disks they are of (update_snapshot_info)
    for (const x of byClass('VDI')) {
      const f = fieldsOf(call, 'VDI', x.snapshot);
      const vdi = refs.get(x.id);
      const of = f.snapshot_of ? refs.get(f.snapshot_of) : undefined;
      if (vdi && f.other_config?.[MAPS_TO] === vdi && f.is_a_snapshot === true)
        await db.update('VDI', vdi, { is_a_snapshot: true, snapshot_of: of ?? NULL_REF, snapshot_time: f.snapshot_time ?? '' });
    }

    // Networks: by uuid, name or bridge, else made (marked with the import's task, as xapi does)
    for (const x of byClass('network')) {
      const f = fieldsOf(call, 'network', x.snapshot);
      const existing =
        (f.uuid ? await db.refByUuid('network', f.uuid) : undefined) ??
        (await db.find('network', { name_label: f.name_label ?? '' }))[0]?.[0] ??
        (f.bridge ? (await db.find('network', { bridge: f.bridge }))[0]?.[0] : undefined);
      if (existing) {
        refs.set(x.id, existing);
        continue;
      }
      const net = newRef();
      await db.create('network', net, {
        uuid: randomUUID(),
        name_label: f.name_label ?? '',
        name_description: f.name_description ?? '',
        bridge: `xapi${(await db.count('network')) + 1}`,
        MTU: f.MTU ?? 1500,
        other_config: { ...(f.other_config ?? {}), import_task: call.task },
        managed: true,
      });
      made.push(['network', net]);
      refs.set(x.id, net);
    }

    // VBDs of the VMs made: a disk not here is left out, as xapi does (no empty disk drives)
    for (const x of byClass('VBD')) {
      const f = fieldsOf(call, 'VBD', x.snapshot);
      const vm = f.VM ? refs.get(f.VM) : undefined;
      if (!vm) continue;
      const vdi = f.VDI ? refs.get(f.VDI) : undefined;
      if (!vdi && f.type === 'Disk') continue;
      const vbd = newRef();
      await db.create('VBD', vbd, {
        ...f,
        uuid: await uuidFor('VBD', f.uuid),
        VM: vm,
        VDI: vdi ?? NULL_REF,
        empty: !vdi,
        device: '',
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
      });
      made.push(['VBD', vbd]);
    }
    // VIFs: on the network a migration mapped them to (maps_to, not kept), else the export's
    for (const x of byClass('VIF')) {
      const f = fieldsOf(call, 'VIF', x.snapshot);
      const vm = f.VM ? refs.get(f.VM) : undefined;
      if (!vm) continue;
      const { [MAPS_TO]: mapped, ...other } = f.other_config ?? {};
      const network = mapped && (await db.tryGet('network', mapped)) ? mapped : f.network ? refs.get(f.network) : undefined;
      if (!network) throw new XapiError('INTERNAL_ERROR', [`Failed to find VIF's Network: ${f.network ?? ''}`]);
      const vif = newRef();
      await db.create('VIF', vif, {
        ...f,
        uuid: await uuidFor('VIF', f.uuid),
        VM: vm,
        network,
        other_config: other,
        MAC: restore && f.MAC ? f.MAC : randomMac(),
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
      });
      made.push(['VIF', vif]);
    }
    for (const vm of madeVms) await updateAllowedOperations(db, vm);
    if (madeVms.length === 0) throw new XapiError('IMPORT_ERROR', ['the archive holds no VM']);
    return { vms: madeVms, disks, undo };
  } catch (e) {
    if (!force) await undo();
    throw e;
  }
}
