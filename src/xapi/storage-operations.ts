// Which SR and VDI operations are allowed when (xapi's xapi_sr_operations.ml valid_operations,
// xapi_vdi.ml check_operation_error): the checks in xapi's order, and allowed_operations in
// the order xapi lists them. Everything is read from the database (the SM record of the SR's
// type gives its features), so any code that changes what the checks read can recompute.
import { XapiError } from '../rpc/errors.js';
import type { Db, Row } from '../db/interface.js';
import type { storage_operations, vdi_operations } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import { compareVariants, hashtblFoldOrder } from './ocaml-order.js';

/** xapi's SR all_ops, in its order (vdi_revert is not an operation of this datamodel version). */
const SR_ALL_OPS = [
  'scan',
  'destroy',
  'forget',
  'plug',
  'unplug',
  'vdi_create',
  'vdi_destroy',
  'vdi_resize',
  'vdi_clone',
  'vdi_snapshot',
  'vdi_mirror',
  'vdi_enable_cbt',
  'vdi_disable_cbt',
  'vdi_data_destroy',
  'vdi_list_changed_blocks',
  'vdi_set_on_boot',
  'vdi_introduce',
  'vdi_revert',
  'update',
  'pbd_create',
  'pbd_destroy',
] as const;
/** The order of SR.allowed_operations: xapi's Hashtbl of all_ops, folded. */
const SR_LIST_ORDER = hashtblFoldOrder(SR_ALL_OPS, 10) as storage_operations[];

/** The SR operations older releases know; the others are refused during a rolling upgrade. */
const SR_RPU_OPS = new Set<string>([
  'scan',
  'destroy',
  'forget',
  'plug',
  'unplug',
  'vdi_create',
  'vdi_destroy',
  'vdi_resize',
  'vdi_clone',
  'vdi_snapshot',
  'vdi_introduce',
  'update',
  'pbd_create',
  'pbd_destroy',
]);

/** sm_cap_table: the SM feature an SR operation needs (the others need none). */
const SR_FEATURE: Partial<Record<storage_operations, string>> = {
  vdi_create: 'VDI_CREATE',
  vdi_destroy: 'VDI_DELETE',
  vdi_resize: 'VDI_RESIZE',
  vdi_introduce: 'VDI_INTRODUCE',
  vdi_mirror: 'VDI_MIRROR',
  vdi_enable_cbt: 'VDI_CONFIG_CBT',
  vdi_disable_cbt: 'VDI_CONFIG_CBT',
  vdi_data_destroy: 'VDI_CONFIG_CBT',
  vdi_list_changed_blocks: 'VDI_CONFIG_CBT',
  vdi_set_on_boot: 'VDI_RESET_ON_BOOT',
  update: 'SR_UPDATE',
  vdi_snapshot: 'VDI_SNAPSHOT',
};

/** feature_of_op: the SM feature a VDI operation needs. */
const VDI_FEATURE: Partial<Record<vdi_operations, string>> = {
  snapshot: 'VDI_SNAPSHOT',
  destroy: 'VDI_DELETE',
  resize: 'VDI_RESIZE',
  update: 'VDI_UPDATE',
  resize_online: 'VDI_RESIZE_ONLINE',
  generate_config: 'VDI_GENERATE_CONFIG',
  clone: 'VDI_CLONE',
  mirror: 'VDI_MIRROR',
  enable_cbt: 'VDI_CONFIG_CBT',
  disable_cbt: 'VDI_CONFIG_CBT',
  data_destroy: 'VDI_CONFIG_CBT',
  list_changed_blocks: 'VDI_CONFIG_CBT',
  set_on_boot: 'VDI_RESET_ON_BOOT',
};

/**
 * The VDI operations xapi lists in allowed_operations (the pre-Ely set less blocked and
 * force_unlock), in the order of its Set: by variant.
 */
const VDI_LISTED = (
  ['clone', 'copy', 'resize', 'resize_online', 'snapshot', 'destroy', 'forget', 'update', 'generate_config'] as vdi_operations[]
).sort(compareVariants);
/** During a rolling upgrade only the pre-Ely operations are allowed. */
const VDI_RPU_OPS = new Set<vdi_operations>([
  'clone',
  'copy',
  'resize',
  'resize_online',
  'snapshot',
  'destroy',
  'forget',
  'update',
  'force_unlock',
  'generate_config',
  'blocked',
]);

const LIVE_OK = new Set<vdi_operations>([
  'snapshot',
  'resize_online',
  'blocked',
  'clone',
  'mirror',
  'enable_cbt',
  'disable_cbt',
  'data_destroy',
]);
const CBT_METADATA_OK = new Set<vdi_operations>([
  'blocked',
  'data_destroy',
  'destroy',
  'list_changed_blocks',
  'force_unlock',
  'forget',
  'generate_config',
  'update',
]);

async function poolFacts(db: Db): Promise<{ rollingUpgrade: boolean; haEnabled: boolean; haEnabling: boolean; haDisabling: boolean }> {
  const [pool] = await db.all('pool');
  const ops = Object.values(pool?.[1].current_operations ?? {});
  return {
    rollingUpgrade: pool !== undefined && 'rolling_upgrade_in_progress' in pool[1].other_config,
    haEnabled: pool?.[1].ha_enabled === true,
    haEnabling: ops.includes('ha_enable'),
    haDisabling: ops.includes('ha_disable'),
  };
}

/** The features of the SM driving SRs of this type (its SM record), as xapi's features_of_sr. */
async function smFeatures(db: Db, type: string): Promise<Set<string>> {
  const [sm] = await db.find('SM', { type });
  return new Set(Object.keys(sm?.[1].features ?? {}));
}

/** Record_util.sr_operation_to_string: the VDI and PBD operations are named after their calls. */
const srOpString = (op: storage_operations) =>
  op.startsWith('vdi_') ? `VDI.${op.slice(4)}` : op.startsWith('pbd_') ? `PBD.${op.slice(4)}` : op;

/** valid_operations: every SR operation with its first refusal (undefined when allowed). */
export async function srOperationErrors(db: Db, ref: string, sr: Row<'SR'>): Promise<Map<storage_operations, XapiError | undefined>> {
  const table = new Map<storage_operations, XapiError | undefined>(db.schema.enumValues('storage_operations').map((op) => [op, undefined]));
  const setErrors = (code: string, params: string[], ops: Iterable<storage_operations>) => {
    for (const op of ops) if (table.has(op) && table.get(op) === undefined) table.set(op, new XapiError(code, params));
  };
  const all = [...table.keys()];
  if ((await poolFacts(db)).rollingUpgrade)
    setErrors(
      'NOT_SUPPORTED_DURING_UPGRADE',
      [],
      all.filter((op) => !SR_RPU_OPS.has(op)),
    );
  const features = await smFeatures(db, sr.type);
  if (sr.is_tools_sr) for (const f of ['VDI_CREATE', 'VDI_DELETE']) features.delete(f);
  setErrors(
    'SR_OPERATION_NOT_SUPPORTED',
    [ref],
    all.filter((op) => SR_FEATURE[op] !== undefined && !features.has(SR_FEATURE[op]!)),
  );
  const pbds = await Promise.all(sr.PBDs.map((p) => db.tryGet('PBD', p)));
  if (pbds.some((p) => p?.currently_attached === true)) setErrors('SR_HAS_PBD', [ref], ['destroy', 'forget']);
  if (sr.PBDs.length === 0) setErrors('SR_NO_PBDS', [ref], ['destroy']);
  for (const vdiRef of sr.VDIs) {
    const vdi = await db.tryGet('VDI', vdiRef);
    if (vdi?.managed && vdi.type !== 'rrd') {
      setErrors('SR_NOT_EMPTY', [], ['destroy']);
      break;
    }
  }
  // One operation of each kind, ordered as OCaml compares variants; only plugs run in parallel.
  const current: [string, storage_operations][] = [];
  for (const [task, op] of Object.entries(sr.current_operations)) if (!current.some(([, o]) => o === op)) current.push([task, op]);
  current.sort((a, b) => compareVariants(a[1], b[1]));
  if (current.length > 0) {
    const [task, op] = current[0]!;
    setErrors(
      'OTHER_OPERATION_IN_PROGRESS',
      ['SR', ref, srOpString(op), task],
      all.filter((o) => o !== 'plug'),
    );
    const serial = current.find(([, o]) => o !== 'plug');
    if (serial) setErrors('OTHER_OPERATION_IN_PROGRESS', ['SR', ref, srOpString(serial[1]), serial[0]], ['plug']);
  }
  return table;
}

/** Why SR operation `op` may not start now, or undefined. */
export async function srOperationError(db: Db, ref: string, op: storage_operations): Promise<XapiError | undefined> {
  return (await srOperationErrors(db, ref, await db.get('SR', ref))).get(op);
}

/** update_allowed_operations for an SR. */
export async function updateSrAllowedOperations(db: Db, ref: string): Promise<void> {
  const sr = await db.tryGet('SR', ref);
  if (!sr) return;
  const table = await srOperationErrors(db, ref, sr);
  const allowed = SR_LIST_ORDER.filter((op) => table.has(op) && table.get(op) === undefined);
  if (!sameList(sr.allowed_operations, allowed)) await db.update('SR', ref, { allowed_operations: allowed });
}

/** What check_operation_error reads about a VDI besides its row. */
interface VdiFacts {
  ref: string;
  vdi: Row<'VDI'>;
  sr: Row<'SR'> | undefined;
  features: Set<string>;
  pbdsAttached: boolean;
  /** Its VBDs that are attached, and whether each belongs to a snapshot VM. */
  active: { vbd: Row<'VBD'>; ofSnapshot: boolean }[];
  /** Its VBDs with an operation in progress. */
  busyVbds: Row<'VBD'>[];
  pool: Awaited<ReturnType<typeof poolFacts>>;
}

async function vdiFacts(db: Db, ref: string, vdi: Row<'VDI'>): Promise<VdiFacts> {
  const sr = await db.tryGet('SR', vdi.SR);
  const pbds = await Promise.all((sr?.PBDs ?? []).map((p) => db.tryGet('PBD', p)));
  const active: VdiFacts['active'] = [];
  const busyVbds: Row<'VBD'>[] = [];
  for (const vbdRef of vdi.VBDs) {
    const vbd = await db.tryGet('VBD', vbdRef);
    if (!vbd) continue;
    if (vbd.currently_attached) {
      const vm = vbd.VM !== NULL_REF ? await db.tryGet('VM', vbd.VM) : undefined;
      active.push({ vbd, ofSnapshot: vm?.is_a_snapshot === true });
    }
    if (Object.keys(vbd.current_operations).length > 0) busyVbds.push(vbd);
  }
  return {
    ref,
    vdi,
    sr,
    features: await smFeatures(db, sr?.type ?? ''),
    pbdsAttached: pbds.some((p) => p?.currently_attached === true),
    active,
    busyVbds,
    pool: await poolFacts(db),
  };
}

/** check_operation_error for a VDI, in xapi's order. */
function checkVdi(f: VdiFacts, op: vdi_operations): XapiError | undefined {
  const { ref, vdi } = f;
  const srRef = vdi.SR;
  const current = Object.entries(vdi.current_operations);
  const haState = vdi.type === 'ha_statefile' || vdi.type === 'redo_log';
  if (f.pool.rollingUpgrade && !VDI_RPU_OPS.has(op)) return new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
  // Anything but a copy in progress excludes everything (a destroy is let through a mirror).
  const mirroring = op === 'destroy' && current.some(([, o]) => o === 'mirror');
  const exclusive = current.find(([, o]) => o !== 'copy');
  if (!mirroring && exclusive) return new XapiError('OTHER_OPERATION_IN_PROGRESS', ['VDI', ref, exclusive[1], exclusive[0]]);
  if (!f.pbdsAttached && op === 'resize') return new XapiError('SR_NO_PBDS', [srRef]);
  const live = LIVE_OK.has(op);
  const roAttachOk = live || op === 'copy';
  let blocked = live ? false : roAttachOk ? f.active.some((a) => a.vbd.mode === 'RW') : f.active.length > 0;
  // list_changed_blocks on a disk attached only to snapshots (a checkpoint leaves them attached)
  if (blocked && op === 'list_changed_blocks' && f.active.every((a) => a.ofSnapshot)) blocked = false;
  if (blocked) return new XapiError('VDI_IN_USE', [ref, op]);
  if (f.busyVbds.length > 0 && op !== 'data_destroy') {
    const [task, what] = Object.entries(f.busyVbds[0]!.current_operations)[0]!;
    return new XapiError('OTHER_OPERATION_IN_PROGRESS', ['VDI', ref, what, task]);
  }
  const feature = VDI_FEATURE[op];
  if (feature !== undefined && !f.features.has(feature)) return new XapiError('SR_OPERATION_NOT_SUPPORTED', [srRef]);
  if (!CBT_METADATA_OK.has(op) && vdi.type === 'cbt_metadata') return new XapiError('VDI_INCOMPATIBLE_TYPE', [ref, 'cbt_metadata']);
  if ((op === 'mirror' || op === 'set_on_boot') && vdi.cbt_enabled) return new XapiError('VDI_CBT_ENABLED', [ref]);
  const destroyable = (): XapiError | undefined => {
    if (f.sr?.type === 'udev') return new XapiError('VDI_IS_A_PHYSICAL_DEVICE', [ref]);
    if (f.sr?.is_tools_sr) return new XapiError('SR_OPERATION_NOT_SUPPORTED', [srRef]);
    if (vdi.type === 'rrd') return new XapiError('VDI_HAS_RRDS', [ref]);
    if (f.pool.haEnabled && haState) return new XapiError('HA_IS_ENABLED', []);
    if (haState && f.pool.haEnabling) return new XapiError('HA_ENABLE_IN_PROGRESS', []);
    if (haState && f.pool.haDisabling) return new XapiError('HA_DISABLE_IN_PROGRESS', []);
    return undefined;
  };
  const reset = vdi.on_boot === 'reset';
  switch (op) {
    case 'forget':
      if (f.pool.haEnabled && haState) return new XapiError('HA_IS_ENABLED', []);
      return vdi.type === 'rrd' ? new XapiError('VDI_HAS_RRDS', [ref]) : undefined;
    case 'destroy':
      return destroyable();
    case 'data_destroy':
      if (!vdi.is_a_snapshot) return new XapiError('OPERATION_NOT_ALLOWED', [`VDI is not a snapshot: ${ref}`]);
      if (!vdi.cbt_enabled) return new XapiError('VDI_NO_CBT_METADATA', [ref]);
      return destroyable();
    case 'resize':
    case 'resize_online':
      return f.pool.haEnabled && haState ? new XapiError('HA_IS_ENABLED', []) : undefined;
    case 'snapshot':
      if (vdi.sharable) return new XapiError('VDI_IS_SHARABLE', [ref]);
      if (reset) return new XapiError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', []);
      if (current.some(([, o]) => o === 'copy'))
        return new XapiError('OPERATION_NOT_ALLOWED', ['Snapshot operation not allowed during copy.']);
      return undefined;
    case 'copy':
      if (reset) return new XapiError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', []);
      if (haState) {
        return new XapiError('OPERATION_NOT_ALLOWED', [
          "VDI containing HA statefile or redo log cannot be copied (check the VDI's allowed operations).",
        ]);
      }
      return undefined;
    case 'enable_cbt':
    case 'disable_cbt':
      if (vdi.is_a_snapshot) return new XapiError('OPERATION_NOT_ALLOWED', [`VDI is a snapshot: ${ref}`]);
      if (vdi.type !== 'user' && vdi.type !== 'system') return new XapiError('VDI_INCOMPATIBLE_TYPE', [ref, vdi.type]);
      return reset ? new XapiError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', []) : undefined;
    default:
      return undefined;
  }
}

/** Why VDI operation `op` may not start now, or undefined. */
export async function vdiOperationError(db: Db, ref: string, op: vdi_operations): Promise<XapiError | undefined> {
  const vdi = await db.get('VDI', ref);
  return checkVdi(await vdiFacts(db, ref, vdi), op);
}

/** update_allowed_operations for a VDI. */
export async function updateVdiAllowedOperations(db: Db, ref: string): Promise<void> {
  const vdi = await db.tryGet('VDI', ref);
  if (!vdi) return;
  const f = await vdiFacts(db, ref, vdi);
  const allowed = VDI_LISTED.filter((op) => checkVdi(f, op) === undefined);
  if (!sameList(vdi.allowed_operations, allowed)) await db.update('VDI', ref, { allowed_operations: allowed });
}

/** The VDIs behind a VM's disks: their allowed_operations follow the disks' attachment. */
export async function updateVmDisksAllowedOperations(db: Db, vm: Row<'VM'>): Promise<void> {
  for (const vbdRef of vm.VBDs) {
    const vbd = await db.tryGet('VBD', vbdRef);
    if (vbd && !vbd.empty && vbd.VDI !== NULL_REF) await updateVdiAllowedOperations(db, vbd.VDI);
  }
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
