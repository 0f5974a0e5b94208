// The malloc_trim addon (native/malloc-trim) is built by `npm install` and loads: a host that
// could not load it would keep its freed malloc memory and only log it, so a broken build is
// caught here. And it does what the idle collection calls it for: freed blocks that sit below
// blocks still in use (where glibc's own trimming of the heap's top never reaches) go back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { collectAllAvailableGarbage } from '../../src/util/idle-gc.js';
import { mallocTrim, mallocTrimUnavailable } from '../../src/util/malloc-trim.js';
import { waitUntil } from '../wait.js';

test('the malloc_trim addon is built and callable', () => {
  assert.equal(mallocTrimUnavailable, undefined);
  assert.equal(typeof mallocTrim(), 'boolean');
});

test('freed blocks below blocks in use go back to the system', async () => {
  // Buffers of these sizes are malloc'd (under glibc's mmap threshold) and zero-filled, so
  // resident: 400 pairs, the big ones dropped, each small one pinning the heap above a hole.
  const big: Buffer[] = [];
  const pins: Buffer[] = [];
  for (let i = 0; i < 400; i++) {
    big.push(Buffer.alloc(48 * 1024));
    pins.push(Buffer.alloc(8 * 1024));
  }
  big.length = 0;
  await collectAllAvailableGarbage();
  const before = process.memoryUsage.rss();
  // 400 holes of 48 KiB: 18.75 MiB freed; at least half of it must leave the RSS. V8 may free
  // the dropped buffers' memory on a helper thread a little after the collection: trim until.
  await waitUntil('freed memory given back', () => {
    mallocTrim();
    return before - process.memoryUsage.rss() > 9 * 1024 * 1024;
  });
  assert.equal(pins.length, 400);
});
