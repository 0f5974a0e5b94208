// The committed API coverage table is the one the code generates (npm run coverage-table).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { coverageTable } from '../../tools/api-coverage.js';

test('docs/api-coverage.md is current', async () => {
  const committed = await readFile(new URL('../../../docs/api-coverage.md', import.meta.url), 'utf8');
  assert.equal(committed, await coverageTable(), 'run `npm run coverage-table` and commit the result');
});
