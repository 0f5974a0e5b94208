// The HA failover planner against the database (xapi's xapi_ha_vm_failover.ml and agility.ml):
// which VMs are protected, whether each can run on any host (agile), the plan that restarts the
// protected VMs not running now, and whether a plan then exists for r more host failures; the
// pool's ha_plan_exists_for / ha_overcommitted kept up to date from it, and the check that an
// operation does not break an existing plan (HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN).
// VM groups (anti-affinity) are not modelled: the plan is the plain bin-packing.
import { randomUUID } from 'node:crypto';
import type { Db, Row } from '../db/interface.js';
import { XapiError } from '../rpc/errors.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { type PlanConfig, applyPlan, checkConfiguration, chooseHeuristic } from './ha-binpack.js';
import { vmOverhead } from './memory.js';
import { newRef } from '../api/implicit.js';

export const HA_RESTART = 'restart';
export const HA_BEST_EFFORT = 'best-effort';
export const HA_VALID_PRIORITIES = [HA_RESTART, HA_BEST_EFFORT, ''];

/** helpers.ml vm_should_always_run: protected means always-run with priority "restart". */
export function isProtected(vm: Pick<Row<'VM'>, 'ha_always_run' | 'ha_restart_priority'>): boolean {
  return vm.ha_always_run && vm.ha_restart_priority === HA_RESTART;
}

export async function allProtectedVms(db: Db): Promise<Array<[string, Row<'VM'>]>> {
  return (await db.all('VM')).filter(([, vm]) => isProtected(vm));
}

/** Shared, and every enabled host has a plugged PBD for it (agility.ml is_sr_properly_shared). */
async function srProperlyShared(db: Db, srRef: string): Promise<boolean> {
  const sr = await db.get('SR', srRef);
  if (!sr.shared) return false;
  const plugged = new Set<string>();
  for (const p of sr.PBDs) {
    const pbd = await db.tryGet('PBD', p);
    if (pbd?.currently_attached) plugged.add(pbd.host);
  }
  for (const [ref, h] of await db.all('host')) if (h.enabled && !plugged.has(ref)) return false;
  return true;
}

/** Every enabled host has a PIF on it that is not a bond slave (is_network_properly_shared). */
async function networkProperlyShared(db: Db, netRef: string): Promise<boolean> {
  const net = await db.get('network', netRef);
  const withPif = new Set<string>();
  for (const p of net.PIFs) {
    const pif = await db.tryGet('PIF', p);
    if (pif && (pif.bond_slave_of === NULL_REF || !(await db.tryGet('Bond', pif.bond_slave_of)))) withPif.add(pif.host);
  }
  for (const [ref, h] of await db.all('host')) if (h.enabled && !withPif.has(ref)) return false;
  return true;
}

/** agility.ml vm_assert_agile: no vGPU, no VUSB, disks on properly shared SRs, VIFs on shared networks. */
export async function assertAgile(db: Db, vmRef: string, vm?: Row<'VM'>): Promise<void> {
  const v = vm ?? (await db.get('VM', vmRef));
  if (v.VGPUs.length > 0) throw new XapiError('VM_HAS_VGPU', [vmRef]);
  if (v.VUSBs.length > 0) throw new XapiError('VM_HAS_VUSBS', [vmRef]);
  const okSrs = new Set<string>();
  for (const b of v.VBDs) {
    const vbd = await db.get('VBD', b);
    if (vbd.empty) continue;
    const sr = (await db.get('VDI', vbd.VDI)).SR;
    if (okSrs.has(sr)) continue;
    if (!(await srProperlyShared(db, sr))) throw new XapiError('HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED', [sr]);
    okSrs.add(sr);
  }
  const okNets = new Set<string>();
  for (const i of v.VIFs) {
    const net = (await db.get('VIF', i)).network;
    if (okNets.has(net)) continue;
    if (!(await networkProperlyShared(db, net))) throw new XapiError('HA_CONSTRAINT_VIOLATION_NETWORK_NOT_SHARED', [net]);
    okNets.add(net);
  }
}

async function isAgile(db: Db, vmRef: string, vm: Row<'VM'>): Promise<boolean> {
  try {
    await assertAgile(db, vmRef, vm);
    return true;
  } catch (e) {
    if (e instanceof XapiError) return false;
    throw e;
  }
}

/** Memory a VM needs planned at its static maximum (Static_max policy: static_max + overhead). */
export function plannedMemory(vm: Row<'VM'>): number {
  return vm.memory_static_max + vmOverhead(vm);
}

/**
 * A host's free memory under the Static_max policy: every non-control VM resident or scheduled
 * there counted at static_max, the control domain at dynamic_max.
 */
async function freeMemoryStaticMax(db: Db, hostRef: string): Promise<number> {
  const host = await db.get('host', hostRef);
  const metrics = await db.tryGet('host_metrics', host.metrics);
  let used = host.memory_overhead;
  for (const [, vm] of await db.all('VM')) {
    if (vm.resident_on !== hostRef && vm.scheduled_to_be_resident_on !== hostRef) continue;
    used += (vm.is_control_domain ? vm.memory_dynamic_max : vm.memory_static_max) + vm.memory_overhead;
  }
  return (metrics?.memory_total ?? 0) - used;
}

/** Hosts enabled and live: the liveset xapi plans with (get_live_set). */
export async function liveSet(db: Db): Promise<string[]> {
  const live: string[] = [];
  for (const [ref, h] of await db.all('host')) {
    if (!h.enabled) continue;
    const m = await db.tryGet('host_metrics', h.metrics);
    if (m?.live) live.push(ref);
  }
  return live;
}

/** A counterfactual for the planner: what an operation would change. */
export interface ConfigurationChange {
  /** VMs leaving a host (host, VM). */
  leaving?: Array<[string, string]>;
  /** VMs arriving on a host (host, VM, the VM's record as it would run there). */
  arriving?: Array<[string, string, Row<'VM'>]>;
  hostsToDisable?: string[];
  numFailures?: number;
  newVmsToProtect?: string[];
}

export type PlanStatus = 'all' | 'excluding_non_agile' | 'none';

interface RestartPlan {
  plan: Array<[string, string]>;
  config: PlanConfig<string, string>;
  notRestarted: string[];
  nonAgileExist: boolean;
}

/** compute_restart_plan: where the protected VMs not running now would be started, and the pool after. */
export async function computeRestartPlan(
  db: Db,
  protectedVms: Array<[string, Row<'VM'>]>,
  live: string[],
  numFailures: number,
  change: ConfigurationChange = {},
): Promise<RestartPlan> {
  const failures = change.numFailures ?? numFailures;
  const extra: Array<[string, Row<'VM'>]> = [];
  for (const ref of change.newVmsToProtect ?? []) extra.push([ref, await db.get('VM', ref)]);
  const leavingVms = new Set((change.leaving ?? []).map(([, vm]) => vm));
  const arriving = new Map((change.arriving ?? []).map(([h, vm, rec]) => [vm, { ...rec, resident_on: h }]));
  const vms = [...protectedVms, ...extra].map(([ref, vm]): [string, Row<'VM'>] => {
    const a = arriving.get(ref);
    if (a) return [ref, a];
    if (leavingVms.has(ref)) return [ref, { ...vm, resident_on: NULL_REF }];
    return [ref, vm];
  });
  const allHosts = (await db.all('host')).sort(([, a], [, b]) => (a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0));
  const disabled = new Set(change.hostsToDisable ?? []);
  const liveSetNow = new Set(live);
  const liveHosts: string[] = [];
  for (const [ref, h] of allHosts) {
    if (!h.enabled || disabled.has(ref) || !liveSetNow.has(ref)) continue;
    const m = await db.tryGet('host_metrics', h.metrics);
    if (m?.live) liveHosts.push(ref);
  }
  const liveHostSet = new Set(liveHosts);
  vms.sort(([, a], [, b]) => (a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0));
  const byRef = new Map(vms);
  const accountedTo = (ref: string): string | undefined => {
    const vm = byRef.get(ref)!;
    if (liveHostSet.has(vm.resident_on)) return vm.resident_on;
    if (liveHostSet.has(vm.scheduled_to_be_resident_on)) return vm.scheduled_to_be_resident_on;
    return undefined;
  };
  const agile: Array<[string, Row<'VM'>]> = [];
  const notAgile: Array<[string, Row<'VM'>]> = [];
  for (const entry of vms) ((await isAgile(db, entry[0], entry[1])) ? agile : notAgile).push(entry);

  const memoryOf = (vm: Row<'VM'>) => (vm.is_control_domain ? vm.memory_dynamic_max + vm.memory_overhead : plannedMemory(vm));
  let hosts: Array<[string, number]> = [];
  for (const h of liveHosts) {
    let free = await freeMemoryStaticMax(db, h);
    for (const [to, , rec] of change.arriving ?? []) if (to === h) free -= memoryOf(rec);
    for (const [from, vm] of change.leaving ?? []) if (from === h) free += memoryOf(await db.get('VM', vm));
    hosts.push([h, free]);
  }
  const vmMemory: Array<[string, number]> = vms.map(([ref, vm]) => [ref, plannedMemory(vm)]);
  // A non-agile VM is pinned to the first host (by uuid, live or not) that could run it: one
  // with its SRs plugged (the boot check without memory).
  const pinned: Array<[string, string]> = [];
  for (const [ref, vm] of notAgile) {
    const host = await firstBootableHost(
      db,
      vm,
      allHosts.map(([h]) => h),
    );
    if (host) pinned.push([ref, host]);
  }
  const nonAgilePlan = pinned.filter(([vm]) => accountedTo(vm) === undefined);
  const size = new Map(vmMemory);
  hosts = hosts.map(([h, free]) => [h, free - nonAgilePlan.filter(([, to]) => to === h).reduce((s, [vm]) => s + size.get(vm)!, 0)]);
  const agileMemory = agile.map(([ref]): [string, number] => [ref, size.get(ref)!]);
  const placement: Array<[string, string]> = [];
  const failed: string[] = [];
  for (const [ref] of agile) {
    const at = accountedTo(ref);
    if (at) placement.push([ref, at]);
    else failed.push(ref);
  }
  let config: PlanConfig<string, string> = { hosts, vms: agileMemory, placement, totalHosts: allHosts.length, numFailures: failures };
  checkConfiguration(config);
  const agilePlan = chooseHeuristic(config).specificPlan(config, failed);
  const restarted = new Set(agilePlan.map(([vm]) => vm));
  const notRestarted = vms.map(([ref]) => ref).filter((ref) => accountedTo(ref) === undefined && !restarted.has(ref));
  config = applyPlan(config, agilePlan);
  return { plan: [...nonAgilePlan, ...agilePlan], config, notRestarted, nonAgileExist: notAgile.length > 0 };
}

async function firstBootableHost(db: Db, vm: Row<'VM'>, hosts: string[]): Promise<string | undefined> {
  const srs = new Set<string>();
  for (const b of vm.VBDs) {
    const vbd = await db.tryGet('VBD', b);
    if (vbd && !vbd.empty) {
      const vdi = await db.tryGet('VDI', vbd.VDI);
      if (vdi) srs.add(vdi.SR);
    }
  }
  for (const h of hosts) {
    let ok = true;
    for (const sr of srs) {
      const pbds = (await db.get('SR', sr)).PBDs;
      let plugged = false;
      for (const p of pbds) {
        const pbd = await db.tryGet('PBD', p);
        if (pbd?.host === h && pbd.currently_attached) plugged = true;
      }
      if (!plugged) ok = false;
    }
    if (ok) return h;
  }
  return undefined;
}

/** plan_for_n_failures: whether every protected VM survives `n` host failures. */
export async function planForNFailures(
  db: Db,
  protectedVms: Array<[string, Row<'VM'>]>,
  n: number,
  live?: string[],
  change: ConfigurationChange = {},
): Promise<PlanStatus> {
  try {
    const r = await computeRestartPlan(db, protectedVms, live ?? (await liveSet(db)), n, change);
    if (r.notRestarted.length > 0) return 'none';
    checkConfiguration(r.config);
    if (!chooseHeuristic(r.config).planAlwaysPossible(r.config)) return 'none';
    return r.nonAgileExist ? 'excluding_non_agile' : 'all';
  } catch (e) {
    // xapi logs an unexpected planning error and answers "no plan".
    if (e instanceof XapiError) throw e;
    return 'none';
  }
}

/** The greatest n in [lo, hi] for which `ok(n)`, assuming ok is monotone decreasing (helpers.ml bisect). */
async function bisect(ok: (n: number) => Promise<boolean>, lo: number, hi: number): Promise<number> {
  if (hi - lo < 2) return (await ok(hi)) ? hi : lo;
  const mid = lo + Math.floor((hi - lo) / 2);
  return (await ok(mid)) ? bisect(ok, mid, hi) : bisect(ok, lo, mid);
}

/** compute_max_host_failures_to_tolerate. */
export async function computeMaxFailures(db: Db, protectedVms?: Array<[string, Row<'VM'>]>, live?: string[]): Promise<number> {
  const vms = protectedVms ?? (await allProtectedVms(db));
  const total = (await db.all('host')).length;
  return bisect(async (n) => (await planForNFailures(db, vms, n, live)) === 'all', 0, total);
}

async function poolMessage(db: Db, name: string, priority: number, body: string): Promise<void> {
  const [pool] = await db.all('pool');
  if (!pool) return;
  await db.create('message', newRef(), {
    uuid: randomUUID(),
    name,
    priority,
    cls: 'Pool',
    obj_uuid: pool[1].uuid,
    timestamp: formatDateTime(new Date()),
    body,
  });
}

/** mark_pool_as_overcommitted; true when something changed. */
async function markOvercommitted(db: Db, poolRef: string, pool: Row<'pool'>, live: string[]): Promise<boolean> {
  const planned = pool.ha_plan_exists_for;
  const max = await computeMaxFailures(db, undefined, live);
  if (planned !== max) {
    await db.update('pool', poolRef, { ha_plan_exists_for: Math.min(pool.ha_host_failures_to_tolerate, max) });
    if (max < planned) await poolMessage(db, 'HA_POOL_DROP_IN_PLAN_EXISTS_FOR', 3, String(max));
  }
  if (!pool.ha_overcommitted) {
    await db.update('pool', poolRef, { ha_overcommitted: true });
    await poolMessage(
      db,
      'HA_POOL_OVERCOMMITTED',
      3,
      `The failover tolerance for pool '${pool.name_label}' has dropped and the initially specified number of host failures to tolerate can no longer be guaranteed`,
    );
  }
  return planned !== max || !pool.ha_overcommitted;
}

/** update_pool_status: ha_overcommitted and ha_plan_exists_for from a fresh plan; true if they changed. */
export async function updatePoolStatus(db: Db, live?: string[]): Promise<boolean> {
  const [entry] = await db.all('pool');
  if (!entry) return false;
  const [poolRef, pool] = entry;
  const l = live ?? (await liveSet(db));
  const toTolerate = pool.ha_host_failures_to_tolerate;
  const status = await planForNFailures(db, await allProtectedVms(db), toTolerate, l);
  if (status !== 'all') return markOvercommitted(db, poolRef, pool, l);
  await db.update('pool', poolRef, { ha_overcommitted: false });
  if (pool.ha_plan_exists_for !== toTolerate) await db.update('pool', poolRef, { ha_plan_exists_for: toTolerate });
  return pool.ha_overcommitted || pool.ha_plan_exists_for !== toTolerate;
}

/**
 * assert_configuration_change_preserves_ha_plan: with HA on and overcommit not allowed, an
 * operation may not turn a plan that exists now (for ha_plan_exists_for failures) into none.
 */
export async function assertChangePreservesPlan(db: Db, change: ConfigurationChange): Promise<void> {
  const [entry] = await db.all('pool');
  if (!entry) return;
  const pool = entry[1];
  if (!pool.ha_enabled || pool.ha_allow_overcommit) return;
  const live = await liveSet(db);
  const n = pool.ha_plan_exists_for;
  const vms = await allProtectedVms(db);
  if ((await planForNFailures(db, vms, n, live)) !== 'all') return;
  if ((await planForNFailures(db, vms, n, live, change)) !== 'all') throw new XapiError('HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN', []);
}

/**
 * check_vm_preserves_ha_plan, for a VM about to start on `host`: one that will become protected
 * counts as a new protected VM, any other as memory arriving there.
 */
export async function assertVmPreservesPlan(db: Db, vmRef: string, host: string): Promise<void> {
  const [entry] = await db.all('pool');
  if (!entry?.[1].ha_enabled) return;
  const vm = await db.get('VM', vmRef);
  if (vm.ha_restart_priority === HA_RESTART && !vm.ha_always_run) await assertChangePreservesPlan(db, { newVmsToProtect: [vmRef] });
  else await assertChangePreservesPlan(db, { arriving: [[host, vmRef, vm]] });
}
