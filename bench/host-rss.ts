// `npm run bench -- host-rss [--idle-s S] [--quick]`: the resident memory of idle host processes,
// for issue 10's aim of 64 hosts on one machine, each idle host under 80 MB (76.3 MiB) of RSS.
//
// Processes, each on its own 127.x address (test/integration/harness.ts, so started exactly as
// the tests and the pool launcher start hosts, with src/cli/host-process.ts's settings):
//  - a standalone host (`xapi serve`, a pool of its own, its own LocalDb);
//  - a two-host pool, its second host joined with pool.join (test/integration/pool-harness.ts),
//    so a member (RemoteDb to the coordinator) and its coordinator;
//  - a bare node process, `node -e 'setInterval(()=>{},1e3)'`: what any node process costs on
//    this machine, the floor under every figure.
// Each process's RSS (/proc/<pid>/status VmRSS) is read once the hosts are up (the member
// enabled and live) and again after they were left idle for --idle-s seconds (default 60;
// --quick: 5), the figure. Idle means no client call: the hosts' own timers run (heartbeats,
// the backup loop, the database GC), as in a pool nobody is using.
//
// Figures: standalone_rss, member_rss, coordinator_rss (MiB) after the idle time, each beside
// the limit of 80 MB, 76.3 MiB (ratio = value / limit, under 1 meets the aim) and the bare node's RSS of
// the same run (`bare`); and bare_node_rss itself. The LAST line is one JSON object {"bench":"host-rss", <figure>: {value, unit, limit, ratio}, ...}.
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { startXapi, stopXapi, type XapiProcess } from '../test/integration/harness.js';
import { joinPool, startHosts } from '../test/integration/pool-harness.js';
import { AIM_MIB, rssMiB } from './lib/rss.js';

/** The aim of issue 10: an idle host under 80 MB of RSS. */
const LIMIT_MIB = AIM_MIB;

interface Figure {
  value: number;
  unit: string;
  limit?: number;
  ratio?: number;
  /** The bare node process's RSS in the same run. */
  bare?: number;
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

function startBare(): Promise<ChildProcess> {
  const proc = spawn(process.execPath, ['-e', 'setInterval(()=>{},1e3)'], { stdio: 'ignore' });
  return new Promise((resolve, reject) => {
    proc.once('spawn', () => resolve(proc));
    proc.once('error', reject);
  });
}

async function stopBare(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  process.kill(proc.pid!, 'SIGTERM');
  await exited;
}

export async function run(args: string[]): Promise<void> {
  const at = args.indexOf('--idle-s');
  const idleS = at >= 0 ? Number(args[at + 1]) : args.includes('--quick') ? 5 : 60;
  if (!Number.isFinite(idleS) || idleS < 0) throw new Error('--idle-s takes a number of seconds');

  const started: XapiProcess[] = [];
  let bare: ChildProcess | undefined;
  try {
    bare = await startBare();
    const standalone = await startXapi();
    started.push(standalone);
    const pool = await startHosts(2);
    started.push(...pool);
    const [coordinator, member] = pool as [XapiProcess, XapiProcess];
    await joinPool(coordinator, member);

    const processes: [string, number][] = [
      ['standalone', standalone.pid],
      ['member', member.pid],
      ['coordinator', coordinator.pid],
      ['bare_node', bare.pid!],
    ];
    const ready = new Map<string, number>();
    for (const [name, pid] of processes) ready.set(name, await rssMiB(pid));
    await sleep(idleS * 1000); // the idle time is what is measured, not a wait for something
    const idle = new Map<string, number>();
    for (const [name, pid] of processes) idle.set(name, await rssMiB(pid));
    const bareRss = idle.get('bare_node')!;
    const figures: Record<string, Figure> = {};
    console.log(`process       RSS ready  RSS idle ${idleS}s  above bare  limit  ratio   (MiB)`);
    for (const [name] of processes) {
      const value = idle.get(name)!;
      const host = name !== 'bare_node';
      console.log(
        `${name.padEnd(12)} ${ready.get(name)!.toFixed(1).padStart(10)} ${value.toFixed(1).padStart(12)} ${(value - bareRss).toFixed(1).padStart(11)} ${host ? String(LIMIT_MIB).padStart(6) : '     -'} ${host ? (value / LIMIT_MIB).toFixed(3).padStart(6) : '     -'}`,
      );
      if (host)
        figures[`${name}_rss`] = {
          value: round(value),
          unit: 'MiB',
          limit: LIMIT_MIB,
          ratio: round(value / LIMIT_MIB, 3),
          bare: round(bareRss),
        };
    }
    figures.bare_node_rss = { value: round(bareRss), unit: 'MiB' };
    console.log(JSON.stringify({ bench: 'host-rss', idle_s: idleS, ...figures }));
  } finally {
    await Promise.all(started.map((x) => stopXapi(x)));
    if (bare) await stopBare(bare);
  }
}
