// `npm run bench -- vm`: VM lifecycle throughput. 1,000 VMs (64 MiB each, zero simulated boot
// and shutdown time) are started and shut down by 32 concurrent JSON-RPC clients against a real
// xapi process; the figure is lifecycle operations (start or shutdown) per second.
//
// The limit beside it: the same number of plain database writes (VM.set_name_label on the same
// VMs, 32 concurrent) in the same run. Each lifecycle operation is bookkeeping around the domain
// manager — a task, current_operations set and cleared, allowed_operations, the state re-read
// and written — so the rate of plain acknowledged writes is what it can at best approach.
import http from 'node:http';
import { JsonRpc, type Target } from './lib/http-load.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from '../test/integration/harness.js';
import { vmRecord } from '../test/vm-record.js';

const VMS = 1000;
const CONCURRENCY = 32;
const MiB = 1024 ** 2;

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<number> {
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
  return performance.now() - started;
}

export async function run(args: string[]): Promise<void> {
  const count = args.includes('--quick') ? 100 : VMS;
  let xapi: XapiProcess | undefined;
  try {
    xapi = await startXapi({
      args: [
        '--sim-boot-ms',
        '0',
        '--sim-shutdown-ms',
        '0',
        '--sim-memory-mib',
        String(count * 80 + 16384),
        '--sim-cpus',
        '8',
        '--log-level',
        'warn',
      ],
    });
    const target: Target = { host: xapi.address, port: xapi.httpPort };
    const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    const rpc = new JsonRpc(target, agent);
    const s = (await rpc.call('session.login_with_password', ['root', PASSWORD])) as string;
    const vms: string[] = [];
    await pool(
      Array.from({ length: count }, (_, i) => i),
      CONCURRENCY,
      async (i) => {
        vms.push((await rpc.call('VM.create', [s, vmRecord(`bench-${i}`, { memory: 64 * MiB })])) as string);
      },
    );
    console.log(`created ${vms.length} VMs`);

    const writesMs = await pool(vms, CONCURRENCY, async (vm) => {
      await rpc.call('VM.set_name_label', [s, vm, `renamed-${vm.slice(-6)}`]);
      await rpc.call('VM.set_name_description', [s, vm, 'x']);
    });
    const writeRate = (2 * vms.length) / (writesMs / 1000);

    const startMs = await pool(vms, CONCURRENCY, async (vm) => {
      await rpc.call('VM.start', [s, vm, false, false]);
    });
    const shutdownMs = await pool(vms, CONCURRENCY, async (vm) => {
      await rpc.call('VM.hard_shutdown', [s, vm]);
    });
    const opsRate = (2 * vms.length) / ((startMs + shutdownMs) / 1000);

    console.log(`plain writes:     ${writeRate.toFixed(0)} writes/s (${2 * vms.length} in ${writesMs.toFixed(0)} ms)`);
    console.log(`VM.start:         ${(vms.length / (startMs / 1000)).toFixed(0)} /s`);
    console.log(`VM.hard_shutdown: ${(vms.length / (shutdownMs / 1000)).toFixed(0)} /s`);
    console.log(`lifecycle ops:    ${opsRate.toFixed(0)} ops/s, ratio to plain writes ${(opsRate / writeRate).toFixed(3)}`);
    agent.destroy();
    const round = (x: number) => Math.round(x * 1000) / 1000;
    console.log(
      JSON.stringify({
        bench: 'vm',
        vm_lifecycle_c32: { value: Math.round(opsRate), unit: 'ops/s', limit: Math.round(writeRate), ratio: round(opsRate / writeRate) },
      }),
    );
  } finally {
    if (xapi) await stopXapi(xapi);
  }
}
