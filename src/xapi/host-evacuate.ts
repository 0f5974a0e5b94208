// Emptying a host of its VMs (xapi's xapi_host.ml compute_evacuation_plan_no_wlb, evacuate,
// assert_can_evacuate, get_vms_which_prevent_evacuation; message_forwarding.ml Host.evacuate).
// All of it runs on the coordinator: the plan is read off the database, and each VM goes with
// VM.pool_migrate, whose own forwarding moves the memory between the two hosts.
//
// The plan: every VM resident on the host (the control domain aside) either gets a destination
// or the reason it cannot go. The destinations are the other enabled hosts whose versions are not
// older (a rolling upgrade only moves VMs upwards). A VM must be bootable on every one of them
// (assert_can_boot_here without the memory check: SRs, networks, CPUs), pass pool_migrate's own
// operation check, and then fit in memory: xapi packs the VMs with its HA planner; here each VM,
// largest first, goes to the destination with the most memory left (the planner's greedy
// heuristic), and one that fits nowhere is refused with HOST_NOT_ENOUGH_FREE_MEMORY [vm].
import type { Call, Registry } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import type { Row } from '../db/interface.js';
import { NULL_REF } from '../schema/types.js';
import { withHostOperation } from './host-operations.js';
import { computeFreeMemory, vmOverhead } from './memory.js';
import { versionsNotDecreasing } from './rpu.js';
import { operationError } from './vm-lifecycle.js';
import { addressOn, poolMigrate } from './vm-migrate.js';
import type { VmService } from './vm.js';

/** A VM's fate in the plan: the host it goes to, or why it cannot go. */
export type VmPlan = { to: string } | { error: XapiError };

/** xapi_globs evacuation_batch_size: how many migrations run at once unless the caller says. */
const DEFAULT_BATCH_SIZE = 10;

/** The memory a VM needs on its destination (the planner's vm_memory for HVM and PV guests). */
const vmMemory = (vm: Row<'VM'>) => vm.memory_dynamic_min + vmOverhead(vm);

/** compute_evacuation_plan_no_wlb: each user VM resident on `hostRef`, by ref, in resident_VMs order. */
export async function evacuationPlan(call: Call, svc: VmService, hostRef: string): Promise<Map<string, VmPlan>> {
  const db = call.db;
  const host = await db.get('host', hostRef);
  const targets: string[] = [];
  for (const [ref, h] of await db.all('host')) {
    if (ref !== hostRef && h.enabled && (await versionsNotDecreasing(db, hostRef, ref))) targets.push(ref);
  }
  const vms: [string, Row<'VM'>][] = [];
  for (const ref of host.resident_VMs) {
    const vm = await db.tryGet('VM', ref);
    if (vm && !vm.is_control_domain) vms.push([ref, vm]);
  }
  const plans = new Map<string, VmPlan>();
  if (targets.length === 0) {
    for (const [ref] of vms) plans.set(ref, { error: new XapiError('NO_HOSTS_AVAILABLE', [ref]) });
    return plans;
  }
  // (With HA on, xapi refuses the VMs HA does not protect: HA is not built here.)
  const bootableOn = async (ref: string, on: string) => {
    try {
      await svc.assertCanBootHere(call, ref, on, false);
    } catch (e) {
      if (!(e instanceof XapiError)) throw e;
      plans.set(ref, { error: e });
    }
  };
  const migratable: [string, Row<'VM'>][] = [];
  for (const [ref, vm] of vms) {
    for (const t of targets) {
      await bootableOn(ref, t);
      if (plans.has(ref)) break;
    }
    if (!plans.has(ref)) migratable.push([ref, vm]);
  }
  for (const [ref] of vms) {
    const refused = await operationError(db, ref, 'pool_migrate', true);
    if (refused) plans.set(ref, { error: refused });
  }
  const free = new Map<string, number>();
  for (const t of targets) free.set(t, await computeFreeMemory(db, t));
  const placed: [string, string][] = [];
  for (const [ref, vm] of [...migratable].sort((a, b) => vmMemory(b[1]) - vmMemory(a[1]))) {
    const need = vmMemory(vm);
    const best = [...free].filter(([, m]) => m >= need).sort((a, b) => b[1] - a[1])[0];
    if (!best) {
      plans.set(ref, { error: new XapiError('HOST_NOT_ENOUGH_FREE_MEMORY', [ref]) });
      continue;
    }
    free.set(best[0], best[1] - need);
    placed.push([ref, best[0]]);
  }
  for (const [ref, to] of placed) {
    await bootableOn(ref, to);
    if (!plans.has(ref)) plans.set(ref, { to });
  }
  // In resident_VMs order, so that the first refusal is the same one whatever was refused when.
  return new Map(vms.filter(([ref]) => plans.has(ref)).map(([ref]) => [ref, plans.get(ref)!]));
}

const refusals = (plans: Map<string, VmPlan>): [string, XapiError][] =>
  [...plans].flatMap(([vm, p]) => ('error' in p ? [[vm, p.error] as [string, XapiError]] : []));

/**
 * Host.evacuate: the plan must hold no refusal (the first is raised); with a network, each
 * destination must have an address on it; then the VMs go, `batchSize` at a time (a new one as
 * each ends), the task's progress counting those done. A VM that was no longer running when
 * its turn came (VM_BAD_POWER_STATE) is no failure; the first other failure is raised once the
 * migrations already running have ended. Any user VM still here at the end: INTERNAL_ERROR.
 */
async function evacuate(call: Call, svc: VmService, hostRef: string, network: string, batchSize: number): Promise<void> {
  const plans = await evacuationPlan(call, svc, hostRef);
  const first = refusals(plans)[0];
  if (first) throw first[1];
  const moves = [...plans].map(([vm, p]) => [vm, (p as { to: string }).to] as const);
  const options: Record<string, string> = { live: 'true' };
  if (network !== NULL_REF) {
    for (const to of new Set(moves.map(([, to]) => to))) await addressOn(call, network, to);
    options.network = network;
  }
  const size = Math.max(1, Math.abs(batchSize > 0 ? batchSize : DEFAULT_BATCH_SIZE));
  let next = 0;
  let done = 0;
  let failure: unknown;
  const worker = async () => {
    while (failure === undefined && next < moves.length) {
      const [vm, to] = moves[next++]!;
      // Each migration is an operation of its own on the VM and on its destination (xapi makes a
      // task for each): its own key in their current_operations.
      const sub: Call = { ...call, task: `DummyRef:|${vm}|VM.pool_migrate`, setProgress: async () => undefined };
      try {
        await poolMigrate(sub, svc, vm, to, options);
      } catch (e) {
        if (!(e instanceof XapiError && e.code === 'VM_BAD_POWER_STATE')) failure ??= e;
        continue;
      }
      done++;
      await call.setProgress(done / moves.length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(size, moves.length) }, worker));
  if (failure !== undefined) throw failure;
  await call.setProgress(1);
  let left = 0;
  for (const ref of (await call.db.get('host', hostRef)).resident_VMs) {
    const vm = await call.db.tryGet('VM', ref);
    if (vm && !vm.is_control_domain) left++;
  }
  if (left > 0) throw new XapiError('INTERNAL_ERROR', [`evacuate: ${left} VMs are still resident on ${hostRef}`]);
}

export function register(r: Registry, svc: VmService): void {
  r.implement('host.evacuate', async (call, [host, network, batchSize]) => {
    await call.db.get('host', host);
    await withHostOperation(call, host, 'evacuate', () => evacuate(call, svc, host, network, batchSize));
  })
    // The Miami form: every refusal as "code,param,..." joined by "|" in one CANNOT_EVACUATE_HOST.
    .implement('host.assert_can_evacuate', async (call, [host]) => {
      await call.db.get('host', host);
      const errors = refusals(await evacuationPlan(call, svc, host)).map(([, e]) => [e.code, ...e.params].join(','));
      if (errors.length > 0) throw new XapiError('CANNOT_EVACUATE_HOST', [errors.join('|')]);
    })
    .implement('host.get_vms_which_prevent_evacuation', async (call, [self]) => {
      await call.db.get('host', self);
      return Object.fromEntries(refusals(await evacuationPlan(call, svc, self)).map(([vm, e]) => [vm, [e.code, ...e.params]]));
    });
}
