// squeezed on its own: the fraction policy, reservations squeezing ballooning domains to make
// room, the failure when even dynamic_min everywhere cannot, and memory coming back on destroy.
// Also the overhead model the reservations are sized with.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { balloon, SLUSH_FUND, Squeezed } from '../../src/xenopsd/squeezed.js';
import { DomainError } from '../../src/xenopsd/interface.js';
import { footprintBytes, overheadBytes, overheadMib, requiredMemory, shadowMib, startTargetBytes } from '../../src/xenopsd/overhead.js';

const MiB = 1024 ** 2;
const GiB = 1024 * MiB;

test('balloon policy: all at max when plentiful, one shared fraction when scarce, none below min', () => {
  assert.deepEqual(
    balloon(10 * GiB, [
      { min: GiB, max: 2 * GiB },
      { min: GiB, max: 4 * GiB },
    ]),
    [2 * GiB, 4 * GiB],
  );
  // 4 GiB for two [1, 3] GiB domains: both at half their range
  assert.deepEqual(
    balloon(4 * GiB, [
      { min: GiB, max: 3 * GiB },
      { min: GiB, max: 3 * GiB },
    ]),
    [2 * GiB, 2 * GiB],
  );
  // different ranges, same fraction: (t − min)/(max − min) equal for both
  const [a, b] = balloon(3 * GiB, [
    { min: GiB, max: 2 * GiB },
    { min: 0, max: 4 * GiB },
  ])!;
  assert.ok(Math.abs((a! - GiB) / GiB - b! / (4 * GiB)) < 0.001, `${a} ${b}`);
  assert.ok(a! + b! <= 3 * GiB);
  assert.equal(
    balloon(GiB, [
      { min: GiB, max: 2 * GiB },
      { min: GiB, max: 2 * GiB },
    ]),
    undefined,
  );
});

function broker(totalMiB: number, dom0MiB: number) {
  const moves: [number, number][] = [];
  const s = new Squeezed({ total: totalMiB * MiB, dom0: dom0MiB * MiB, onTarget: (d, t) => moves.push([d, t]) });
  return { s, moves };
}

/** Reserve + transfer, as xenopsd's VM_create does, then the guest's balloon driver comes up. */
function boot(s: Squeezed, domid: number, min: number, max: number, overhead = 0): number {
  const { id } = s.reserveMemoryRange('xenopsd', min + overhead, max + overhead);
  s.transferReservationToDomain('xenopsd', id, domid, { dynamicMin: min, dynamicMax: max, overhead });
  s.setBalloon(domid, true);
  return s.domain(domid)!.target;
}

test('reservations take as much as possible up to max; the slush fund is never handed out', () => {
  const { s } = broker(4096, 512);
  const r = s.reserveMemoryRange('xenopsd', GiB, 2 * GiB);
  assert.equal(r.amount, 2 * GiB);
  assert.equal(s.free(), 4096 * MiB - 512 * MiB - 2 * GiB);
  // what is left (1.5 GiB less the slush fund) is the most another range can get
  const r2 = s.reserveMemoryRange('xenopsd', 0, 4 * GiB);
  assert.equal(r2.amount, 4096 * MiB - 512 * MiB - 2 * GiB - SLUSH_FUND);
  s.deleteReservation('xenopsd', r.id);
  s.deleteReservation('xenopsd', r2.id);
  assert.equal(s.free(), 3584 * MiB);
  // a client logging in again loses the reservations it never transferred
  s.reserveMemory('other', GiB);
  s.login('other');
  assert.equal(s.free(), 3584 * MiB);
});

test('a new domain squeezes ballooning domains toward dynamic_min, all at one fraction', () => {
  const { s, moves } = broker(4096 + 9, 0); // 4 GiB to share once the slush fund is kept
  assert.equal(boot(s, 1, GiB, 3 * GiB), 3 * GiB); // plentiful: at dynamic_max
  assert.equal(boot(s, 2, GiB, 3 * GiB), 2 * GiB); // 4 GiB for two: both at half range
  assert.equal(s.domain(1)!.target, 2 * GiB);
  assert.equal(s.domain(1)!.actual, 2 * GiB, 'a co-operative guest reaches its target at once');
  assert.ok(
    moves.some(([d, t]) => d === 1 && t === 2 * GiB),
    'the squeezed domain was told',
  );
  // a third one: everybody at dynamic_min + a third of what is left over
  const t3 = boot(s, 3, GiB, 3 * GiB);
  for (const d of [1, 2]) assert.ok(Math.abs(s.domain(d)!.target - t3) <= 4096);
  assert.ok(Math.abs(t3 - (GiB + GiB / 3)) <= 4096, String(t3));
  assert.ok(s.free() >= SLUSH_FUND);
});

test('when even every domain at dynamic_min leaves no room: Cannot_free_this_much_memory(needed, free)', () => {
  const { s } = broker(4096 + 9, 0);
  boot(s, 1, GiB, 3 * GiB);
  boot(s, 2, GiB, 3 * GiB);
  const before = [s.domain(1)!.target, s.domain(2)!.target];
  assert.throws(
    () => s.reserveMemoryRange('xenopsd', 3 * GiB, 3 * GiB),
    (e: DomainError) => e.kind === 'Cannot_free_this_much_memory' && e.args[0] === String(3 * GiB) && e.args[1] === String(2 * GiB),
  );
  assert.deepEqual([s.domain(1)!.target, s.domain(2)!.target], before, 'a refused reservation moves nobody');
  // exactly what can be freed fits
  const r = s.reserveMemoryRange('xenopsd', 2 * GiB, 2 * GiB);
  assert.equal(s.domain(1)!.target, GiB);
  s.deleteReservation('xenopsd', r.id);
  assert.equal(s.domain(1)!.target, 2 * GiB, 'a deleted reservation gives the memory back');
});

test('domains without a balloon driver keep what they were given', () => {
  const { s } = broker(4096 + 9, 0);
  const { id } = s.reserveMemoryRange('xenopsd', GiB, 3 * GiB);
  s.transferReservationToDomain('xenopsd', id, 1, { dynamicMin: GiB, dynamicMax: 3 * GiB, overhead: 0 });
  // domain 1 is still booting (no feature-balloon): it cannot be squeezed
  assert.throws(
    () => s.reserveMemoryRange('xenopsd', 2 * GiB, 2 * GiB),
    (e: DomainError) => e.kind === 'Cannot_free_this_much_memory',
  );
  const r = s.reserveMemoryRange('xenopsd', 0, GiB);
  assert.equal(r.amount, GiB);
});

test('changing a dynamic range rebalances, or is refused leaving everything as it was', () => {
  const { s } = broker(4096 + 9, 0);
  boot(s, 1, GiB, 3 * GiB);
  boot(s, 2, GiB, 3 * GiB);
  s.setDomainRange(1, GiB, GiB); // domain 1 gives up its headroom: domain 2 grows to max
  assert.equal(s.domain(1)!.target, GiB);
  assert.equal(s.domain(2)!.target, 3 * GiB);
  assert.throws(
    () => s.setDomainRange(1, 4 * GiB, 4 * GiB),
    (e: DomainError) => e.kind === 'Cannot_free_this_much_memory',
  );
  assert.equal(s.domain(1)!.dynamicMin, GiB);
  assert.equal(s.domain(2)!.target, 3 * GiB);
});

test('memory comes back when a domain is destroyed; overheads count but do not balloon', () => {
  const { s } = broker(4096 + 9, 0);
  boot(s, 1, GiB, 3 * GiB, 16 * MiB);
  boot(s, 2, GiB, 3 * GiB, 16 * MiB);
  assert.ok(s.domain(1)!.target < 3 * GiB);
  s.releaseDomain(2);
  assert.equal(s.domain(1)!.target, 3 * GiB);
  assert.equal(s.free(), 4105 * MiB - 3 * GiB - 16 * MiB);
  s.releaseDomain(1);
  assert.equal(s.free(), 4105 * MiB);
});

test('the running sums the policy uses agree with the domains through any sequence of changes', () => {
  // A fixed pseudo-random walk (same every run): boots, balloon drivers coming and going,
  // range changes (some refused), releases, adoptions, on a host that is sometimes scarce.
  let seed = 42;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const { s } = broker(8192, 512);
  const live = new Set<number>();
  let domid = 0;
  for (let step = 0; step < 2000; step++) {
    const pick = [...live][next(Math.max(1, live.size))];
    try {
      switch (next(6)) {
        case 0:
        case 1: {
          const min = (1 + next(8)) * 64 * MiB;
          boot(s, ++domid, min, min + next(8) * 64 * MiB, next(3) * 8 * MiB);
          live.add(domid);
          break;
        }
        case 2:
          if (pick !== undefined) s.setBalloon(pick, next(2) === 0);
          break;
        case 3:
          if (pick !== undefined) {
            const min = next(16) * 64 * MiB;
            s.setDomainRange(pick, min, min + next(16) * 64 * MiB);
          }
          break;
        case 4:
          if (pick !== undefined) {
            s.releaseDomain(pick);
            live.delete(pick);
          }
          break;
        case 5:
          s.adoptDomain(++domid, { dynamicMin: 64 * MiB, dynamicMax: 128 * MiB, overhead: MiB }, 96 * MiB, next(2) === 0);
          live.add(domid);
          break;
      }
    } catch (e) {
      if (!(e instanceof DomainError) || e.kind !== 'Cannot_free_this_much_memory') throw e;
    }
    s.checkSums();
  }
  assert.ok(domid > 500);
});

test('the overhead model (memory.ml), in bytes', () => {
  // HVM, 1 GiB, 1 vCPU: shadow = ceil((256 + 1024 + 1024) / 256) = 9 MiB; per-vCPU 1 MiB; extras 1 + 1
  assert.equal(shadowMib({ domainType: 'hvm', staticMax: GiB, vcpus: 1 }), 9);
  assert.equal(overheadMib({ domainType: 'hvm', staticMax: GiB, vcpus: 1 }), 12);
  assert.equal(overheadBytes({ domainType: 'hvm', staticMax: GiB, vcpus: 1, shadowMultiplier: 1 }), 12 * MiB);
  // the multiplier scales shadow (truncated, at least 1) for HVM but never for PV
  assert.equal(shadowMib({ domainType: 'hvm', staticMax: GiB, vcpus: 1, shadowMultiplier: 1.5 }), 13);
  assert.equal(shadowMib({ domainType: 'pv', staticMax: GiB, vcpus: 1, shadowMultiplier: 4 }), 9);
  // PV: no extra_internal
  assert.equal(overheadMib({ domainType: 'pv', staticMax: GiB, vcpus: 1 }), 11);
  // PV-in-PVH: the shim, 23 + static_max_mib / 90
  assert.equal(overheadMib({ domainType: 'pv_in_pvh', staticMax: GiB, vcpus: 1 }), 12 + 23 + 11);
  // 38 pages per vCPU: 8 vCPUs = 304 pages = 2 MiB
  assert.equal(overheadMib({ domainType: 'hvm', staticMax: GiB, vcpus: 8 }), 2 + (8 * 256 + 2048) / 256 + 2);
  // footprint rounds the target up to MiB
  assert.equal(
    footprintBytes(GiB + 1, { domainType: 'hvm', staticMax: 2 * GiB, vcpus: 1 }),
    (1025 + overheadMib({ domainType: 'hvm', staticMax: 2 * GiB, vcpus: 1 })) * MiB,
  );
  const req = requiredMemory(GiB, { domainType: 'hvm', staticMax: GiB, vcpus: 1 });
  assert.equal(req.shadow, 9 * MiB);
  assert.equal(req.main + req.shadow, GiB + 12 * MiB);
  assert.equal(startTargetBytes({ domainType: 'pv_in_pvh', staticMax: 2 * GiB, dynamicMin: GiB }), 2 * GiB);
  assert.equal(startTargetBytes({ domainType: 'hvm', staticMax: 2 * GiB, dynamicMin: GiB }), GiB);
});
