// PUT /import_metadata's work (xapi's import.ml, Metadata_import): a VM's records, its snapshots
// and their devices, whose disks already exist in this pool. What a cross-pool migration sends
// (VM.migrate_send's metadata transfer): each VDI and VIF of the export names in
// other_config:maps_to the VDI holding its copy here and the network it goes on. `dry_run` only
// checks (VM.assert_can_migrate asks it of the destination); `live` is the preparation of a live
// migration: the destination host must have the memory (HOST_NOT_ENOUGH_FREE_MEMORY) and, with
// `check_cpu`, the CPU (VM_INCOMPATIBLE_WITH_THIS_HOST), and disks not copied yet are expected in
// a dry run. With `restore` uuids and MACs are kept. The VMs are made Halted; a live migration's
// VM is then reserved on this host (scheduled_to_be_resident_on) and marked with the migration
// (other_config migrate_task) until the source's commit claims it (vm-migrate.ts).
import { randomUUID } from 'node:crypto';
import type { Call } from '../api/context.js';
import { newRef } from '../api/implicit.js';
import { pickFields, type Row } from '../db/interface.js';
import { XapiError } from '../rpc/errors.js';
import type { XvaObject } from '../storage/xva/index.js';
import { NULL_REF } from '../schema/types.js';
import { computeFreeMemory, vmOverhead } from './memory.js';
import { randomMac } from './vif.js';
import { fieldsOf, MAPS_TO } from './vm-export.js';
import { updateAllowedOperations } from './vm-lifecycle.js';
import { assertCpuCompatible } from './vm-migrate.js';

export interface MetadataImportOptions {
  restore: boolean;
  force: boolean;
  dryRun: boolean;
  live: boolean;
  checkCpu: boolean;
  /** A cross-pool migration's mark for the VMs made (other_config migrate_task), if any. */
  migration?: string;
}

/** The VM other_config key marking a VM a cross-pool migration is bringing in, not yet committed. */
export const MIGRATE_TASK = 'migrate_task';

/** Record_util.vm_power_state_to_string: the power state as xapi's errors spell it here. */
const powerStateString = (s: string) => s;

/**
 * Imports the metadata `objects`: the VMs made (none for a dry run). Checks first, every VM in
 * turn, then makes the records; a failure while making undoes what was made.
 */
export async function importMetadata(call: Call, objects: XvaObject[], o: MetadataImportOptions): Promise<string[]> {
  const db = call.db;
  const byClass = (cls: string) => objects.filter((x) => x.class === cls);
  const refs = new Map<string, string>(); // export id -> ref here

  // SRs by uuid; VDIs by their mapped copy, else by SR and location.
  for (const x of byClass('SR')) {
    const f = fieldsOf(call, 'SR', x.snapshot);
    const here = f.uuid ? await db.refByUuid('SR', f.uuid) : undefined;
    if (here) refs.set(x.id, here);
  }
  for (const x of byClass('VDI')) {
    const f = fieldsOf(call, 'VDI', x.snapshot);
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
    if (o.dryRun && o.live) continue;
    if (o.force) continue;
    throw sr ? new XapiError('VDI_LOCATION_MISSING', [sr, f.location ?? '']) : new XapiError('VDI_CONTENT_ID_MISSING', []);
  }
  for (const x of byClass('network')) {
    const f = fieldsOf(call, 'network', x.snapshot);
    const here =
      (f.uuid ? await db.refByUuid('network', f.uuid) : undefined) ??
      (await db.find('network', { name_label: f.name_label ?? '' }))[0]?.[0];
    if (here) refs.set(x.id, here);
  }

  // The VMs' checks (VM.precheck): an existing VM of the same uuid, the memory, the CPU.
  const vms = byClass('VM').map((x) => ({ x, f: fieldsOf(call, 'VM', x.snapshot) }));
  const replace = new Map<string, string>();
  for (const { x, f } of vms) {
    const existing = o.restore && f.uuid ? await db.refByUuid('VM', f.uuid) : undefined;
    if (existing) {
      const row = await db.get('VM', existing);
      if (row.power_state !== 'Halted') {
        if (o.force) continue;
        throw new XapiError('VM_BAD_POWER_STATE', [existing, 'Halted', powerStateString(row.power_state)]);
      }
      if (row.version >= (f.version ?? 0) && !o.force)
        throw new XapiError('VM_TO_IMPORT_IS_NOT_NEWER_VERSION', [existing, String(row.version), String(f.version ?? 0)]);
      replace.set(x.id, existing);
    }
    const asRow = { ...f, power_state: f.power_state ?? 'Halted' } as Row<'VM'>;
    if (o.live && (asRow.power_state === 'Running' || asRow.power_state === 'Paused')) {
      const needed = (f.memory_dynamic_min ?? 0) + vmOverhead(asRow);
      const available = await computeFreeMemory(db, call.host.hostRef);
      if (needed > available) throw new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', [String(needed), String(available)]);
    }
    if (o.checkCpu && asRow.power_state !== 'Halted' && !(asRow.is_a_snapshot === true && asRow.domain_type === 'unspecified'))
      await assertCpuCompatible(call, NULL_REF, { ...asRow, last_boot_CPU_flags: f.last_boot_CPU_flags ?? {} }, call.host.hostRef);
  }
  if (o.dryRun) return [];

  const made: Array<['VM' | 'VBD' | 'VIF' | 'VM_metrics', string]> = [];
  try {
    for (const [, existing] of replace) {
      const row = await db.get('VM', existing);
      for (const v of row.VIFs) if (await db.tryGet('VIF', v)) await db.destroy('VIF', v);
      for (const v of row.VBDs) if (await db.tryGet('VBD', v)) await db.destroy('VBD', v);
      await db.destroy('VM', existing);
    }
    const made_vms: string[] = [];
    for (const { x, f } of vms) {
      const vm = newRef();
      const keep = pickFields(call.host.schema, 'VM', f, (fd) => fd.qualifier !== 'RO/runtime');
      const mark: Record<string, string> = o.migration && o.live ? { [MIGRATE_TASK]: o.migration } : {};
      await db.create('VM', vm, {
        ...keep,
        uuid: o.restore && f.uuid ? f.uuid : randomUUID(),
        other_config: { ...(keep.other_config ?? {}), ...(o.restore ? {} : { mac_seed: randomUUID() as string }), ...mark },
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
        version: o.restore ? (f.version ?? 0) + 1 : 0,
        allowed_operations: [],
        current_operations: {},
      });
      made.push(['VM', vm]);
      const metrics = newRef();
      await db.create('VM_metrics', metrics, { uuid: randomUUID(), other_config: {} });
      made.push(['VM_metrics', metrics]);
      const row = await db.get('VM', vm);
      // a live migration's VM: its memory reserved on this host until it arrives (allocate_resources_for_vm)
      const live = o.live && (f.power_state === 'Running' || f.power_state === 'Paused') && f.is_a_snapshot !== true;
      await db.update('VM', vm, {
        metrics,
        memory_overhead: vmOverhead(row),
        ...(live ? { scheduled_to_be_resident_on: call.host.hostRef } : {}),
      });
      refs.set(x.id, vm);
      made_vms.push(vm);
    }
    // snapshots to the VMs they are of, suspend images (a suspended VM or a checkpoint)
    for (const { x, f } of vms) {
      const vm = refs.get(x.id)!;
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
    for (const x of byClass('VBD')) {
      const f = fieldsOf(call, 'VBD', x.snapshot);
      const vm = f.VM ? refs.get(f.VM) : undefined;
      if (!vm) continue;
      const vdi = f.VDI ? refs.get(f.VDI) : undefined;
      if (!vdi && f.type === 'Disk') continue; // a disk that is not here is left out, as xapi does
      const vbd = newRef();
      await db.create('VBD', vbd, {
        ...f,
        uuid: o.restore && f.uuid ? f.uuid : randomUUID(),
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
    for (const x of byClass('VIF')) {
      const f = fieldsOf(call, 'VIF', x.snapshot);
      const vm = f.VM ? refs.get(f.VM) : undefined;
      const { [MAPS_TO]: mapped, ...other } = f.other_config ?? {};
      const network = mapped && (await db.tryGet('network', mapped)) ? mapped : f.network ? refs.get(f.network) : undefined;
      if (!vm) continue;
      if (!network) throw new XapiError('INTERNAL_ERROR', [`Failed to find VIF's Network: ${f.network ?? ''}`]);
      const vif = newRef();
      await db.create('VIF', vif, {
        ...f,
        uuid: o.restore && f.uuid ? f.uuid : randomUUID(),
        VM: vm,
        network,
        other_config: other,
        MAC: o.restore && f.MAC ? f.MAC : randomMac(),
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
      });
      made.push(['VIF', vif]);
    }
    for (const vm of made_vms) await updateAllowedOperations(db, vm);
    if (made_vms.length === 0) throw new XapiError('IMPORT_ERROR', ['the archive holds no VM']);
    return made_vms;
  } catch (e) {
    for (const [cls, ref] of made.reverse()) if (await db.tryGet(cls, ref)) await db.destroy(cls, ref);
    throw e;
  }
}
