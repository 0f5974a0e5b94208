// `npm run bench -- remote-db [--quick]`: a pool member's database calls. A RemoteDb talks over
// HTTPS (keep-alive, 127.0.0.1) to a coordinator's LocalDb on a real SQLite file, served by the
// host's own HTTP servers and /remote_db_access handler, in this process. Figures: reads/s
// (db.get of one row) and acknowledged writes/s (db.update, durable on the coordinator before
// the reply), at concurrency 1 and 32.
//
// The limit beside each: the same calls on the LocalDb itself in the same run (a write there
// awaited with its commit(), so it too is durable when counted). A remote call can at best
// approach it; the ratio says what the member's round trip costs.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRemote } from '../test/unit/remote-db-fixture.js';
import type { AnyDb } from '../src/db/interface.js';

const DURATION_MS = 3000;

/** Calls per second of `op`, `concurrency` loops at once for `ms`. */
async function rate(concurrency: number, ms: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const end = performance.now() + ms;
  let done = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, loop) => {
      while (performance.now() < end) await op(loop * 1_000_000 + done++);
    }),
  );
  return done / ((performance.now() - started) / 1000);
}

export async function run(args: string[]): Promise<void> {
  const ms = args.includes('--quick') ? 500 : DURATION_MS;
  const dir = await mkdtemp(join(tmpdir(), 'xapi-bench-remote-db-'));
  const fx = await openRemote(dir);
  try {
    await fx.local.create('network', 'OpaqueRef:bench', { uuid: 'bench', name_label: 'bench', other_config: { a: 'b' } });
    await fx.local.commit();
    const reads = (db: AnyDb) => () => db.get('network', 'OpaqueRef:bench');
    const writes = (db: AnyDb, commit: boolean) => async (i: number) => {
      await db.update('network', 'OpaqueRef:bench', { name_label: `n${i}` });
      if (commit) await db.commit();
    };
    const figures: Record<string, number> = {};
    console.log('figure                remote/s    local/s   ratio');
    for (const c of [1, 32]) {
      // warm-up: connections opened, code compiled
      await rate(c, ms / 5, reads(fx.db));
      const rr = await rate(c, ms, reads(fx.db));
      const lr = await rate(c, ms, reads(fx.local));
      const rw = await rate(c, ms, writes(fx.db, false));
      const lw = await rate(c, ms, writes(fx.local, true));
      for (const [name, remote, local] of [
        [`reads c=${c}`, rr, lr],
        [`writes c=${c}`, rw, lw],
      ] as const) {
        console.log(
          `${name.padEnd(18)} ${remote.toFixed(0).padStart(10)} ${local.toFixed(0).padStart(10)} ${(remote / local).toFixed(4).padStart(7)}`,
        );
        const key = name.replace(' c=', '_c');
        figures[`${key}_remote_per_s`] = Math.round(remote);
        figures[`${key}_local_per_s`] = Math.round(local);
        figures[`${key}_ratio`] = Number((remote / local).toFixed(4));
      }
    }
    console.log(JSON.stringify({ bench: 'remote-db', ...figures }));
  } finally {
    await fx.close();
    await rm(dir, { recursive: true, force: true });
  }
}
