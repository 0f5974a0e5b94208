// The malloc_trim addon (native/malloc-trim) is built by `npm install` and loads: a host that
// could not load it would keep its freed malloc memory and only log it, so a broken build is
// caught here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mallocTrim, mallocTrimUnavailable } from '../../src/util/malloc-trim.js';

test('the malloc_trim addon is built and callable', () => {
  assert.equal(mallocTrimUnavailable, undefined);
  assert.equal(typeof mallocTrim(), 'boolean');
});
