// `npm run bench -- storage [--size-mib N]`: VDI streaming and coalesce throughput.
//
// A dynamic VHD of N MiB (default 1024) with 60% of its 2 MiB blocks holding random data is
// exported raw and as VHD (each streamed to a file), and both exports are imported again into
// fresh dynamic VHDs. The limit beside them, in the same run and on the same files: copying the
// same raw bytes with fs.copyFile and with a plain stream pipeline — the import/export paths move
// the same bytes plus the VHD bookkeeping, so a plain copy is what they can at best approach.
//
// Coalesce: a child (differencing) rewriting half of the blocks is coalesced into a copy of the
// source disk with coalesceInto, beside qemu-img commit of the same data on an identical parent.
// qemu's vpc driver cannot open differencing VHDs as overlays (it reads them as standalone disks,
// so `qemu-img commit -f vpc child.vhd` fails with "Image does not have a backing file"); the
// qemu figure therefore commits a qcow2 overlay holding the same writes into the vpc parent.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { coalesceInto, createDifferencing, createDynamic, open } from '../src/storage/vhd/index.js';
import { exportRaw, exportVhd, importRaw, importVhd } from '../src/storage/vhd/stream.js';

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

    // Imports into fresh dynamic VHDs (the target is fresh, so raw import may skip zeros).
    const rawDst = await createDynamic(f('import-raw.vhd'), size);
    const rawImportMs = await timed(() =>
      importRaw(createReadStream(f('export.raw')), { write: (o, d) => rawDst.write(o, d) }, { size, skipZeros: true }),
    );
    const vhdDst = await createDynamic(f('import-vhd.vhd'), size);
    const vhdImportMs = await timed(() =>
      importVhd(createReadStream(f('export.vhd')), { size, write: (o, d) => vhdDst.write(o, d) }),
    );
    // Spot-check that the imports hold the source's data (a fast benchmark of a wrong result is worthless).
    for (const b of [0, Math.floor(blocks / 2), blocks - 1]) {
      const want = await src.read(b * BLOCK, BLOCK);
      if (!want.equals(await rawDst.read(b * BLOCK, BLOCK)) || !want.equals(await vhdDst.read(b * BLOCK, BLOCK))) {
        throw new Error(`import mismatch in block ${b}`);
      }
    }
    await rawDst.close();
    await vhdDst.close();
    await src.close();

    const copyRate = mbps(size, copyFileMs);
    const pipeRate = mbps(size, pipeMs);
    const figure = (bytes: number, ms: number) => {
      const v = mbps(bytes, ms);
      return { value: round(v), unit: 'MB/s', limit: round(copyRate), ratio: round(v / copyRate, 3), ratio_to_stream_copy: round(v / pipeRate, 3) };
    };
    const figures = {
      raw_export: figure(size, rawExportMs),
      vhd_export: figure(vhdLength, vhdExportMs),
      raw_import: figure(size, rawImportMs),
      vhd_import: figure(vhdLength, vhdImportMs),
    };
    console.log(`plain copy:   fs.copyFile ${round(copyRate)} MB/s, stream pipeline ${round(pipeRate)} MB/s (${sizeMiB} MiB)`);
    const line = (name: string, x: { value: number; ratio: number; ratio_to_stream_copy: number }, bytes: number) =>
      console.log(`${name.padEnd(13)} ${String(x.value).padStart(8)} MB/s  (${(bytes / MiB).toFixed(0)} MiB)  ratio to copyFile ${x.ratio}, to stream copy ${x.ratio_to_stream_copy}`);
    line('raw export:', figures.raw_export, size);
    line('VHD export:', figures.vhd_export, vhdLength);
    line('raw import:', figures.raw_import, size);
    line('VHD import:', figures.vhd_import, vhdLength);

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
      const mk = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'parent.vhd', '-F', 'vpc', overlay], { cwd: theirs, encoding: 'utf8' });
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
      const cmp = spawnSync('qemu-img', ['compare', '-q', '-f', 'vpc', '-F', 'vpc', path.join(ours, 'parent.vhd'), path.join(theirs, 'parent.vhd')]);
      if (cmp.status !== 0) throw new Error('coalesced parents differ from qemu-img commit result');
    }
    const coalesceRate = mbps(coalesceBytes, coalesceMs);
    const qemuRate = qemuMs === null ? null : mbps(coalesceBytes, qemuMs);
    console.log(
      `coalesce:     ${round(coalesceRate)} MB/s (${(coalesceBytes / MiB).toFixed(0)} MiB)` +
        (qemuRate === null ? ', qemu-img absent' : `, qemu-img commit ${round(qemuRate)} MB/s, ratio ${round(coalesceRate / qemuRate, 3)}`),
    );

    console.log(
      JSON.stringify({
        bench: 'storage',
        size_mib: sizeMiB,
        plain_copy: { copyfile: round(copyRate), stream_pipeline: round(pipeRate), unit: 'MB/s' },
        ...figures,
        coalesce: {
          value: round(coalesceRate), unit: 'MB/s',
          limit: qemuRate === null ? null : round(qemuRate),
          ratio: qemuRate === null ? null : round(coalesceRate / qemuRate, 3),
        },
      }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
