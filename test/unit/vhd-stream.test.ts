// Streaming import/export of VHD chains (src/storage/vhd/stream.ts), judged against Vhd.read and,
// where it can read the files, qemu-img as an independent implementation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDynamic, createDifferencing, open } from '../../src/storage/vhd/index.js';
import { ensureJudges } from './vhd-judge.js';
import { ImportError, exportRaw, exportVhd, importRaw, importVhd, vhdStreamSize } from '../../src/storage/vhd/stream.js';

const MiB = 1024 * 1024;
const BLOCK = 2 * MiB;
let dir = '';

before(() => {
  ensureJudges(); // never skip: install the outside judges, or fail loudly
  dir = mkdtempSync(path.join(tmpdir(), 'vhd-stream-test-'));
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const qemu = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8' });
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const p = (name: string): string => path.join(dir, name);

/** Deterministic, offset-dependent bytes so misplaced data is detected. */
function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed * 13 + (i >> 9)) & 0xff || 1;
  return b;
}

async function toFile(s: Readable, file: string): Promise<number> {
  await pipeline(s, createWriteStream(file));
  return statSync(file).size;
}

async function sha256Of(s: Readable): Promise<string> {
  const h = createHash('sha256');
  for await (const c of s) h.update(c as Buffer);
  return h.digest('hex');
}

/** An in-memory disk, recording what was written. */
function memTarget(size: number, init?: Buffer) {
  const mem = init ? Buffer.from(init) : Buffer.alloc(size);
  const writes: Array<[number, number]> = [];
  return {
    mem,
    writes,
    size,
    async write(offset: number, data: Buffer): Promise<void> {
      assert.ok(offset >= 0 && offset + data.length <= size, `write [${offset}, +${data.length}) beyond ${size}`);
      data.copy(mem, offset);
      writes.push([offset, data.length]);
    },
  };
}

/**
 * A 3-deep chain over 24 MiB (12 blocks): base has blocks 0,1,3,5; mid rewrites parts of 1 and 5
 * (unaligned) and adds 7; leaf touches 3 and adds 10. Block 11 is never allocated.
 */
async function buildChain(sub: string): Promise<{ base: string; mid: string; leaf: string }> {
  const d = p(sub);
  execFileSync('mkdir', ['-p', d]);
  const files = { base: path.join(d, 'base.vhd'), mid: path.join(d, 'mid.vhd'), leaf: path.join(d, 'leaf.vhd') };
  const base = await createDynamic(files.base, 24 * MiB);
  for (const b of [0, 1, 3, 5]) await base.write(b * BLOCK + 4096, pattern(BLOCK - 8192, b));
  await base.close();
  const mid = await createDifferencing(files.mid, files.base);
  await mid.write(1 * BLOCK + 1000, pattern(70000, 21));
  await mid.write(5 * BLOCK + BLOCK - 512, pattern(512, 25));
  await mid.write(7 * BLOCK + 12345, pattern(300000, 27));
  await mid.close();
  const leaf = await createDifferencing(files.leaf, files.mid);
  await leaf.write(3 * BLOCK + 777, pattern(5000, 33));
  await leaf.write(10 * BLOCK, pattern(BLOCK, 40));
  await leaf.close();
  return files;
}

test('exportRaw of a dynamic disk equals Vhd.read, and qemu-img compare agrees', async () => {
  const file = p('dyn.vhd');
  const v = await createDynamic(file, 20 * MiB + 512 * 3); // not a whole number of blocks
  try {
    await v.write(0, pattern(100000, 1));
    await v.write(9 * MiB + 3, pattern(3 * MiB, 2)); // spans blocks 4 and 5
    await v.write(20 * MiB, pattern(1536, 3)); // the partial last block
    const expected = await v.read(0, v.virtualSize);
    const s = exportRaw(v);
    assert.equal(s.length, v.virtualSize);
    const out = p('dyn.raw');
    assert.equal(await toFile(s, out), v.virtualSize);
    assert.equal(sha256(readFileSync(out)), sha256(expected));
    qemu('compare', '-f', 'vpc', '-F', 'raw', file, out);
  } finally {
    await v.close();
  }
});

test('exportRaw of a 3-deep differencing chain equals the chain view', async () => {
  const f = await buildChain('raw-chain');
  const leaf = await open(f.leaf, { readOnly: true });
  try {
    const expected = await leaf.read(0, leaf.virtualSize);
    const expectedFile = p('raw-chain.expected');
    writeFileSync(expectedFile, expected);
    const fractions: number[] = [];
    const out = p('raw-chain.raw');
    await toFile(exportRaw(leaf, { onProgress: (x) => fractions.push(x) }), out);
    assert.equal(sha256(readFileSync(out)), sha256(expected));
    qemu('compare', '-f', 'raw', '-F', 'raw', out, expectedFile);
    // Progress: increasing, ends at 1, not once per byte.
    assert.equal(fractions.at(-1), 1);
    assert.ok(fractions.every((x, i) => i === 0 || x > fractions[i - 1]!));
    assert.ok(fractions.length <= 102);
  } finally {
    await leaf.close();
  }
});

test('exportVhd of a chain: qemu-img info sees the size, qemu-img compare agrees, length is exact', async () => {
  const f = await buildChain('vhd-chain');
  const leaf = await open(f.leaf, { readOnly: true });
  try {
    const expectedFile = p('vhd-chain.expected');
    writeFileSync(expectedFile, await leaf.read(0, leaf.virtualSize));
    const s = exportVhd(leaf);
    assert.equal(s.length, vhdStreamSize(leaf));
    const out = p('vhd-chain.out.vhd');
    assert.equal(await toFile(s, out), s.length);
    // Blocks 0,1,3,5,7,10 are allocated somewhere in the chain: 6 blocks of bitmap + data.
    assert.equal(s.length, 512 + 1024 + 512 + 6 * (512 + BLOCK) + 512);
    const info = JSON.parse(qemu('info', '--output=json', '-f', 'vpc', out)) as { 'virtual-size': number };
    assert.equal(info['virtual-size'], leaf.virtualSize);
    qemu('compare', '-f', 'vpc', '-F', 'raw', out, expectedFile);
    // And our own reader agrees.
    const back = await open(out, { readOnly: true });
    try {
      assert.equal(sha256(await back.read(0, back.virtualSize)), sha256(readFileSync(expectedFile)));
    } finally {
      await back.close();
    }
  } finally {
    await leaf.close();
  }
});

test('delta exportVhd with baseUuid carries only the upper blocks; importVhd onto the base gives the leaf', async () => {
  const f = await buildChain('delta');
  const leaf = await open(f.leaf, { readOnly: true });
  try {
    const base = leaf.parent!.parent!;
    const size = leaf.virtualSize;
    const s = exportVhd(leaf, { baseUuid: base.uuid });
    // Above the base: mid has 1,5,7 and leaf has 3,10.
    assert.equal(s.length, 512 + 1024 + 512 + 5 * (512 + BLOCK) + 512);
    assert.equal(vhdStreamSize(leaf, { baseUuid: base.uuid }), s.length);
    const target = memTarget(size, await base.read(0, size));
    const r = await importVhd(s, target);
    assert.equal(r.virtualSize, size);
    const touched = new Set(target.writes.map(([o]) => Math.floor(o / BLOCK)));
    assert.deepEqual(
      [...touched].sort((a, b) => a - b),
      [1, 3, 5, 7, 10],
    );
    assert.equal(sha256(target.mem), sha256(await leaf.read(0, size)));
    // The leaf as its own base: an empty delta.
    const empty = exportVhd(leaf, { baseUuid: leaf.uuid });
    assert.equal(empty.length, 512 + 1024 + 512 + 512);
    const t2 = memTarget(size);
    await importVhd(empty, t2);
    assert.equal(t2.writes.length, 0);
    assert.throws(() => exportVhd(leaf, { baseUuid: '00000000-0000-0000-0000-000000000000' }), /not in the chain/);
  } finally {
    await leaf.close();
  }
});

test('importVhd of a qemu-img dynamic VHD (random data) into a fresh dynamic VHD', async () => {
  const raw = p('rand.raw');
  const vhd = p('rand-dyn.vhd');
  const data = randomBytes(12 * MiB);
  data.fill(0, 4 * MiB, 6 * MiB + 4096); // a hole qemu leaves unallocated
  writeFileSync(raw, data);
  qemu('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic', raw, vhd);
  const vsize = (JSON.parse(qemu('info', '--output=json', '-f', 'vpc', vhd)) as { 'virtual-size': number })['virtual-size'];
  const dst = await createDynamic(p('rand-import.vhd'), vsize);
  try {
    const r = await importVhd(createReadStream(vhd), { size: dst.virtualSize, write: (o, d) => dst.write(o, d) });
    assert.equal(r.virtualSize, vsize);
    const got = await dst.read(0, vsize);
    assert.ok(got.subarray(0, data.length).equals(data));
    assert.ok(got.subarray(data.length).equals(Buffer.alloc(vsize - data.length)));
    assert.ok(!dst.allocatedBlocks().includes(2), 'the all-zero block stays unallocated');
  } finally {
    await dst.close();
  }
});

test('importVhd of a qemu-img fixed VHD', async () => {
  const raw = p('rand2.raw');
  const vhd = p('rand-fixed.vhd');
  const data = randomBytes(6 * MiB + 4096);
  writeFileSync(raw, data);
  qemu('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=fixed', raw, vhd);
  const vsize = statSync(vhd).size - 512;
  const target = memTarget(vsize);
  const r = await importVhd(createReadStream(vhd, { highWaterMark: 100000 }), target);
  assert.equal(r.virtualSize, vsize);
  assert.ok(target.mem.subarray(0, data.length).equals(data));
  // With the length known up front, an oversized fixed image is refused before any write.
  const small = memTarget(4 * MiB);
  await assert.rejects(
    importVhd(createReadStream(vhd), small, { length: statSync(vhd).size }),
    (e: unknown) => e instanceof ImportError && e.code === 'TOO_LARGE',
  );
  assert.equal(small.writes.length, 0);
});

/** A small dynamic VHD exported by us, as a Buffer, for the error cases. */
async function sampleVhd(): Promise<{ bytes: Buffer; size: number }> {
  const v = await createDynamic(p(`sample-${Math.random().toString(36).slice(2)}.vhd`), 8 * MiB);
  try {
    await v.write(0, pattern(MiB, 5));
    await v.write(6 * MiB, pattern(MiB, 6));
    const chunks: Buffer[] = [];
    for await (const c of exportVhd(v)) chunks.push(c as Buffer);
    return { bytes: Buffer.concat(chunks), size: v.virtualSize };
  } finally {
    await v.close();
  }
}

const isCode =
  (code: string) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof ImportError, `expected ImportError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };

test('importVhd: a truncated VHD is TRUNCATED', async () => {
  const { bytes, size } = await sampleVhd();
  // Cut inside the second block's data, and inside the BAT.
  for (const cut of [bytes.length - 512 - MiB, 1540]) {
    await assert.rejects(importVhd(Readable.from([bytes.subarray(0, cut)]), memTarget(size)), isCode('TRUNCATED'));
  }
  await assert.rejects(importVhd(Readable.from([]), memTarget(size)), isCode('TRUNCATED'));
});

test('importVhd: bad footer checksum or header cookie is BAD_FORMAT; differencing is refused', async () => {
  const { bytes, size } = await sampleVhd();
  const badSum = Buffer.from(bytes);
  badSum[70] = badSum[70]! ^ 0xff; // inside the uuid: checksum no longer matches
  await assert.rejects(importVhd(Readable.from([badSum]), memTarget(size)), isCode('BAD_FORMAT'));
  const badCookie = Buffer.from(bytes);
  badCookie.write('xxsparse', 512, 'latin1');
  await assert.rejects(importVhd(Readable.from([badCookie]), memTarget(size)), isCode('BAD_FORMAT'));
  const f = await buildChain('diff-import');
  await assert.rejects(importVhd(createReadStream(f.leaf), memTarget(24 * MiB)), isCode('BAD_FORMAT'));
  // Neither a dynamic nor a fixed VHD at all.
  await assert.rejects(importVhd(Readable.from([pattern(4096, 1)]), memTarget(size)), isCode('BAD_FORMAT'));
});

test('importVhd: virtual size beyond the target (or maxSize) is TOO_LARGE with nothing written', async () => {
  const { bytes, size } = await sampleVhd();
  const small = memTarget(size - 512);
  await assert.rejects(importVhd(Readable.from([bytes]), small), isCode('TOO_LARGE'));
  assert.equal(small.writes.length, 0);
  const big = memTarget(size);
  await assert.rejects(importVhd(Readable.from([bytes]), big, { maxSize: MiB }), isCode('TOO_LARGE'));
  assert.equal(big.writes.length, 0);
});

test('importVhd: blocks stored out of order in the file are placed by the BAT', async () => {
  const { bytes, size } = await sampleVhd();
  // Swap the two blocks in the file and their BAT entries (BAT at 1536, blocks 0 and 3).
  const blockBytes = 512 + BLOCK;
  const batAt = 1536;
  const e0 = bytes.readUInt32BE(batAt);
  const e3 = bytes.readUInt32BE(batAt + 12);
  const a = bytes.subarray(e0 * 512, e0 * 512 + blockBytes);
  const b = bytes.subarray(e3 * 512, e3 * 512 + blockBytes);
  const swapped = Buffer.concat([bytes.subarray(0, e0 * 512), b, a, bytes.subarray(e3 * 512 + blockBytes)]);
  swapped.writeUInt32BE(e3, batAt);
  swapped.writeUInt32BE(e0, batAt + 12);
  const t = memTarget(size);
  await importVhd(Readable.from([swapped]), t);
  const expected = Buffer.alloc(size);
  pattern(MiB, 5).copy(expected, 0);
  pattern(MiB, 6).copy(expected, 6 * MiB);
  assert.ok(t.mem.equals(expected));
});

test('importRaw: round trip, skipZeros, TOO_LARGE, TRUNCATED and exact:false', async () => {
  const size = 4 * MiB;
  const data = Buffer.alloc(size);
  pattern(70000, 9).copy(data, 65536 * 3 + 100);
  pattern(1000, 8).copy(data, size - 1000);
  // Odd chunking so piece alignment is tested against the disk offset, not the chunk.
  const chunks = (b: Buffer): Buffer[] => {
    const out: Buffer[] = [];
    for (let i = 0; i < b.length; i += 33333) out.push(b.subarray(i, i + 33333));
    return out;
  };
  const t = memTarget(size);
  assert.equal(await importRaw(Readable.from(chunks(data)), t, { size, skipZeros: true }), size);
  assert.ok(t.mem.equals(data));
  // Pieces 3 and 4 (70000 bytes from 196708) plus the last one; contiguous pieces merge.
  assert.deepEqual(t.writes, [
    [3 * 65536, 2 * 65536],
    [size - 65536, 65536],
  ]);
  const full = memTarget(size);
  await importRaw(Readable.from(chunks(data)), full, { size });
  assert.ok(full.mem.equals(data));
  const tooLong = Readable.from([data, Buffer.alloc(1), Buffer.alloc(10)]);
  await assert.rejects(importRaw(tooLong, memTarget(size), { size }), isCode('TOO_LARGE'));
  // The input is left alone (an HTTP handler still needs the socket to answer), and can be drained.
  assert.equal(tooLong.destroyed, false);
  let rest = 0;
  for await (const c of tooLong) rest += (c as Buffer).length;
  assert.equal(rest, 10);
  await assert.rejects(importRaw(Readable.from([data.subarray(0, size - 512)]), memTarget(size), { size }), isCode('TRUNCATED'));
  assert.equal(await importRaw(Readable.from([data.subarray(0, 1000)]), memTarget(size), { size, exact: false }), 1000);
});

test('a 10 GiB sparse disk exports (raw and VHD) with bounded memory', async () => {
  const v = await createDynamic(p('big.vhd'), 10 * 1024 * MiB);
  try {
    await v.write(5 * 1024 * MiB, pattern(MiB, 3));
    await v.write(10 * 1024 * MiB - 4096, pattern(4096, 4));
    global.gc?.();
    const before = process.memoryUsage().rss;
    let peak = before;
    let total = 0;
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        total += chunk.length;
        peak = Math.max(peak, process.memoryUsage().rss);
        cb();
      },
    });
    await pipeline(exportRaw(v), sink);
    assert.equal(total, v.virtualSize);
    const vs = exportVhd(v);
    const hash = await sha256Of(vs);
    assert.equal(vs.length, 512 + 1024 + 5120 * 4 + 2 * (512 + BLOCK) + 512);
    assert.equal(hash.length, 64);
    peak = Math.max(peak, process.memoryUsage().rss);
    assert.ok(peak - before < 100 * MiB, `RSS grew by ${((peak - before) / MiB).toFixed(1)} MiB`);
  } finally {
    await v.close();
  }
});

test('exportRaw honours backpressure: nothing is read ahead of a stalled consumer', async () => {
  const v = await createDynamic(p('bp.vhd'), 64 * MiB);
  try {
    const s = exportRaw(v);
    // Read once, then stall: only the high-water mark (two blocks) may be buffered.
    await new Promise<void>((resolve) => s.once('readable', () => resolve()));
    // The disk is empty, so every pull completes without I/O, in microtasks and nextTicks: by
    // the next turn of the event loop a stream ignoring backpressure would have pulled on.
    await new Promise((r) => setImmediate(r));
    assert.ok(s.readableLength >= s.readableHighWaterMark, `filled up to the mark (${s.readableLength})`);
    assert.ok(s.readableLength <= 3 * BLOCK, `buffered ${s.readableLength}`);
    s.destroy();
  } finally {
    await v.close();
  }
});
