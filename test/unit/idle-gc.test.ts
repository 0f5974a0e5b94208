// The idle collector (src/util/idle-gc.ts): a collection when the process is quiet and has grown
// since the last one; none while it is busy, none while it stays at its floor. And the
// collection itself gives memory back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CHECK_MS, GROWTH_BYTES, IdleCollector, QUIET_CPU_SHARE, collectAllAvailableGarbage } from '../../src/util/idle-gc.js';

const MiB = 1024 * 1024;
const BUSY_MICROS = QUIET_CPU_SHARE * CHECK_MS * 1000 + 1;

/** A collector over a fake process: `cpu` (µs) and `rss` (bytes) are set by the test. */
function fake() {
  const p = { cpu: 0, rss: 60 * MiB, collections: 0 };
  const c = new IdleCollector({
    collect: async () => {
      p.collections++;
      p.rss -= 10 * MiB;
    },
    cpuMicros: () => p.cpu,
    rss: () => p.rss,
  });
  return { p, c };
}

test('a quiet process that has grown is collected once; the reading just after is the floor', async () => {
  const { p, c } = fake();
  await c.check(); // quiet, first reading: more than GROWTH_BYTES above nothing; the floor is 50 MiB
  assert.equal(p.collections, 1);
  await c.check();
  await c.check();
  assert.equal(p.collections, 1, 'an idle process at its floor is not collected again');
  p.rss += GROWTH_BYTES; // grown, but not by more than GROWTH_BYTES
  await c.check();
  assert.equal(p.collections, 1);
  p.rss += 1;
  await c.check();
  assert.equal(p.collections, 2);
  assert.equal(c.collections, 2);
});

test('garbage made just after a collection counts as growth', async () => {
  const { p, c } = fake();
  await c.check(); // floor: 50 MiB
  p.rss += 8 * MiB; // a backup downloaded and checked, its buffers dead
  await c.check();
  assert.equal(p.collections, 2);
});

test('a busy process is left to V8, and collected once it goes quiet', async () => {
  const { p, c } = fake();
  await c.check(); // floor: 50 MiB
  for (let i = 0; i < 5; i++) {
    p.cpu += BUSY_MICROS;
    p.rss += 20 * MiB;
    await c.check();
  }
  assert.equal(p.collections, 1, 'no collection while busy');
  await c.check(); // quiet again
  assert.equal(p.collections, 2);
});

test('the floor follows the process down', async () => {
  const { p, c } = fake();
  await c.check(); // floor: 50 MiB
  p.rss = 40 * MiB; // V8 or malloc gave memory back on their own
  await c.check();
  p.rss = 40 * MiB + GROWTH_BYTES + 1;
  await c.check();
  assert.equal(p.collections, 2);
});

test('a failed collection is reported and the collector goes on', async () => {
  const errors: unknown[] = [];
  let fail = true;
  let rss = 60 * MiB;
  const c = new IdleCollector({
    collect: async () => {
      if (fail) throw new Error('no inspector');
      rss -= 10 * MiB;
    },
    cpuMicros: () => 0,
    rss: () => rss,
    onError: (e) => errors.push(e),
  });
  await c.check();
  assert.equal(errors.length, 1);
  assert.equal(c.collections, 0);
  fail = false;
  rss += 2 * MiB;
  await c.check();
  assert.equal(c.collections, 1);
});

test("the collection frees what is dead and shrinks V8's heap", async () => {
  let garbage: { n: number; s: string }[] | undefined = Array.from({ length: 200_000 }, (_, n) => ({ n, s: `item ${n}` }));
  const before = process.memoryUsage().heapUsed;
  assert.ok(garbage.length > 0);
  garbage = undefined;
  await collectAllAvailableGarbage();
  const after = process.memoryUsage().heapUsed;
  assert.ok(after < before - 5 * MiB, `heap used ${before} -> ${after}`);
});
