// The HA planner's bin-packing (src/xapi/ha-binpack.ts), against cases worked out by hand from
// xapi's binpack.ml.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyPlan,
  approximate,
  biggestFitDecreasing,
  binomial,
  choose,
  chooseHeuristic,
  exhaustive,
  permutations,
  type PlanConfig,
} from '../../src/xapi/ha-binpack.js';

test('biggest fit decreasing: biggest VM first, into the roomiest host, the rest left out', () => {
  // h1 10, h2 6: a 7 → h1 (3 left); a 5 → h2 (1 left); a 4 → roomiest is h1 with 3: left out.
  const plan = biggestFitDecreasing(
    [
      ['a', 5],
      ['b', 7],
      ['c', 4],
    ],
    [
      ['h1', 10],
      ['h2', 6],
    ],
  );
  assert.deepEqual(plan, [
    ['a', 'h2'],
    ['b', 'h1'],
  ]);
});

test('choose, permutations and binomial', () => {
  assert.deepEqual(
    choose([1, 2, 3], 2)
      .map((c) => c.join(''))
      .sort(),
    ['12', '13', '23'],
  );
  assert.equal(permutations([1, 2, 3]).length, 6);
  assert.equal(binomial(16, 2), 120n);
  assert.equal(binomial(68, 34), undefined, 'past int64: overflow');
});

test('the heuristic: exhaustive when C(n,r)·r! < 3500 and n ≤ 32, else approximate', () => {
  const cfg = (n: number, r: number): PlanConfig<string, string> => ({ hosts: [], vms: [], placement: [], totalHosts: n, numFailures: r });
  assert.match(chooseHeuristic(cfg(3, 1)).name, /exhaustively/);
  assert.match(chooseHeuristic(cfg(16, 2)).name, /exhaustively/); // 120·2 = 240
  assert.match(chooseHeuristic(cfg(16, 3)).name, /exhaustively/); // 560·6 = 3360
  assert.match(chooseHeuristic(cfg(16, 4)).name, /conservative/); // 1820·24
  assert.match(chooseHeuristic(cfg(33, 1)).name, /conservative/);
});

const GiB = 1024 ** 3;

test('exhaustive: three hosts, each VM fits on any other host, one failure survives, two do not', () => {
  const config: PlanConfig<string, string> = {
    hosts: [
      ['h1', 3 * GiB],
      ['h2', 3 * GiB],
      ['h3', 3 * GiB],
    ],
    vms: [
      ['v1', 2 * GiB],
      ['v2', 2 * GiB],
      ['v3', 2 * GiB],
    ],
    placement: [
      ['v1', 'h1'],
      ['v2', 'h2'],
      ['v3', 'h3'],
    ],
    totalHosts: 3,
    numFailures: 1,
  };
  assert.equal(exhaustive<string, string>().planAlwaysPossible(config), true);
  assert.equal(exhaustive<string, string>().planAlwaysPossible({ ...config, numFailures: 2 }), false);
  // no VMs, as many failures as hosts: trivially impossible only with VMs
  assert.equal(exhaustive<string, string>().planAlwaysPossible({ ...config, vms: [], placement: [], numFailures: 3 }), true);
});

test('the order of failures matters to the exhaustive check', () => {
  // h1 fails first: v1 (2) goes to h2 (room 2). Then h2 fails: v1 and v2 (3) need 5 on h3 (room 4).
  const config: PlanConfig<string, string> = {
    hosts: [
      ['h1', 0],
      ['h2', 2 * GiB],
      ['h3', 4 * GiB],
    ],
    vms: [
      ['v1', 2 * GiB],
      ['v2', 3 * GiB],
    ],
    placement: [
      ['v1', 'h1'],
      ['v2', 'h2'],
    ],
    totalHosts: 3,
    numFailures: 2,
  };
  assert.equal(exhaustive<string, string>().planAlwaysPossible(config), false);
  assert.equal(exhaustive<string, string>().planAlwaysPossible({ ...config, numFailures: 1 }), true);
});

test('approximate: every VM as big as the biggest, the biggest hosts and the most loaded fail', () => {
  const config: PlanConfig<string, string> = {
    hosts: [
      ['h1', 4 * GiB],
      ['h2', 4 * GiB],
      ['h3', 1 * GiB],
    ],
    vms: [
      ['v1', 2 * GiB],
      ['v2', 1 * GiB],
    ],
    placement: [
      ['v1', 'h1'],
      ['v2', 'h1'],
    ],
    totalHosts: 3,
    numFailures: 1,
  };
  // capacities in biggest VMs: 2, 2, 0; one fails → 2 left; the most loaded host holds 2 → fits.
  assert.equal(approximate<string, string>().planAlwaysPossible(config), true);
  // two failures: 0 left for 2 VMs
  assert.equal(approximate<string, string>().planAlwaysPossible({ ...config, numFailures: 2 }), false);
});

test('applyPlan: the hosts lose the memory, the VMs are placed', () => {
  const config: PlanConfig<string, string> = { hosts: [['h1', 10]], vms: [['v', 4]], placement: [], totalHosts: 1, numFailures: 0 };
  const after = applyPlan(config, [['v', 'h1']]);
  assert.deepEqual(after.hosts, [['h1', 6]]);
  assert.deepEqual(after.placement, [['v', 'h1']]);
});
