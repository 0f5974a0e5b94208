// `npm run bench -- metrics [--vms N] [--idle-s S] [--quick]`: the performance counters of a
// host with many running VMs (issue 13).
//
// One `xapi serve` (test/integration/harness.ts) with N running VMs (default 200; --quick: 50),
// each with a VIF, and an idle (nobody calling) window of --idle-s seconds (default 60; --quick:
// 15), measuring:
//  - rrd_updates_ms: GET /rrd_updates?json=true&host=true&cf=AVERAGE&interval=5&start=<10 min
//    ago> (what Xen Orchestra asks every 5 s: 120 rows of every host and VM data source), the
//    median of 20 requests over HTTP from this process, whole reply received; beside it
//    stringify_ms, the median of 20 JSON.stringify of the same document (the reply parsed) in
//    this process, and one_row_ms, the median of the same request for the host's newest row
//    alone (what any request costs on this machine now): the limit is one_row_ms + 5 ×
//    stringify_ms (picking the rows, writing the reply, sending and receiving it may cost a few
//    times building the text with the engine's own serializer);
//  - sampling_cpu_percent: the host process's CPU (utime + stime from /proc/<pid>/stat) over the
//    idle window, as a percentage of one core, beside the same host's CPU over a window of the
//    same length before any VM ran (idle_cpu_percent); the limit is 5% of a core for 200 VMs
//    (scaled by N/200) above that.
// The LAST line is one JSON object {"bench":"metrics", <figure>: {value, unit, limit, ratio}, ...}.
import { readFile } from 'node:fs/promises';
import { get } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { jsonCall, login } from '../test/integration/client.js';
import { PASSWORD, startXapi, stopXapi } from '../test/integration/harness.js';
import { vifRecord, vmRecord } from '../test/vm-record.js';
import { waitUntil } from '../test/wait.js';

const MiB = 1024 * 1024;
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
/** The body of a GET, over node's own HTTP client (lighter than fetch: the figure is the server's). */
function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    }).on('error', reject);
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** CPU seconds (user + system) the process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the command
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function cpuPercentOver(pid: number, seconds: number): Promise<number> {
  const before = await cpuSeconds(pid);
  const t0 = performance.now();
  await sleep(seconds * 1000); // the window is what is measured, not a wait for something
  return (100 * ((await cpuSeconds(pid)) - before)) / ((performance.now() - t0) / 1000);
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const at = args.indexOf('--vms');
  const n = at >= 0 ? Number(args[at + 1]) : quick ? 50 : 200;
  const idleAt = args.indexOf('--idle-s');
  const idleS = idleAt >= 0 ? Number(args[idleAt + 1]) : quick ? 15 : 60;
  const x = await startXapi({ args: ['--sim-boot-ms', '0', '--sim-memory-mib', String(Math.max(16384, n * 96 + 8192))] });
  try {
    const s = await login(x.url, PASSWORD);
    const call = (m: string, ...p: unknown[]) => jsonCall(x.url, m, [s, ...p]);
    const idleCpu = await cpuPercentOver(x.pid, idleS);
    const networks = (await call('network.get_all_records')) as Record<string, { bridge: string }>;
    const network = Object.entries(networks).find(([, net]) => net.bridge === 'xenbr0')![0];
    const uuids: string[] = [];
    const t0 = performance.now();
    for (let i = 0; i < n; i += 10) {
      await Promise.all(
        Array.from({ length: Math.min(10, n - i) }, async (_, k) => {
          const vm = (await call('VM.create', vmRecord(`bench-${i + k}`, { memory: 64 * MiB }))) as string;
          await call('VIF.create', vifRecord(vm, network));
          await call('VM.start', vm, false, false);
          uuids.push((await call('VM.get_uuid', vm)) as string);
        }),
      );
    }
    console.log(`${n} VMs created and started in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const url = () =>
      `${x.url}/rrd_updates?session_id=${s}&cf=AVERAGE&host=true&interval=5&json=true&start=${Math.floor(Date.now() / 1000) - 600 + 5}`;
    // every VM recorded (its columns in the reply) before measuring
    await waitUntil(
      'every VM in /rrd_updates',
      async () => {
        const text = await getText(url());
        return uuids.every((u) => text.includes(`AVERAGE:vm:${u}:cpu0`));
      },
      { timeoutMs: 120_000 },
    );
    const samplingCpu = await cpuPercentOver(x.pid, idleS);

    const fetchMs: number[] = [];
    const rttMs: number[] = [];
    let text = '';
    for (let i = 0; i < 20; i++) {
      const f0 = performance.now();
      text = await getText(url());
      fetchMs.push(performance.now() - f0);
      // the same request for the newest row of the host alone: what any request costs here
      const r0 = performance.now();
      await (
        await fetch(
          `${x.url}/rrd_updates?session_id=${s}&cf=AVERAGE&host=true&interval=5&json=true&vm_uuid=none&start=${Math.floor(Date.now() / 1000) - 5}`,
        )
      ).text();
      rttMs.push(performance.now() - r0);
    }
    const doc = JSON.parse(text) as { meta: { legend: string[]; rows: number } };
    const stringifyMs: number[] = [];
    for (let i = 0; i < 20; i++) {
      const j0 = performance.now();
      JSON.stringify(doc);
      stringifyMs.push(performance.now() - j0);
    }
    const updates = median(fetchMs);
    const stringify = median(stringifyMs);
    const rtt = median(rttMs);
    const limit = rtt + 5 * stringify;
    const cpuLimit = (5 * n) / 200;
    console.log(`/rrd_updates?json=true: ${doc.meta.legend.length} columns x ${doc.meta.rows} rows, ${(text.length / MiB).toFixed(2)} MiB`);
    console.log(
      `  median ${updates.toFixed(1)} ms over HTTP; JSON.stringify of the same document ${stringify.toFixed(1)} ms; a request for one row ${rtt.toFixed(1)} ms (limit: that + 5 x stringify = ${limit.toFixed(1)} ms)`,
    );
    console.log(
      `host CPU: ${idleCpu.toFixed(2)}% of a core with no VM, ${samplingCpu.toFixed(2)}% with ${n} VMs running (limit +${cpuLimit}%)`,
    );
    console.log(
      JSON.stringify({
        bench: 'metrics',
        vms: n,
        idle_s: idleS,
        rrd_updates_ms: {
          value: round(updates),
          unit: 'ms',
          limit: round(limit),
          ratio: round(updates / limit, 3),
          stringify_ms: round(stringify),
          one_row_ms: round(rtt),
          bytes: text.length,
        },
        sampling_cpu_percent: {
          value: round(samplingCpu),
          unit: '% of a core',
          limit: round(idleCpu + cpuLimit),
          ratio: round(samplingCpu / (idleCpu + cpuLimit), 3),
          idle_cpu_percent: round(idleCpu),
        },
      }),
    );
  } finally {
    await stopXapi(x);
  }
}
