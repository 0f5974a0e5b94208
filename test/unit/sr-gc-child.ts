// Child process for the GC kill tests: runs one runGc on the SR directory argv[2].
// GC_CRASH_AT=k makes it SIGKILL itself at the k-th instrumented crash point (0: never);
// GC_KILL_AT_CHANGE=k makes it SIGKILL itself just before its k-th change to the file system
// (a write, a truncate, a file created, renamed or removed: every moment between two instrumented
// points where the files differ); GC_ACTIVE is a comma-separated list of active VDI uuids.
// Prints the points passed, the number of changes made and the report.
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { runGc } from '../../src/storage/gc.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: sr-gc-child <dir>');
const crashAt = Number(process.env.GC_CRASH_AT ?? '0');
const killAtChange = Number(process.env.GC_KILL_AT_CHANGE ?? '0');
const active = new Set((process.env.GC_ACTIVE ?? '').split(',').filter(Boolean));

// Counting changes: the file-system calls that change files are wrapped (fs/promises, which the
// GC's code imports by name, is updated with syncBuiltinESMExports; file handles by prototype).
let changes = 0;
function counted(obj: object, names: string[], isChange: (...args: unknown[]) => boolean = () => true): void {
  const o = obj as Record<string, (...args: unknown[]) => unknown>;
  for (const name of names) {
    const original = o[name]!;
    o[name] = function (this: unknown, ...args: unknown[]) {
      if (isChange(...args) && ++changes === killAtChange) process.kill(process.pid, 'SIGKILL');
      return original.apply(this, args);
    };
  }
}
const probe = await fsp.open(process.execPath, 'r');
counted(Object.getPrototypeOf(probe) as object, ['write', 'writeFile', 'truncate']);
await probe.close();
counted(fsp, ['rename', 'unlink', 'rm', 'mkdir', 'writeFile', 'truncate']);
counted(fsp, ['open'], (_path, flags) => typeof flags === 'string' && /[wax]/.test(flags)); // creates or truncates
syncBuiltinESMExports();

const points: string[] = [];
const report = await runGc(dir, {
  lock: (fn) => fn(),
  inUse: () => active,
  crashPoint: (name) => {
    points.push(name);
    if (points.length === crashAt) process.kill(process.pid, 'SIGKILL');
  },
});
process.stdout.write(JSON.stringify({ points, changes, report }));
