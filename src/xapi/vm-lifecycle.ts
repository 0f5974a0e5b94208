// Which VM operations are allowed when (xapi's xapi_vm_lifecycle.ml): the power states each
// operation needs, the checks in xapi's order, which operations may run together, and the
// protocol every operation follows: check and mark current_operations under the host's lock
// (waiting while another operation holds the VM), run, unmark, recompute allowed_operations.
import { XapiError } from '../rpc/errors.js';
import type { Call } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { vm_appliance_operation, vm_operations, vm_power_state } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import { gateOf, globalGate, retryWithGlobalLock, withGlobalLock, type RetryPolicy } from './retry.js';
import { untilStored } from '../db/until-stored.js';
import { updateDevicesAllowedOperations } from './device-checks.js';
import { isForwardedHere } from './forward.js';

type PS = vm_power_state;
const ALL: PS[] = ['Halted', 'Paused', 'Suspended', 'Running'];

/** xapi's bool_of_assoc: "1" or (any case) "true". */
const flag = (m: Record<string, string>, key: string) => m[key] === '1' || m[key]?.toLowerCase() === 'true';

/** Vm_platform.is_true with default false: "true"/"1" (any case). */
const platformTrue = (platform: Record<string, string>, key: string) => ['true', '1'].includes(platform[key]?.toLowerCase() ?? '');

/** Operations xapi still allows during a rolling pool upgrade. */
const RPU_ALLOWED = new Set<vm_operations>([
  'assert_operation_valid',
  'changing_memory_live',
  'changing_shadow_memory_live',
  'changing_VCPUs_live',
  'clean_reboot',
  'clean_shutdown',
  'clone',
  'copy',
  'csvm',
  'destroy',
  'export',
  'get_boot_record',
  'hard_reboot',
  'hard_shutdown',
  'import',
  'make_into_template',
  'migrate_send',
  'pause',
  'pool_migrate',
  'power_state_reset',
  'provision',
  'resume',
  'resume_on',
  'send_sysrq',
  'send_trigger',
  'start',
  'start_on',
  'suspend',
  'unpause',
  'update_allowed_operations',
]);

/** Never listed in allowed_operations (xapi's ignored_ops). */
const IGNORED = new Set<vm_operations>([
  'create_template',
  'power_state_reset',
  'csvm',
  'get_boot_record',
  'send_sysrq',
  'send_trigger',
  'query_services',
  'shutdown',
  'call_plugin',
  'changing_memory_live',
  'awaiting_memory_live',
  'changing_memory_limits',
  'changing_shadow_memory_live',
  'changing_VCPUs',
  'assert_operation_valid',
  'data_source_op',
  'update_allowed_operations',
  'import',
  'reverting',
]);

const TEMPLATE_OK = new Set<vm_operations>([
  'changing_dynamic_range',
  'changing_static_range',
  'changing_memory_limits',
  'changing_shadow_memory',
  'changing_VCPUs',
  'changing_NVRAM',
  'clone',
  'copy',
  'export',
  'metadata_export',
  'provision',
]);
const SNAPSHOT_OK = new Set<vm_operations>(['revert', 'clone', 'copy', 'export', 'destroy', 'hard_shutdown', 'metadata_export']);
const CONTROL_DOMAIN_OK = new Set<vm_operations>([
  'data_source_op',
  'changing_memory_live',
  'awaiting_memory_live',
  'metadata_export',
  'changing_dynamic_range',
  'changing_memory_limits',
  'changing_static_range',
  'start',
  'start_on',
  'changing_VCPUs',
  'destroy',
]);
/** Operations a non-mobile VM (platform nomigrate / nested-virt) may not do. */
const MOVES_MEMORY = new Set<vm_operations>(['suspend', 'checkpoint', 'pool_migrate', 'migrate_send']);

/** What check_operation_error reads besides the VM row, gathered once for all operations. */
export interface VmFacts {
  ref: string;
  vm: Row<'VM'>;
  metrics?: Row<'VM_metrics'>;
  guest?: Row<'VM_guest_metrics'>;
  /** Per disk: sm_config on_boot=reset, and caching. */
  disks: { reset: boolean; caching: boolean }[];
  isDomainZero: boolean;
  applianceValid: boolean;
  protectionPolicyValid: boolean;
  snapshotScheduleValid: boolean;
  /** PCIs of the VM's NVIDIA SR-IOV vGPUs (passed through with the vGPU, so not counted as PCI passthrough). */
  sriovPcis: Set<string>;
  /** Per vGPU: can its memory be saved (an NVIDIA vGPU on a pGPU with compatibility metadata)? */
  vgpusSuspendable: boolean[];
  rollingUpgrade: boolean;
  cloneSuspended: boolean;
}

/** allowed_power_states: the power states in which `op` may start. */
function allowedPowerStates(f: VmFacts, op: vm_operations): PS[] {
  switch (op) {
    case 'import':
      return [];
    case 'changing_VCPUs':
    case 'changing_static_range':
    case 'changing_memory_limits':
      return f.vm.is_control_domain ? ['Halted', 'Running'] : ['Halted'];
    case 'changing_shadow_memory':
    case 'changing_NVRAM':
    case 'make_into_template':
    case 'provision':
    case 'start':
    case 'start_on':
    case 'create_vtpm':
      return ['Halted'];
    case 'unpause':
      return ['Paused'];
    case 'csvm':
    case 'resume':
    case 'resume_on':
      return ['Suspended'];
    case 'awaiting_memory_live':
    case 'call_plugin':
    case 'clean_reboot':
    case 'clean_shutdown':
    case 'changing_memory_live':
    case 'changing_shadow_memory_live':
    case 'changing_VCPUs_live':
    case 'data_source_op':
    case 'pause':
    case 'pool_migrate':
    case 'send_sysrq':
    case 'send_trigger':
    case 'snapshot_with_quiesce':
    case 'suspend':
      return ['Running'];
    case 'changing_dynamic_range':
      return ['Halted', 'Running'];
    case 'clone':
    case 'copy':
      return f.vm.is_a_snapshot || f.cloneSuspended ? ['Halted', 'Suspended'] : ['Halted'];
    case 'create_template':
    case 'destroy':
    case 'export':
      return ['Halted', 'Suspended'];
    case 'hard_reboot':
      return ['Paused', 'Running'];
    case 'checkpoint':
    case 'get_boot_record':
    case 'shutdown':
    case 'hard_shutdown':
      return ['Paused', 'Suspended', 'Running'];
    case 'migrate_send':
      return ['Halted', 'Suspended', 'Running'];
    default:
      return ALL;
  }
}

/**
 * How xapi names an operation in its errors (Record_util.vm_operation_to_string): the enum
 * name, but for two spelt differently and four it has no name for.
 */
export function vmOperationString(op: vm_operations): string {
  if (op === 'assert_operation_valid') return 'assertoperationvalid';
  if (op === 'data_source_op') return 'data_sources_op';
  if (op === 'create_template' || op === 'query_services' || op === 'changing_memory_limits' || op === 'changing_VCPUs')
    return '(unknown operation)';
  return op;
}

const inGroup = (op: vm_operations, current: vm_operations[], group: vm_operations[]) =>
  group.includes(op) && current.every((o) => group.includes(o));

/** is_allowed_concurrently: may `op` start while `current` (in current_operations order) run? */
function allowedConcurrently(op: vm_operations, current: vm_operations[]): boolean {
  if (
    inGroup(op, current, ['clone', 'copy', 'export']) ||
    inGroup(op, current, ['snapshot', 'checkpoint']) ||
    inGroup(op, current, ['get_boot_record'])
  ) {
    return true;
  }
  if (op === 'hard_shutdown') return !current.includes('hard_shutdown');
  if (op === 'hard_reboot') return !current.includes('hard_shutdown') && !current.includes('hard_reboot');
  const only = current.length === 1 ? current[0] : undefined;
  return (
    (only === 'snapshot_with_quiesce' && op === 'snapshot') ||
    (only === 'migrate_send' && ['metadata_export', 'clean_shutdown', 'clean_reboot'].includes(op))
  );
}

export const isDefaultTemplate = (vm: Row<'VM'>) => vm.is_default_template || flag(vm.other_config, 'default_template');

const isLive = (vm: Row<'VM'>) => vm.power_state === 'Running' || vm.power_state === 'Paused';

/** Xapi_pv_driver_version.has_pv_drivers: the guest reported a parseable driver major and minor. */
function hasPvDrivers(guest: Row<'VM_guest_metrics'> | undefined): boolean {
  const v = guest?.PV_drivers_version;
  const int = (s: string | undefined) => s !== undefined && /^[+-]?\d+$/.test(s.trim());
  const opt = (s: string | undefined) => s === undefined || int(s);
  return v !== undefined && int(v.major) && int(v.minor) && opt(v.micro) && opt(v.build);
}

/** An error description: the code, then its parameters. */
type Refusal = readonly [code: string, ...params: string[]];

const refusalError = ([code, ...params]: Refusal) => new XapiError(code, params);

/** check_op_for_feature: operations that need the guest's help, on a guest that cannot give it. */
function featureError(f: VmFacts, op: vm_operations, strict: boolean): Refusal | undefined {
  const live = isLive(f.vm);
  const type = f.metrics?.current_domain_type;
  const implicit = !live || type === 'pv' || type === 'pv_in_pvh' || type === 'pvh' || hasPvDrivers(f.guest);
  const other = f.guest?.other ?? {};
  const lacks = (feature: string) => other[feature] !== '1';
  const err = (): Refusal => ['VM_LACKS_FEATURE', f.ref];
  if (MOVES_MEMORY.has(op) && live) {
    const reason = other['data-cant-suspend-reason'];
    if (reason !== undefined) return ['VM_NON_SUSPENDABLE', f.ref, reason];
    if (!implicit && strict && lacks('feature-suspend')) return err();
    return undefined;
  }
  if (implicit) return undefined;
  if (op === 'clean_shutdown' && strict && lacks('feature-shutdown') && lacks('feature-poweroff')) return err();
  if (op === 'clean_reboot' && strict && lacks('feature-shutdown') && lacks('feature-reboot')) return err();
  if (op === 'changing_VCPUs_live' && lacks('feature-vcpu-hotplug')) return err();
  return undefined;
}

/** check_vgpu: which operations a VM with vGPUs may do. */
function vgpuError(f: VmFacts, op: vm_operations): Refusal | undefined {
  const all = f.vgpusSuspendable.every(Boolean);
  const power = f.vm.power_state;
  if (op === 'migrate_send' && power === 'Halted') return undefined;
  if ((op === 'pool_migrate' || op === 'migrate_send') && all) return undefined;
  if (op === 'checkpoint' && power === 'Suspended') return undefined;
  if ((op === 'suspend' || op === 'checkpoint') && all) return undefined;
  if (MOVES_MEMORY.has(op)) return ['VM_HAS_VGPU', f.ref];
  return undefined;
}

/**
 * check_operation_error: the first reason `op` may not start on the VM now, in xapi's order, as
 * an error description (code and parameters). Not an XapiError: allowed_operations asks this of
 * every operation after every change, and making an Error (with its stack) per refusal would
 * cost more than all the checks.
 */
export function checkOperation(f: VmFacts, op: vm_operations, strict = true): Refusal | undefined {
  const { ref, vm } = f;
  const blocked = vm.blocked_operations;
  if (Object.hasOwn(blocked, op)) return ['OPERATION_BLOCKED', ref, blocked[op]!];
  const allowed = allowedPowerStates(f, op);
  if (!allowed.includes(vm.power_state)) {
    return ['VM_BAD_POWER_STATE', ref, allowed.map((s) => s.toLowerCase()).join(', '), vm.power_state.toLowerCase()];
  }
  const current = Object.entries(vm.current_operations);
  if (
    current.length > 0 &&
    !allowedConcurrently(
      op,
      current.map(([, o]) => o),
    )
  ) {
    const [task, what] =
      current.length === 1
        ? [current[0]![0], vmOperationString(current[0]![1])]
        : [`{${current.map(([t]) => t).join(',')}}`, `{${current.map(([, o]) => vmOperationString(o)).join(',')}}`];
    return ['OTHER_OPERATION_IN_PROGRESS', 'VM', ref, what, task];
  }
  if (
    vm.is_a_template &&
    !vm.is_a_snapshot &&
    !TEMPLATE_OK.has(op) &&
    !((op === 'destroy' || op === 'migrate_send') && !isDefaultTemplate(vm))
  ) {
    return ['VM_IS_TEMPLATE', ref, vmOperationString(op)];
  }
  if (vm.is_a_snapshot && !SNAPSHOT_OK.has(op)) return ['VM_IS_SNAPSHOT', ref, vmOperationString(op)];
  if (op === 'provision' && !vm.is_a_template) return ['ONLY_PROVISION_TEMPLATE'];
  if (op === 'revert' && !vm.is_a_snapshot) return ['ONLY_REVERT_SNAPSHOT'];
  // Whether the VM may move: what the domain was built with (VM_metrics), else its platform.
  const nomigrate = f.metrics ? f.metrics.nomigrate : platformTrue(vm.platform, 'nomigrate');
  const nestedVirt = f.metrics ? f.metrics.nested_virt : platformTrue(vm.platform, 'nested-virt');
  if (MOVES_MEMORY.has(op) && strict && (nomigrate || nestedVirt)) return ['VM_IS_IMMOBILE', ref];
  if (op === 'changing_dynamic_range' && nestedVirt && strict) return ['VM_IS_USING_NESTED_VIRT', ref];
  if ((op === 'changing_VCPUs' || op === 'destroy') && f.isDomainZero)
    return ['OPERATION_NOT_ALLOWED', 'This operation is not allowed on dom0'];
  if (vm.is_control_domain && !CONTROL_DOMAIN_OK.has(op))
    return ['OPERATION_NOT_ALLOWED', 'This operation is not allowed on a control domain'];
  const feature = featureError(f, op, strict);
  if (feature) return feature;
  if (op === 'snapshot_with_quiesce') return ['VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED', ref];
  if ((op === 'checkpoint' || op === 'snapshot' || op === 'suspend') && f.disks.some((d) => d.reset)) {
    return ['VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION'];
  }
  if (op === 'pool_migrate' && f.disks.some((d) => d.reset && d.caching)) return ['VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION'];
  if (MOVES_MEMORY.has(op) && vm.attached_PCIs.some((p) => !f.sriovPcis.has(p))) return ['VM_HAS_PCI_ATTACHED', ref];
  if (vm.VGPUs.length > 0) {
    const e = vgpuError(f, op);
    if (e) return e;
  }
  if ((MOVES_MEMORY.has(op) || op === 'snapshot') && vm.VUSBs.length > 0) return ['VM_HAS_VUSBS', ref];
  if (op === 'make_into_template') {
    if (f.applianceValid) return ['VM_IS_PART_OF_AN_APPLIANCE', ref, vm.appliance];
    if (f.protectionPolicyValid) return ['VM_ASSIGNED_TO_PROTECTION_POLICY', ref, vm.protection_policy];
    if (f.snapshotScheduleValid) return ['VM_ASSIGNED_TO_SNAPSHOT_SCHEDULE', ref, vm.snapshot_schedule];
  }
  if (op === 'query_services' && !flag(vm.other_config, 'is_system_domain')) return ['NOT_SYSTEM_DOMAIN', ref];
  if (f.rollingUpgrade && !RPU_ALLOWED.has(op)) return ['NOT_SUPPORTED_DURING_UPGRADE'];
  if (op === 'create_vtpm' && vm.VTPMs.length > 0) return ['VTPM_MAX_AMOUNT_REACHED', String(vm.VTPMs.length)];
  return undefined;
}

async function poolOtherConfig(db: Db): Promise<Record<string, string>> {
  const [pool] = await db.all('pool');
  return pool?.[1].other_config ?? {};
}

/**
 * Gathers what checkOperation needs about a VM (`vm` when the caller has the row already). The
 * rows are read at once: on a pool member each read is a request to the coordinator, and reads
 * made together share one.
 */
export async function vmFacts(db: Db, ref: string, vm?: Row<'VM'>): Promise<VmFacts> {
  vm ??= await db.get('VM', ref);
  const row = vm;
  const valid = async (cls: 'VM_appliance' | 'VMPP' | 'VMSS', r: string) => r !== NULL_REF && (await db.tryGet(cls, r)) !== undefined;
  const disk = async (vbdRef: string) => {
    const vbd = await db.tryGet('VBD', vbdRef);
    const vdi = vbd && vbd.VDI !== NULL_REF ? await db.tryGet('VDI', vbd.VDI) : undefined;
    return vdi && { reset: vdi.sm_config.on_boot === 'reset', caching: flag(vdi.sm_config, 'caching') };
  };
  const vgpu = async (vgpuRef: string) => {
    const vgpu = await db.tryGet('VGPU', vgpuRef);
    const [type, pgpu] = await Promise.all([
      vgpu ? db.tryGet('VGPU_type', vgpu.type) : undefined,
      vgpu && vgpu.resident_on !== NULL_REF ? db.tryGet('PGPU', vgpu.resident_on) : undefined,
    ]);
    return { vgpu, impl: type?.implementation, pgpu };
  };
  const [disks, vgpus, host, other, metrics, guest, applianceValid, protectionPolicyValid, snapshotScheduleValid] = await Promise.all([
    Promise.all(row.VBDs.map(disk)),
    Promise.all(row.VGPUs.map(vgpu)),
    row.resident_on !== NULL_REF ? db.tryGet('host', row.resident_on) : undefined,
    poolOtherConfig(db),
    row.metrics !== NULL_REF ? db.tryGet('VM_metrics', row.metrics) : undefined,
    row.guest_metrics !== NULL_REF ? db.tryGet('VM_guest_metrics', row.guest_metrics) : undefined,
    valid('VM_appliance', row.appliance),
    valid('VMPP', row.protection_policy),
    valid('VMSS', row.snapshot_schedule),
  ]);
  const sriovPcis = new Set<string>();
  const vgpusSuspendable: boolean[] = [];
  for (const { vgpu, impl, pgpu } of vgpus) {
    if (impl === 'nvidia_sriov' && vgpu) sriovPcis.add(vgpu.PCI);
    vgpusSuspendable.push((impl === 'nvidia' || impl === 'nvidia_sriov') && pgpu !== undefined && 'nvidia' in pgpu.compatibility_metadata);
  }
  return {
    ref,
    vm: row,
    metrics,
    guest,
    disks: disks.filter((d) => d !== undefined),
    isDomainZero: row.is_control_domain && host?.control_domain === ref,
    applianceValid,
    protectionPolicyValid,
    snapshotScheduleValid,
    sriovPcis,
    vgpusSuspendable,
    rollingUpgrade: 'rolling_upgrade_in_progress' in other,
    cloneSuspended: other.allow_clone_suspended_vm === 'true',
  };
}

/** assert_operation_valid's question: why `op` may not start on the VM now, or undefined. */
export async function operationError(db: Db, ref: string, op: vm_operations, strict = true): Promise<XapiError | undefined> {
  const refusal = checkOperation(await vmFacts(db, ref), op, strict);
  return refusal && refusalError(refusal);
}

/**
 * The VM's allowed_operations as xapi lists them: every operation not ignored that passes the
 * strict check, in reverse datamodel order (xapi folds the list onto an accumulator).
 */
export function allowedOperations(f: VmFacts, all: readonly vm_operations[]): vm_operations[] {
  const ops = all.filter((op) => !IGNORED.has(op) && checkOperation(f, op, true) === undefined).reverse();
  return f.rollingUpgrade ? ops.filter((op) => RPU_ALLOWED.has(op)) : ops;
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** VM_appliance's operations: one at a time, and only if some member VM is in a fitting state. */
async function updateApplianceOperations(db: Db, ref: string): Promise<void> {
  const app = await db.tryGet('VM_appliance', ref);
  if (!app) return;
  const current = Object.entries(app.current_operations);
  const states: PS[] = [];
  for (const vm of app.VMs) {
    const row = await db.tryGet('VM', vm);
    if (row) states.push(row.power_state);
  }
  const fits: Record<vm_appliance_operation, (s: PS) => boolean> = {
    start: (s) => s === 'Halted',
    clean_shutdown: (s) => s === 'Running',
    hard_shutdown: (s) => s !== 'Halted',
    shutdown: (s) => s !== 'Halted',
  };
  const ops = (['start', 'clean_shutdown', 'hard_shutdown', 'shutdown'] as const).filter(
    (op) => current.length === 0 && app.VMs.length > 0 && states.some(fits[op]),
  );
  if (!sameList(app.allowed_operations, ops)) await db.update('VM_appliance', ref, { allowed_operations: ops });
}

/** The fields of a VM's row that say which other rows vmFacts reads. */
const FACT_REFS = [
  'VBDs',
  'VGPUs',
  'resident_on',
  'metrics',
  'guest_metrics',
  'appliance',
  'protection_policy',
  'snapshot_schedule',
  'is_control_domain',
] as const;

const sameFactRefs = (a: Row<'VM'>, b: Row<'VM'>) => FACT_REFS.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));

/** What the caller of updateAllowedOperations knows of the VM's row. */
export type KnownVm =
  /** the row, just read: used as it is */
  | { row: Row<'VM'> }
  /**
   * what the caller's own writes should have made of it: the row is read again together with
   * the rows its facts need (one round of reads on a pool member), those read again only if
   * the row turns out to point elsewhere
   */
  | { expected: Row<'VM'> };

/**
 * update_allowed_operations: the VM's allowed_operations recomputed, then those of its
 * appliance and its vTPMs, and of its VBDs and VIFs, which follow the VM's state.
 */
export async function updateAllowedOperations(db: Db, ref: string, known?: KnownVm): Promise<void> {
  let vm: Row<'VM'> | undefined;
  let facts: VmFacts;
  if (known && 'expected' in known) {
    const [fresh, guessed] = await Promise.all([db.tryGet('VM', ref), vmFacts(db, ref, known.expected)]);
    if (!fresh) return;
    vm = fresh;
    facts = sameFactRefs(fresh, known.expected) ? { ...guessed, vm: fresh } : await vmFacts(db, ref, fresh);
  } else {
    vm = known?.row ?? (await db.tryGet('VM', ref));
    if (!vm) return;
    facts = await vmFacts(db, ref, vm);
  }
  const ops = allowedOperations(facts, db.schema.enumValues('vm_operations'));
  // The VM's, its appliance's, its vTPMs' and its devices' lists depend on the VM's state, not
  // on one another: they are worked out together (on a pool member, their reads share requests).
  const want = vm.power_state === 'Halted' ? (['destroy'] as const) : [];
  const vtpm = async (ref: string) => {
    const row = await db.tryGet('VTPM', ref);
    if (row && !sameList(row.allowed_operations, want)) await db.update('VTPM', ref, { allowed_operations: [...want] });
  };
  await Promise.all([
    sameList(vm.allowed_operations, ops) ? undefined : db.update('VM', ref, { allowed_operations: ops }),
    vm.appliance !== NULL_REF ? updateApplianceOperations(db, vm.appliance) : undefined,
    ...vm.VTPMs.map(vtpm),
    updateDevicesAllowedOperations(db, ref, vm),
  ]);
}

/**
 * force_state_reset: what xapi writes when it decides a VM's power state without the domain
 * manager (power_state_reset, a suspended VM's hard shutdown): the state, and for Halted, no
 * device attached, no host, no domain; current_operations are cleared.
 */
export async function forceStateReset(db: Db, ref: string, state: PS): Promise<void> {
  const vm = await db.get('VM', ref);
  if (Object.keys(vm.current_operations).length > 0) await db.update('VM', ref, { current_operations: {} });
  await db.update('VM', ref, { power_state: state });
  if (state === 'Halted') {
    for (const vbd of vm.VBDs)
      if (await db.tryGet('VBD', vbd)) await db.update('VBD', vbd, { currently_attached: false, current_operations: {} });
    for (const vif of vm.VIFs)
      if (await db.tryGet('VIF', vif)) await db.update('VIF', vif, { currently_attached: false, current_operations: {} });
    for (const vusb of vm.VUSBs)
      if (await db.tryGet('VUSB', vusb)) await db.update('VUSB', vusb, { currently_attached: false, current_operations: {} });
    await db.update('VM', ref, { requires_reboot: false });
  }
  if (state === 'Halted' || state === 'Suspended') {
    await db.update('VM', ref, { resident_on: NULL_REF, scheduled_to_be_resident_on: NULL_REF, domid: -1 });
  }
  await updateAllowedOperations(db, ref);
}

/** The lock VM operations are checked and marked under, for other marks that must not race them. */
export const globalLock = globalGate.lock;

/**
 * with_vm_operation: check `op` and add it to current_operations under the host's lock,
 * waiting while another operation holds the VM; run `fn` outside the lock; then remove it,
 * recompute allowed_operations and wake whoever waits, whatever happened.
 */
export async function withVmOperation<T>(
  call: Call,
  ref: string,
  op: vm_operations,
  fn: () => Promise<T>,
  opts: { strict?: boolean; policy?: RetryPolicy } = {},
): Promise<T> {
  // the member's half of a forwarded call: the coordinator holds the mark
  if (isForwardedHere(call)) return fn();
  const db = call.db;
  const key = call.task;
  await retryWithGlobalLock(
    call,
    async () => {
      const vm = await db.get('VM', ref);
      const refusal = checkOperation(await vmFacts(db, ref, vm), op, opts.strict ?? true);
      if (refusal) throw refusalError(refusal);
      await db.update('VM', ref, { current_operations: { ...vm.current_operations, [key]: op } });
      await updateAllowedOperations(db, ref);
    },
    opts.policy,
  );
  try {
    return await fn();
  } finally {
    // the mark must come off even if the database refuses writes just now (a full disk)
    await untilStored(db, () =>
      withGlobalLock(call.host, async () => {
        const vm = await db.tryGet('VM', ref);
        if (vm && key in vm.current_operations) {
          const current = { ...vm.current_operations };
          delete current[key];
          await db.update('VM', ref, { current_operations: current });
          await updateAllowedOperations(db, ref);
        }
      }),
    ).catch((e) => call.host.log.warn({ err: e, vm: ref }, 'unmarking a VM operation failed'));
    gateOf(call.host).broadcast();
  }
}
