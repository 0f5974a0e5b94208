// Which VM operations are allowed when (xapi's xapi_vm_lifecycle.ml): the power states each
// operation needs, the checks in xapi's order, which operations may run together, and the
// protocol every operation follows: check and mark current_operations atomically, run, unmark,
// recompute allowed_operations.
import { XapiError } from '../api/errors.js';
import type { Call } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { vm_operations, vm_power_state } from '../schema/generated.js';
import { Mutex } from '../util/mutex.js';
import { untilStored } from '../db/until-stored.js';
import { updateDevicesAllowedOperations } from './device-checks.js';

type PS = vm_power_state;
const ALL: PS[] = ['Halted', 'Paused', 'Running', 'Suspended'];

/** allowed_power_states, per operation. */
const POWER_STATES: Partial<Record<vm_operations, PS[]>> = {
  start: ['Halted'],
  start_on: ['Halted'],
  clean_shutdown: ['Running'],
  hard_shutdown: ['Paused', 'Suspended', 'Running'],
  shutdown: ['Paused', 'Suspended', 'Running'],
  clean_reboot: ['Running'],
  hard_reboot: ['Paused', 'Running'],
  pause: ['Running'],
  unpause: ['Paused'],
  suspend: ['Running'],
  resume: ['Suspended'],
  resume_on: ['Suspended'],
  clone: ['Halted'],
  copy: ['Halted'],
  provision: ['Halted'],
  destroy: ['Halted', 'Suspended'],
  pool_migrate: ['Running'],
  migrate_send: ['Halted', 'Suspended', 'Running'],
  checkpoint: ['Paused', 'Suspended', 'Running'],
  changing_VCPUs: ['Halted'],
  changing_static_range: ['Halted'],
  changing_memory_limits: ['Halted'],
  changing_dynamic_range: ['Halted', 'Running'],
  changing_shadow_memory: ['Halted'],
  changing_NVRAM: ['Halted'],
  make_into_template: ['Halted'],
  create_vtpm: ['Halted'],
  export: ['Halted', 'Suspended'],
  create_template: ['Halted', 'Suspended'],
  changing_memory_live: ['Running'],
  changing_VCPUs_live: ['Running'],
  changing_shadow_memory_live: ['Running'],
  send_sysrq: ['Running'],
  send_trigger: ['Running'],
  call_plugin: ['Running'],
  data_source_op: ['Running'],
  get_boot_record: ['Paused', 'Suspended', 'Running'],
  import: [],
};

/** Never listed in allowed_operations (xapi's ignored set). */
const IGNORED = new Set<vm_operations>([
  'create_template', 'power_state_reset', 'csvm', 'get_boot_record', 'send_sysrq', 'send_trigger', 'query_services',
  'shutdown', 'call_plugin', 'changing_memory_live', 'awaiting_memory_live', 'changing_memory_limits',
  'changing_shadow_memory_live', 'changing_VCPUs', 'assert_operation_valid', 'data_source_op',
  'update_allowed_operations', 'import', 'reverting',
]);

const TEMPLATE_OK = new Set<vm_operations>([
  'changing_dynamic_range', 'changing_static_range', 'changing_memory_limits', 'changing_shadow_memory',
  'changing_VCPUs', 'changing_NVRAM', 'clone', 'copy', 'export', 'metadata_export', 'provision',
]);
const SNAPSHOT_OK = new Set<vm_operations>(['revert', 'clone', 'copy', 'export', 'destroy', 'hard_shutdown', 'metadata_export']);
const CONTROL_DOMAIN_OK = new Set<vm_operations>([
  'data_source_op', 'changing_memory_live', 'awaiting_memory_live', 'metadata_export', 'changing_dynamic_range',
  'changing_memory_limits', 'changing_static_range', 'start', 'start_on', 'changing_VCPUs', 'destroy',
]);

const sameGroup = (ops: vm_operations[], group: vm_operations[]) => ops.every((o) => group.includes(o));

/** is_allowed_concurrently: may `op` run while `current` are running? */
function allowedConcurrently(op: vm_operations, current: vm_operations[]): boolean {
  const all = [op, ...current];
  if (sameGroup(all, ['clone', 'copy', 'export']) || sameGroup(all, ['snapshot', 'checkpoint']) || sameGroup(all, ['get_boot_record'])) {
    return true;
  }
  if (op === 'hard_shutdown') return !current.includes('hard_shutdown');
  if (op === 'hard_reboot') return !current.includes('hard_shutdown') && !current.includes('hard_reboot');
  if (current.length === 1 && current[0] === 'migrate_send') return ['metadata_export', 'clean_shutdown', 'clean_reboot'].includes(op);
  return false;
}

export const isDefaultTemplate = (vm: Row<'VM'>) =>
  vm.is_default_template === true || vm.other_config?.default_template === 'true';

/** check_operation_error: the first reason `op` may not run on `vm` now, or undefined. */
export function operationError(ref: string, vm: Row<'VM'>, op: vm_operations, strict = true): XapiError | undefined {
  const refusal = operationRefusal(ref, vm, op, strict, true);
  return refusal && new XapiError(refusal[0], refusal.slice(1));
}

/** What operationRefusal answers when asked for no description. */
const REFUSED = ['refused'];

/**
 * The same check as an error description, or just REFUSED when `describe` is false:
 * allowed_operations asks it of every operation after every change, where making an Error
 * (and its stack) or the text of its parameters per refusal cost more than the checks.
 */
function operationRefusal(ref: string, vm: Row<'VM'>, op: vm_operations, strict: boolean, describe: boolean): string[] | undefined {
  const blocked = vm.blocked_operations;
  if (Object.prototype.hasOwnProperty.call(blocked, op)) return ['OPERATION_BLOCKED', ref, blocked[op]!];
  const power = vm.power_state;
  const allowed = POWER_STATES[op] ?? ALL;
  if (!allowed.includes(power)) {
    return describe ? ['VM_BAD_POWER_STATE', ref, allowed.map((s) => s.toLowerCase()).join(', '), power.toLowerCase()] : REFUSED;
  }
  const current = vm.current_operations;
  const tasks = Object.keys(current);
  if (tasks.length > 0 && !allowedConcurrently(op, Object.values(current))) {
    if (!describe) return REFUSED;
    const [task] = tasks.length === 1 ? tasks : [`{${tasks.join(',')}}`];
    const ops = tasks.length === 1 ? current[tasks[0]!]! : `{${Object.values(current).join(',')}}`;
    return ['OTHER_OPERATION_IN_PROGRESS', 'VM', ref, ops, task!];
  }
  const template = vm.is_a_template === true && vm.is_a_snapshot !== true;
  if (template && !TEMPLATE_OK.has(op)) {
    if (!((op === 'destroy' || op === 'migrate_send') && !isDefaultTemplate(vm))) return ['VM_IS_TEMPLATE', ref, op];
  }
  if (vm.is_a_snapshot === true && !SNAPSHOT_OK.has(op)) return ['VM_IS_SNAPSHOT', ref, op];
  if (op === 'provision' && !template) return ['ONLY_PROVISION_TEMPLATE'];
  if (op === 'revert' && vm.is_a_snapshot !== true) return ['ONLY_REVERT_SNAPSHOT'];
  if (vm.is_control_domain === true) {
    if (vm.domid === 0 && (op === 'changing_VCPUs' || op === 'destroy')) {
      return ['OPERATION_NOT_ALLOWED', 'This operation is not allowed on dom0'];
    }
    if (!CONTROL_DOMAIN_OK.has(op)) return ['OPERATION_NOT_ALLOWED', 'This operation is not allowed on a control domain'];
  }
  if (strict && (op === 'suspend' || op === 'checkpoint' || op === 'pool_migrate' || op === 'migrate_send')) {
    const platform = vm.platform;
    if (platform.nomigrate === 'true' || platform['nested-virt'] === 'true') return ['VM_IS_IMMOBILE', ref];
  }
  return undefined;
}

export function allowedOperations(ref: string, vm: Row<'VM'>, ops: vm_operations[]): vm_operations[] {
  return ops.filter((op) => !IGNORED.has(op) && operationRefusal(ref, vm, op, true, false) === undefined);
}

/** The global lock under which an operation is checked and marked (xapi's with_global_lock). */
const lock = new Mutex();
/** The same lock, for device operations, which must see the VM's marks and not race them. */
export const globalLock = lock;

export async function updateAllowedOperations(db: Db, ref: string): Promise<void> {
  const vm = await db.tryGet('VM', ref);
  if (!vm) return;
  const ops = allowedOperations(ref, vm, db.schema.enumValues('vm_operations'));
  const old = vm.allowed_operations;
  if (old.length !== ops.length || old.some((o, i) => o !== ops[i])) await db.update('VM', ref, { allowed_operations: ops });
  await updateDevicesAllowedOperations(db, ref);
}

/**
 * with_vm_operation: check `op` and add it to current_operations under the lock, run `fn`
 * outside it, then remove it and recompute allowed_operations, whatever happened.
 */
export async function withVmOperation<T>(call: Call, ref: string, op: vm_operations, fn: () => Promise<T>, strict = true): Promise<T> {
  const db = call.db;
  const key = call.task;
  await lock.run(async () => {
    const vm = await db.get('VM', ref);
    const err = operationError(ref, vm, op, strict);
    if (err) throw err;
    await db.update('VM', ref, { current_operations: { ...vm.current_operations, [key]: op } });
    await updateAllowedOperations(db, ref);
  });
  try {
    return await fn();
  } finally {
    // the mark must come off even if the database refuses writes just now (a full disk)
    await untilStored(db, async () => {
      const vm = await db.tryGet('VM', ref);
      if (vm) {
        const current = { ...vm.current_operations };
        delete current[key];
        await db.update('VM', ref, { current_operations: current });
        await updateAllowedOperations(db, ref);
      }
    });
  }
}
