// Which VBD and VIF operations are allowed when (xapi's xapi_vbd_helpers.ml and
// xapi_vif_helpers.ml valid_operations): every operation starts allowed, and each rule, in xapi's
// order, refuses some operations with an error unless an earlier rule already refused them. The
// same table answers a call (its error, raised as is) and fills allowed_operations (the
// operations without one), which is recomputed whenever the device, its VM or its disk changes.
import { XapiError } from '../rpc/errors.js';
import type { Db, Row } from '../db/interface.js';
import type { Ref, domain_type, tristate_type, vbd_operations, vif_operations } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';

/** Operation -> the error refusing it (absent: allowed), filled first rule first. */
class OperationTable<Op extends string> {
  private readonly errors = new Map<Op, XapiError>();
  constructor(readonly ops: readonly Op[]) {}

  refuse(code: string, params: string[], ops: readonly Op[]): void {
    for (const op of ops) if (!this.errors.has(op)) this.errors.set(op, new XapiError(code, params));
  }

  error(op: Op): XapiError | undefined {
    return this.errors.get(op);
  }

  allowed(): Op[] {
    return this.ops.filter((op) => !this.errors.has(op));
  }
}

/**
 * OCaml's order of constant polymorphic variants (`compare` on them, as xapi sorts a
 * current_operations list by operation): the order of their tag hashes (caml_hash_variant).
 */
export function variantOrder(tag: string): number {
  let h = 0;
  for (let i = 0; i < tag.length; i++) h = (Math.imul(223, h) + tag.charCodeAt(i)) & 0x7fffffff;
  return h & 0x40000000 ? h - 0x80000000 : h;
}

/** Entries of a current_operations map sorted by operation, one per operation (List.sort_uniq). */
export function sortedOperations<Op extends string>(current: Record<string, Op>): [string, Op][] {
  const out: [string, Op][] = [];
  for (const [task, op] of Object.entries(current).sort((a, b) => variantOrder(a[1]) - variantOrder(b[1]))) {
    if (out.length === 0 || out[out.length - 1]![1] !== op) out.push([task, op]);
  }
  return out;
}

/** VM operations during which no device may be plugged or unplugged. */
const VM_OPS_BLOCKING_HOTPLUG = new Set(['clean_shutdown', 'hard_shutdown', 'suspend', 'pause']);

/** The domain type that decides whether hotplug needs PV drivers (Helpers.domain_type). */
async function currentDomainType(db: Db, vm: Row<'VM'>): Promise<domain_type> {
  if (vm.power_state === 'Halted') return vm.domain_type;
  const metrics = await db.tryGet('VM_metrics', vm.metrics);
  return metrics?.current_domain_type ?? vm.domain_type;
}

/** Whether the guest reported PV drivers with a version (Xapi_pv_driver_version.of_guest_metrics). */
function hasPvDrivers(gm: Row<'VM_guest_metrics'> | undefined): boolean {
  if (!gm) return false;
  const v = gm.PV_drivers_version;
  const isInt = (s: string | undefined) => s !== undefined && /^[+-]?\d+$/.test(s);
  return isInt(v.major) && isInt(v.minor) && (v.micro === undefined || isInt(v.micro)) && (v.build === undefined || isInt(v.build));
}

/** The rules both device classes share: power state, the VM's own operations, guest hotplug support. */
async function vmRules<Op extends string>(
  db: Db,
  table: OperationTable<Op>,
  ref: string,
  attached: boolean,
  vmRef: Ref<'VM'>,
  vm: Row<'VM'>,
  ops: { plug: Op; unplug: readonly Op[]; badPowerState: readonly Op[]; hotplug: readonly Op[]; blockedByVm: readonly Op[] },
  hotplugSupport: (gm: Row<'VM_guest_metrics'>) => tristate_type,
  what: 'VBD' | 'VIF',
): Promise<void> {
  const power = vm.power_state;
  if (power === 'Running' && attached) table.refuse('DEVICE_ALREADY_ATTACHED', [ref], [ops.plug]);
  else if (power === 'Running') table.refuse('DEVICE_ALREADY_DETACHED', [ref], ops.unplug);
  else table.refuse('VM_BAD_POWER_STATE', [vmRef, 'running', power.toLowerCase()], ops.badPowerState);
  for (const op of Object.values(vm.current_operations)) {
    if (VM_OPS_BLOCKING_HOTPLUG.has(op)) {
      table.refuse('OPERATION_NOT_ALLOWED', [`Current operation on VM:${vmRef} is ${op}`], ops.blockedByVm);
    }
  }
  // An HVM guest can hotplug only with PV drivers, unless it says otherwise.
  if (power === 'Running' && (await currentDomainType(db, vm)) === 'hvm') {
    const gm = await db.tryGet('VM_guest_metrics', vm.guest_metrics);
    const support = gm ? hotplugSupport(gm) : 'unspecified';
    if (support === 'no') {
      table.refuse('OPERATION_NOT_ALLOWED', [`VM states it does not support ${what} hotplug.`], ops.hotplug);
    } else if (support === 'unspecified' && !(gm?.PV_drivers_detected === true) && !hasPvDrivers(gm)) {
      table.refuse('VM_MISSING_PV_DRIVERS', [vmRef], ops.hotplug);
    }
  }
}

const VBD_OPS: readonly vbd_operations[] = ['attach', 'eject', 'insert', 'plug', 'unplug', 'unplug_force', 'pause', 'unpause'];
const VBD_PARALLEL: readonly vbd_operations[] = ['pause', 'unpause'];

/**
 * The VBD operations table. `sharingChecks` adds the checks against other VBDs of the same disk,
 * which xapi makes when asserting an operation but not when recomputing allowed_operations.
 */
export async function vbdOperations(
  db: Db,
  ref: Ref<'VBD'>,
  vbd: Row<'VBD'>,
  sharingChecks: boolean,
): Promise<OperationTable<vbd_operations>> {
  const table = new OperationTable(VBD_OPS);
  const current = sortedOperations(vbd.current_operations);
  const busy = (entry: [string, vbd_operations]) => ['VBD', ref, entry[1], entry[0]];
  if (current.length > 0)
    table.refuse(
      'OTHER_OPERATION_IN_PROGRESS',
      busy(current[0]!),
      VBD_OPS.filter((o) => !VBD_PARALLEL.includes(o)),
    );
  const serial = current.find(([, op]) => !VBD_PARALLEL.includes(op));
  if (serial) table.refuse('OTHER_OPERATION_IN_PROGRESS', busy(serial), ['pause']);
  const blocksUnpause = current.find(([, op]) => op !== 'attach' && !VBD_PARALLEL.includes(op));
  if (blocksUnpause) table.refuse('OTHER_OPERATION_IN_PROGRESS', busy(blocksUnpause), ['unpause']);
  if (!vbd.unpluggable) table.refuse('VBD_NOT_UNPLUGGABLE', [ref], ['unplug', 'unplug_force']);
  if (vbd.type !== 'CD') table.refuse('VBD_NOT_REMOVABLE_MEDIA', [ref], ['insert', 'eject']);
  if (vbd.empty) table.refuse('VBD_IS_EMPTY', [ref], ['eject']);
  else table.refuse('VBD_NOT_EMPTY', [ref], ['insert']);

  const vm = await db.get('VM', vbd.VM);
  await vmRules(
    db,
    table,
    ref,
    vbd.currently_attached,
    vbd.VM,
    vm,
    {
      plug: 'plug',
      unplug: ['unplug', 'unplug_force'],
      // A paused VM's disks may still be paused and unpaused.
      badPowerState:
        vm.power_state === 'Paused' ? ['plug', 'unplug', 'unplug_force'] : ['pause', 'unpause', 'plug', 'unplug', 'unplug_force'],
      hotplug: ['plug', 'unplug', 'unplug_force'],
      blockedByVm: ['plug', 'unplug'],
    },
    (gm) => gm.can_use_hotplug_vbd,
    'VBD',
  );
  if (vm.power_state === 'Running' && vbd.type === 'CD' && (await currentDomainType(db, vm)) === 'hvm') {
    table.refuse(
      'OPERATION_NOT_ALLOWED',
      ['HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected'],
      ['plug', 'unplug', 'unplug_force'],
    );
  }
  if (vbd.type === 'CD' && vm.power_state === 'Suspended') {
    table.refuse('VM_BAD_POWER_STATE', [vbd.VM, 'halted, running', 'suspended'], ['insert', 'eject']);
  }

  const vdi = vbd.empty || vbd.VDI === NULL_REF ? undefined : await db.tryGet('VDI', vbd.VDI);
  if (vdi) {
    if (!vdi.managed) table.refuse('VDI_NOT_MANAGED', [ref], VBD_OPS);
    const vdiBusy = Object.entries(vdi.current_operations).find(([, op]) => op !== 'copy' && op !== 'mirror');
    if (vdiBusy) table.refuse('OTHER_OPERATION_IN_PROGRESS', ['VDI', vbd.VDI, vdiBusy[1], vdiBusy[0]], ['attach', 'plug', 'insert']);
    if (!vbd.currently_attached && sharingChecks) {
      // Other VBDs of the disk that hold it (or are about to): not those of suspended VMs, which
      // are offline, nor the control domain's, which shares safely.
      const holders: Row<'VBD'>[] = [];
      for (const other of vdi.VBDs) {
        if (other === ref) continue;
        const row = await db.tryGet('VBD', other);
        if (!row) continue;
        const otherVm = await db.tryGet('VM', row.VM);
        if (otherVm?.power_state === 'Suspended' || otherVm?.is_control_domain) continue;
        if (row.currently_attached || Object.keys(row.current_operations).length > 0) holders.push(row);
      }
      const needWrite = vbd.mode === 'RW';
      const someoneWrites = holders.some((h) => h.mode === 'RW');
      if (!vdi.sharable && !vm.is_control_domain && (someoneWrites || (needWrite && holders.length > 0))) {
        table.refuse('VDI_IN_USE', [vbd.VDI], ['attach', 'insert', 'plug']);
      }
      if (needWrite && vdi.read_only) table.refuse('VDI_READONLY', [vbd.VDI], ['attach', 'insert', 'plug']);
    }
  }
  return table;
}

const VIF_OPS: readonly vif_operations[] = ['attach', 'plug', 'unplug'];

export async function vifOperations(db: Db, ref: Ref<'VIF'>, vif: Row<'VIF'>): Promise<OperationTable<vif_operations>> {
  const table = new OperationTable(VIF_OPS);
  const current = Object.entries(vif.current_operations);
  if (current.length > 0) {
    // Every operation and every task, newest first, each list in braces.
    const list = (xs: string[]) => `{${xs.reverse().join('; ')}}`;
    table.refuse(
      'OTHER_OPERATION_IN_PROGRESS',
      ['VIF', ref, list(current.map(([, op]) => op)), list(current.map(([task]) => task))],
      VIF_OPS,
    );
  }
  const vm = await db.get('VM', vif.VM);
  if (await isDomainZero(db, vif.VM, vm)) table.refuse('OPERATION_NOT_ALLOWED', ['Control domain does not support hotplug'], ['plug']);
  await vmRules(
    db,
    table,
    ref,
    vif.currently_attached,
    vif.VM,
    vm,
    { plug: 'plug', unplug: ['unplug'], badPowerState: ['plug', 'unplug'], hotplug: ['plug', 'unplug'], blockedByVm: ['plug', 'unplug'] },
    (gm) => gm.can_use_hotplug_vif,
    'VIF',
  );
  return table;
}

/** The control domain of the host the VM is resident on (Helpers.is_domain_zero). */
async function isDomainZero(db: Db, ref: Ref<'VM'>, vm: Row<'VM'>): Promise<boolean> {
  if (!vm.is_control_domain) return false;
  const host = await db.tryGet('host', vm.resident_on);
  return host?.control_domain === ref;
}

/** Raises the error that refuses `op` on the VBD now, if any (assert_operation_valid). */
export async function assertVbdOperation(db: Db, ref: Ref<'VBD'>, op: vbd_operations): Promise<void> {
  const err = (await vbdOperations(db, ref, await db.get('VBD', ref), true)).error(op);
  if (err) throw err;
}

export async function assertVifOperation(db: Db, ref: Ref<'VIF'>, op: vif_operations): Promise<void> {
  const err = (await vifOperations(db, ref, await db.get('VIF', ref))).error(op);
  if (err) throw err;
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

export async function updateVbdAllowedOperations(db: Db, ref: Ref<'VBD'>): Promise<void> {
  const vbd = await db.tryGet('VBD', ref);
  if (!vbd) return;
  const allowed = (await vbdOperations(db, ref, vbd, false)).allowed();
  if (!sameList(allowed, vbd.allowed_operations)) await db.update('VBD', ref, { allowed_operations: allowed });
}

export async function updateVifAllowedOperations(db: Db, ref: Ref<'VIF'>): Promise<void> {
  const vif = await db.tryGet('VIF', ref);
  if (!vif) return;
  const allowed = (await vifOperations(db, ref, vif)).allowed();
  if (!sameList(allowed, vif.allowed_operations)) await db.update('VIF', ref, { allowed_operations: allowed });
}

/** A VM's VBDs and VIFs, after a change to the VM (xapi's VM update_allowed_operations does this). */
export async function updateDevicesAllowedOperations(db: Db, vmRef: Ref<'VM'>, row?: Row<'VM'>): Promise<void> {
  const vm = row ?? (await db.tryGet('VM', vmRef));
  if (!vm) return;
  // Each device's list is its own row's: worked out together (a member's reads share requests).
  await Promise.all([
    ...vm.VBDs.map((vbd) => updateVbdAllowedOperations(db, vbd)),
    ...vm.VIFs.map((vif) => updateVifAllowedOperations(db, vif)),
  ]);
}

/**
 * At start-up nothing of a previous run is still running: marks its VBD and VIF operations left
 * (a kill mid-operation) go, or every later operation would wait for them.
 */
export async function clearDeviceOperations(db: Db, vm: Row<'VM'>): Promise<void> {
  for (const ref of vm.VBDs) {
    const vbd = await db.tryGet('VBD', ref);
    if (vbd && Object.keys(vbd.current_operations).length > 0) await db.update('VBD', ref, { current_operations: {} });
  }
  for (const ref of vm.VIFs) {
    const vif = await db.tryGet('VIF', ref);
    if (vif && Object.keys(vif.current_operations).length > 0) await db.update('VIF', ref, { current_operations: {} });
  }
}
