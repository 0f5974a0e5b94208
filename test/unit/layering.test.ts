// The layering of docs/architecture.md ("Layers"), enforced: every import between the folders of
// src/ must follow a direction its table allows. The table is read from the document itself, so
// the rule the test applies is the rule the document states. Every import counts, type-only ones
// too (a type from a higher layer ties the lower one to it all the same): `import ... from`,
// `export ... from`, bare `import '...'` and dynamic `import('...')`, as TypeScript's own
// pre-processor finds them. Package imports (node:, npm) are not the table's business.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join, posix, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const src = join(root, 'src');

/** A layer's row: the folders (or single files, `folder/name.ts`) it may import from. */
type Rules = Map<string, string[]>;

/** The table under "## Layers" in docs/architecture.md: | `layer` | `a`, `b/c.ts` or nothing | why |. */
async function readRules(): Promise<Rules> {
  const doc = await readFile(join(root, 'docs/architecture.md'), 'utf8');
  const start = doc.indexOf('\n## Layers\n');
  assert.ok(start >= 0, 'docs/architecture.md has no "## Layers" section');
  const section = doc.slice(start + 1).split(/\n## /)[0]!;
  const rows = section.split('\n').filter((l) => /^\|\s*`/.test(l));
  assert.ok(rows.length > 0, 'the Layers section has no table of layers');
  const rules: Rules = new Map();
  for (const row of rows) {
    const [layer, allowed] = row
      .split('|')
      .slice(1, 3)
      .map((c) => c.trim());
    const name = /^`([^`]+)`$/.exec(layer ?? '')?.[1];
    assert.ok(name, `a Layers row names its layer in backquotes: ${row}`);
    const targets = [...(allowed ?? '').matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    assert.ok(targets.length > 0 || allowed === 'nothing', `the Layers row of ${name} lists what it may import, or says "nothing": ${row}`);
    assert.ok(!rules.has(name), `two Layers rows for ${name}`);
    rules.set(name, targets);
  }
  return rules;
}

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await tsFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out.sort();
}

/** A path under src/ with forward slashes: `http/vdi-transfer.ts`. */
const underSrc = (p: string) => relative(src, p).split(sep).join('/');

/** The project file a relative specifier names: `./x.js` is the source `x.ts`, a folder its index. */
function resolveTarget(from: string, spec: string): string {
  const p = posix.normalize(posix.join(posix.dirname(from), spec));
  if (p.endsWith('.js')) return p.slice(0, -3) + '.ts';
  if (p.endsWith('.ts')) return p;
  return p + '/index.ts';
}

interface Import {
  file: string;
  target: string;
}

async function projectImports(): Promise<Import[]> {
  const out: Import[] = [];
  for (const path of await tsFiles(src)) {
    const file = underSrc(path);
    const text = await readFile(path, 'utf8');
    for (const ref of ts.preProcessFile(text, true, true).importedFiles) {
      if (!ref.fileName.startsWith('.')) continue; // a package
      out.push({ file, target: resolveTarget(file, ref.fileName) });
    }
  }
  return out;
}

const layerOf = (p: string) => p.split('/')[0]!;

/** Does one of the layer's allowed entries (a folder, or one file) cover the target? */
const allows = (allowed: readonly string[], target: string) =>
  allowed.some((a) => (a.endsWith('.ts') ? target === a : target === a || target.startsWith(a + '/')));

test('every folder of src/ is a layer of docs/architecture.md, and every entry of its table exists', async () => {
  const rules = await readRules();
  const folders = (await readdir(src, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
  const files = new Set((await tsFiles(src)).map(underSrc));
  const unlisted = folders.filter((f) => !rules.has(f));
  assert.deepEqual(unlisted, [], `src/ folders with no row in the Layers table of docs/architecture.md: ${unlisted.join(', ')}`);
  for (const [layer, allowed] of rules) {
    assert.ok(folders.includes(layer), `the Layers table names ${layer}, which is not a folder of src/`);
    for (const a of allowed) {
      const exists = a.endsWith('.ts') ? files.has(a) : folders.includes(a);
      assert.ok(exists, `the Layers row of ${layer} allows ${a}, which is not in src/`);
      assert.notEqual(layerOf(a), layer, `the Layers row of ${layer} names itself (${a}): a layer always imports from itself`);
    }
  }
});

test('imports between layers follow the directions of docs/architecture.md', async () => {
  const rules = await readRules();
  const imports = await projectImports();
  assert.ok(imports.length > 100, `only ${imports.length} project imports found under src/: is the parser broken?`);
  const offending: string[] = [];
  for (const { file, target } of imports) {
    const from = layerOf(file);
    if (layerOf(target) === from) continue;
    if (!allows(rules.get(from) ?? [], target)) offending.push(`  src/${file} -> src/${target}`);
  }
  if (offending.length > 0) {
    assert.fail(
      `${offending.length} import(s) against the Layers table of docs/architecture.md (move the code to the layer it belongs to):\n${offending.join('\n')}`,
    );
  }
});

test('the layering check itself: a folder entry covers its files, a file entry only that file', () => {
  assert.equal(resolveTarget('http/vm-transfer.ts', '../xapi/vm.js'), 'xapi/vm.ts');
  assert.equal(resolveTarget('storage/xva/index.ts', '../../rpc/xmlrpc.js'), 'rpc/xmlrpc.ts');
  assert.equal(resolveTarget('storage/drivers.ts', './vhd'), 'storage/vhd/index.ts');
  assert.ok(allows(['storage'], 'storage/vhd/index.ts'));
  assert.ok(!allows(['storage'], 'storage-extra/x.ts'));
  assert.ok(allows(['xapi/vm-import-export.ts'], 'xapi/vm-import-export.ts'));
  assert.ok(!allows(['xapi/vm-import-export.ts'], 'xapi/vm.ts'));
  const found = ts.preProcessFile(
    "import type { A } from './a.js';\nexport * from '../b.js';\nconst c = await import('./c.js');\nimport './d.js';",
    true,
    true,
  );
  assert.deepEqual(
    found.importedFiles.map((f) => f.fileName),
    ['./a.js', '../b.js', './c.js', './d.js'],
  );
});
