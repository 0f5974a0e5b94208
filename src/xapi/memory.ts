// Memory as xapi accounts for it (memory_check.ml, vm_memory_constraints.ml): constraint
// checks, the per-VM overhead, host free memory computed from the database, and the memory
// and VCPU setters with their power-state rules.
import { XapiError } from '../api/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { VM_record, vm_operations } from '../schema/generated.js';
import { overheadBytes } from '../xenopsd/overhead.js';
import { withVmOperation } from './vm-lifecycle.js';
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

type MemoryLimits = Partial<Pick<VM_record, 'memory_static_min' | 'memory_static_max' | 'memory_dynamic_min' | 'memory_dynamic_max'>>;

export function register(r: Registry, sync: XenopsSync): void {
  const setLimits = async (call: Call, ref: string, op: vm_operations, changes: MemoryLimits) =>
    withVmOperation(call, ref, op, async () => {
      const vm = await call.db.get('VM', ref);
      const next = { ...vm, ...changes };
      assertMemoryConstraints(next);
      if (vm.power_state === 'Running' && op === 'changing_dynamic_range') {
        // Growing dynamic_min reserves memory on the host first, as xapi's coordinator does.
        if (changes.memory_dynamic_min! > vm.memory_dynamic_min) {
          const free = await computeFreeMemory(call.db, vm.resident_on, ref);
          const needed = changes.memory_dynamic_min! + vm.memory_overhead;
          if (needed > free) throw new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', [String(Math.ceil(needed / 1024)), String(Math.floor(free / 1024))]);
        }
        try {
          await sync.backend.setMemoryDynamicRange(vm.uuid, changes.memory_dynamic_min!, changes.memory_dynamic_max!);
        } catch (e) {
          throw xenopsError(ref, e);
        }
      }
      await call.db.update('VM', ref, { ...changes, memory_overhead: vmOverhead(next) });
      if (vm.power_state === 'Running') await sync.refresh(ref);
    });

  r.implement('VM.set_memory_limits', (call, [self, smin, smax, dmin, dmax]) =>
    setLimits(call, self, 'changing_memory_limits', {
      memory_static_min: smin,
      memory_static_max: smax,
      memory_dynamic_min: dmin,
      memory_dynamic_max: dmax,
    }),
  )
    .implement('VM.set_memory_static_range', (call, [self, min, max]) =>
      setLimits(call, self, 'changing_static_range', { memory_static_min: min, memory_static_max: max }),
    )
    .implement('VM.set_memory_dynamic_range', (call, [self, min, max]) =>
      setLimits(call, self, 'changing_dynamic_range', { memory_dynamic_min: min, memory_dynamic_max: max }),
    )
    .implement('VM.set_memory', async (call, [self, value]) => {
      const vm = await call.db.get('VM', self);
      await setLimits(call, self, 'changing_memory_limits', {
        memory_static_min: Math.min(vm.memory_static_min, value),
        memory_static_max: value,
        memory_dynamic_min: value,
        memory_dynamic_max: value,
      });
    })
    .implement('VM.set_VCPUs_max', (call, [self, value]) =>
      withVmOperation(call, self, 'changing_VCPUs', async () => {
        const vm = await call.db.get('VM', self);
        if (value < 1) throw new XapiError('INVALID_VALUE', ['VCPUs_max', String(value)]);
        if (value < vm.VCPUs_at_startup) {
          throw new XapiError('VALUE_NOT_SUPPORTED', ['VCPUs_max', String(value), 'VCPUs_max must be greater than or equal to VCPUs_at_startup']);
        }
        await call.db.update('VM', self, { VCPUs_max: value, memory_overhead: vmOverhead({ ...vm, VCPUs_max: value }) });
      }),
    )
    .implement('VM.set_VCPUs_at_startup', (call, [self, value]) =>
      withVmOperation(call, self, 'changing_VCPUs', async () => {
        const vm = await call.db.get('VM', self);
        if (value < 1) throw new XapiError('INVALID_VALUE', ['VCPUs_at_startup', String(value)]);
        if (value > vm.VCPUs_max) {
          throw new XapiError('VALUE_NOT_SUPPORTED', ['VCPUs_at_startup', String(value), 'value greater than VCPUs_max']);
        }
        await call.db.update('VM', self, { VCPUs_at_startup: value });
      }),
    )
    .implement('VM.set_VCPUs_number_live', (call, [self, value]) =>
      withVmOperation(call, self, 'changing_VCPUs_live', async () => {
        const vm = await call.db.get('VM', self);
        if (value < 1 || value > vm.VCPUs_max) throw new XapiError('INVALID_VALUE', ['nvcpu', String(value)]);
        try {
          await sync.backend.setVcpus(vm.uuid, value);
        } catch (e) {
          throw xenopsError(self, e);
        }
        await sync.refresh(self);
      }),
    )
    .implement('host.compute_free_memory', (call, [host]) => computeFreeMemory(call.db, host))
    .implement('host.compute_memory_overhead', async (call, [host]) => (await call.db.get('host', host)).memory_overhead);
}
