// The TypeScript view of the schema (src/schema/generated.ts): the committed file is the one the
// generator makes, and the types refuse what the schema does not have. The refusals are checked
// by the compiler: each `@ts-expect-error` line must stay an error, or `npm run build` fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import type { Registry } from '../../src/api/context.js';
import type { Db } from '../../src/db/interface.js';

const root = new URL('../../../', import.meta.url);

test('src/schema/generated.ts is what tools/gen-types.mjs makes of the schema', async () => {
  const generator = new URL('tools/gen-types.mjs', root).href;
  const { renderTypes } = (await import(generator)) as { renderTypes: (schema: unknown) => string };
  const schema: unknown = JSON.parse(await readFile(new URL('schema/xenapi-schema.json', root), 'utf8'));
  const committed = await readFile(new URL('src/schema/generated.ts', root), 'utf8');
  assert.equal(committed, renderTypes(schema), 'run `npm run types` and commit the result');
});

// Never run: it only has to compile, with an error exactly on each marked line.
export function compileChecks(r: Registry, db: Db): void {
  // @ts-expect-error a message that is not in the schema
  r.implement('VM.no_such_message', () => undefined);
  // @ts-expect-error more parameters than VM.start has (vm, start_paused, force)
  r.implement('VM.start', (_call, [_vm, _paused, _force, _extra]) => undefined);
  // @ts-expect-error a parameter used as the wrong type (start_paused is a bool)
  r.implement('VM.start', (_call, [_vm, paused]) => void paused.toUpperCase());
  // @ts-expect-error a result of the wrong type (VM.get_power_state returns the enum)
  r.implement('VM.get_power_state', () => 42);
  // @ts-expect-error an update of a field the class does not have
  void db.update('VM', 'OpaqueRef:x', { no_such_field: 1 });
  // @ts-expect-error a value outside the field's enum
  void db.update('VM', 'OpaqueRef:x', { power_state: 'halted' });
  // @ts-expect-error a class that is not in the schema
  void db.get('no_such_class', 'OpaqueRef:x');
  // @ts-expect-error a class the schema has but the database does not keep
  void db.get('event', 'OpaqueRef:x');
  // @ts-expect-error a field of another class
  void db.find('VBD', { network: 'OpaqueRef:x' });
  // @ts-expect-error add_to_ on a field that is not a map
  void db.mapAdd('VM', 'OpaqueRef:x', 'VBDs', 'k', 'v');
  // @ts-expect-error a map value of the wrong type
  void db.mapAdd('VM', 'OpaqueRef:x', 'other_config', 'k', 1);
  // @ts-expect-error add_ on a field that is not a set
  void db.setAdd('VM', 'OpaqueRef:x', 'other_config', 'v');

  // and what the schema does have compiles
  r.implement('VM.start', (_call, [vm, paused, force]) => void [vm.length, paused === force]);
  void db.update('VM', 'OpaqueRef:x', { power_state: 'Halted', VCPUs_max: 2 });
  void db.mapAdd('VM', 'OpaqueRef:x', 'other_config', 'k', 'v');
  void db.setAdd('VM', 'OpaqueRef:x', 'tags', 'v');
}
