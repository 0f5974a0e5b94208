// `npm run bench -- cli [--vms N] [--runs N]`: the wall time of a whole `xe vm-list` process on a
// host with 1,000 VMs (issue 12: xapi's own takes about 0.45 s), beside two limits measured in the
// same run on the same machine:
//   - node_startup: `node -e ''`, the floor for any command written for node;
//   - get_all_records_process: a node process doing what the CLI's work reduces to over the API
//     (login, VM.get_all_records over JSON-RPC, logout; no formatting), the floor for any client.
// Each figure is the median of --runs runs (default 7), the three kinds alternating so that other
// load on the box hits them alike. xe runs with --nossl against the plain HTTP port (as xe on a
// host reaches its own xapi without TLS), and once more over TLS (xe_vm_list_tls).
// The LAST line is one JSON object {"bench":"cli", <figure>: {value, unit, limit, ratio}, ...}.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { jsonCall, login } from '../test/integration/client.js';
import { PASSWORD, ROOT, startXapi, stopXapi } from '../test/integration/harness.js';
import { vmRecord } from '../test/vm-record.js';

interface Figure {
  value: number;
  unit: string;
  limit: number;
  ratio: number;
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Wall time of a process from spawn to exit, ms; its stdout checked by `check`. */
function timed(args: string[], check: (out: string) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: '/nonexistent-xe-home' } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      const ms = performance.now() - start;
      if (code !== 0) reject(new Error(`${args.join(' ')} exited ${code}: ${err}`));
      else {
        try {
          check(out);
          resolve(ms);
        } catch (e) {
          reject(e);
        }
      }
    });
  });
}

export async function run(args: string[]): Promise<void> {
  const opt = (name: string, dflt: number) => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : dflt;
  };
  const vms = opt('--vms', 1000);
  const runs = opt('--runs', 7);
  const host = await startXapi();
  try {
    const s = await login(host.url, PASSWORD);
    // The VMs, 16 creations in flight at a time.
    let made = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (made < vms) {
          const i = made++;
          await jsonCall(host.url, 'VM.create', [s, vmRecord(`bench-${i}`, { memory: 64 * 2 ** 20 })]);
        }
      }),
    );
    process.stdout.write(`${vms} VMs created on ${host.address}\n`);

    const xe = join(ROOT, 'bin/xe.js');
    const creds = ['-u', 'root', '-pw', PASSWORD, 'vm-list'];
    const plain = [xe, '-s', host.address, '-p', String(host.httpPort), '--nossl', ...creds];
    const tls = [xe, '-s', host.address, '-p', String(host.httpsPort), ...creds];
    const listed = (out: string) => {
      const n = out.split('\n').filter((l) => l.startsWith('uuid ( RO)')).length;
      if (n !== vms + 1) throw new Error(`xe vm-list listed ${n} VMs, expected ${vms} and the control domain`);
    };
    const script = `
      const url = ${JSON.stringify(`${host.url}/jsonrpc`)};
      const call = async (method, params) => {
        const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) });
        const j = await r.json();
        if (j.error) throw new Error(JSON.stringify(j.error));
        return j.result;
      };
      const s = await call('session.login_with_password', ['root', ${JSON.stringify(PASSWORD)}, '2.21', 'bench']);
      const all = await call('VM.get_all_records', [s]);
      await call('session.logout', [s]);
      process.stdout.write(String(Object.keys(all).length));`;
    const api = ['--input-type=module', '-e', script];
    const counted = (out: string) => {
      if (Number(out) < vms) throw new Error(`get_all_records gave ${out} VMs`);
    };

    const t = { node: [] as number[], api: [] as number[], xe: [] as number[], xeTls: [] as number[] };
    // One of each not counted (disk caches, JIT of the server's paths).
    await timed(['-e', ''], () => {});
    await timed(api, counted);
    await timed(plain, listed);
    for (let i = 0; i < runs; i++) {
      t.node.push(await timed(['-e', ''], () => {}));
      t.api.push(await timed(api, counted));
      t.xe.push(await timed(plain, listed));
      t.xeTls.push(await timed(tls, listed));
      process.stdout.write(
        `run ${i + 1}/${runs}: node -e '' ${round(t.node[i]!)} ms, get_all_records process ${round(t.api[i]!)} ms, xe vm-list ${round(t.xe[i]!)} ms (TLS ${round(t.xeTls[i]!)} ms)\n`,
      );
    }
    const node = median(t.node);
    const apiMs = median(t.api);
    const xeMs = median(t.xe);
    const xeTls = median(t.xeTls);
    const figures: Record<string, Figure> = {
      node_startup: { value: round(node), unit: 'ms', limit: round(node), ratio: 1 },
      get_all_records_process: { value: round(apiMs), unit: 'ms', limit: round(node), ratio: round(node / apiMs, 2) },
      xe_vm_list: { value: round(xeMs), unit: 'ms', limit: round(apiMs), ratio: round(apiMs / xeMs, 2) },
      xe_vm_list_tls: { value: round(xeTls), unit: 'ms', limit: round(apiMs), ratio: round(apiMs / xeTls, 2) },
    };
    process.stdout.write(
      `\n${vms} VMs, median of ${runs}:\n` +
        `  node -e ''                    ${round(node)} ms\n` +
        `  get_all_records (a process)   ${round(apiMs)} ms\n` +
        `  xe vm-list                    ${round(xeMs)} ms   (xapi's own: about 450 ms)\n` +
        `  xe vm-list over TLS           ${round(xeTls)} ms\n`,
    );
    process.stdout.write(`${JSON.stringify({ bench: 'cli', vms, runs, ...figures })}\n`);
  } finally {
    await stopXapi(host);
  }
}
