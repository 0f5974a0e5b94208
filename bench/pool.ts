// `npm run bench -- pool [--hosts N] [--vms M] [--idle-s S] [--rss-only] [--quick]`: a pool of real
// processes formed by `xapi pool` (default 16 hosts; issue 10's aim is 64: `--hosts 64`) on
// loopback addresses. Figures, each beside the limit measured in the same run:
// - formation: from launching `xapi pool` to its "ready" line (every member joined, enabled and
//   live), beside one host's own start-up time;
// - RSS of every host after S seconds idle (default 15), from /proc/<pid>/status: the coordinator's,
//   the members' mean and max, each split into anonymous (V8's heap, malloc) and file-backed
//   (node's binary and libraries, shared between hosts but counted in each) memory, beside the aim
//   of 80 MB (76.3 MiB) and a bare idle node process's RSS. `--rss-only` stops here (and skips the single
//   host's lifecycle run);
// - VM lifecycle across the pool: M VMs (64 MiB, no simulated boot time) started and shut down
//   through the coordinator by 32 concurrent clients, beside the single-host lifecycle rate
//   (the same on one standalone host);
// - a member's database: reads and acknowledged writes per second of a RemoteDb holding the
//   pool's secret, against the coordinator, beside the same calls on a local LocalDb;
// - event.from latency on the coordinator for a change a member makes (p50/p99), beside the
//   same for a change made on the coordinator itself;
// - coordinator transitions: from pool.designate_new_master, and from a SIGKILL of the coordinator
//   followed at once by the emergency calls on a member, to the new coordinator acknowledging a
//   write, beside one host's start-up time.
import http from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { JsonRpc, type Target } from './lib/http-load.js';
import { AIM_MIB, type RssParts, rssMiB, rssParts } from './lib/rss.js';
import { freePort, PASSWORD, ROOT, startXapi, stopXapi } from '../test/integration/harness.js';
import { vmRecord } from '../test/vm-record.js';
import { schema as loadSchema } from '../src/schema/schema.js';
import { RemoteDb } from '../src/db/remote.js';
import { LocalDb } from '../src/db/database.js';
import { SqliteStore } from '../src/db/store.js';
import type { AnyDb } from '../src/db/interface.js';

const MiB = 1024 ** 2;
const CONCURRENCY = 32;
const SIM_ARGS = ['--sim-boot-ms', '0', '--sim-shutdown-ms', '0', '--log-level', 'warn'];

function arg(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
}

async function inParallel<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<number> {
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
  return performance.now() - started;
}

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

/** Calls per second of `op`, `concurrency` loops at once for `ms`. */
async function rate(concurrency: number, ms: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const end = performance.now() + ms;
  let done = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) await op(done++);
    }),
  );
  return done / ((performance.now() - started) / 1000);
}

interface Launched {
  proc: ChildProcess;
  output: () => string;
  hosts: { address: string; pid: number }[];
  readyMs: number;
}

async function launchPool(
  hosts: number,
  base: string,
  stateDir: string,
  httpPort: number,
  httpsPort: number,
  memoryMiB: number,
): Promise<Launched> {
  const started = performance.now();
  const proc = spawn(
    process.execPath,
    [
      join(ROOT, 'bin/xapi.js'),
      'pool',
      '--hosts',
      String(hosts),
      '--base-address',
      base,
      '--state-dir',
      stateDir,
      '--http-port',
      String(httpPort),
      '--https-port',
      String(httpsPort),
      '--sim-memory-mib',
      String(memoryMiB),
      '--sim-cpus',
      '8',
      ...SIM_ARGS,
    ],
    { env: { ...process.env, XAPI_ROOT_PASSWORD: PASSWORD }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const check = () => {
      if (/xapi pool: ready/.test(out)) resolve();
    };
    proc.stdout!.on('data', check);
    proc.on('exit', (code) => reject(new Error(`xapi pool exited (${code}) before it was ready:\n${out}`)));
  });
  const readyMs = performance.now() - started;
  const listed = [...out.matchAll(/^\s+\S+\s+(\d+\.\d+\.\d+\.\d+)\s+\S+\s+pid (\d+)/gm)].map((m) => ({
    address: m[1]!,
    pid: Number(m[2]),
  }));
  return { proc, output: () => out, hosts: listed, readyMs };
}

async function stopPool(l: Launched): Promise<void> {
  if (l.proc.exitCode !== null) return;
  const exited = new Promise((r) => l.proc.on('exit', r));
  l.proc.kill('SIGTERM');
  await exited;
}

/** event.from latency on `watchUrl` for changes `change(i)` makes, n samples one at a time. */
async function eventLatency(rpc: JsonRpc, session: string, n: number, change: (i: number) => Promise<unknown>): Promise<number[]> {
  let token = ((await rpc.call('event.from', [session, ['pool'], '', 0])) as { token: string }).token;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    // an idle watcher: the last answer is older than the batching delay (50 ms), which spaces
    // the answers of a watcher in a tight loop
    await new Promise((r) => setTimeout(r, 60));
    const t0 = performance.now();
    const seen = (async () => {
      for (;;) {
        const r = (await rpc.call('event.from', [session, ['pool'], token, 30])) as { token: string; events: unknown[] };
        token = r.token;
        if (r.events.length > 0) return performance.now() - t0;
      }
    })();
    await change(i);
    out.push(await seen);
  }
  return out;
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const hosts = arg(args, '--hosts', quick ? 4 : 16);
  const vmCount = arg(args, '--vms', quick ? 100 : 1000);
  const idleS = arg(args, '--idle-s', quick ? 3 : 15);
  const rssOnly = args.includes('--rss-only');
  const perHostMiB = Math.ceil((vmCount * 80) / hosts) + 8192;
  const third = 100 + (process.pid % 100);
  const base = `127.0.${third}.10`;
  const stateDir = await mkdtemp(join(tmpdir(), 'xapi-bench-pool-'));
  const httpPort = await freePort(base);
  const httpsPort = await freePort(base);
  const figures: Record<string, unknown> = {};
  const round = (x: number) => Math.round(x * 1000) / 1000;
  const report = () => console.log(JSON.stringify({ bench: 'pool', ...figures }));
  let launched: Launched | undefined;
  try {
    // One standalone host first: its start-up time and its lifecycle rate are limits below.
    const single = await (async () => {
      const t0 = performance.now();
      const x = await startXapi({ args: [...SIM_ARGS, '--sim-memory-mib', String(vmCount * 80 + 8192), '--sim-cpus', '8'] });
      const startMs = performance.now() - t0;
      try {
        const rpc = new JsonRpc({ host: x.address, port: x.httpPort }, new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY }));
        const s = (await rpc.call('session.login_with_password', ['root', PASSWORD])) as string;
        const rate = rssOnly ? Number.NaN : await lifecycle(rpc, s, vmCount);
        const idleRss = await rssMiB(x.pid);
        return { startMs, rate, idleRss };
      } finally {
        await stopXapi(x);
      }
    })();
    console.log(`one host: start-up ${single.startMs.toFixed(0)} ms${rssOnly ? '' : `, lifecycle ${single.rate.toFixed(0)} ops/s`}`);

    launched = await launchPool(hosts, base, stateDir, httpPort, httpsPort, perHostMiB);
    console.log(
      `xapi pool --hosts ${hosts}: ready in ${launched.readyMs.toFixed(0)} ms (one host starts in ${single.startMs.toFixed(0)} ms)`,
    );
    figures.formation = { value: Math.round(launched.readyMs), unit: 'ms', hosts, limit_one_host_start_ms: Math.round(single.startMs) };

    const bare = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    // idle for a while after forming (start-up's garbage collected, heartbeats going)
    await new Promise((r) => setTimeout(r, idleS * 1000));
    const rss = await Promise.all(launched.hosts.map((h) => rssParts(h.pid)));
    const bareRss = await rssParts(bare.pid!);
    bare.kill();
    const [coord, ...members] = rss as [RssParts, ...RssParts[]];
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const meanMember = mean(members.map((m) => m.rss));
    const maxMember = Math.max(...members.map((m) => m.rss));
    const over = rss.filter((r) => r.rss >= AIM_MIB).length;
    const parts = (r: RssParts) => `anon ${r.anon.toFixed(1)} + file ${r.file.toFixed(1)}; PSS ${r.pss.toFixed(1)}`;
    const memberMean = (k: keyof RssParts) => mean(members.map((m) => m[k]));
    console.log(
      `RSS after ${idleS} s idle: coordinator ${coord.rss.toFixed(1)} MiB (${parts(coord)}), members mean ${meanMember.toFixed(1)} (anon ${memberMean('anon').toFixed(1)} + file ${memberMean('file').toFixed(1)}; PSS ${memberMean('pss').toFixed(1)}) min ${Math.min(...members.map((m) => m.rss)).toFixed(1)} max ${maxMember.toFixed(1)} MiB; ${over} of ${rss.length} hosts at or over the aim of 80 MB (${AIM_MIB.toFixed(1)} MiB) (bare node ${bareRss.rss.toFixed(1)}: ${parts(bareRss)}); load ${loadavg()[0]!.toFixed(1)}`,
    );
    figures.rss_idle_member = {
      value: round(meanMember),
      unit: 'MiB',
      max: round(maxMember),
      anon: round(memberMean('anon')),
      file: round(memberMean('file')),
      pss: round(memberMean('pss')),
      aim: round(AIM_MIB),
      bare_node: round(bareRss.rss),
    };
    figures.rss_idle_coordinator = {
      value: round(coord.rss),
      unit: 'MiB',
      anon: round(coord.anon),
      file: round(coord.file),
      pss: round(coord.pss),
      aim: round(AIM_MIB),
    };
    figures.hosts_over_aim = { value: over, of: rss.length };
    if (rssOnly) {
      report();
      return;
    }

    const coordinator = launched.hosts[0]!;
    const target: Target = { host: coordinator.address, port: httpPort };
    const rpc = new JsonRpc(target, new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY }));
    const s = (await rpc.call('session.login_with_password', ['root', PASSWORD])) as string;

    // VM lifecycle across the pool, through the coordinator
    try {
      const poolRate = await lifecycle(rpc, s, vmCount);
      console.log(`lifecycle across ${hosts} hosts: ${poolRate.toFixed(0)} ops/s (one host: ${single.rate.toFixed(0)})`);
      figures.vm_lifecycle_pool = {
        value: Math.round(poolRate),
        unit: 'ops/s',
        limit: Math.round(single.rate),
        ratio: round(poolRate / single.rate),
      };
    } catch (e) {
      console.log(`lifecycle across the pool failed: ${(e as Error).message}`);
      figures.vm_lifecycle_pool = { error: (e as Error).message.slice(0, 200) };
    }

    // a member's database access, through the coordinator
    const schema = loadSchema();
    const secret = (await readFile(join(stateDir, 'host1', 'ptoken'), 'utf8')).trim();
    const remote = new RemoteDb(schema, { address: coordinator.address, port: httpsPort, poolSecret: () => secret });
    const dbDir = await mkdtemp(join(tmpdir(), 'xapi-bench-pool-db-'));
    const local = new LocalDb(schema, new SqliteStore(join(dbDir, 'xapi.db')));
    try {
      const [poolRef] = (await rpc.call('pool.get_all', [s])) as string[];
      await local.create('pool', poolRef!, { uuid: 'bench', name_label: 'bench' });
      await local.commit();
      const reads = (db: AnyDb) => () => db.get('pool', poolRef!);
      const writes = (db: AnyDb) => async (i: number) => {
        await db.update('pool', poolRef!, { name_description: `d${i}` });
        await db.commit();
      };
      const ms = quick ? 500 : 2000;
      await rate(CONCURRENCY, ms / 4, reads(remote));
      const rr = await rate(CONCURRENCY, ms, reads(remote));
      const lr = await rate(CONCURRENCY, ms, reads(local));
      const rw = await rate(CONCURRENCY, ms, writes(remote));
      const lw = await rate(CONCURRENCY, ms, writes(local));
      console.log(
        `member DB via coordinator: reads ${rr.toFixed(0)}/s (local ${lr.toFixed(0)}), writes ${rw.toFixed(0)}/s (local ${lw.toFixed(0)})`,
      );
      figures.member_db_reads = { value: Math.round(rr), unit: '/s', limit: Math.round(lr) };
      figures.member_db_writes = { value: Math.round(rw), unit: '/s', limit: Math.round(lw), ratio: round(rw / lw) };

      // event.from on the coordinator: a member's change (through its RemoteDb) vs the coordinator's own
      const samples = quick ? 20 : 100;
      const viaMember = await eventLatency(rpc, s, samples, (i) => remote.update('pool', poolRef!, { name_description: `m${i}` }));
      const local2 = await eventLatency(rpc, s, samples, (i) => rpc.call('pool.set_name_description', [s, poolRef, `c${i}`]));
      console.log(
        `event.from latency, member change: p50 ${percentile(viaMember, 50).toFixed(1)} ms p99 ${percentile(viaMember, 99).toFixed(1)} ms (coordinator change p50 ${percentile(local2, 50).toFixed(1)} p99 ${percentile(local2, 99).toFixed(1)})`,
      );
      figures.event_latency_member_change = {
        p50_ms: round(percentile(viaMember, 50)),
        p99_ms: round(percentile(viaMember, 99)),
        limit_p50_ms: round(percentile(local2, 50)),
        limit_p99_ms: round(percentile(local2, 99)),
      };
    } finally {
      remote.close();
      local.close();
      await rm(dbDir, { recursive: true, force: true });
    }

    // Coordinator transitions: from the call (or the SIGKILL) to the new coordinator
    // acknowledging a write.
    const [next, third] = [launched.hosts[1]!, launched.hosts[2]!];
    const hostRecords = (await rpc.call('host.get_all_records', [s])) as Record<string, { address: string }>;
    const nextRef = Object.entries(hostRecords).find(([, h]) => h.address === next.address)![0];
    let t0 = performance.now();
    await rpc.call('pool.designate_new_master', [s, nextRef]);
    await firstWrite(next.address, httpPort);
    const designateMs = performance.now() - t0;
    t0 = performance.now();
    process.kill(next.pid, 'SIGKILL');
    const thirdRpc = new JsonRpc({ host: third.address, port: httpPort }, new http.Agent({ keepAlive: true }));
    const local3 = await thirdRpc.call('session.slave_local_login_with_password', ['root', PASSWORD]);
    await thirdRpc.call('pool.emergency_transition_to_master', [local3]);
    await firstWrite(third.address, httpPort);
    const emergencyMs = performance.now() - t0;
    console.log(
      `transitions: designate_new_master to a write acknowledged ${designateMs.toFixed(0)} ms; SIGKILL + emergency_transition_to_master to a write ${emergencyMs.toFixed(0)} ms (one host starts in ${single.startMs.toFixed(0)} ms)`,
    );
    figures.designate_new_master = { value: Math.round(designateMs), unit: 'ms', limit_one_host_start_ms: Math.round(single.startMs) };
    figures.emergency_transition = { value: Math.round(emergencyMs), unit: 'ms', limit_one_host_start_ms: Math.round(single.startMs) };
    report();
  } finally {
    if (launched) await stopPool(launched);
    await rm(stateDir, { recursive: true, force: true });
  }
}

/** Resolves once `address` takes a login and acknowledges a write (it is the coordinator). */
async function firstWrite(address: string, port: number): Promise<void> {
  const rpc = new JsonRpc({ host: address, port }, new http.Agent({ keepAlive: false }));
  for (;;) {
    try {
      const s = (await rpc.call('session.login_with_password', ['root', PASSWORD])) as string;
      const [poolRef] = (await rpc.call('pool.get_all', [s])) as string[];
      await rpc.call('pool.set_name_description', [s, poolRef, `written ${Date.now()}`]);
      return;
    } catch {
      // not serving yet (restarting, or checking that no other host is coordinator)
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Lifecycle operations (start or hard_shutdown) per second over `count` fresh VMs. */
async function lifecycle(rpc: JsonRpc, s: string, count: number): Promise<number> {
  const vms: string[] = [];
  await inParallel(
    Array.from({ length: count }, (_, i) => i),
    CONCURRENCY,
    async (i) => {
      vms.push((await rpc.call('VM.create', [s, vmRecord(`bench-${i}`, { memory: 64 * MiB })])) as string);
    },
  );
  const startMs = await inParallel(vms, CONCURRENCY, async (vm) => {
    await rpc.call('VM.start', [s, vm, false, false]);
  });
  const shutdownMs = await inParallel(vms, CONCURRENCY, async (vm) => {
    await rpc.call('VM.hard_shutdown', [s, vm]);
  });
  await inParallel(vms, CONCURRENCY, async (vm) => {
    await rpc.call('VM.destroy', [s, vm]);
  });
  return (2 * vms.length) / ((startMs + shutdownMs) / 1000);
}
