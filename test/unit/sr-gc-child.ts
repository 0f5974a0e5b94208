// Child process for the GC kill tests: runs one runGc on the SR directory argv[2].
// GC_CRASH_AT=k makes it SIGKILL itself at the k-th instrumented crash point (0: never);
// GC_ACTIVE is a comma-separated list of active VDI uuids. Prints the points passed and the report.
import { runGc } from '../../src/storage/gc.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: sr-gc-child <dir>');
const crashAt = Number(process.env.GC_CRASH_AT ?? '0');
const active = new Set((process.env.GC_ACTIVE ?? '').split(',').filter(Boolean));
const points: string[] = [];
const report = await runGc(dir, {
  lock: (fn) => fn(),
  inUse: () => active,
  crashPoint: (name) => {
    points.push(name);
    if (points.length === crashAt) process.kill(process.pid, 'SIGKILL');
  },
});
process.stdout.write(JSON.stringify({ points, report }));
