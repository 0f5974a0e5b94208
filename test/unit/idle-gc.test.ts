// The idle collector (src/util/idle-gc.ts): one full collection when the process is quiet and
// has grown since the last one; none while it is busy, none while it stays at its floor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CHECK_MS, GROWTH_BYTES, IdleCollector, QUIET_CPU_SHARE } from '../../src/util/idle-gc.js';

const MiB = 1024 * 1024;
const BUSY_MICROS = QUIET_CPU_SHARE * CHECK_MS * 1000 + 1;

/** A collector over a fake process: `cpu` (µs) and `rss` (bytes) are set by the test. */
function fake() {
  const p = { cpu: 0, rss: 60 * MiB, collections: 0 };
  const c = new IdleCollector({
    gc: () => {
      p.collections++;
      p.rss -= 10 * MiB;
    },
    cpuMicros: () => p.cpu,
    rss: () => p.rss,
  });
  return { p, c };
}

test('a quiet process that has grown is collected once; the reading just after is the floor', () => {
  const { p, c } = fake();
  c.check(); // quiet, first reading: more than GROWTH_BYTES above nothing; the floor is 50 MiB
  assert.equal(p.collections, 1);
  c.check();
  c.check();
  c.check();
  assert.equal(p.collections, 1, 'an idle process at its floor is not collected again');
  p.rss += GROWTH_BYTES; // grown, but not by more than GROWTH_BYTES
  c.check();
  assert.equal(p.collections, 1);
  p.rss += 1;
  c.check();
  assert.equal(p.collections, 2);
  assert.equal(c.collections, 2);
});

test('a busy process is left to V8, and collected once it goes quiet', () => {
  const { p, c } = fake();
  c.check(); // floor: 50 MiB
  for (let i = 0; i < 5; i++) {
    p.cpu += BUSY_MICROS;
    p.rss += 20 * MiB;
    c.check();
  }
  assert.equal(p.collections, 1, 'no collection while busy');
  c.check(); // quiet again
  assert.equal(p.collections, 2);
});

test('garbage made just after a collection counts as growth', () => {
  const { p, c } = fake();
  c.check(); // floor: 50 MiB
  p.rss += 8 * MiB; // a backup downloaded and checked, its buffers dead
  c.check();
  assert.equal(p.collections, 2);
});

test('the floor follows the process down', () => {
  const { p, c } = fake();
  c.check(); // floor: 50 MiB
  p.rss = 40 * MiB; // V8 or malloc gave memory back on their own
  c.check();
  p.rss = 40 * MiB + GROWTH_BYTES + 1;
  c.check();
  assert.equal(p.collections, 2);
});

test('without --expose-gc the collector is off', () => {
  const c = new IdleCollector({ gc: undefined, cpuMicros: () => 0, rss: () => 100 * MiB });
  // node:test runs without --expose-gc, so there is no global gc to fall back on
  assert.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined');
  assert.equal(c.enabled, false);
  c.check();
  assert.equal(c.collections, 0);
  c.start().stop();
});
