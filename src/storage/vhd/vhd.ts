// VHD dynamic / differencing disks on a node:fs/promises FileHandle.
// Layout we write: [footer copy @0][header @512][parent locator data][BAT (reserved, sector padded)]
// [blocks: bitmap + data ...][footer]. Locator data sits before the BAT so that growing the BAT
// only ever has to move data blocks.
import { open as fsOpen, stat, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
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
  PLAT_MACX,
  PLAT_W2KU,
  PLAT_W2RU,
  SECTOR,
  bitmapSize,
  decodeFooter,
  decodeHeader,
  emptyLocators,
  encodeFooter,
  encodeHeader,
  newUuid,
  roundUp,
  setBit,
  testBit,
  uuidString,
  vhdTime,
  type Footer,
  type Header,
  type Locator,
} from './format.js';

export type VhdType = 'fixed' | 'dynamic' | 'differencing';

export interface CreateOptions {
  /** Size the BAT is reserved for, so resize up to it never moves data (default: max(size, 64 GiB)). */
  maxSize?: number;
  blockSize?: number;
}

/**
 * How a VHD is opened.
 *
 * `deferSync` (opt-in, for bulk writers such as VDI import and copy): allocating a new block writes
 * its footer, bitmap, data and BAT entry without the two datasync calls per block that the
 * default ordering needs (about 16 ms per 2 MiB block, which caps import throughput). Nothing is
 * durable until `sync()` or `close()`, which then makes everything durable with one fsync (close
 * syncs whenever this handle allocated or wrote anything, and throws if that fails).
 *
 * This is safe for imports, and only for writers like them: an import's result is reported only
 * after the handle is closed, i.e. after the final sync. A crash (or power loss) mid-import may
 * leave BAT entries pointing at blocks whose bitmap/data never reached the disk — that VDI's
 * content is undefined, but its import task never succeeded (it failed, or the host went down
 * with it pending), so nobody was told the data is there; the client must import again. It is NOT
 * safe for a disk a running VM writes: the guest relies on each completed write surviving a
 * crash, which is what the default per-allocation ordering guarantees.
 */
export interface OpenOptions {
  readOnly?: boolean;
  /** Skip per-allocation datasyncs; `sync()`/`close()` make the writes durable. See OpenOptions. */
  deferSync?: boolean;
}

const DEFAULT_RESERVE = 64 * 1024 * 1024 * 1024;
const MAX_RUN = 4 * 1024 * 1024; // cap single I/O buffers when streaming runs of sectors

async function readExact(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, pos + done);
    if (bytesRead === 0) throw new Error(`VHD: short read at ${pos + done}`);
    done += bytesRead;
  }
}

async function writeExact(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done);
    done += bytesWritten;
  }
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR !== 0)
    throw new RangeError(`VHD: size ${size} must be a positive multiple of 512`);
  if (size > MAX_VHD_SIZE) throw new RangeError(`VHD: size ${size} exceeds the 2040 GiB maximum`);
}

export class Vhd {
  /** Absolute file offset where the footer lives now; new blocks are appended here. */
  private footerPos: number;
  private readonly bitmapCache = new Map<number, Buffer>();
  private lock: Promise<unknown> = Promise.resolve();
  /** deferSync mode: something was written since the last sync. */
  private dirty = false;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private footer: Footer,
    private header: Header | null,
    private bat: Uint32Array,
    fileSize: number,
    private _parent: Vhd | null,
    private _parentPath: string | null,
    private readonly readOnly: boolean,
    private readonly deferSync: boolean = false,
  ) {
    this.footerPos = fileSize - FOOTER_SIZE;
  }

  /** The opened parent (read-only), or null for dynamic/fixed disks. Changes after setParent. */
  get parent(): Vhd | null {
    return this._parent;
  }
  get parentPath(): string | null {
    return this._parentPath;
  }
  /** The parent's VHD unique id as recorded in our header (differencing disks only). */
  get parentUuid(): string | null {
    return this.footer.diskType === DISK_DIFFERENCING && this.header ? uuidString(this.header.parentUuid) : null;
  }

  get virtualSize(): number {
    return this.footer.currentSize;
  }
  get type(): VhdType {
    return this.footer.diskType === DISK_FIXED ? 'fixed' : this.footer.diskType === DISK_DIFFERENCING ? 'differencing' : 'dynamic';
  }
  get uuid(): string {
    return uuidString(this.footer.uuid);
  }
  get blockSize(): number {
    return this.header?.blockSize ?? DEFAULT_BLOCK_SIZE;
  }
  get maxTableEntries(): number {
    return this.header?.maxTableEntries ?? 0;
  }
  private get bmSize(): number {
    return bitmapSize(this.blockSize);
  }
  private get sectorsPerBlock(): number {
    return this.blockSize / SECTOR;
  }

  /** Serialise mutating operations: two concurrent allocations must not both append at footerPos. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lock.then(fn, fn);
    this.lock = p.catch(() => undefined);
    return p;
  }

  static async open(file: string, opts: OpenOptions = {}): Promise<Vhd> {
    const readOnly = opts.readOnly ?? false;
    const deferSync = !readOnly && (opts.deferSync ?? false);
    const fh = await fsOpen(file, readOnly ? 'r' : 'r+');
    try {
      const { size, footer } = await readFooter(fh);
      if (footer.diskType === DISK_FIXED) {
        return new Vhd(file, fh, footer, null, new Uint32Array(0), size, null, null, readOnly, deferSync);
      }
      if (footer.diskType !== DISK_DYNAMIC && footer.diskType !== DISK_DIFFERENCING)
        throw new Error(`VHD: unsupported disk type ${footer.diskType}`);
      const hb = Buffer.alloc(HEADER_SIZE);
      await readExact(fh, hb, Number(footer.dataOffset));
      const header = decodeHeader(hb);
      const batBuf = Buffer.alloc(roundUp(header.maxTableEntries * 4, SECTOR));
      await readExact(fh, batBuf, header.tableOffset);
      const bat = new Uint32Array(header.maxTableEntries);
      for (let i = 0; i < bat.length; i++) bat[i] = batBuf.readUInt32BE(i * 4);
      let parent: Vhd | null = null;
      let parentPath: string | null = null;
      if (footer.diskType === DISK_DIFFERENCING) {
        parentPath = await resolveParent(fh, file, header);
        // Parents are read-only from the child's point of view (they may be shared by siblings).
        parent = await Vhd.open(parentPath, { readOnly: true });
        if (!parent.footer.uuid.equals(header.parentUuid)) {
          await parent.close();
          throw new Error(`VHD: parent ${parentPath} uuid ${parent.uuid} != expected ${uuidString(header.parentUuid)}`);
        }
      }
      return new Vhd(file, fh, footer, header, bat, size, parent, parentPath, readOnly, deferSync);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Closes the file (and the parents). Under deferSync, first makes all writes durable; if that fails, close still releases the file and then throws. */
  async close(): Promise<void> {
    await this.lock;
    try {
      if (this.dirty) {
        await this.fh.sync();
        this.dirty = false;
      }
    } finally {
      await this.fh.close();
      if (this._parent) await this._parent.close();
    }
  }

  /** Flush data and metadata written through this handle (writes into existing blocks are not synced one by one). */
  async sync(): Promise<void> {
    await this.exclusive(async () => {
      await this.fh.sync();
      this.dirty = false;
    });
  }

  /** datasync, unless deferSync defers it to sync()/close(). */
  private async orderedSync(): Promise<void> {
    if (this.deferSync) this.dirty = true;
    else await this.fh.datasync();
  }

  /** Indices of blocks allocated in this file (not its parents). */
  allocatedBlocks(): number[] {
    const r: number[] = [];
    for (let i = 0; i < this.bat.length; i++) if (this.bat[i] !== BAT_UNUSED) r.push(i);
    return r;
  }

  private async bitmap(block: number): Promise<Buffer> {
    let bm = this.bitmapCache.get(block);
    if (!bm) {
      bm = Buffer.alloc(this.bmSize);
      await readExact(this.fh, bm, this.bat[block]! * SECTOR);
      this.bitmapCache.set(block, bm);
    }
    return bm;
  }

  /** Which sectors of a block hold data in this file (for coalesce/export). */
  async sectorPresent(block: number): Promise<(s: number) => boolean> {
    if (this.bat[block] === BAT_UNUSED) return () => false;
    const bm = await this.bitmap(block);
    return (s) => testBit(bm, s);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.virtualSize)
      throw new RangeError(`VHD: read [${offset}, +${length}) beyond ${this.virtualSize}`);
    const buf = Buffer.alloc(length);
    await this.readInto(buf, offset);
    return buf;
  }

  /** Fill buf (pre-zeroed) with the disk's contents at offset, through the parent chain. */
  private async readInto(buf: Buffer, offset: number): Promise<void> {
    const end = Math.min(offset + buf.length, this.virtualSize); // beyond our size reads as zeros
    if (this.footer.diskType === DISK_FIXED) {
      if (end > offset) await readExact(this.fh, buf.subarray(0, end - offset), offset);
      return;
    }
    const bs = this.blockSize;
    let pos = offset;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const blockEnd = Math.min((block + 1) * bs, end);
      const entry = this.bat[block] ?? BAT_UNUSED;
      if (entry === BAT_UNUSED) {
        await this.fromParent(buf, offset, pos, blockEnd);
      } else {
        const bm = await this.bitmap(block);
        const dataStart = entry * SECTOR + this.bmSize;
        // Walk runs of sectors sharing the same bitmap state.
        let p = pos;
        while (p < blockEnd) {
          const present = testBit(bm, Math.floor((p - block * bs) / SECTOR));
          let q = (Math.floor(p / SECTOR) + 1) * SECTOR;
          while (q < blockEnd && testBit(bm, (q - block * bs) / SECTOR) === present) q += SECTOR;
          q = Math.min(q, blockEnd);
          if (present) await readExact(this.fh, buf.subarray(p - offset, q - offset), dataStart + (p - block * bs));
          else await this.fromParent(buf, offset, p, q);
          p = q;
        }
      }
      pos = blockEnd;
    }
  }

  private async fromParent(buf: Buffer, bufOffset: number, from: number, to: number): Promise<void> {
    if (this._parent) await this._parent.readInto(buf.subarray(from - bufOffset, to - bufOffset), from);
    // dynamic disk (or no parent): stays zero
  }

  async write(offset: number, data: Buffer): Promise<void> {
    if (this.readOnly) throw new Error('VHD: opened read-only');
    if (this.footer.diskType === DISK_FIXED) throw new Error('VHD: writing fixed disks is not supported');
    if (offset < 0 || offset + data.length > this.virtualSize)
      throw new RangeError(`VHD: write [${offset}, +${data.length}) beyond ${this.virtualSize}`);
    if (data.length === 0) return;
    return this.exclusive(async () => {
      // Widen to whole sectors: the bitmap has sector granularity, so partial sectors are merged
      // with what the chain currently holds.
      let start = offset;
      let buf = data;
      const headPad = offset % SECTOR;
      const tailPad = (SECTOR - ((offset + data.length) % SECTOR)) % SECTOR;
      if (headPad || tailPad) {
        start = offset - headPad;
        buf = Buffer.alloc(headPad + data.length + tailPad);
        if (headPad) await this.readInto(buf.subarray(0, SECTOR), start);
        if (tailPad) await this.readInto(buf.subarray(buf.length - SECTOR), start + buf.length - SECTOR);
        data.copy(buf, headPad);
      }
      const bs = this.blockSize;
      let pos = start;
      const end = start + buf.length;
      while (pos < end) {
        const block = Math.floor(pos / bs);
        const blockEnd = Math.min((block + 1) * bs, end);
        await this.writeInBlock(block, pos - block * bs, buf.subarray(pos - start, blockEnd - start));
        pos = blockEnd;
      }
    });
  }

  /** Write whole sectors inside one block, allocating the block if needed. */
  private async writeInBlock(block: number, inBlock: number, data: Buffer): Promise<void> {
    const first = inBlock / SECTOR;
    const count = data.length / SECTOR;
    if (this.bat[block] === BAT_UNUSED) {
      const bm = Buffer.alloc(this.bmSize);
      if (this.type === 'dynamic') {
        // Whole block is "present" (zeros where unwritten), like qemu and blktap do for dynamic disks.
        for (let s = 0; s < this.sectorsPerBlock; s++) setBit(bm, s);
      } else {
        // Differencing: only written sectors shadow the parent. For a partly written block the
        // rest stays zero-filled on disk but reads through to the parent.
        for (let s = first; s < first + count; s++) setBit(bm, s);
      }
      await this.allocate(block, bm, inBlock, data);
      return;
    }
    const base = this.bat[block]! * SECTOR;
    if (this.deferSync) this.dirty = true;
    // Data first, then bitmap: a crash in between leaves the old (parent) view, never garbage.
    await writeExact(this.fh, data, base + this.bmSize + inBlock);
    const bm = await this.bitmap(block);
    let changed = false;
    for (let s = first; s < first + count; s++)
      if (!testBit(bm, s)) {
        setBit(bm, s);
        changed = true;
      }
    if (changed) await writeExact(this.fh, bm, base);
  }

  /**
   * Append a block at the footer position. Order, so a crash at any point leaves a valid file:
   * 1. write the footer at the new end (the file is extended; the old footer still exists),
   * 2. write bitmap (over the old footer) and data, fsync,
   * 3. point the BAT entry at it, fsync. Before 3 the block is just leaked space.
   * Under deferSync both fsyncs are left to sync()/close() (see OpenOptions).
   */
  private async allocate(block: number, bm: Buffer, inBlock: number, data: Buffer): Promise<void> {
    const at = this.footerPos;
    const newFooterPos = at + this.bmSize + this.blockSize;
    await writeExact(this.fh, encodeFooter(this.footer), newFooterPos);
    // The unwritten data area in between is a sparse hole, i.e. zeros.
    await writeExact(this.fh, bm, at);
    await writeExact(this.fh, data, at + this.bmSize + inBlock);
    await this.orderedSync();
    this.footerPos = newFooterPos;
    await this.setBatEntry(block, at / SECTOR);
    this.bitmapCache.set(block, bm);
  }

  /** `strict`: datasync even under deferSync (growBat overwrites the block's old place next). */
  private async setBatEntry(block: number, sector: number, strict = false): Promise<void> {
    const e = Buffer.alloc(4);
    e.writeUInt32BE(sector >>> 0, 0);
    await writeExact(this.fh, e, this.header!.tableOffset + block * 4);
    if (strict) await this.fh.datasync();
    else await this.orderedSync();
    this.bat[block] = sector;
  }

  /** blktap's "hidden" flag (footer byte 85): set on VHD SRs when a VDI is deleted but still a parent. */
  get hidden(): boolean {
    return this.footer.hidden !== 0;
  }

  async setHidden(hidden: boolean): Promise<void> {
    if (this.readOnly) throw new Error('VHD: opened read-only');
    return this.exclusive(() => this.rewriteFooters({ ...this.footer, hidden: hidden ? 1 : 0 }));
  }

  /** End footer first (the authority), then the copy at 0. */
  private async rewriteFooters(f: Footer): Promise<void> {
    const fb = encodeFooter(f);
    await writeExact(this.fh, fb, this.footerPos);
    if (this.footer.diskType !== DISK_FIXED) await writeExact(this.fh, fb, 0);
    await this.fh.datasync();
    this.footer = f;
  }

  /** Grow the virtual size. Within the reserved BAT this only rewrites the footers. */
  async resize(newSize: number): Promise<void> {
    if (this.readOnly) throw new Error('VHD: opened read-only');
    checkSize(newSize);
    if (newSize < this.virtualSize) throw new RangeError('VHD: shrinking is not supported');
    if (this.footer.diskType === DISK_FIXED) throw new Error('VHD: resizing fixed disks is not supported');
    return this.exclusive(async () => {
      const needed = Math.ceil(newSize / this.blockSize);
      const h = this.header!;
      if (needed > h.maxTableEntries) await this.growBat(needed);
      await this.rewriteFooters({ ...this.footer, currentSize: newSize });
    });
  }

  /** Extend the BAT in place, moving data blocks that sit where it must grow to the end. */
  private async growBat(entries: number): Promise<void> {
    const h = this.header!;
    const newBatEnd = h.tableOffset + roundUp(entries * 4, SECTOR);
    const blockBytes = this.bmSize + this.blockSize;
    for (let i = 0; i < this.bat.length; i++) {
      const e = this.bat[i]!;
      if (e === BAT_UNUSED || e * SECTOR >= newBatEnd) continue;
      // Same crash discipline as allocate: footer at new end, copy, fsync, then repoint BAT.
      const at = this.footerPos;
      await writeExact(this.fh, encodeFooter(this.footer), at + blockBytes);
      for (let off = 0; off < blockBytes; off += MAX_RUN) {
        const chunk = Buffer.alloc(Math.min(MAX_RUN, blockBytes - off));
        await readExact(this.fh, chunk, e * SECTOR + off);
        await writeExact(this.fh, chunk, at + off);
      }
      await this.fh.datasync();
      this.footerPos = at + blockBytes;
      await this.setBatEntry(i, at / SECTOR, true);
    }
    // Locator data appended by setParent may also sit where the table grows: move it to the end
    // and publish its new place before the fill below overwrites the old one.
    if (h.locators.some((l) => l.length > 0 && l.offset < newBatEnd && l.offset + l.space > h.tableOffset)) {
      const moved = h.locators.map((l) => ({ ...l }));
      const datas: Buffer[] = [];
      for (const l of moved) {
        if (l.length === 0 || l.offset >= newBatEnd || l.offset + l.space <= h.tableOffset) continue;
        const b = Buffer.alloc(l.length);
        await readExact(this.fh, b, l.offset);
        datas.push(b);
        l.offset = -1; // placeholder, filled by appendLocators
      }
      const offsets = await this.appendLocators(datas);
      let k = 0;
      for (const l of moved)
        if (l.offset === -1) {
          l.offset = offsets[k]!;
          l.space = roundUp(Math.max(l.length, 1), SECTOR);
          k++;
        }
      this.header = { ...h, locators: moved };
      await writeExact(this.fh, encodeHeader(this.header), HEADER_OFFSET);
      await this.fh.datasync();
    }
    const hh = this.header!;
    // New entries are unused; then publish the larger table in the header.
    const oldEnd = h.tableOffset + h.maxTableEntries * 4;
    const fill = Buffer.alloc(newBatEnd - oldEnd, 0xff);
    await writeExact(this.fh, fill, oldEnd);
    await this.fh.datasync();
    const bat = new Uint32Array(entries).fill(BAT_UNUSED);
    bat.set(this.bat);
    this.bat = bat;
    this.header = { ...hh, maxTableEntries: entries };
    await writeExact(this.fh, encodeHeader(this.header), HEADER_OFFSET);
    await this.fh.datasync();
  }

  /**
   * Write locator payloads into fresh space at the end of the file, with allocate's discipline
   * (footer at the new end first, payload over the old footer, fsync), and return their offsets.
   * Nothing points at them yet: a crash leaves only leaked bytes.
   */
  private async appendLocators(datas: Buffer[]): Promise<number[]> {
    const at = this.footerPos;
    const offsets: number[] = [];
    let end = at;
    for (const d of datas) {
      offsets.push(end);
      end += roundUp(Math.max(d.length, 1), SECTOR);
    }
    await writeExact(this.fh, encodeFooter(this.footer), end);
    for (let i = 0; i < datas.length; i++) {
      const slot = Buffer.alloc(roundUp(Math.max(datas[i]!.length, 1), SECTOR));
      datas[i]!.copy(slot);
      await writeExact(this.fh, slot, offsets[i]!);
    }
    await this.fh.datasync();
    this.footerPos = end;
    return offsets;
  }

  /**
   * Re-point this differencing disk at another parent (vhd-util modify -p), used after its old
   * parent was coalesced into newParentPath. Crash-safe without a journal of its own: the new
   * locator payloads are written to new space and synced first, then the single 1024-byte header
   * write switches parent uuid, timestamp, name and locators together. Before that write the
   * disk still names its old parent; after it, the new one. This handle then reads through the
   * new parent; do not call it while reads on the same handle are in flight.
   */
  async setParent(newParentPath: string): Promise<void> {
    if (this.readOnly) throw new Error('VHD: opened read-only');
    if (this.footer.diskType !== DISK_DIFFERENCING) throw new Error('VHD: only differencing disks have a parent');
    const absParent = path.resolve(newParentPath);
    const np = await Vhd.open(absParent, { readOnly: true });
    try {
      await this.exclusive(async () => {
        const h = this.header!;
        const locs = buildLocators(this.path, absParent);
        const offsets = await this.appendLocators(locs.map(([, d]) => d));
        const locators = emptyLocators();
        locs.forEach(([code, data], i) => {
          locators[i] = { code, space: roundUp(Math.max(data.length, 1), SECTOR), length: data.length, offset: offsets[i]! };
        });
        const header: Header = {
          ...h,
          parentUuid: Buffer.from(np.footer.uuid),
          parentTimestamp: vhdTime((await stat(absParent)).mtimeMs),
          parentName: path.basename(absParent),
          locators,
        };
        await writeExact(this.fh, encodeHeader(header), HEADER_OFFSET);
        await this.fh.datasync();
        this.header = header;
      });
    } catch (e) {
      await np.close();
      throw e;
    }
    const old = this._parent;
    this._parent = np;
    this._parentPath = absParent;
    if (old) await old.close();
  }
}

/** The locators XenServer's blktap writes: MacX file URL, W2ku absolute, W2ru relative. */
function buildLocators(childFile: string, absParent: string): Array<[number, Buffer]> {
  let rel = path.relative(path.dirname(path.resolve(childFile)), absParent);
  if (!rel.startsWith('..')) rel = `./${rel}`;
  return [
    [PLAT_MACX, locatorData(PLAT_MACX, `file://${rel}`)],
    [PLAT_W2KU, locatorData(PLAT_W2KU, absParent)],
    [PLAT_W2RU, locatorData(PLAT_W2RU, rel.replace(/\//g, '\\'))],
  ];
}

/** What one VHD file says about itself, read from footer and header only (no parent is opened). */
export interface VhdInfo {
  uuid: string;
  type: VhdType;
  hidden: boolean;
  virtualSize: number;
  /** Parent's VHD unique id from the header (differencing only). */
  parentUuid: string | null;
  /** Parent paths named by the locators, most trusted first (relative W2ru, MacX, W2ku, header name), resolved against the file's directory. */
  parentCandidates: string[];
}

/**
 * A file's footer: the one at the end is the authority, but a torn tail leaves the copy at 0
 * usable (dynamic and differencing disks only: a fixed disk has no copy).
 */
async function readFooter(fh: FileHandle): Promise<{ size: number; footer: Footer }> {
  const size = (await fh.stat()).size;
  if (size < FOOTER_SIZE) throw new Error('VHD: file too small');
  const fb = Buffer.alloc(FOOTER_SIZE);
  await readExact(fh, fb, size - FOOTER_SIZE);
  try {
    return { size, footer: decodeFooter(fb) };
  } catch (e) {
    await readExact(fh, fb, 0);
    const footer = decodeFooter(fb);
    if (footer.diskType === DISK_FIXED) throw e;
    return { size, footer };
  }
}

export async function readInfo(file: string): Promise<VhdInfo> {
  const fh = await fsOpen(file, 'r');
  try {
    const { footer } = await readFooter(fh);
    const type: VhdType = footer.diskType === DISK_FIXED ? 'fixed' : footer.diskType === DISK_DIFFERENCING ? 'differencing' : 'dynamic';
    let parentUuid: string | null = null;
    let parentCandidates: string[] = [];
    if (type === 'differencing') {
      const hb = Buffer.alloc(HEADER_SIZE);
      await readExact(fh, hb, Number(footer.dataOffset));
      const header = decodeHeader(hb);
      parentUuid = uuidString(header.parentUuid);
      parentCandidates = await locatorCandidates(fh, file, header);
    }
    return {
      uuid: uuidString(footer.uuid),
      type,
      hidden: footer.hidden !== 0,
      virtualSize: footer.currentSize,
      parentUuid,
      parentCandidates,
    };
  } finally {
    await fh.close();
  }
}

/** Parent paths named by the locators: relative first (the chain may have been moved), then absolute. */
async function locatorCandidates(fh: FileHandle, childPath: string, h: Header): Promise<string[]> {
  const dir = path.dirname(path.resolve(childPath));
  const candidates: string[] = [];
  const order = [PLAT_W2RU, PLAT_MACX, PLAT_W2KU];
  for (const code of order) {
    for (const l of h.locators) {
      if (l.code !== code || l.length === 0) continue;
      const b = Buffer.alloc(l.length);
      await readExact(fh, b, l.offset);
      let p: string;
      if (code === PLAT_MACX) p = b.toString('utf8').replace(/^file:\/\//, '');
      else p = b.toString('utf16le').replace(/\0+$/, '').replace(/\\/g, '/');
      candidates.push(path.isAbsolute(p) ? p : path.resolve(dir, p));
    }
  }
  if (h.parentName) candidates.push(path.resolve(dir, h.parentName));
  return candidates;
}

/** Find the parent file: the first locator candidate that exists. */
async function resolveParent(fh: FileHandle, childPath: string, h: Header): Promise<string> {
  const candidates = await locatorCandidates(fh, childPath, h);
  for (const c of candidates) {
    try {
      await stat(c);
      return c;
    } catch {
      // try the next locator
    }
  }
  throw new Error(`VHD: parent not found (tried ${candidates.join(', ') || 'no locators'})`);
}

function batLayout(dataStart: number, size: number, opts: CreateOptions) {
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  const reserve = Math.min(MAX_VHD_SIZE, Math.max(size, opts.maxSize ?? DEFAULT_RESERVE));
  const entries = Math.ceil(reserve / blockSize);
  const batBytes = roundUp(entries * 4, SECTOR);
  return { blockSize, entries, batBytes, tableOffset: dataStart, end: dataStart + batBytes };
}

async function writeNew(file: string, footer: Footer, header: Header, batBytes: number, extra: Array<[Buffer, number]>): Promise<void> {
  // 'wx': never clobber an existing disk.
  const fh = await fsOpen(file, 'wx');
  try {
    const fb = encodeFooter(footer);
    await writeExact(fh, fb, 0);
    await writeExact(fh, encodeHeader(header), HEADER_OFFSET);
    for (const [b, at] of extra) await writeExact(fh, b, at);
    await writeExact(fh, Buffer.alloc(batBytes, 0xff), header.tableOffset);
    await writeExact(fh, fb, header.tableOffset + batBytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function baseFooter(size: number, diskType: number): Footer {
  return {
    features: 2,
    dataOffset: BigInt(HEADER_OFFSET),
    timestamp: vhdTime(),
    creatorApp: 'tap\0', // qemu trusts current_size (not CHS) for blktap-created images
    creatorVersion: 0x00010003,
    creatorOs: 0, // blktap writes 0 here
    originalSize: size,
    currentSize: size,
    diskType,
    uuid: newUuid(),
    savedState: 0,
    hidden: 0,
  };
}

export async function createDynamic(file: string, virtualSize: number, opts: CreateOptions = {}): Promise<Vhd> {
  checkSize(virtualSize);
  const l = batLayout(HEADER_OFFSET + HEADER_SIZE, virtualSize, opts);
  const header: Header = {
    tableOffset: l.tableOffset,
    maxTableEntries: l.entries,
    blockSize: l.blockSize,
    parentUuid: Buffer.alloc(16),
    parentTimestamp: 0,
    parentName: '',
    locators: emptyLocators(),
  };
  await writeNew(file, baseFooter(virtualSize, DISK_DYNAMIC), header, l.batBytes, []);
  return Vhd.open(file);
}

/** UTF-16LE path with a reserved sector-padded slot. */
function locatorData(code: number, s: string): Buffer {
  return code === PLAT_MACX ? Buffer.from(s, 'utf8') : Buffer.from(s, 'utf16le');
}

export async function createDifferencing(file: string, parentPath: string, opts: CreateOptions = {}): Promise<Vhd> {
  const parent = await Vhd.open(parentPath, { readOnly: true });
  let parentUuid: Buffer, size: number;
  try {
    parentUuid = Buffer.from(parent['footer'].uuid);
    size = parent.virtualSize;
  } finally {
    await parent.close();
  }
  const absParent = path.resolve(parentPath);
  const locs = buildLocators(file, absParent);
  const locators = emptyLocators();
  const extra: Array<[Buffer, number]> = [];
  let at = HEADER_OFFSET + HEADER_SIZE;
  locs.forEach(([code, data], i) => {
    const space = roundUp(Math.max(data.length, 1), SECTOR);
    locators[i] = { code, space, length: data.length, offset: at } satisfies Locator;
    extra.push([data, at]);
    at += space;
  });
  const l = batLayout(at, size, opts);
  const header: Header = {
    tableOffset: l.tableOffset,
    maxTableEntries: l.entries,
    blockSize: l.blockSize,
    parentUuid,
    parentTimestamp: vhdTime((await stat(absParent)).mtimeMs),
    parentName: path.basename(absParent),
    locators,
  };
  await writeNew(file, baseFooter(size, DISK_DIFFERENCING), header, l.batBytes, extra);
  return Vhd.open(file);
}

export function open(file: string, opts: OpenOptions = {}): Promise<Vhd> {
  return Vhd.open(file, opts);
}

/**
 * Copy every sector the child holds into its parent (vhd-util coalesce). The parent is grown first
 * if the child is larger. Streams run by run; the child is left untouched.
 */
export interface CoalesceOptions {
  /** Checked between runs: an aborted copy stops with the signal's reason (the parent keeps what was copied). */
  signal?: AbortSignal;
  /** Called after each run is written (progress, tests' crash points). */
  onRun?(bytes: number): void | Promise<void>;
}

export async function coalesceInto(child: Vhd, parent: Vhd, opts: CoalesceOptions = {}): Promise<void> {
  if (parent.virtualSize < child.virtualSize) await parent.resize(child.virtualSize);
  const bs = child.blockSize;
  for (const block of child.allocatedBlocks()) {
    const present = await child.sectorPresent(block);
    const spb = bs / SECTOR;
    let s = 0;
    while (s < spb) {
      if (!present(s)) {
        s++;
        continue;
      }
      let e = s + 1;
      while (e < spb && present(e) && (e - s) * SECTOR < MAX_RUN) e++;
      const off = block * bs + s * SECTOR;
      const len = Math.min((e - s) * SECTOR, child.virtualSize - off);
      opts.signal?.throwIfAborted();
      if (len > 0) {
        await parent.write(off, await child.read(off, len));
        await opts.onRun?.(len);
      }
      s = e;
    }
  }
}
