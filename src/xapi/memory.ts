// Memory as xapi accounts for it (memory_check.ml, vm_memory_constraints.ml): constraint
// checks, the per-VM overhead, host free memory computed from the database, and the memory
// and VCPU setters with their power-state rules.
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { VM_record } from '../schema/generated.js';
import { overheadBytes } from '../xenopsd/overhead.js';
import { NULL_REF } from '../schema/types.js';
import { withVmOperation } from './vm-lifecycle.js';
import { isForwardedHere } from './forward.js';
import { runOnResident } from './forward-to.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';

/** VM.memory_overhead from the overhead model, for the VM's static_max, VCPUs and type. */
export function vmOverhead(vm: Row<'VM'>): number {
  return overheadBytes({
    domainType: vm.domain_type === 'unspecified' ? 'hvm' : vm.domain_type,
    staticMax: vm.memory_static_max,
    vcpus: vm.VCPUs_max,
    shadowMultiplier: vm.HVM_shadow_multiplier || 1,
  });
}

/** A VM's four memory limits (and whether it is a control domain, whose limits are pinned). */
export type MemoryConstraints = Pick<VM_record, 'memory_static_min' | 'memory_dynamic_min' | 'memory_dynamic_max' | 'memory_static_max'> &
  Partial<Pick<VM_record, 'is_control_domain'>>;

/** static_min <= dynamic_min <= dynamic_max <= static_max, and pinned for control domains. */
export function assertMemoryConstraints(vm: MemoryConstraints): void {
  const [smin, dmin, dmax, smax] = [vm.memory_static_min, vm.memory_dynamic_min, vm.memory_dynamic_max, vm.memory_static_max];
  if (!(smin <= dmin && dmin <= dmax && dmax <= smax)) throw new XapiError('MEMORY_CONSTRAINT_VIOLATION_ORDER', []);
  if (vm.is_control_domain === true && !(dmin === dmax && dmax === smax)) {
    throw new XapiError('MEMORY_CONSTRAINT_VIOLATION_MAXPIN', ['control domain']);
  }
}

/**
 * host.compute_free_memory: total − host overhead − Σ(dynamic_min + overhead) of the VMs
 * resident on or scheduled to the host (the control domain included), never below zero.
 */
export async function computeFreeMemory(db: Db, hostRef: string, exclude?: string): Promise<number> {
  const host = await db.get('host', hostRef);
  const metrics = await db.get('host_metrics', host.metrics);
  let used = host.memory_overhead;
  for (const [ref, vm] of await db.all('VM')) {
    if (ref === exclude) continue;
    if (vm.resident_on !== hostRef && vm.scheduled_to_be_resident_on !== hostRef) continue;
    used += vm.memory_dynamic_min + vm.memory_overhead;
  }
  return Math.max(0, metrics.memory_total - used);
}

export async function assertEnoughMemory(call: Call, ref: string, vm: Row<'VM'>, hostRef: string): Promise<void> {
  const needed = vm.memory_dynamic_min + vmOverhead(vm);
  const available = await computeFreeMemory(call.db, hostRef, ref);
  if (needed > available) throw new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', [String(needed), String(available)]);
}

/** The memory fields the setters write (memory_target follows dynamic_min, as xapi keeps it). */
type MemoryLimits = Partial<
  Pick<VM_record, 'memory_static_min' | 'memory_static_max' | 'memory_dynamic_min' | 'memory_dynamic_max' | 'memory_target'>
>;

/**
 * assert_valid_for_current_context: the order static_min <= dynamic_min <= dynamic_max <=
 * static_max, and for a control domain or a domain using nested virtualisation the dynamic
 * range pinned at static_max (MEMORY_CONSTRAINT_VIOLATION_MAXPIN with the reason).
 */
async function assertValidForContext(db: Db, vm: Row<'VM'>, c: MemoryConstraints): Promise<void> {
  const [smin, dmin, dmax, smax] = [c.memory_static_min, c.memory_dynamic_min, c.memory_dynamic_max, c.memory_static_max];
  const pinned = smin <= dmin && dmin === dmax && dmax === smax;
  const metrics = vm.metrics !== NULL_REF ? await db.tryGet('VM_metrics', vm.metrics) : undefined;
  const nestedVirt = metrics ? metrics.nested_virt : ['true', '1'].includes(vm.platform['nested-virt']?.toLowerCase() ?? '');
  if (vm.is_control_domain) {
    if (!pinned) throw new XapiError('MEMORY_CONSTRAINT_VIOLATION_MAXPIN', ['control domain']);
  } else if (nestedVirt) {
    if (!pinned) throw new XapiError('MEMORY_CONSTRAINT_VIOLATION_MAXPIN', ['nested virt']);
  } else if (!(smin <= dmin && dmin <= dmax && dmax <= smax)) {
    throw new XapiError('MEMORY_CONSTRAINT_VIOLATION_ORDER', []);
  }
}

/** What xapi's message says when VCPU counts do not fit (INVALID_VALUE's first parameter). */
const VCPU_RULE = 'VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max';

const isDomainZero = async (db: Db, ref: string, vm: Row<'VM'>) =>
  vm.is_control_domain && vm.resident_on !== NULL_REF && (await db.tryGet('host', vm.resident_on))?.control_domain === ref;

export function register(r: Registry, sync: XenopsSync): void {
  /**
   * The local half of the static setters (set_memory_limits, set_memory_static_range): checked
   * against the VM as it is now, written with the overhead; a running control domain keeps its
   * memory until it reboots, so it is flagged.
   */
  const setStatic = async (call: Call, ref: string, changes: MemoryLimits) => {
    const vm = await call.db.get('VM', ref);
    const next = { ...vm, ...changes };
    await assertValidForContext(call.db, vm, next);
    await call.db.update('VM', ref, { ...changes, memory_overhead: vmOverhead(next) });
    if (vm.is_control_domain && vm.power_state === 'Running') await call.db.update('VM', ref, { requires_reboot: true });
  };

  const setLimits = (call: Call, ref: string, smin: number, smax: number, dmin: number, dmax: number) =>
    setStatic(call, ref, {
      memory_static_min: smin,
      memory_static_max: smax,
      memory_dynamic_min: dmin,
      memory_dynamic_max: dmax,
      memory_target: dmin,
    });

  const setStaticRange = (call: Call, ref: string, min: number, max: number) =>
    withVmOperation(call, ref, 'changing_static_range', () => setStatic(call, ref, { memory_static_min: min, memory_static_max: max }));

  /**
   * set_memory_dynamic_range: on a running VM the host must hold the VMs' dynamic minimums
   * (raising dynamic_min reserves at once and is undone if the change fails), then the domain
   * manager rebalances.
   */
  const setDynamicRange = (call: Call, ref: string, min: number, max: number) =>
    withVmOperation(call, ref, 'changing_dynamic_range', async () => {
      const db = call.db;
      const before = await db.get('VM', ref);
      const local = async () => {
        const vm = await db.get('VM', ref);
        await assertValidForContext(db, vm, { ...vm, memory_dynamic_min: min, memory_dynamic_max: max });
        await db.update('VM', ref, { memory_target: min, memory_dynamic_min: min, memory_dynamic_max: max });
        if (vm.power_state === 'Running') {
          try {
            await sync.backend.setMemoryDynamicRange(vm.uuid, min, max);
          } catch (e) {
            throw xenopsError(ref, e);
          }
          await sync.refresh(ref);
        }
      };
      // a forwarded call: the coordinator has reserved the memory
      if (before.power_state !== 'Running' || isForwardedHere(call)) return local();
      const free = await computeFreeMemory(db, before.resident_on);
      const change = before.memory_dynamic_min - min;
      if (free + change < 0) {
        throw new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', [String(Math.trunc(-change / 1024)), String(Math.trunc(free / 1024))]);
      }
      const reserved = change < 0;
      if (reserved) await db.update('VM', ref, { memory_dynamic_min: min, memory_dynamic_max: max });
      try {
        await runOnResident(call, ref, 'VM.set_memory_dynamic_range', [ref, min, max], local);
      } catch (e) {
        if (reserved)
          await db.update('VM', ref, { memory_dynamic_min: before.memory_dynamic_min, memory_dynamic_max: before.memory_dynamic_max });
        throw e;
      }
    });

  r.implement('VM.set_memory_limits', (call, [self, smin, smax, dmin, dmax]) =>
    withVmOperation(call, self, 'changing_memory_limits', () => setLimits(call, self, smin, smax, dmin, dmax)),
  )
    // VM.set_memory keeps static_min: a value below it is refused, as in xapi
    .implement('VM.set_memory', (call, [self, value]) =>
      withVmOperation(call, self, 'changing_memory_limits', async () => {
        const vm = await call.db.get('VM', self);
        await setLimits(call, self, vm.memory_static_min, value, value, value);
      }),
    )
    .implement('VM.set_memory_static_range', (call, [self, min, max]) => setStaticRange(call, self, min, max))
    // The single-bound setters are the range setters with the other bound as it is now.
    .implement('VM.set_memory_static_max', async (call, [self, value]) =>
      setStaticRange(call, self, (await call.db.get('VM', self)).memory_static_min, value),
    )
    .implement('VM.set_memory_static_min', async (call, [self, value]) =>
      setStaticRange(call, self, value, (await call.db.get('VM', self)).memory_static_max),
    )
    .implement('VM.set_memory_dynamic_range', (call, [self, min, max]) => setDynamicRange(call, self, min, max))
    .implement('VM.set_memory_dynamic_max', async (call, [self, value]) =>
      setDynamicRange(call, self, (await call.db.get('VM', self)).memory_dynamic_min, value),
    )
    .implement('VM.set_memory_dynamic_min', async (call, [self, value]) =>
      setDynamicRange(call, self, value, (await call.db.get('VM', self)).memory_dynamic_max),
    )
    .implement('VM.set_VCPUs_max', (call, [self, value]) =>
      withVmOperation(call, self, 'changing_VCPUs', async () => {
        const vm = await call.db.get('VM', self);
        if (await isDomainZero(call.db, self, vm)) throw new XapiError('INTERNAL_ERROR', ['set_VCPUs_max is not allowed on dom0']);
        if (value < 1 || value < vm.VCPUs_at_startup) throw new XapiError('INVALID_VALUE', [VCPU_RULE, String(value)]);
        await call.db.update('VM', self, { VCPUs_max: value, memory_overhead: vmOverhead({ ...vm, VCPUs_max: value }) });
        if (vm.is_control_domain && vm.power_state === 'Running') await call.db.update('VM', self, { requires_reboot: true });
      }),
    )
    // Not an operation in xapi: no power-state rule, no current_operations entry.
    .implement('VM.set_VCPUs_at_startup', async (call, [self, value]) => {
      const vm = await call.db.get('VM', self);
      if (await isDomainZero(call.db, self, vm))
        throw new XapiError('OPERATION_NOT_ALLOWED', ['set_VCPUs_at_startup is not allowed on dom0']);
      if (value < 1 || value > vm.VCPUs_max) throw new XapiError('INVALID_VALUE', [VCPU_RULE, String(value)]);
      await call.db.update('VM', self, { VCPUs_at_startup: value, memory_overhead: vmOverhead({ ...vm, VCPUs_at_startup: value }) });
    })
    .implement('VM.set_VCPUs_number_live', (call, [self, value]) =>
      withVmOperation(call, self, 'changing_VCPUs_live', () =>
        runOnResident(call, self, 'VM.set_VCPUs_number_live', [self, value], async () => {
          const vm = await call.db.get('VM', self);
          if (value < 1 || value > vm.VCPUs_max) throw new XapiError('INVALID_VALUE', ['nvcpu', String(value)]);
          try {
            await sync.backend.setVcpus(vm.uuid, value);
          } catch (e) {
            throw xenopsError(self, e);
          }
          await sync.refresh(self);
        }),
      ),
    )
    .implement('host.compute_free_memory', (call, [host]) => computeFreeMemory(call.db, host))
    .implement('host.compute_memory_overhead', async (call, [host]) => (await call.db.get('host', host)).memory_overhead);
}
