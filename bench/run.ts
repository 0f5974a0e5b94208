// `npm run bench -- <name>`: runs dist/bench/<name>.js (which exports `run(args)`).
// Helpers live in bench/lib/ and are not benchmarks. An unknown or missing name lists the
// available benchmarks and exits 2.
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';

const here = fileURLToPath(new URL('.', import.meta.url));

function available(): string[] {
  return readdirSync(here)
    .filter((f) => f.endsWith('.js') && f !== 'run.js')
    .map((f) => f.slice(0, -3))
    .sort();
}

async function main(): Promise<void> {
  const name = process.argv[2];
  const names = available();
  if (name === undefined || !names.includes(name)) {
    if (name !== undefined) process.stderr.write(`unknown benchmark "${name}"\n`);
    process.stderr.write(`usage: npm run bench -- <name> [args]\navailable benchmarks:\n${names.map((n) => `  ${n}\n`).join('')}`);
    process.exit(2);
  }
  const mod = (await import(pathToFileURL(join(here, `${name}.js`)).href)) as { run?: (args: string[]) => Promise<void> };
  if (typeof mod.run !== 'function') {
    process.stderr.write(`bench/${name} has no run() export\n`);
    process.exit(2);
  }
  await mod.run(process.argv.slice(3));
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`benchmark failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
