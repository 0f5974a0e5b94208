// `npm run bench -- migrate [--memory-mib N] [--disk-mib N] [--quick]`: live migration between two hosts of a
// pool of real processes (VM.pool_migrate through the coordinator; the memory goes host to
// host over HTTPS). Figures, each beside a limit measured in the same run:
// - a VM of N MiB (default 4096; --quick 1024) whose guest writes nothing: the migration's
//   rate (its memory over the call's time, and the bytes on the wire over the copy's time)
//   beside a raw loopback TCP copy and an HTTPS PUT of the same bytes between two processes
//   on the hosts' addresses (the HTTPS one is what the hosts' own link can carry), measured
//   before the migrations and again after them (a shared machine's load moves during a run);
// - the same VM with its guest writing 0, 50 and 200 MB/s (VM.other_config
//   simulator_dirty_rate): per migration its rounds (pages and bytes each), bytes, downtime
//   (the guest paused on the source until the destination confirmed it runs) and total time,
//   from the source's migrations.log. The aim: downtime under 100 ms at 50 MB/s (xapi claims
//   under a second).
// - storage motion (VM.migrate_send): a running VM's disk of N MiB (default 4096; --quick 1024),
//   every block holding data, from one host's local SR to the other's (the copy goes host to
//   host over HTTPS): the copy's MB/s from the source's migrations.log, and the call's, beside a
//   plain file copy (read and write, then fsync) of the same VHD file on the same filesystem.
// - a small VM (256 MiB, a 64 MiB disk) moved with its disk within the pool, then to another
//   pool (a third process, standalone): the downtime of each, side by side.
// The last line is JSON, as the other benchmarks'.
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { connect } from 'node:net';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jsonCall } from '../test/integration/client.js';
import { freePort, ROOT } from '../test/integration/harness.js';
import { joinPool, startHosts } from '../test/integration/pool-harness.js';
import { login } from '../test/integration/client.js';
import { PASSWORD, stopXapi, type XapiProcess } from '../test/integration/harness.js';
import { vbdRecord, vdiRecord, vmRecord } from '../test/vm-record.js';
import { HOST_NODE_FLAGS, hostEnv } from '../src/cli/host-process.js';

const MiB = 1024 ** 2;
const MB = 1e6;
const NULL = 'OpaqueRef:NULL';

function arg(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

/**
 * The receiving end of a limit measurement, in its own process (as a destination host is): a
 * raw TCP server and an HTTPS server on `address`, each counting what arrives and answering the
 * count once `bytes` have come.
 */
const RECEIVER = `
import net from 'node:net';
import https from 'node:https';
import { loadOrCreateCertificate } from ${JSON.stringify(join(ROOT, 'dist/src/http/tls.js'))};
const [address, tcpPort, httpsPort, bytes, dir] = process.argv.slice(2);
const total = Number(bytes);
net.createServer((s) => {
  let n = 0;
  s.on('data', (c) => { n += c.length; if (n >= total) s.end(String(n)); });
}).listen(Number(tcpPort), address);
const tls = await loadOrCreateCertificate(dir, 'bench');
https.createServer(tls, async (req, res) => {
  res.writeHead(200);
  let n = 0;
  for await (const c of req) n += c.length;
  res.end(String(n));
}).listen(Number(httpsPort), address, () => console.log('ready'));
`;

/** Sends `bytes` from one reused megabyte: over raw TCP, then as an HTTPS PUT; MB/s each. */
async function limits(address: string, bytes: number): Promise<{ tcp: number; https: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-bench-migrate-'));
  const script = join(dir, 'receiver.mjs');
  await writeFile(script, RECEIVER);
  const [tcpPort, httpsPort] = [await freePort(address), await freePort(address)];
  const child = spawn(process.execPath, [...HOST_NODE_FLAGS, script, address, String(tcpPort), String(httpsPort), String(bytes), dir], {
    env: hostEnv(process.env),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      child.on('exit', (code) => reject(new Error(`the receiver exited (${code})`)));
    });
    const chunk = Buffer.alloc(MiB, 0x5a);
    const pump = (out: NodeJS.WritableStream, done: () => void) => {
      let sent = 0;
      const more = () => {
        while (sent < bytes) {
          sent += chunk.length;
          if (!out.write(sent <= bytes ? chunk : chunk.subarray(0, chunk.length - (sent - bytes)))) {
            out.once('drain', more);
            return;
          }
        }
        done();
      };
      more();
    };
    const tcp = await new Promise<number>((resolve, reject) => {
      const t0 = performance.now();
      const s = connect(tcpPort, address, () => pump(s, () => undefined));
      s.on('data', () => resolve(performance.now() - t0));
      s.on('error', reject);
    });
    const https = await new Promise<number>((resolve, reject) => {
      const t0 = performance.now();
      const req = request(`https://${address}:${httpsPort}/`, { method: 'PUT', rejectUnauthorized: false, agent: false });
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve(performance.now() - t0));
      });
      req.on('error', reject);
      pump(req, () => req.end());
    });
    return { tcp: bytes / MB / (tcp / 1000), https: bytes / MB / (https / 1000) };
  } finally {
    child.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
}

/** A plain copy of `from` to a new file beside it (streamed read and write, then fsync): MB/s. */
async function fileCopy(from: string, dir: string): Promise<{ mbps: number; bytes: number }> {
  const to = join(dir, 'bench-file-copy');
  const bytes = (await stat(from)).size;
  const t0 = performance.now();
  await pipeline(createReadStream(from, { highWaterMark: 2 * MiB }), createWriteStream(to, { highWaterMark: 2 * MiB }));
  const fh = await open(to, 'r');
  await fh.sync();
  await fh.close();
  const ms = performance.now() - t0;
  await rm(to, { force: true });
  return { mbps: bytes / MB / (ms / 1000), bytes };
}

/** PUT /import_raw_vdi of `size` bytes, every 4 KiB block holding data, streamed (never all in memory). */
function fillDisk(hostUrl: string, session: string, vdi: string, size: number): Promise<void> {
  const block = Buffer.alloc(MiB);
  let sent = 0;
  const body = new Readable({
    read() {
      if (sent >= size) return void this.push(null);
      for (let i = 0; i < block.length; i += 4096) block.writeUInt32LE(((sent + i) ^ 0x5a5a5a5a) >>> 0, i);
      sent += block.length;
      this.push(Buffer.from(block));
    },
  });
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${hostUrl}/import_raw_vdi?session_id=${session}&vdi=${vdi}&format=raw`, {
      method: 'PUT',
      headers: { 'content-length': size },
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`import_raw_vdi: ${res.statusCode}`))));
    });
    req.on('error', reject);
    body.on('error', reject);
    body.pipe(req);
  });
}

interface Logged {
  vm: string;
  rounds: { pages: number; bytes: number; ms: number; final: boolean }[];
  bytes: number;
  downtimeMs: number;
  totalMs: number;
  memoryBytes: number;
  dirtyRate: number;
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const memoryMiB = arg(args, '--memory-mib', quick ? 1024 : 4096);
  const diskMiB = arg(args, '--disk-mib', quick ? 1024 : 4096);
  const memory = memoryMiB * MiB;
  // two hosts in a pool; a third, standalone, is the other pool of the cross-pool figure
  const hosts = await startHosts(3, { args: ['--log-level', 'warn', '--sim-boot-ms', '0'] });
  try {
    const [coordinator, member, other] = hosts as [XapiProcess, XapiProcess, XapiProcess];
    await joinPool(coordinator, member);
    const pool = { coordinator, members: [member] };
    const url = pool.coordinator.url;
    const s = await login(url, PASSWORD);
    const call = (method: string, ...params: unknown[]) => jsonCall(url, method, [s, ...params]);
    const hostRecords = (await call('host.get_all_records')) as Record<string, { address: string }>;
    const refOf = (x: XapiProcess) => Object.entries(hostRecords).find(([, h]) => h.address === x.address)![0];
    const [a, b] = [refOf(coordinator), refOf(member)];
    const stateOf = (host: string) => (host === a ? pool.coordinator : pool.members[0]!).stateDir;

    console.log(`limits: ${memoryMiB} MiB from this process to another on ${pool.members[0]!.address}`);
    const limit = await limits(pool.members[0]!.address, memory);
    console.log(`  raw TCP ${round(limit.tcp)} MB/s, HTTPS PUT ${round(limit.https)} MB/s`);

    const vm = (await call('VM.create', vmRecord('bench', { memory, vcpus: 2 }))) as string;
    await call('VM.start_on', vm, a, false, false);
    // the guest must be up (its agent reporting) before it may move
    for (let i = 0; (await call('VM.get_guest_metrics', vm)) === NULL; i++) {
      if (i > 3000) throw new Error('the guest agent never reported');
      await new Promise((r) => setTimeout(r, 10));
    }
    let at = a;
    const migrate = async (dirtyMBps: number): Promise<Logged & { callMs: number }> => {
      await call('VM.remove_from_other_config', vm, 'simulator_dirty_rate');
      await call('VM.add_to_other_config', vm, 'simulator_dirty_rate', String(Math.round(dirtyMBps * MB)));
      const to = at === a ? b : a;
      const t0 = performance.now();
      await call('VM.pool_migrate', vm, to, { live: 'true' });
      const callMs = performance.now() - t0;
      const lines = (await readFile(join(stateOf(at), 'migrations.log'), 'utf8')).trim().split('\n');
      at = to;
      return { ...(JSON.parse(lines.at(-1)!) as Logged), callMs };
    };

    const idle = await migrate(0);
    const copyMs = idle.rounds.reduce((n, r) => n + r.ms, 0);
    const vmRate = memory / MB / (idle.callMs / 1000);
    const wireRate = idle.bytes / MB / (copyMs / 1000);
    console.log(
      `migration of ${memoryMiB} MiB, guest idle: ${round(idle.callMs / 1000, 2)} s for the call, ${round(vmRate)} MB/s ` +
        `(${round(vmRate / limit.tcp, 3)} of raw TCP, ${round(vmRate / limit.https, 3)} of HTTPS); the copy itself ${round(wireRate)} MB/s; downtime ${round(idle.downtimeMs)} ms`,
    );

    const byRate: Record<string, unknown> = {};
    for (const rate of [0, 50, 200]) {
      const m = await migrate(rate);
      const live = m.rounds.filter((r) => !r.final);
      const last = m.rounds.find((r) => r.final)!;
      console.log(
        `dirty ${String(rate).padStart(3)} MB/s: ${live.length} live rounds (${live.map((r) => r.pages).join(', ')} pages), ` +
          `last ${last.pages} pages; ${round(m.bytes / MiB)} MiB sent at ${round(m.bytes / MB / (m.rounds.reduce((n, r) => n + r.ms, 0) / 1000))} MB/s; ` +
          `downtime ${round(m.downtimeMs)} ms; total ${round(m.totalMs / 1000, 2)} s`,
      );
      const copy = m.bytes / MB / (m.rounds.reduce((n, r) => n + r.ms, 0) / 1000);
      byRate[String(rate)] = {
        copy_mbps: round(copy),
        rounds: m.rounds.map((r) => ({ pages: r.pages, bytes: r.bytes, ms: round(r.ms), final: r.final })),
        bytes: m.bytes,
        downtime_ms: round(m.downtimeMs),
        total_ms: round(m.totalMs),
        call_ms: round(m.callMs),
      };
    }
    await call('VM.hard_shutdown', vm);

    // Storage motion: a running VM's disk from a's local SR to b's.
    const localSr = async (host: string) => {
      const pbds = (await call('PBD.get_all_records')) as Record<
        string,
        { host: string; SR: string; device_config: Record<string, string> }
      >;
      for (const p of Object.values(pbds)) if (p.host === host && (await call('SR.get_type', p.SR)) === 'ext') return p;
      throw new Error(`no local SR on ${host}`);
    };
    const [fromPbd, toPbd] = [await localSr(a), await localSr(b)];
    const disk = (await call('VDI.create', vdiRecord(fromPbd.SR, diskMiB * MiB, 'bench disk'))) as string;
    console.log(`storage motion: filling a ${diskMiB} MiB disk`);
    await fillDisk(pool.coordinator.url, s, disk, diskMiB * MiB);
    const srDir = join(fromPbd.device_config.device!, (await call('SR.get_uuid', fromPbd.SR)) as string);
    const vhdFile = join(srDir, `${(await call('VDI.get_location', disk)) as string}.vhd`);
    const plain = await fileCopy(vhdFile, srDir);
    console.log(`  plain file copy of its VHD (${round(plain.bytes / MiB)} MiB): ${round(plain.mbps)} MB/s`);
    const mover = (await call('VM.create', vmRecord('bench sxm', { memory: 256 * MiB }))) as string;
    await call('VBD.create', vbdRecord(mover, disk));
    await call('VM.start_on', mover, a, false, false);
    for (let i = 0; (await call('VM.get_guest_metrics', mover)) === NULL; i++) {
      if (i > 3000) throw new Error('the guest agent never reported');
      await new Promise((r) => setTimeout(r, 10));
    }
    const [mgmt] = Object.values(
      (await call('PIF.get_all_records')) as Record<string, { host: string; management: boolean; network: string }>,
    ).filter((p) => p.host === b && p.management);
    const dest = await call('host.migrate_receive', b, mgmt!.network, {});
    const t1 = performance.now();
    await call('VM.migrate_send', mover, dest, true, { [disk]: toPbd.SR }, {}, {}, {});
    const sxmCallMs = performance.now() - t1;
    const sxmLines = (await readFile(join(stateOf(a), 'migrations.log'), 'utf8')).trim().split('\n');
    const sxm = JSON.parse(sxmLines.at(-1)!) as Logged & {
      disks: { bytes: number; copyMs: number; virtualSize: number; readWaitMs: number; sendMs: number }[];
    };
    const [copied] = sxm.disks;
    const sxmRate = copied!.bytes / MB / (copied!.copyMs / 1000);
    const sxmCallRate = copied!.virtualSize / MB / (sxmCallMs / 1000);
    console.log(
      `storage motion of ${diskMiB} MiB: the copy ${round(sxmRate)} MB/s (${round(sxmRate / plain.mbps, 3)} of the file copy); ` +
        `the call ${round(sxmCallMs / 1000, 2)} s, ${round(sxmCallRate)} MB/s; the VM's downtime ${round(sxm.downtimeMs)} ms\n` +
        `  of the copy's ${round(copied!.copyMs)} ms: ${round(copied!.readWaitMs)} ms waiting for the source's reads, ${round(copied!.sendMs)} ms handing pieces to the connection`,
    );
    await call('VM.hard_shutdown', mover);

    // A small VM with its disk: within the pool (a to b), then to the other pool (b to c).
    const small = (await call('VM.create', vmRecord('bench small', { memory: 256 * MiB }))) as string;
    const smallDisk = (await call('VDI.create', vdiRecord(fromPbd.SR, 64 * MiB, 'bench small disk'))) as string;
    await fillDisk(pool.coordinator.url, s, smallDisk, 64 * MiB);
    await call('VBD.create', vbdRecord(small, smallDisk));
    await call('VM.start_on', small, a, false, false);
    for (let i = 0; (await call('VM.get_guest_metrics', small)) === NULL; i++) {
      if (i > 3000) throw new Error('the guest agent never reported');
      await new Promise((r) => setTimeout(r, 10));
    }
    const lastLine = async (dir: string) =>
      JSON.parse((await readFile(join(dir, 'migrations.log'), 'utf8')).trim().split('\n').at(-1)!) as Logged;
    const within = await call('host.migrate_receive', b, mgmt!.network, {});
    await call('VM.migrate_send', small, within, true, { [smallDisk]: toPbd.SR }, {}, {}, {});
    const intra = await lastLine(stateOf(a));
    const [movedDisk] = (await Promise.all(
      ((await call('VM.get_VBDs', small)) as string[]).map((v) => call('VBD.get_VDI', v)),
    )) as string[];
    const sc = await login(other.url, PASSWORD);
    const callC = (method: string, ...params: unknown[]) => jsonCall(other.url, method, [sc, ...params]);
    const [c] = (await callC('host.get_all')) as string[];
    const cPifs = (await callC('PIF.get_all_records')) as Record<string, { management: boolean; network: string }>;
    const cNet = Object.values(cPifs).find((p) => p.management)!.network;
    const cPbds = (await callC('PBD.get_all_records')) as Record<string, { SR: string }>;
    let cSr = '';
    for (const p of Object.values(cPbds)) if ((await callC('SR.get_type', p.SR)) === 'ext') cSr = p.SR;
    const smallUuid = (await call('VM.get_uuid', small)) as string;
    const across = await callC('host.migrate_receive', c, cNet, {});
    await call('VM.migrate_send', small, across, true, { [movedDisk!]: cSr }, {}, {}, {});
    const cross = await lastLine(stateOf(b));
    console.log(
      `a small VM (256 MiB, a 64 MiB disk) with its disk: downtime ${round(intra.downtimeMs)} ms within the pool, ` +
        `${round(cross.downtimeMs)} ms to another pool`,
    );
    await callC('VM.hard_shutdown', await callC('VM.get_by_uuid', smallUuid));

    const after = await limits(pool.members[0]!.address, memory);
    console.log(`limits again after the migrations: raw TCP ${round(after.tcp)} MB/s, HTTPS PUT ${round(after.https)} MB/s`);
    console.log(
      JSON.stringify({
        bench: 'migrate',
        memory_mib: memoryMiB,
        limit: { tcp: round(limit.tcp), https: round(limit.https), unit: 'MB/s' },
        limit_after: { tcp: round(after.tcp), https: round(after.https), unit: 'MB/s' },
        migration: {
          value: round(vmRate),
          unit: 'MB/s',
          ratio_tcp: round(vmRate / limit.tcp, 3),
          ratio_https: round(vmRate / limit.https, 3),
          copy: round(wireRate),
          downtime_ms: round(idle.downtimeMs),
        },
        dirty_rates: byRate,
        downtime_aim_ms: { at_50: 100 },
        storage_motion: {
          disk_mib: diskMiB,
          value: round(sxmRate),
          unit: 'MB/s',
          limit_file_copy: round(plain.mbps),
          ratio_file_copy: round(sxmRate / plain.mbps, 3),
          call_ms: round(sxmCallMs),
          call_mbps: round(sxmCallRate),
          downtime_ms: round(sxm.downtimeMs),
        },
        small_vm_downtime_ms: { within_pool: round(intra.downtimeMs), cross_pool: round(cross.downtimeMs) },
      }),
    );
  } finally {
    await Promise.all(hosts.map((h) => stopXapi(h)));
  }
}
