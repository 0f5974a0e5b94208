// Streaming import/export of VDIs (xapi's /export_raw_vdi and /import_raw_vdi, as vhd-tool does it).
//
// Everything here works on Node streams with bounded memory: exports are pull-based Readables that
// produce one block (2 MiB) per _read, so a slow HTTP client throttles disk reads; imports consume
// the input sequentially, never holding more than one block (plus the BAT) at a time.
//
// Formats:
//  - raw: the virtual disk byte for byte.
//  - vhd: a *dynamic* VHD laid out for streaming: [footer copy][dynamic header][BAT][blocks][footer],
//    blocks in ascending index order, each a full sector bitmap followed by the block's data.
import { Readable } from 'node:stream';
import {
  BAT_UNUSED,
  DEFAULT_BLOCK_SIZE,
  DISK_DIFFERENCING,
  DISK_DYNAMIC,
  DISK_FIXED,
  FOOTER_SIZE,
  HEADER_OFFSET,
  HEADER_SIZE,
  MAX_VHD_SIZE,
  SECTOR,
  bitmapSize,
  decodeFooter,
  decodeHeader,
  emptyLocators,
  encodeFooter,
  encodeHeader,
  newUuid,
  roundUp,
  testBit,
  vhdTime,
  type Footer,
  type Header,
} from './format.js';
import type { Vhd } from './vhd.js';

const KiB = 1024;
/** Granularity of zero detection on import: small enough to find holes, large enough to be cheap. */
const ZERO_PIECE = 64 * KiB;
/** Largest single write issued by the importers; also the read window for raw/fixed input. */
const IMPORT_WINDOW = 4 * 1024 * KiB;
/** The BAT is the only thing an import buffers whole; refuse tables beyond this (16M entries = 64 MiB). */
const MAX_BAT_ENTRIES = 16 * 1024 * 1024;

export type ImportErrorCode = 'TOO_LARGE' | 'TRUNCATED' | 'BAD_FORMAT';

/** A rejected import. `code` lets the HTTP handler map it to a status without parsing messages. */
export class ImportError extends Error {
  constructor(
    readonly code: ImportErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ImportError';
  }
}

export type ProgressFn = (fraction: number) => void;

/**
 * Wrap onProgress so it fires at most about every 1% (callers update tasks / the database with it,
 * which is far too expensive per chunk). `update(done)` reports progress; `finish()` always reports 1.
 */
export function progressReporter(total: number, onProgress?: ProgressFn): { update(done: number): void; finish(): void } {
  let last = 0;
  let finished = false;
  return {
    update(done: number): void {
      if (!onProgress || finished || total <= 0) return;
      const f = Math.min(1, done / total);
      if (f - last >= 0.01 && f < 1) {
        last = f;
        onProgress(f);
      }
    },
    finish(): void {
      if (!onProgress || finished) return;
      finished = true;
      onProgress(1);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Chain helpers

/** The chain from leaf to root. */
function chainOf(leaf: Vhd): Vhd[] {
  const nodes: Vhd[] = [];
  for (let n: Vhd | null = leaf; n; n = n.parent) nodes.push(n);
  return nodes;
}

/** The nodes whose blocks a (delta) export carries: all of them, or those strictly above baseUuid. */
function nodesAbove(leaf: Vhd, baseUuid?: string): Vhd[] {
  const nodes = chainOf(leaf);
  if (baseUuid === undefined) return nodes;
  const i = nodes.findIndex((n) => n.uuid === baseUuid);
  if (i < 0) throw new Error(`VHD export: base ${baseUuid} is not in the chain of ${leaf.path}`);
  return nodes.slice(0, i);
}

/**
 * For output blocks of `blockSize` bytes covering `virtualSize`, flag those that any of `nodes`
 * holds data in. Nodes may use other block sizes (and may be smaller than the leaf after a
 * resize), so allocation is mapped by byte range. Uses only the in-memory BATs: no I/O.
 */
function allocationMap(nodes: Vhd[], virtualSize: number, blockSize: number): Uint8Array {
  const count = Math.ceil(virtualSize / blockSize);
  const map = new Uint8Array(count);
  for (const n of nodes) {
    if (n.type === 'fixed') {
      // A fixed node holds every byte of its size.
      const last = Math.min(count, Math.ceil(n.virtualSize / blockSize));
      map.fill(1, 0, last);
      continue;
    }
    const nbs = n.blockSize;
    for (const b of n.allocatedBlocks()) {
      const first = Math.floor((b * nbs) / blockSize);
      const end = Math.min(count, Math.ceil(((b + 1) * nbs) / blockSize));
      for (let i = first; i < end; i++) map[i] = 1;
    }
  }
  return map;
}

/**
 * A Readable that asks `next()` for one chunk per _read: nothing is produced until the consumer
 * wants it, so memory stays at highWaterMark plus one chunk whatever the disk size.
 */
class PullStream extends Readable {
  private busy = false;

  constructor(
    private readonly next: () => Promise<Buffer | null>,
    highWaterMark: number,
  ) {
    super({ highWaterMark });
  }

  override _read(): void {
    // Node does not call _read again before we push, but guard anyway: two concurrent next()
    // calls would emit chunks out of order.
    if (this.busy) return;
    this.busy = true;
    this.next().then(
      (chunk) => {
        this.busy = false;
        if (!this.destroyed) this.push(chunk);
      },
      (e: unknown) => {
        this.busy = false;
        this.destroy(e instanceof Error ? e : new Error(String(e)));
      },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Export

export interface ExportOptions {
  onProgress?: ProgressFn;
}

/** A Readable whose total byte count is known before the first byte (for Content-Length). */
export type ExportStream = Readable & { readonly length: number };

function withLength(s: Readable, length: number): ExportStream {
  Object.defineProperty(s, 'length', { value: length, enumerable: true });
  return s as ExportStream;
}

/**
 * The whole virtual disk as raw bytes, zeros wherever no node of the chain holds data.
 * Unallocated stretches are produced without touching the files. The caller keeps ownership of
 * `leaf` and must not close it before the stream ends.
 */
export function exportRaw(leaf: Vhd, opts: ExportOptions = {}): ExportStream {
  const size = leaf.virtualSize;
  const chunk = DEFAULT_BLOCK_SIZE;
  const allocated = allocationMap(chainOf(leaf), size, chunk);
  const progress = progressReporter(size, opts.onProgress);
  let pos = 0;
  const stream = new PullStream(async () => {
    if (pos >= size) {
      progress.finish();
      return null;
    }
    const len = Math.min(chunk, size - pos);
    // A fresh zero buffer rather than a shared one: consumers may legitimately modify what they
    // are given (e.g. in-place masking), which would corrupt later chunks.
    const data = allocated[pos / chunk] ? await leaf.read(pos, len) : Buffer.alloc(len);
    pos += len;
    progress.update(pos);
    return data;
  }, 2 * chunk);
  return withLength(stream, size);
}

export interface VhdExportOptions extends ExportOptions {
  /** uuid of a node in the leaf's chain: export only what the nodes above it hold (a delta). */
  baseUuid?: string;
}

/** Geometry of the dynamic VHD that exportVhd writes, shared by exportVhd and vhdStreamSize. */
interface VhdLayout {
  virtualSize: number;
  blockSize: number;
  entries: number;
  batBytes: number;
  dataStart: number;
  blocks: number[]; // output block indices emitted, ascending
  length: number;
}

function vhdLayout(leaf: Vhd, baseUuid?: string): VhdLayout {
  const virtualSize = leaf.virtualSize;
  const blockSize = DEFAULT_BLOCK_SIZE;
  const entries = Math.ceil(virtualSize / blockSize);
  const batBytes = roundUp(entries * 4, SECTOR);
  const dataStart = HEADER_OFFSET + HEADER_SIZE + batBytes;
  const map = allocationMap(nodesAbove(leaf, baseUuid), virtualSize, blockSize);
  const blocks: number[] = [];
  for (let i = 0; i < map.length; i++) if (map[i]) blocks.push(i);
  const length = dataStart + blocks.length * (bitmapSize(blockSize) + blockSize) + FOOTER_SIZE;
  return { virtualSize, blockSize, entries, batBytes, dataStart, blocks, length };
}

/** Byte length of what exportVhd(leaf, opts) will produce (computed from the in-memory BATs). */
export function vhdStreamSize(leaf: Vhd, opts: { baseUuid?: string } = {}): number {
  return vhdLayout(leaf, opts.baseUuid).length;
}

/** The footer fields vhd.ts writes for disks it creates, so exported files look like ours. */
function exportFooter(virtualSize: number): Footer {
  return {
    features: 2,
    dataOffset: BigInt(HEADER_OFFSET),
    timestamp: vhdTime(),
    creatorApp: 'tap\0', // makes qemu trust current_size rather than the CHS geometry
    creatorVersion: 0x00010003,
    creatorOs: 0,
    originalSize: virtualSize,
    currentSize: virtualSize,
    diskType: DISK_DYNAMIC,
    uuid: newUuid(), // a new image, not the leaf itself: never two files with one uuid in an SR
    savedState: 0,
    hidden: 0,
  };
}

/**
 * The chain's content as a dynamic VHD stream. Only blocks that some node (above `baseUuid`, if
 * given) has allocated are emitted; each carries the chain's full view of that block with every
 * bitmap bit set, so importing it over a copy of the base reproduces the leaf.
 * `stream.length` (= vhdStreamSize) is the exact byte count.
 */
export function exportVhd(leaf: Vhd, opts: VhdExportOptions = {}): ExportStream {
  const l = vhdLayout(leaf, opts.baseUuid);
  const bmSize = bitmapSize(l.blockSize);
  const footer = encodeFooter(exportFooter(l.virtualSize));
  const progress = progressReporter(l.length, opts.onProgress);

  // Pieces are generated lazily: [head] then for each block [bitmap, data], then [footer].
  let stage: 'head' | 'blocks' | 'footer' | 'done' = 'head';
  let k = 0; // index into l.blocks
  let pendingData: number | null = null; // block whose data follows the bitmap just pushed
  let sent = 0;
  const fullBitmap = (): Buffer => Buffer.alloc(bmSize, 0xff);

  const next = async (): Promise<Buffer | null> => {
    let out: Buffer | null;
    if (stage === 'head') {
      const head = Buffer.alloc(l.dataStart, 0xff); // BAT defaults to unused
      footer.copy(head, 0);
      encodeHeader({
        tableOffset: HEADER_OFFSET + HEADER_SIZE,
        maxTableEntries: l.entries,
        blockSize: l.blockSize,
        parentUuid: Buffer.alloc(16),
        parentTimestamp: 0,
        parentName: '',
        locators: emptyLocators(),
      }).copy(head, HEADER_OFFSET);
      const batAt = HEADER_OFFSET + HEADER_SIZE;
      l.blocks.forEach((b, i) => {
        head.writeUInt32BE((l.dataStart + i * (bmSize + l.blockSize)) / SECTOR, batAt + b * 4);
      });
      stage = l.blocks.length ? 'blocks' : 'footer';
      out = head;
    } else if (stage === 'blocks') {
      if (pendingData === null) {
        pendingData = l.blocks[k]!;
        out = fullBitmap();
      } else {
        const off = pendingData * l.blockSize;
        const len = Math.min(l.blockSize, l.virtualSize - off);
        out = await leaf.read(off, len);
        // The last block may extend past the virtual size: pad with zeros to a whole block.
        if (len < l.blockSize) out = Buffer.concat([out, Buffer.alloc(l.blockSize - len)]);
        pendingData = null;
        if (++k >= l.blocks.length) stage = 'footer';
      }
    } else if (stage === 'footer') {
      stage = 'done';
      out = footer;
    } else {
      progress.finish();
      return null;
    }
    sent += out.length;
    progress.update(sent);
    return out;
  };
  return withLength(new PullStream(next, 2 * l.blockSize), l.length);
}

// ---------------------------------------------------------------------------------------------
// Import

export interface ImportTarget {
  write(offset: number, data: Buffer): Promise<void>;
}

/**
 * Sequential exact-size reads over a Readable, pulling only as much as asked (so backpressure
 * reaches the sender) and keeping at most one partially used chunk.
 */
class StreamReader {
  private readonly it: AsyncIterator<unknown>;
  private head: Buffer = Buffer.alloc(0);
  private ended = false;
  /** Bytes consumed from the input so far. */
  pos = 0;

  constructor(input: Readable) {
    // destroyOnReturn: false — on a format error the caller (an HTTP handler) still needs the
    // request socket to send its error response; what to do with the rest is its decision.
    this.it = input.iterator({ destroyOnReturn: false })[Symbol.asyncIterator]();
  }

  /** Top up `head` with the next chunk; false at end of stream. */
  private async fill(): Promise<boolean> {
    if (this.ended) return false;
    const r = await this.it.next();
    if (r.done) {
      this.ended = true;
      return false;
    }
    const c = r.value;
    const b = Buffer.isBuffer(c) ? c : typeof c === 'string' ? Buffer.from(c, 'latin1') : Buffer.from(c as Uint8Array);
    this.head = this.head.length ? Buffer.concat([this.head, b]) : b;
    return true;
  }

  /** Up to n bytes; fewer only at end of stream. */
  async readUpTo(n: number): Promise<Buffer> {
    if (this.head.length >= n) return this.take(n);
    // Gather chunks in a list and join once: repeated concat of a growing head would be quadratic.
    const parts: Buffer[] = [this.head];
    let have = this.head.length;
    this.head = Buffer.alloc(0);
    while (have < n && (await this.fill())) {
      parts.push(this.head);
      have += this.head.length;
      this.head = Buffer.alloc(0);
    }
    const all = parts.length === 1 ? parts[0]! : Buffer.concat(parts, have);
    const out = all.subarray(0, Math.min(n, have));
    this.head = all.subarray(out.length);
    this.pos += out.length;
    return out;
  }

  private take(n: number): Buffer {
    const out = this.head.subarray(0, n);
    this.head = this.head.subarray(n);
    this.pos += n;
    return out;
  }

  /** Exactly n bytes, or TRUNCATED. */
  async read(n: number, what: string): Promise<Buffer> {
    const b = await this.readUpTo(n);
    if (b.length < n)
      throw new ImportError('TRUNCATED', `input ended at byte ${this.pos} while reading ${what} (${n - b.length} bytes missing)`);
    return b;
  }

  /** Discard n bytes without buffering them, or TRUNCATED. */
  async skip(n: number, what: string): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.head.length === 0 && !(await this.fill())) {
        throw new ImportError('TRUNCATED', `input ended at byte ${this.pos} while skipping to ${what}`);
      }
      const k = Math.min(left, this.head.length);
      this.take(k);
      left -= k;
    }
  }

  /** Consume and discard everything left (e.g. the trailing footer). */
  async drain(): Promise<void> {
    this.pos += this.head.length;
    this.head = Buffer.alloc(0);
    while (await this.fill()) {
      this.pos += this.head.length;
      this.head = Buffer.alloc(0);
    }
  }

  /** Release the iterator without destroying the input (see constructor). */
  async close(): Promise<void> {
    if (!this.ended) await this.it.return?.();
  }
}

const ZEROS = Buffer.alloc(ZERO_PIECE);

/**
 * Keeps one target write in flight while the importer reads the next piece, so network/input and
 * disk work overlap. Writes are still issued one at a time and in order (each starts after the
 * previous one finished), so targets need not cope with concurrency; buffers handed over are never
 * reused by the importer. A write error surfaces at the next write() or at flush().
 */
class Writer implements ImportTarget {
  private inflight: Promise<void> = Promise.resolve();

  constructor(private readonly target: ImportTarget) {}

  async write(offset: number, data: Buffer): Promise<void> {
    await this.inflight;
    const w = this.target.write(offset, data);
    w.catch(() => undefined); // reported when awaited, not as an unhandled rejection
    this.inflight = w;
  }

  flush(): Promise<void> {
    return this.inflight;
  }

  /** On the error path: let the last write settle so the caller may close the target safely. */
  async settle(): Promise<void> {
    await this.inflight.catch(() => undefined);
  }
}

/**
 * Write `buf` at `offset`; with skipZeros, leave out the all-zero ZERO_PIECE-aligned pieces (the
 * target already reads as zero there) and merge the non-zero ones into as few writes as possible.
 */
async function writeSparse(target: ImportTarget, offset: number, buf: Buffer, skipZeros: boolean): Promise<void> {
  if (!skipZeros) {
    if (buf.length) await target.write(offset, buf);
    return;
  }
  let runStart = -1;
  let p = 0;
  while (p < buf.length) {
    // Pieces are aligned to the disk offset, not to the buffer, so results do not depend on how
    // the input happened to be chunked.
    const end = Math.min(buf.length, p + ZERO_PIECE - ((offset + p) % ZERO_PIECE));
    const zero = buf.subarray(p, end).equals(ZEROS.subarray(0, end - p));
    if (!zero && runStart < 0) runStart = p;
    if (zero && runStart >= 0) {
      await target.write(offset + runStart, buf.subarray(runStart, p));
      runStart = -1;
    }
    p = end;
  }
  if (runStart >= 0) await target.write(offset + runStart, buf.subarray(runStart));
}

export interface RawImportOptions {
  /** Size of the target disk: more input than this is TOO_LARGE. */
  size: number;
  /** Do not write all-zero 64 KiB pieces (only correct when the target is fresh, i.e. reads as zeros). */
  skipZeros?: boolean;
  /** Input must be exactly `size` bytes (default true); false accepts shorter input. */
  exact?: boolean;
  onProgress?: ProgressFn;
}

/**
 * Copy a raw disk image from `input` to `target` sequentially. Returns the number of bytes taken
 * from the input (the imported length; with skipZeros some of them were never written because
 * they are zeros). The input is not destroyed on error.
 */
export async function importRaw(input: Readable, target: ImportTarget, opts: RawImportOptions): Promise<number> {
  const { size } = opts;
  const exact = opts.exact ?? true;
  const skipZeros = opts.skipZeros ?? false;
  const progress = progressReporter(size, opts.onProgress);
  const reader = new StreamReader(input);
  const writer = new Writer(target);
  try {
    let pos = 0;
    for (;;) {
      // One byte more than fits, so input that is exactly `size` long is not mistaken for too long.
      const want = Math.min(IMPORT_WINDOW, size - pos) || 1;
      const buf = await reader.readUpTo(want);
      if (buf.length === 0) break;
      if (pos + buf.length > size) {
        throw new ImportError('TOO_LARGE', `raw import: input is larger than the disk (${size} bytes)`);
      }
      await writeSparse(writer, pos, buf, skipZeros);
      pos += buf.length;
      progress.update(pos);
    }
    await writer.flush();
    if (exact && pos < size) throw new ImportError('TRUNCATED', `raw import: input ended after ${pos} of ${size} bytes`);
    progress.finish();
    return pos;
  } finally {
    await writer.settle();
    await reader.close();
  }
}

export interface VhdImportTarget extends ImportTarget {
  /** Virtual size of the target disk: a VHD with a larger virtual size is TOO_LARGE. */
  size: number;
}

export interface VhdImportOptions {
  onProgress?: ProgressFn;
  /** Additional upper bound on the virtual size. */
  maxSize?: number;
  /**
   * Total input length if known (Content-Length). Fixed VHDs keep their footer at the end, so
   * without it an oversized fixed image is only noticed when its data passes the limit.
   */
  length?: number;
  /** Fixed VHDs only: skip all-zero pieces (target must be fresh). Dynamic images write only allocated sectors anyway. */
  skipZeros?: boolean;
}

function checkSize(virtualSize: number, target: VhdImportTarget, opts: VhdImportOptions): void {
  const limit = Math.min(target.size, opts.maxSize ?? Infinity, MAX_VHD_SIZE);
  if (virtualSize > limit) {
    throw new ImportError('TOO_LARGE', `VHD import: virtual size ${virtualSize} exceeds the target's ${limit} bytes`);
  }
}

function badFormat(what: string, e: unknown): ImportError {
  return new ImportError('BAD_FORMAT', `VHD import: ${what}: ${e instanceof Error ? e.message : String(e)}`);
}

/**
 * Import a dynamic or fixed VHD stream, in file order, writing only the sectors the image holds
 * (for a dynamic image: sectors whose bitmap bit is set in allocated blocks). That makes it usable
 * both for full images onto fresh disks and for deltas (exportVhd with baseUuid) onto a copy of
 * the base. Differencing images are BAD_FORMAT (their parent is not part of the stream).
 */
export async function importVhd(input: Readable, target: VhdImportTarget, opts: VhdImportOptions = {}): Promise<{ virtualSize: number }> {
  const reader = new StreamReader(input);
  const writer = new Writer(target);
  try {
    const first = await reader.read(FOOTER_SIZE, 'the footer copy');
    if (first.toString('latin1', 0, 8) !== 'conectix') {
      // Not a dynamic image; a fixed VHD has no copy at 0 and starts with its data.
      return await importFixed(reader, first, target, writer, opts);
    }
    let footer: Footer;
    try {
      footer = decodeFooter(first);
    } catch (e) {
      throw badFormat('footer', e);
    }
    if (footer.diskType === DISK_DIFFERENCING)
      throw new ImportError('BAD_FORMAT', 'VHD import: differencing images need their parent; send a dynamic (or delta) VHD');
    if (footer.diskType !== DISK_DYNAMIC)
      throw new ImportError('BAD_FORMAT', `VHD import: unexpected disk type ${footer.diskType} in the footer copy`);
    const virtualSize = footer.currentSize;
    if (virtualSize % SECTOR !== 0)
      throw new ImportError('BAD_FORMAT', `VHD import: virtual size ${virtualSize} is not a whole number of sectors`);
    checkSize(virtualSize, target, opts);
    return await importDynamic(reader, footer, writer, opts);
  } finally {
    await writer.settle();
    await reader.close();
  }
}

async function importDynamic(
  reader: StreamReader,
  footer: Footer,
  writer: Writer,
  opts: VhdImportOptions,
): Promise<{ virtualSize: number }> {
  const virtualSize = footer.currentSize;
  const headerAt = Number(footer.dataOffset);
  if (!Number.isSafeInteger(headerAt) || headerAt < reader.pos)
    throw new ImportError('BAD_FORMAT', `VHD import: header offset ${footer.dataOffset} is not after the footer copy`);
  await reader.skip(headerAt - reader.pos, 'the dynamic header');
  let header: Header;
  try {
    header = decodeHeader(await reader.read(HEADER_SIZE, 'the dynamic header'));
  } catch (e) {
    throw e instanceof ImportError ? e : badFormat('dynamic header', e);
  }
  const { blockSize, maxTableEntries, tableOffset } = header;
  if (blockSize < SECTOR || blockSize % SECTOR !== 0 || blockSize > 256 * 1024 * KiB)
    throw new ImportError('BAD_FORMAT', `VHD import: unsupported block size ${blockSize}`);
  const needed = Math.ceil(virtualSize / blockSize);
  if (maxTableEntries < needed || maxTableEntries > MAX_BAT_ENTRIES)
    throw new ImportError('BAD_FORMAT', `VHD import: BAT of ${maxTableEntries} entries does not fit virtual size ${virtualSize}`);
  // Streaming means everything must come in order; a BAT before the header cannot be reached.
  if (tableOffset < reader.pos) throw new ImportError('BAD_FORMAT', `VHD import: BAT at ${tableOffset} precedes the end of the header`);
  await reader.skip(tableOffset - reader.pos, 'the BAT'); // parent locators etc. are irrelevant here
  // Only the entries covering the virtual size matter; the reserved tail is never used.
  const batBuf = await reader.read(needed * 4, 'the BAT');
  const blocks: Array<{ index: number; at: number }> = [];
  for (let i = 0; i < needed; i++) {
    const e = batBuf.readUInt32BE(i * 4);
    if (e !== BAT_UNUSED) blocks.push({ index: i, at: e * SECTOR });
  }
  // Blocks may lie in any order in the file; visit them in file order, skipping gaps.
  blocks.sort((a, b) => a.at - b.at);
  const bmSize = bitmapSize(blockSize);
  const spb = blockSize / SECTOR;
  const progress = progressReporter(blocks.length, opts.onProgress);
  let done = 0;
  for (const { index, at } of blocks) {
    if (at < reader.pos) throw new ImportError('BAD_FORMAT', `VHD import: block ${index} at ${at} overlaps data before byte ${reader.pos}`);
    await reader.skip(at - reader.pos, `block ${index}`);
    const bm = Buffer.from(await reader.read(bmSize, `the bitmap of block ${index}`));
    const data = await reader.read(blockSize, `the data of block ${index}`);
    const base = index * blockSize;
    // Coalesce runs of present sectors into single writes, clipped to the virtual size.
    let s = 0;
    while (s < spb) {
      if (!testBit(bm, s)) {
        s++;
        continue;
      }
      let e = s + 1;
      while (e < spb && testBit(bm, e)) e++;
      const len = Math.min(e * SECTOR, virtualSize - base) - s * SECTOR;
      if (len > 0) await writer.write(base + s * SECTOR, data.subarray(s * SECTOR, s * SECTOR + len));
      s = e;
    }
    progress.update(++done);
  }
  await writer.flush();
  await reader.drain(); // the trailing footer: consume it so the sender sees a complete upload
  progress.finish();
  return { virtualSize };
}

/**
 * A fixed VHD is the raw data followed by a footer. Stream it through while holding back the last
 * 512 bytes seen; at end of input those are the footer, which must describe exactly the data seen.
 */
async function importFixed(
  reader: StreamReader,
  first: Buffer,
  target: VhdImportTarget,
  writer: Writer,
  opts: VhdImportOptions,
): Promise<{ virtualSize: number }> {
  if (opts.length !== undefined) checkSize(opts.length - FOOTER_SIZE, target, opts);
  const limit = Math.min(target.size, opts.maxSize ?? Infinity);
  const progress = progressReporter(opts.length !== undefined ? opts.length - FOOTER_SIZE : target.size, opts.onProgress);
  const skipZeros = opts.skipZeros ?? false;
  let carry = Buffer.from(first);
  let pos = 0; // bytes of data written (or skipped as zeros) so far
  for (;;) {
    const next = await reader.readUpTo(IMPORT_WINDOW);
    if (next.length === 0) break;
    const all = Buffer.concat([carry, next]);
    const data = all.subarray(0, all.length - FOOTER_SIZE);
    if (pos + data.length > limit) {
      throw new ImportError('TOO_LARGE', `VHD import: fixed image data exceeds the target's ${limit} bytes`);
    }
    await writeSparse(writer, pos, data, skipZeros);
    pos += data.length;
    carry = Buffer.from(all.subarray(all.length - FOOTER_SIZE));
    progress.update(pos);
  }
  await writer.flush();
  let footer: Footer;
  try {
    footer = decodeFooter(carry);
  } catch (e) {
    throw badFormat('not a VHD (no valid footer at the start or the end)', e);
  }
  if (footer.diskType !== DISK_FIXED)
    throw new ImportError('BAD_FORMAT', `VHD import: trailing footer has disk type ${footer.diskType}, expected fixed`);
  if (footer.currentSize !== pos) {
    throw new ImportError(
      pos < footer.currentSize ? 'TRUNCATED' : 'BAD_FORMAT',
      `VHD import: fixed image holds ${pos} bytes of data but its footer says ${footer.currentSize}`,
    );
  }
  progress.finish();
  return { virtualSize: footer.currentSize };
}
