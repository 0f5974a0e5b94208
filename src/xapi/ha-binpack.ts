// The HA planner's bin-packing (xapi's binpack.ml): can the protected VMs of any `r` failed hosts
// be packed onto the hosts left, whatever the order the hosts fail in? Small pools are checked
// exhaustively (every combination of r hosts, every order), larger ones by one worst-case pack:
// every VM as big as the biggest, the biggest hosts failing, the most loaded hosts' VMs to move.
// Pure: hosts and VMs are opaque keys with sizes in bytes.

export interface PlanConfig<H, V> {
  /** The live hosts and their free memory. */
  hosts: Array<[H, number]>;
  /** The VMs to plan for and the memory each needs. */
  vms: Array<[V, number]>;
  /** Where each placed VM runs now (a VM that runs nowhere is absent). */
  placement: Array<[V, H]>;
  /** How many hosts the pool has, live or not ('n'). */
  totalHosts: number;
  /** How many host failures to survive ('r'). */
  numFailures: number;
}

export interface Heuristic<H, V> {
  name: string;
  planAlwaysPossible(config: PlanConfig<H, V>): boolean;
  specificPlan(config: PlanConfig<H, V>, failedVms: V[]): Array<[V, H]>;
}

/** Biggest first, stable (OCaml's List.sort is a stable merge sort). */
function biggestFirst<K>(xs: Array<[K, number]>): Array<[K, number]> {
  return [...xs].sort((a, b) => b[1] - a[1]);
}

/**
 * Biggest-fit decreasing: the biggest thing first, each into the bin with the most room left
 * (after which that bin goes back in its place by its new room, before bins of equal room); a
 * thing that does not fit the roomiest bin is left out.
 */
export function biggestFitDecreasing<T, B>(things: Array<[T, number]>, bins: Array<[B, number]>): Array<[T, B]> {
  let sorted = biggestFirst(bins);
  const mapping: Array<[T, B]> = [];
  for (const [thing, size] of biggestFirst(things)) {
    const first = sorted[0];
    if (!first) continue;
    const remaining = first[1] - size;
    if (remaining < 0) continue;
    const rest = sorted.slice(1);
    const at = rest.findIndex(([, room]) => remaining >= room);
    sorted = at < 0 ? [...rest, [first[0], remaining]] : [...rest.slice(0, at), [first[0], remaining], ...rest.slice(at)];
    mapping.push([thing, first[0]]);
  }
  // xapi builds its list by prepending: the last placed comes first.
  return mapping.reverse();
}

/** n choose r, or undefined past what a signed 64-bit integer holds (binpack.ml raises Overflow). */
export function binomial(n: number, r: number): bigint | undefined {
  if (r < 0 || r > n) return 0n;
  let result = 1n;
  for (let i = 1; i <= r; i++) result = (result * BigInt(n - r + i)) / BigInt(i);
  return result > 0x7fffffffffffffffn ? undefined : result;
}

export function factorial(n: number): bigint | undefined {
  let result = 1n;
  for (let i = 2; i <= n; i++) result *= BigInt(i);
  return result > 0x7fffffffffffffffn ? undefined : result;
}

/** Every sub-list of `n` elements of `xs`. */
export function choose<T>(xs: T[], n: number): T[][] {
  if (n === 0) return [[]];
  if (xs.length === 0) return [];
  const [x, ...rest] = xs as [T, ...T[]];
  return [...choose(rest, n), ...choose(rest, n - 1).map((c) => [x, ...c])];
}

export function permutations<T>(xs: T[]): T[][] {
  if (xs.length === 0) return [[]];
  const [x, ...rest] = xs as [T, ...T[]];
  return permutations(rest).flatMap((p) => Array.from({ length: p.length + 1 }, (_, i) => [...p.slice(0, i), x, ...p.slice(i)]));
}

/** Memory left on each host once `plan`'s VMs run there. */
export function account<H, V>(hosts: Array<[H, number]>, vms: Array<[V, number]>, plan: Array<[V, H]>): Array<[H, number]> {
  const size = new Map(vms);
  return hosts.map(([h, free]) => {
    let used = 0;
    for (const [vm, to] of plan) {
      if (to !== h) continue;
      const s = size.get(vm);
      if (s === undefined) throw new Error('binpack: a planned VM of unknown size');
      used += s;
    }
    return [h, free - used];
  });
}

/** The configuration once `plan` is carried out. */
export function applyPlan<H, V>(config: PlanConfig<H, V>, plan: Array<[V, H]>): PlanConfig<H, V> {
  const planned = new Set(plan.map(([vm]) => vm));
  return {
    ...config,
    hosts: account(config.hosts, config.vms, plan),
    placement: [...plan, ...config.placement.filter(([vm]) => !planned.has(vm))],
  };
}

export function checkConfiguration<H, V>(config: PlanConfig<H, V>): void {
  const vms = new Set(config.vms.map(([v]) => v));
  const hosts = new Set(config.hosts.map(([h]) => h));
  for (const [vm, host] of config.placement) {
    if (!vms.has(vm)) throw new Error('binpack: VM not found');
    if (!hosts.has(host)) throw new Error('binpack: Host not found');
  }
  if (config.numFailures > config.totalHosts) throw new Error('binpack: num_failures > total_hosts');
  if (config.numFailures < 0) throw new Error('binpack: num_failures < 0');
}

function packFailedVms<H, V>(config: PlanConfig<H, V>, failed: V[]): Array<[V, H]> {
  const size = new Map(config.vms);
  return biggestFitDecreasing(
    failed.map((vm) => {
      const s = size.get(vm);
      if (s === undefined) throw new Error('binpack: a failed VM of unknown size');
      return [vm, s] as [V, number];
    }),
    config.hosts,
  );
}

class Stop extends Error {}

/** Fewer live hosts than failures, or exactly as many with VMs to protect: never. */
function triviallyNeverPossible<H, V>(config: PlanConfig<H, V>): boolean {
  const n = config.hosts.length;
  return n < config.numFailures || (n === config.numFailures && config.vms.length > 0);
}

/** One host dies: its VMs packed onto the others, or Stop if some do not fit. */
function simulateFailure<H, V>(config: PlanConfig<H, V>, dead: H): PlanConfig<H, V> {
  const failed = config.placement.filter(([, h]) => h === dead).map(([vm]) => vm);
  const hosts = config.hosts.filter(([h]) => h !== dead);
  const left = { ...config, hosts };
  const plan = packFailedVms(left, failed);
  if (plan.length !== failed.length) throw new Stop();
  const moved = new Map(plan);
  return {
    ...config,
    hosts: account(hosts, config.vms, plan),
    placement: config.placement.map(([vm, h]) => [vm, moved.get(vm) ?? h]),
    numFailures: config.numFailures - 1,
  };
}

function simulateFailureApproximation<H, V>(config: PlanConfig<H, V>): void {
  const maxVm = config.vms.reduce((m, [, s]) => Math.max(m, s), 0);
  // How many of the biggest VM each host can take, most first; the biggest hosts fail.
  const capacities = config.hosts.map(([, free]) => Math.trunc(free / maxVm)).sort((a, b) => b - a);
  const leftCapacity = capacities.slice(config.numFailures).reduce((a, b) => a + b, 0);
  // The most loaded hosts fail.
  const loads = config.hosts.map(([h]) => config.placement.filter(([, at]) => at === h).length).sort((a, b) => b - a);
  const toMove = loads.slice(0, config.numFailures).reduce((a, b) => a + b, 0);
  if (toMove > leftCapacity) throw new Stop();
}

export function exhaustive<H, V>(): Heuristic<H, V> {
  return {
    name: 'exhaustively binpack every host failure combination (expensive)',
    planAlwaysPossible(config) {
      try {
        if (triviallyNeverPossible(config)) return false;
        const hosts = config.hosts.map(([h]) => h);
        for (const combination of choose(hosts, config.numFailures)) {
          for (const order of permutations(combination)) order.reduce(simulateFailure, config);
        }
        return true;
      } catch (e) {
        if (e instanceof Stop) return false;
        throw e;
      }
    },
    specificPlan: packFailedVms,
  };
}

export function approximate<H, V>(): Heuristic<H, V> {
  return {
    name: 'bin pack a worst-case scenario with conservative assumptions',
    planAlwaysPossible(config) {
      try {
        if (triviallyNeverPossible(config)) return false;
        if (config.vms.length > 0) simulateFailureApproximation(config);
        return true;
      } catch (e) {
        if (e instanceof Stop) return false;
        throw e;
      }
    },
    specificPlan: packFailedVms,
  };
}

/** Exhaustive when n ≤ 32 and C(n, r)·r! < 3500, else the approximation (choose_heuristic). */
export function chooseHeuristic<H, V>(config: PlanConfig<H, V>): Heuristic<H, V> {
  const n = config.totalHosts;
  const r = config.numFailures;
  if (n > 32) return approximate();
  const c = binomial(n, r);
  const f = factorial(r);
  if (c === undefined || f === undefined) return approximate();
  const product = c * f;
  if (product > 0x7fffffffffffffffn) return approximate();
  return product < 3500n ? exhaustive() : approximate();
}
