// Minimal tar support for XVA streams: a header encoder for the writer and a pull-based reader.
//
// Why not a general tar library: an XVA is a flat sequence of small regular files (ova.xml, 1 MiB
// chunks, 16-byte checksums), and the importer needs to pull exact byte counts with backpressure
// and to tell a truncated stream (IMPORT_ERROR_PREMATURE_EOF) from a corrupt one. A dozen lines of
// header code give that control directly.
//
// xapi writes its headers with ocaml-tar's default compatibility level (V7: no "ustar" magic, type
// flag NUL, mode 0400, uid/gid 0). We write POSIX ustar headers instead (type '0'), which every
// reader, xapi's included, accepts. The reader accepts V7, ustar, GNU and pax headers.

export const BLOCK = 512;
export const ZERO_BLOCK: Buffer = Buffer.alloc(BLOCK);

/** Raised when the input ends in the middle of the archive (maps to IMPORT_ERROR_PREMATURE_EOF). */
export class PrematureEof extends Error {
  constructor(what = 'unexpected end of input') {
    super(what);
  }
}

/** Raised for malformed archives (maps to IMPORT_ERROR). */
export class TarFormatError extends Error {}

/** Zero bytes needed after a member of `size` bytes to reach the next 512-byte boundary. */
export function padding(size: number): number {
  const r = size % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}

function writeOctal(block: Buffer, value: number, offset: number, width: number): void {
  // width-1 octal digits then NUL, as POSIX and ocaml-tar both write them.
  const s = value.toString(8).padStart(width - 1, '0');
  if (s.length > width - 1) throw new RangeError(`tar field overflow: ${value}`);
  block.write(s, offset, width - 1, 'ascii');
  block[offset + width - 1] = 0;
}

/** A ustar header for a regular file. Names must be ASCII and at most 100 bytes. */
export function encodeHeader(name: string, size: number, mtime = 0): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length > 100) throw new RangeError(`tar member name too long: ${name}`);
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad tar member size ${size}`);
  const h = Buffer.alloc(BLOCK);
  nameBytes.copy(h, 0);
  writeOctal(h, 0o644, 100, 8); // mode
  writeOctal(h, 0, 108, 8); // uid
  writeOctal(h, 0, 116, 8); // gid
  if (size > 0o77777777777) {
    // GNU base-256 for sizes over 8 GiB (never needed for XVA members, kept for completeness).
    h[124] = 0x80;
    let v = BigInt(size);
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  } else {
    writeOctal(h, size, 124, 12);
  }
  writeOctal(h, Math.max(0, Math.floor(mtime)), 136, 12);
  h[156] = 0x30; // '0': regular file
  h.write('ustar\u000000', 257, 8, 'binary'); // magic "ustar\0" + version "00"
  // Checksum: sum of all bytes with the checksum field counted as spaces.
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\u0000 ', 148, 8, 'binary');
  return h;
}

// ---------------------------------------------------------------------------------------------
// Reading

/**
 * Pulls exact byte counts out of an async iterator of Buffers (a Readable's iterator). Only what
 * is asked for is requested from the source, so a slow consumer exerts backpressure upstream.
 */
export class ByteSource {
  private bufs: Buffer[] = [];
  private have = 0;
  private ended = false;
  /** Total bytes handed out so far (for diagnostics). */
  consumed = 0;

  constructor(private readonly it: AsyncIterator<Buffer | string>) {}

  private async fill(n: number): Promise<void> {
    while (this.have < n && !this.ended) {
      let r: IteratorResult<Buffer | string>;
      try {
        r = await this.it.next();
      } catch (e) {
        // A connection that drops mid-upload is a truncated archive, like xapi's End_of_file.
        const code = (e as NodeJS.ErrnoException | undefined)?.code;
        if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'EPIPE')
          throw new PrematureEof(`input ended: ${code}`);
        throw e;
      }
      if (r.done) {
        this.ended = true;
        break;
      }
      const b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
      if (b.length === 0) continue;
      this.bufs.push(b);
      this.have += b.length;
    }
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    let out: Buffer;
    const first = this.bufs[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.bufs.shift();
      else this.bufs[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const b = this.bufs[0]!;
        const k = Math.min(b.length, n - off);
        b.copy(out, off, 0, k);
        off += k;
        if (k === b.length) this.bufs.shift();
        else this.bufs[0] = b.subarray(k);
      }
    }
    this.have -= n;
    this.consumed += n;
    return out;
  }

  /** Exactly n bytes, or PrematureEof. */
  async read(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    await this.fill(n);
    if (this.have < n) throw new PrematureEof();
    return this.take(n);
  }

  /** Up to n bytes (fewer only at the end of the input). */
  async readUpTo(n: number): Promise<Buffer> {
    await this.fill(n);
    return this.take(Math.min(n, this.have));
  }

  async skip(n: number): Promise<void> {
    while (n > 0) {
      const k = Math.min(n, 1 << 20);
      await this.read(k);
      n -= k;
    }
  }

  /** Consumes and discards everything left. */
  async drain(): Promise<void> {
    this.bufs = [];
    this.have = 0;
    while (!this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
    }
  }

  /** Bytes already buffered (not yet consumed), for handing over to another consumer. */
  buffered(): Buffer[] {
    const b = this.bufs;
    this.bufs = [];
    this.have = 0;
    return b;
  }

  get iterator(): AsyncIterator<Buffer | string> {
    return this.it;
  }
}

export interface TarEntry {
  name: string;
  size: number;
  /** '0' regular, '5' directory, ... (NUL is reported as '0'). */
  type: string;
}

function cstr(b: Buffer, off: number, len: number): string {
  const end = b.indexOf(0, off);
  return b.toString('utf8', off, end < 0 || end > off + len ? off + len : end);
}

function parseNumber(b: Buffer, off: number, len: number): number {
  if (b[off]! & 0x80) {
    // GNU base-256 (positive only).
    let v = BigInt(b[off]! & 0x7f);
    for (let i = off + 1; i < off + len; i++) v = (v << 8n) | BigInt(b[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarFormatError('tar number too large');
    return Number(v);
  }
  const s = b
    .toString('latin1', off, off + len)
    .replace(/[\0 ]+$/, '')
    .replace(/^[\0 ]+/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`invalid tar number field "${s}"`);
  return parseInt(s, 8);
}

/** True iff the block's checksum field matches (unsigned or, as some old tars wrote, signed sum). */
export function headerChecksumOk(h: Buffer): boolean {
  let stored: number;
  try {
    stored = parseNumber(h, 148, 8);
  } catch {
    return false;
  }
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return stored === unsigned || stored === signed;
}

function isZero(b: Buffer): boolean {
  return b.equals(ZERO_BLOCK);
}

/** Decodes one raw header block (no pax/GNU extension processing). */
export function decodeHeader(h: Buffer): TarEntry {
  if (!headerChecksumOk(h)) throw new TarFormatError('invalid tar header checksum');
  let name = cstr(h, 0, 100);
  const magic = h.toString('latin1', 257, 262);
  if (magic === 'ustar') {
    const prefix = cstr(h, 345, 155);
    // GNU "ustar  " headers use this area for other things; only POSIX ustar has a prefix.
    if (prefix && h[262] === 0) name = prefix + '/' + name;
  }
  const t = h[156]!;
  return { name, size: parseNumber(h, 124, 12), type: t === 0 ? '0' : String.fromCharCode(t) };
}

/** Parses pax extended header records ("<len> key=value\n"). */
function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let off = 0;
  while (off < data.length) {
    const sp = data.indexOf(0x20, off);
    if (sp < 0) break;
    const len = parseInt(data.toString('ascii', off, sp), 10);
    if (!(len > 0) || off + len > data.length) throw new TarFormatError('invalid pax header');
    const rec = data.toString('utf8', sp + 1, off + len - 1);
    const eq = rec.indexOf('=');
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    off += len;
  }
  return out;
}

/** Metadata members larger than this are refused rather than buffered. */
const MAX_META_MEMBER = 1 << 20;

/**
 * Reads the next member header, applying pax ('x'), GNU long name ('L') records and skipping
 * global headers. Returns null at the end-of-archive marker. The member's data (size bytes plus
 * padding) is left in the source for the caller.
 */
export async function nextEntry(src: ByteSource, first?: Buffer): Promise<TarEntry | null> {
  let longName: string | undefined;
  let pax: Map<string, string> | undefined;
  let block: Buffer | undefined = first;
  for (;;) {
    const h = block ?? (await src.read(BLOCK));
    block = undefined;
    if (isZero(h)) return null;
    const e = decodeHeader(h);
    if (e.type === 'x' || e.type === 'g' || e.type === 'L' || e.type === 'K') {
      if (e.size > MAX_META_MEMBER) throw new TarFormatError(`tar extension header too large (${e.size} bytes)`);
      const data = await src.read(e.size);
      await src.skip(padding(e.size));
      if (e.type === 'x') pax = parsePax(data);
      else if (e.type === 'L') longName = cstr(data, 0, data.length);
      continue;
    }
    if (longName !== undefined) e.name = longName;
    if (pax) {
      const p = pax.get('path');
      if (p !== undefined) e.name = p;
      const s = pax.get('size');
      if (s !== undefined) {
        if (!/^\d+$/.test(s)) throw new TarFormatError('invalid pax size');
        e.size = Number(s);
      }
    }
    return e;
  }
}
