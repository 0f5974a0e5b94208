// Which host of the pool a VM starts on when none is named (xapi's choose_host_for_vm without
// workload balancing: xapi_vm_helpers.ml, xapi_vm_placement.ml, vm_placement.ml). Each host is
// summarised by its memory with this VM counted in; the hosts are then tried category by
// category (the VM's affinity host, hosts that hold every guest at static_max, at dynamic_max,
// then hosts that need squeezing, valued by how little): inside a category the better hosts are
// more likely picked (a random index biased to the front), and each pick must pass the full
// assert_can_boot_here. If no host passes, the same is tried without the memory check.
import { XapiError } from '../rpc/errors.js';
import type { Call } from '../api/context.js';
import type { Row } from '../db/interface.js';
import { NULL_REF } from '../schema/types.js';

interface HostSummary {
  ref: string;
  isCoordinator: boolean;
  staticMaxSum: number;
  dynamicMinSum: number;
  dynamicMaxSum: number;
  available: number;
}

type Category = (h: HostSummary) => number;

/** Compression values run 0..this (vm_placement.ml's resolution). */
const RESOLUTION = 1000;

/** The coordinator, if biased against, is worth (v - 1) / 2 (integer division, as OCaml's). */
const biased =
  (category: Category, bias: boolean): Category =>
  (h) => {
    const v = category(h);
    return h.isCoordinator && bias ? Math.trunc((v - 1) / 2) : v;
  };

const possible: Category = (h) => {
  if (h.available >= h.dynamicMaxSum) return RESOLUTION;
  if (h.available < h.dynamicMinSum) return -1;
  return Math.trunc((RESOLUTION * (h.available - h.dynamicMinSum)) / (h.dynamicMaxSum - h.dynamicMinSum));
};

function categories(affinity: string | undefined, bias: boolean): Category[] {
  return [
    (h) => (h.ref === affinity ? possible(h) : -1),
    biased((h) => h.available - h.staticMaxSum, bias),
    biased((h) => h.available - h.dynamicMaxSum, bias),
    possible,
  ];
}

/** xapi's biased_random_fn: the square of a uniform draw, so the front of the list is favoured. */
const biasedRandom = () => Math.random() ** 2;

/**
 * Picks from the hosts a category holds (value ≥ 0), best first with a biased random index,
 * until one validates; the hosts outside it are left for the next category (those inside that
 * failed are not tried again, as in xapi).
 */
async function selectFrom(
  cats: Category[],
  hosts: HostSummary[],
  validate: (ref: string) => Promise<boolean>,
): Promise<string | undefined> {
  let left = hosts;
  for (const category of cats) {
    if (left.length === 0) return undefined;
    const valued = left.map((h) => ({ h, v: category(h) })).sort((a, b) => b.v - a.v);
    const inside = valued.filter((x) => x.v >= 0).map((x) => x.h);
    left = valued.filter((x) => x.v < 0).map((x) => x.h);
    while (inside.length > 0) {
      const [host] = inside.splice(Math.floor(inside.length * biasedRandom()), 1);
      if (await validate(host!.ref)) return host!.ref;
    }
  }
  return undefined;
}

async function summarise(call: Call, vm: Row<'VM'>, hostRefs: string[], coordinator: string): Promise<HostSummary[]> {
  // the guests of each host, in one pass over the VMs: those resident there, then those
  // scheduled there (a VM both counts twice, as xapi's two lists have it)
  const resident = new Map<string, Row<'VM'>[]>();
  const scheduled = new Map<string, Row<'VM'>[]>();
  const add = (to: Map<string, Row<'VM'>[]>, host: string, v: Row<'VM'>) => {
    const list = to.get(host);
    if (list) list.push(v);
    else to.set(host, [v]);
  };
  for (const [, v] of await call.db.all('VM')) {
    if (v.resident_on !== NULL_REF) add(resident, v.resident_on, v);
    if (v.scheduled_to_be_resident_on !== NULL_REF) add(scheduled, v.scheduled_to_be_resident_on, v);
  }
  const out: HostSummary[] = [];
  for (const ref of hostRefs) {
    const host = await call.db.get('host', ref);
    const metrics = await call.db.tryGet('host_metrics', host.metrics);
    // the VM being placed counts on every host, beside those resident or scheduled there
    const guests = [...(resident.get(ref) ?? []), ...(scheduled.get(ref) ?? []), vm];
    const sum = (f: (g: Row<'VM'>) => number) => guests.reduce((a, g) => a + f(g), 0);
    out.push({
      ref,
      isCoordinator: ref === coordinator,
      staticMaxSum: sum((g) => g.memory_static_max),
      dynamicMinSum: sum((g) => g.memory_dynamic_min),
      dynamicMaxSum: sum((g) => g.memory_dynamic_max),
      available: (metrics?.memory_total ?? 0) - sum((g) => g.memory_overhead) - host.memory_overhead,
    });
  }
  return out;
}

/**
 * choose_host_for_vm. `canRun(host, memoryCheck)` is vm_can_run_on_host: enabled (or a control
 * domain), live, not evacuating, and assert_can_boot_here (with or without the memory check).
 */
export async function chooseHostForVm(
  call: Call,
  vmRef: string,
  canRun: (host: string, memoryCheck: boolean) => Promise<boolean>,
): Promise<string> {
  const vm = await call.db.get('VM', vmRef);
  const hosts = (await call.db.all('host')).map(([h]) => h);
  const [poolRow] = await call.db.all('pool');
  const pool = poolRow?.[1];
  const affinity = vm.affinity !== NULL_REF && hosts.includes(vm.affinity) ? vm.affinity : undefined;
  const summaries = await summarise(call, vm, hosts, pool?.master ?? NULL_REF);
  const cats = categories(affinity, pool?.coordinator_bias ?? true);
  const chosen =
    (await selectFrom(cats, summaries, (h) => canRun(h, true))) ?? (await selectFrom(cats, summaries, (h) => canRun(h, false)));
  if (chosen === undefined) throw new XapiError('NO_HOSTS_AVAILABLE', []);
  return chosen;
}
