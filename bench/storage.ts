// `npm run bench -- storage [--size-mib N] [--no-http]`: VDI streaming and coalesce throughput.
//
// A dynamic VHD of N MiB (default 1024) with 60% of its 2 MiB blocks holding random data is
// exported raw and as VHD (each streamed to a file), and both exports are imported again into
// fresh dynamic VHDs. The limit beside them, in the same run and on the same files: copying the
// same raw bytes with fs.copyFile and with a plain stream pipeline — the import/export paths move
// the same bytes plus the VHD bookkeeping, so a plain copy is what they can at best approach.
// (copyFile + fsync is printed as well: a finished import is durable, a plain copy is not.)
// Module-level imports are timed up to and including close(), and run twice: with the default
// crash-consistent allocation (two datasyncs per new block) and with Vhd.open's deferSync option
// (one fsync at close), which is what an import may use.
//
// End to end over HTTP (skipped with --no-http): a real `xapi serve` process (harness.startXapi:
// its own 127.x address, a temp state dir, ended by PID) and its local file SR. VDI A is made
// with VDI.create (JSON-RPC); then, each timed from the request to its completion:
//   http_raw_import  PUT /import_raw_vdi?vdi=A&format=raw with the source's raw bytes (the same
//                    export.raw file). Import answers 200 before reading the body; it is complete
//                    when the task named in the task-id header has status success (polled).
//   http_raw_export  GET /export_raw_vdi?vdi=A&format=raw, written to a file.
//   http_vhd_export  GET /export_raw_vdi?vdi=A&format=vhd, written to a file.
//   http_vhd_import  PUT that VHD into a fresh VDI B (format=vhd), until its task succeeds.
// Raw import into an existing VDI writes the zero blocks too (xapi only skips zeros for a VDI
// the import itself makes), so A is fully allocated and its VHD export is ~1 GiB + bitmaps.
// Untimed checks: A's raw export and B's raw export both hash equal to the source.
// BENCH_DEBUG=1 traces the HTTP steps on stderr.
//
// Coalesce: a child (differencing) rewriting half of the blocks is coalesced into a copy of the
// source disk with coalesceInto, beside qemu-img commit of the same data on an identical parent.
// qemu's vpc driver cannot open differencing VHDs as overlays (it reads them as standalone disks,
// so `qemu-img commit -f vpc child.vhd` fails with "Image does not have a backing file"); the
// qemu figure therefore commits a qcow2 overlay holding the same writes into the vpc parent.
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open as fsOpen, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { coalesceInto, createDifferencing, createDynamic, open } from '../src/storage/vhd/index.js';
import { exportRaw, exportVhd, importRaw, importVhd } from '../src/storage/vhd/stream.js';
import { jsonCall, login } from '../test/integration/client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from '../test/integration/harness.js';

const MiB = 1024 * 1024;
const BLOCK = 2 * MiB;

function sizeArg(args: string[]): number {
  const i = args.indexOf('--size-mib');
  if (i < 0) return 1024;
  const n = Number(args[i + 1]);
  if (!Number.isInteger(n) || n < 4 || n % 2 !== 0) throw new Error('--size-mib wants an even integer >= 4');
  return n;
}

/** Milliseconds taken by fn. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

function haveQemu(): boolean {
  return spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
}

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(c as Buffer);
  return h.digest('hex');
}

const debug = (m: string) => {
  if (process.env['BENCH_DEBUG']) process.stderr.write(`[storage] ${m}\n`);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls a task until it leaves pending; throws with its error_info if it did not succeed. */
async function awaitTask(url: string, session: string, task: string): Promise<void> {
  for (;;) {
    const status = (await jsonCall(url, 'task.get_status', [session, task])) as string;
    if (status === 'success') return;
    if (status !== 'pending' && status !== 'cancelling') {
      const err = await jsonCall(url, 'task.get_error_info', [session, task]);
      throw new Error(`task ${task} ${status}: ${JSON.stringify(err)}`);
    }
    await sleep(10);
  }
}

/**
 * PUT a file as the body over a plain socket, as xe and XenCenter do; resolves with the task-id
 * once the whole body is written and the answer is in. The caller closes the socket when the task
 * is done. (Node's http client is not used for this: the 200 with Content-Length 0 that import
 * sends before reading the body completes the response, and on a keep-alive socket Node's client
 * then stops delivering 'drain' to the still-uploading request — the upload stalls for good; on a
 * non-keep-alive one it half-closes the socket.)
 */
async function putFile(url: string, file: string): Promise<{ task: string; socket: net.Socket }> {
  const u = new URL(url);
  const length = (await stat(file)).size;
  const socket = net.connect(Number(u.port), u.hostname);
  socket.setNoDelay(true);
  try {
    await once(socket, 'connect');
    const answer = new Promise<string>((resolve, reject) => {
      let head = '';
      const onData = (d: Buffer) => {
        head += d.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        socket.off('data', onData);
        const lines = head.slice(0, end).split('\r\n');
        const status = lines[0]!.split(' ')[1];
        const task =
          lines
            .find((l) => /^task-id:/i.test(l))
            ?.slice('task-id:'.length)
            .trim() ?? '';
        debug(`PUT answered ${status}, task ${task}`);
        if (status !== '200') reject(new Error(`PUT ${u.pathname}: ${lines[0]}`));
        else if (!task) reject(new Error(`PUT ${u.pathname}: no task-id header`));
        else resolve(task);
        socket.resume();
      };
      socket.on('data', onData);
      socket.once('error', reject);
      socket.once('close', () => reject(new Error(`PUT ${u.pathname}: connection closed before the answer`)));
    });
    answer.catch(() => undefined); // awaited below
    socket.write(`PUT ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Length: ${length}\r\n\r\n`);
    for await (const chunk of createReadStream(file, { highWaterMark: 2 * MiB })) {
      if (!socket.write(chunk as Buffer)) await once(socket, 'drain');
    }
    debug('PUT body sent');
    return { task: await answer, socket };
  } catch (e) {
    socket.destroy();
    throw e;
  }
}

/** GET into a file; resolves with the task-id and the byte count. */
function getFile(url: string, file: string): Promise<{ task: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`GET ${url}: HTTP ${res.statusCode}`));
        return;
      }
      const task = String(res.headers['task-id'] ?? '');
      let bytes = 0;
      res.on('data', (c: Buffer) => (bytes += c.length));
      pipeline(res, createWriteStream(file)).then(() => resolve({ task, bytes }), reject);
    });
    req.on('error', reject);
  });
}

interface HttpFigures {
  rawImportMs: number;
  rawExportMs: number;
  vhdExportMs: number;
  vhdImportMs: number;
  vhdBytes: number;
}

/** The end-to-end HTTP figures against a real xapi process (see the header comment). */
async function overHttp(dir: string, rawFile: string, size: number, expectHash: string): Promise<HttpFigures> {
  let xapi: XapiProcess | undefined;
  try {
    xapi = await startXapi({ args: ['--log-level', 'warn'] });
    const url = xapi.url;
    const s = await login(url, PASSWORD);
    const pool = ((await jsonCall(url, 'pool.get_all', [s])) as string[])[0]!;
    const sr = (await jsonCall(url, 'pool.get_default_SR', [s, pool])) as string;
    const newVdi = async (name: string) =>
      (await jsonCall(url, 'VDI.create', [
        s,
        {
          SR: sr,
          virtual_size: size,
          name_label: name,
          name_description: 'bench',
          type: 'user',
          sharable: false,
          read_only: false,
          other_config: {},
          xenstore_data: {},
          sm_config: {},
          tags: [],
        },
      ])) as string;
    const q = (vdi: string, format: string) =>
      `${url}/${format.startsWith('import') ? 'import_raw_vdi' : 'export_raw_vdi'}?session_id=${encodeURIComponent(s)}&vdi=${encodeURIComponent(vdi)}&format=${format.split(':')[1]}`;
    const f = (name: string) => path.join(dir, name);

    const a = await newVdi('bench-A');
    debug(`xapi at ${url}, VDI A ${a}`);
    const rawImportMs = await timed(async () => {
      const { task, socket } = await putFile(q(a, 'import:raw'), rawFile);
      try {
        await awaitTask(url, s, task);
      } finally {
        socket.destroy();
      }
    });
    debug('raw import done');
    const rawExportMs = await timed(async () => {
      const { task, bytes } = await getFile(q(a, 'export:raw'), f('http-export.raw'));
      if (bytes !== size) throw new Error(`raw export: ${bytes} bytes, expected ${size}`);
      await awaitTask(url, s, task);
    });
    let vhdBytes = 0;
    debug('raw export done');
    const vhdExportMs = await timed(async () => {
      const { task, bytes } = await getFile(q(a, 'export:vhd'), f('http-export.vhd'));
      vhdBytes = bytes;
      await awaitTask(url, s, task);
    });
    if ((await sha256(f('http-export.raw'))) !== expectHash) throw new Error('HTTP raw import/export: content differs from the source');
    await rm(f('http-export.raw'));
    const b = await newVdi('bench-B');
    debug('VHD export done and raw content checked');
    const vhdImportMs = await timed(async () => {
      const { task, socket } = await putFile(q(b, 'import:vhd'), f('http-export.vhd'));
      try {
        await awaitTask(url, s, task);
      } finally {
        socket.destroy();
      }
    });
    await rm(f('http-export.vhd'));
    const check = await getFile(q(b, 'export:raw'), f('http-check.raw'));
    await awaitTask(url, s, check.task);
    if ((await sha256(f('http-check.raw'))) !== expectHash) throw new Error('HTTP VHD import: content differs from the source');
    await rm(f('http-check.raw'));
    return { rawImportMs, rawExportMs, vhdExportMs, vhdImportMs, vhdBytes };
  } finally {
    if (xapi) await stopXapi(xapi);
  }
}

/** Deterministic 60% selection, spread over the disk rather than one contiguous run. */
const filled = (block: number): boolean => (block * 7) % 10 < 6;

export async function run(args: string[]): Promise<void> {
  const sizeMiB = sizeArg(args);
  const size = sizeMiB * MiB;
  const blocks = size / BLOCK;
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-storage-'));
  try {
    const f = (name: string): string => path.join(dir, name);

    // Source disk: random data (incompressible, nothing for a zero check to skip) in 60% of blocks.
    const src = await createDynamic(f('src.vhd'), size);
    const noise = randomBytes(BLOCK);
    let dataBlocks = 0;
    for (let b = 0; b < blocks; b++) {
      if (!filled(b)) continue;
      noise.writeUInt32BE(b, 0); // blocks differ from each other
      await src.write(b * BLOCK, noise);
      dataBlocks++;
    }
    console.log(`source: ${sizeMiB} MiB dynamic VHD, ${dataBlocks}/${blocks} blocks with data`);

    // Exports (to files, so the figures include the write side like a real download would).
    const rawExportMs = await timed(() => pipeline(exportRaw(src), createWriteStream(f('export.raw'))));
    const vhdStream = exportVhd(src);
    const vhdLength = vhdStream.length;
    const vhdExportMs = await timed(() => pipeline(vhdStream, createWriteStream(f('export.vhd'))));
    if ((await stat(f('export.vhd'))).size !== vhdLength) throw new Error('VHD export length mismatch');

    // The limit: the same raw bytes copied plainly.
    const copyFileMs = await timed(() => copyFile(f('export.raw'), f('copy1.raw')));
    const pipeMs = await timed(() => pipeline(createReadStream(f('export.raw')), createWriteStream(f('copy2.raw'))));

    const copyFsyncMs = await timed(async () => {
      await copyFile(f('export.raw'), f('copy3.raw'));
      const fh = await fsOpen(f('copy3.raw'), 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
    for (const c of ['copy1.raw', 'copy2.raw', 'copy3.raw']) await rm(f(c));

    // Imports into fresh dynamic VHDs (the target is fresh, so raw import may skip zeros), timed
    // through close() (which is where deferSync makes the data durable), in both sync modes.
    const imports = async (deferSync: boolean) => {
      const tag = deferSync ? 'defer' : 'strict';
      const open1 = async (name: string) => {
        await (await createDynamic(f(name), size)).close();
        return open(f(name), { deferSync });
      };
      const rawDst = await open1(`import-raw-${tag}.vhd`);
      const rawMs = await timed(async () => {
        await importRaw(createReadStream(f('export.raw')), { write: (o, d) => rawDst.write(o, d) }, { size, skipZeros: true });
        await rawDst.close();
      });
      const vhdDst = await open1(`import-vhd-${tag}.vhd`);
      const vhdMs = await timed(async () => {
        await importVhd(createReadStream(f('export.vhd')), { size, write: (o, d) => vhdDst.write(o, d) });
        await vhdDst.close();
      });
      // Spot-check that the imports hold the source's data (a fast benchmark of a wrong result is worthless).
      const r1 = await open(f(`import-raw-${tag}.vhd`), { readOnly: true });
      const r2 = await open(f(`import-vhd-${tag}.vhd`), { readOnly: true });
      for (const b of [0, 1, 2, Math.floor(blocks / 2), blocks - 1]) {
        const want = await src.read(b * BLOCK, BLOCK);
        if (!want.equals(await r1.read(b * BLOCK, BLOCK)) || !want.equals(await r2.read(b * BLOCK, BLOCK))) {
          throw new Error(`import (${tag}) mismatch in block ${b}`);
        }
      }
      await r1.close();
      await r2.close();
      await rm(f(`import-raw-${tag}.vhd`));
      await rm(f(`import-vhd-${tag}.vhd`));
      return { rawMs, vhdMs };
    };
    const strict = await imports(false);
    const deferred = await imports(true);
    const rawImportMs = strict.rawMs;
    const vhdImportMs = strict.vhdMs;
    await src.close();
    const srcHash = await sha256(f('export.raw'));

    const copyRate = mbps(size, copyFileMs);
    const pipeRate = mbps(size, pipeMs);
    const figure = (bytes: number, ms: number) => {
      const v = mbps(bytes, ms);
      return {
        value: round(v),
        unit: 'MB/s',
        limit: round(copyRate),
        ratio: round(v / copyRate, 3),
        ratio_to_stream_copy: round(v / pipeRate, 3),
      };
    };
    const figures = {
      raw_export: figure(size, rawExportMs),
      vhd_export: figure(vhdLength, vhdExportMs),
      raw_import: figure(size, rawImportMs),
      vhd_import: figure(vhdLength, vhdImportMs),
      raw_import_defer_sync: figure(size, deferred.rawMs),
      vhd_import_defer_sync: figure(vhdLength, deferred.vhdMs),
    };
    const copyFsyncRate = mbps(size, copyFsyncMs);
    console.log(
      `plain copy:   fs.copyFile ${round(copyRate)} MB/s, stream pipeline ${round(pipeRate)} MB/s, copyFile+fsync ${round(copyFsyncRate)} MB/s (${sizeMiB} MiB)`,
    );
    const line = (name: string, x: { value: number; ratio: number; ratio_to_stream_copy: number }, bytes: number) =>
      console.log(
        `${name.padEnd(22)} ${String(x.value).padStart(8)} MB/s  (${(bytes / MiB).toFixed(0)} MiB)  ratio to copyFile ${x.ratio}, to stream copy ${x.ratio_to_stream_copy}`,
      );
    line('raw export:', figures.raw_export, size);
    line('VHD export:', figures.vhd_export, vhdLength);
    line('raw import:', figures.raw_import, size);
    line('VHD import:', figures.vhd_import, vhdLength);
    line('raw import deferSync:', figures.raw_import_defer_sync, size);
    line('VHD import deferSync:', figures.vhd_import_defer_sync, vhdLength);

    // End to end over HTTP against a real xapi process.
    let httpFigures: Record<string, ReturnType<typeof figure> & { bytes: number }> = {};
    if (!args.includes('--no-http')) {
      const h = await overHttp(dir, f('export.raw'), size, srcHash);
      const hf = (bytes: number, ms: number) => ({ ...figure(bytes, ms), bytes });
      httpFigures = {
        http_raw_import: hf(size, h.rawImportMs),
        http_raw_export: hf(size, h.rawExportMs),
        http_vhd_export: hf(h.vhdBytes, h.vhdExportMs),
        http_vhd_import: hf(h.vhdBytes, h.vhdImportMs),
      };
      console.log('over HTTP (xapi process, local file SR):');
      line('  raw import:', httpFigures.http_raw_import!, size);
      line('  raw export:', httpFigures.http_raw_export!, size);
      line('  VHD export:', httpFigures.http_vhd_export!, h.vhdBytes);
      line('  VHD import:', httpFigures.http_vhd_import!, h.vhdBytes);
    }

    // Coalesce: parent = copy of the source, child rewrites every other block with a constant
    // byte (so qemu-io can write exactly the same data into the qcow2 overlay).
    const ours = f('ours');
    const theirs = f('qemu');
    await mkdir(ours);
    await mkdir(theirs);
    await copyFile(f('src.vhd'), path.join(ours, 'parent.vhd'));
    const child = await createDifferencing(path.join(ours, 'child.vhd'), path.join(ours, 'parent.vhd'));
    const rewritten: number[] = [];
    for (let b = 0; b < blocks; b += 2) {
      await child.write(b * BLOCK, Buffer.alloc(BLOCK, (b & 0xff) | 1));
      rewritten.push(b);
    }
    await child.close();
    const coalesceBytes = rewritten.length * BLOCK;
    let qemuMs: number | null = null;
    if (haveQemu()) {
      // The identical parent, by cp of the same file, under the same name in a second directory.
      await copyFile(path.join(ours, 'parent.vhd'), path.join(theirs, 'parent.vhd'));
      const overlay = path.join(theirs, 'child.qcow2');
      const mk = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'parent.vhd', '-F', 'vpc', overlay], {
        cwd: theirs,
        encoding: 'utf8',
      });
      if (mk.status !== 0) throw new Error(`qemu-img create: ${mk.stderr}`);
      const cmds = rewritten.flatMap((b) => ['-c', `write -P ${(b & 0xff) | 1} ${b * BLOCK} ${BLOCK}`]);
      const io = spawnSync('qemu-io', ['-f', 'qcow2', ...cmds, overlay], { cwd: theirs, encoding: 'utf8', maxBuffer: 64 * MiB });
      if (io.status !== 0) throw new Error(`qemu-io: ${io.stderr}`);
      const t = performance.now();
      const c = spawnSync('qemu-img', ['commit', '-q', '-f', 'qcow2', overlay], { cwd: theirs, encoding: 'utf8' });
      qemuMs = performance.now() - t;
      if (c.status !== 0) throw new Error(`qemu-img commit: ${c.stderr}`);
    }
    const childRo = await open(path.join(ours, 'child.vhd'), { readOnly: true });
    const parentRw = await open(path.join(ours, 'parent.vhd'));
    const coalesceMs = await timed(() => coalesceInto(childRo, parentRw));
    await parentRw.close();
    await childRo.close();
    if (qemuMs !== null) {
      // Both parents must now hold the same disk.
      const cmp = spawnSync('qemu-img', [
        'compare',
        '-q',
        '-f',
        'vpc',
        '-F',
        'vpc',
        path.join(ours, 'parent.vhd'),
        path.join(theirs, 'parent.vhd'),
      ]);
      if (cmp.status !== 0) throw new Error('coalesced parents differ from qemu-img commit result');
    }
    const coalesceRate = mbps(coalesceBytes, coalesceMs);
    const qemuRate = qemuMs === null ? null : mbps(coalesceBytes, qemuMs);
    console.log(
      `${'coalesce:'.padEnd(22)} ${round(coalesceRate)} MB/s (${(coalesceBytes / MiB).toFixed(0)} MiB)` +
        (qemuRate === null ? ', qemu-img absent' : `, qemu-img commit ${round(qemuRate)} MB/s, ratio ${round(coalesceRate / qemuRate, 3)}`),
    );

    console.log(
      JSON.stringify({
        bench: 'storage',
        size_mib: sizeMiB,
        plain_copy: { copyfile: round(copyRate), stream_pipeline: round(pipeRate), copyfile_fsync: round(copyFsyncRate), unit: 'MB/s' },
        ...figures,
        ...httpFigures,
        coalesce: {
          value: round(coalesceRate),
          unit: 'MB/s',
          limit: qemuRate === null ? null : round(qemuRate),
          ratio: qemuRate === null ? null : round(coalesceRate / qemuRate, 3),
        },
      }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
