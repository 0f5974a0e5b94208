// XVA: XenServer's VM export format (GET /export, PUT /import), the format layer only.
//
// Layout (xapi ocaml/xapi/export.ml, stream_vdi.ml, import.ml):
//   ova.xml                      metadata, see ./ova.ts
//   Ref:<n>/00000000             1 MiB chunk of VDI Ref:<n> (the last one may be shorter)
//   Ref:<n>/00000000.xxhash      XXH64 (seed 0) of the chunk, 16 uppercase hex digits
//   Ref:<n>/00000003             ... chunks 1 and 2 were all zeros and are omitted
//   ...                          (the first and last chunks are always present)
//   Ref:<m>/00000000             next VDI; VDIs in lexicographic order of their Ref name
//   two zero blocks              end of archive
// Older exports carry SHA-1 (lowercase hex) in `.checksum` members instead of `.xxhash`; exports
// with export_vsn < 2 also end with a checksum table member (an XML-RPC struct name -> checksum).
// There are no directory members.
//
// The importer places data by counting, as xapi does: each chunk lands right after the previous
// one plus one "first chunk length" per missing chunk number. (xapi's exporter may emit empty
// keep-alive chunks on slow links, which shift the numbering; counting keeps them harmless.)
import { Readable, pipeline } from 'node:stream';
import * as zlib from 'node:zlib';
import { createHash } from 'node:crypto';
import xxhash from 'xxhash-wasm';
import {
  BLOCK,
  ByteSource,
  PrematureEof,
  TarFormatError,
  ZERO_BLOCK,
  decodeHeader,
  encodeHeader,
  headerChecksumOk,
  nextEntry,
  padding,
  type TarEntry,
} from './tar.js';
import { OvaXmlError, XVA_EXPORT_VSN, buildOvaXml, parseOvaXml, type XvaHeader, type XvaMetadata, type XvaObject } from './ova.js';
import { parseXmlRpcResponse } from '../../rpc/xmlrpc.js';
import { isStruct } from '../../rpc/rpc.js';

export { buildOvaXml, parseOvaXml, OvaXmlError, XVA_EXPORT_VSN };
export type { XvaHeader, XvaObject, XvaMetadata };

/** Chunk size inside the archive (Stream_vdi.chunk_size). */
export const XVA_CHUNK_SIZE = 1024 * 1024;
export const OVA_XML = 'ova.xml';

const ZERO_CHUNK = Buffer.alloc(XVA_CHUNK_SIZE);

function isAllZero(b: Buffer): boolean {
  for (let off = 0; off < b.length; off += XVA_CHUNK_SIZE) {
    const end = Math.min(b.length, off + XVA_CHUNK_SIZE);
    if (!b.subarray(off, end).equals(ZERO_CHUNK.subarray(0, end - off))) return false;
  }
  return true;
}

/** Chunk member name: "<ref>/%08d". */
export function chunkName(ref: string, n: number): string {
  return `${ref}/${String(n).padStart(8, '0')}`;
}

// xxhash-wasm needs an async instantiation; do it once, on first use.
let hasher: Promise<(b: Uint8Array) => bigint> | undefined;
function getXxh64(): Promise<(b: Uint8Array) => bigint> {
  hasher ??= xxhash().then((api) => (b: Uint8Array) => api.h64Raw(b, 0n));
  return hasher;
}

/** `Printf.sprintf "%016LX" (XXH64.hash data)`: seed 0, uppercase, zero-padded. */
export async function xxhashHex(data: Uint8Array): Promise<string> {
  const h = await getXxh64();
  return h(data).toString(16).toUpperCase().padStart(16, '0');
}

/** `Sha1.to_hex`: lowercase. */
export function sha1Hex(data: Uint8Array): string {
  return createHash('sha1').update(data).digest('hex');
}

// Lexicographic byte order of the names, as OCaml's `compare` on strings (Stream_vdi.vdi_ordering).
const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

function zstdAvailable(): boolean {
  return typeof (zlib as unknown as { createZstdDecompress?: unknown }).createZstdDecompress === 'function';
}

// ---------------------------------------------------------------------------------------------
// Export

/** A disk to stream into the archive. */
export interface XvaDisk {
  /** Export-local Ref id of the VDI ("Ref:3"): the directory name of its chunks. */
  id: string;
  /** Virtual size in bytes. */
  size: number;
  /**
   * Reads exactly `length` bytes at `offset` (offset + length <= size). The buffer only needs to
   * stay valid until the next call: the writer copies the chunks it emits. Reusing one buffer
   * matters for big sparse disks, where allocating a fresh MiB per chunk costs more than the read.
   */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Optional: the ranges that may hold non-zero data, in increasing offset order, so holes of a
   * sparse disk are never read. Chunks outside every range are treated as zeros.
   */
  allocated?(): AsyncIterable<{ offset: number; length: number }>;
}

export type XvaCompression = 'none' | 'gzip' | 'zstd';

export interface WriteXvaOptions {
  header: XvaHeader;
  objects: XvaObject[];
  disks: XvaDisk[];
  compression?: XvaCompression;
  /** Called after each chunk with (disk bytes covered so far) / (total virtual size). */
  onProgress?(fraction: number): void;
  signal?: AbortSignal;
  /** mtime written for ova.xml (seconds since the epoch); chunks get 0, as xapi writes them. */
  mtime?: number;
}

function member(name: string, data: Buffer, mtime = 0): Buffer[] {
  const out = [encodeHeader(name, data.length, mtime), data];
  const pad = padding(data.length);
  if (pad) out.push(ZERO_BLOCK.subarray(0, pad));
  return out;
}

/** Ascending chunk numbers that overlap the allocated ranges, always including 0 and `last`. */
async function* chunksToVisit(disk: XvaDisk, last: number): AsyncGenerator<number> {
  if (!disk.allocated) {
    for (let i = 0; i <= last; i++) yield i;
    return;
  }
  let next = 0; // lowest chunk number not yet yielded
  for await (const r of disk.allocated()) {
    if (r.length <= 0) continue;
    const first = Math.floor(r.offset / XVA_CHUNK_SIZE);
    if (first > last) continue; // a range past the end of the disk
    const end = Math.min(last, Math.floor((r.offset + r.length - 1) / XVA_CHUNK_SIZE));
    if (next === 0 && first > 0) {
      yield 0;
      next = 1;
    }
    for (let i = Math.max(first, next); i <= end; i++) yield i;
    next = Math.max(next, end + 1);
    if (next > last) return;
  }
  if (next === 0) {
    yield 0;
    next = 1;
  }
  if (next <= last) yield last;
}

async function* xvaBlocks(opts: WriteXvaOptions): AsyncGenerator<Buffer> {
  const { signal } = opts;
  const disks = [...opts.disks].sort((a, b) => byName(a.id, b.id));
  for (const d of disks) {
    if (!Number.isSafeInteger(d.size) || d.size < 0) throw new RangeError(`disk ${d.id}: bad size ${d.size}`);
    // Chunk names are "<id>/%08d(.xxhash)" and must fit the 100-byte ustar name field.
    if (d.id === '' || d.id.includes('/') || Buffer.byteLength(d.id) > 80)
      throw new RangeError(`disk id ${JSON.stringify(d.id)} cannot be a tar directory name`);
  }
  const xml = Buffer.from(buildOvaXml(opts.header, opts.objects), 'utf8');
  yield* member(OVA_XML, xml, opts.mtime ?? Math.floor(Date.now() / 1000));

  const total = disks.reduce((s, d) => s + d.size, 0);
  let done = 0;
  const h64 = await getXxh64();
  for (const d of disks) {
    if (d.size === 0) continue;
    const last = Math.ceil(d.size / XVA_CHUNK_SIZE) - 1;
    for await (const i of chunksToVisit(d, last)) {
      signal?.throwIfAborted();
      const offset = i * XVA_CHUNK_SIZE;
      const length = Math.min(XVA_CHUNK_SIZE, d.size - offset);
      const data = await d.read(offset, length);
      if (data.length !== length) throw new Error(`disk ${d.id}: read ${data.length} bytes at ${offset}, expected ${length}`);
      // Zero chunks are left out (a gap means zeros), but the first and last always go in:
      // the importer learns the chunk length from the first and the disk's end from the last.
      if (i === 0 || i === last || !isAllZero(data)) {
        const name = chunkName(d.id, i);
        const sum = h64(data).toString(16).toUpperCase().padStart(16, '0');
        // A copy: the disk may reuse its buffer while this one still sits in stream buffers.
        yield* member(name, Buffer.from(data));
        yield* member(name + '.xxhash', Buffer.from(sum, 'ascii'));
      }
      // Holes skipped thanks to allocated() count as streamed.
      if (opts.onProgress && total > 0) opts.onProgress((done + offset + length) / total);
    }
    done += d.size;
  }
  if (opts.onProgress) opts.onProgress(1);
  yield ZERO_BLOCK;
  yield ZERO_BLOCK;
}

/**
 * Streams an XVA. Memory stays bounded (about one chunk plus the stream buffers): chunks are read
 * only when the consumer asks for more. Abort through `signal` or by destroying the stream.
 */
export function writeXva(opts: WriteXvaOptions): Readable {
  const compression = opts.compression ?? 'none';
  if (compression === 'zstd' && typeof (zlib as unknown as { createZstdCompress?: unknown }).createZstdCompress !== 'function') {
    throw new XvaExportError('zstd compression is not supported by this Node.js runtime');
  }
  const tar = Readable.from(xvaBlocks(opts), { objectMode: false, highWaterMark: 256 * 1024 });
  if (opts.signal) {
    const signal = opts.signal;
    const onAbort = () => tar.destroy(signal.reason instanceof Error ? signal.reason : new Error('export aborted'));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    tar.once('close', () => signal.removeEventListener('abort', onAbort));
  }
  return compress(tar, compression);
}

function compress(tar: Readable, compression: XvaCompression): Readable {
  if (compression === 'none') return tar;
  let z: zlib.Gzip;
  if (compression === 'gzip') z = zlib.createGzip();
  else z = (zlib as unknown as { createZstdCompress(): zlib.Gzip }).createZstdCompress();
  // pipeline destroys both on error, so a failing disk read reaches the consumer as an error.
  pipeline(tar, z, () => {});
  return z;
}

/** A tar holding only ova.xml: the /export_metadata body. */
export function writeMetadataTar(header: XvaHeader, objects: XvaObject[], mtime = Math.floor(Date.now() / 1000)): Readable {
  const xml = Buffer.from(buildOvaXml(header, objects), 'utf8');
  return Readable.from([...member(OVA_XML, xml, mtime), ZERO_BLOCK, ZERO_BLOCK], { objectMode: false });
}

/** Raised by writeXva for requests it cannot serve. */
export class XvaExportError extends Error {}

// ---------------------------------------------------------------------------------------------
// Import

/** An import failure, as the XenAPI error xapi's import handler reports. */
export class XvaImportError extends Error {
  constructor(
    /** IMPORT_ERROR, IMPORT_ERROR_PREMATURE_EOF, IMPORT_ERROR_UNEXPECTED_FILE or IMPORT_ERROR_SOME_CHECKSUMS_FAILED. */
    readonly code: string,
    readonly params: string[],
  ) {
    super(params.length ? `${code}: ${params.join('; ')}` : code);
  }
}

const importError = (msg: string) => new XvaImportError('IMPORT_ERROR', [msg]);

/** Where the importer writes one VDI's data. */
export interface XvaDiskTarget {
  /** Bytes of disk data expected in the archive (the VDI's virtual_size). */
  size: number;
  /** Writes data at offset. Regions never written must read as zeros (fresh sparse disk). */
  write(offset: number, data: Buffer): Promise<void>;
}

export interface ReadXvaOptions {
  /** Import even if checksums do not match (xapi's `force`). */
  force?: boolean;
  /**
   * Called once, after ova.xml: create the VDIs and return a target per VDI Ref id whose data
   * the archive carries (xapi: the disk VDIs of non-CD VBDs not in ISO SRs). Disks are then
   * read in lexicographic order of these ids. Throwing aborts the import with that error.
   */
  onMetadata(meta: XvaMetadata): Promise<Map<string, XvaDiskTarget>>;
  /** (bytes of disk received, holes included) / (total size of the targets). */
  onProgress?(fraction: number): void;
  signal?: AbortSignal;
  /** Read the rest of the input after the last disk (default true), so an HTTP body is consumed. */
  drain?: boolean;
}

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);

interface OpenArchive {
  src: ByteSource;
  /** First header block (already read). */
  first: Buffer;
  close(): void;
}

/**
 * Like xapi's with_open_archive: if the first block is a tar header, read the stream as is;
 * otherwise decompress (zstd if it starts with the zstd magic, else gzip).
 */
async function openArchive(input: Readable): Promise<OpenArchive> {
  const raw = new ByteSource(input[Symbol.asyncIterator]());
  const first = await raw.readUpTo(BLOCK);
  if (first.length === BLOCK && headerChecksumOk(first) && !first.equals(ZERO_BLOCK)) {
    return { src: raw, first, close: () => {} };
  }
  let z: zlib.Gunzip;
  if (first.subarray(0, 4).equals(ZSTD_MAGIC)) {
    if (!zstdAvailable()) throw importError('zstd compression is not supported');
    z = (zlib as unknown as { createZstdDecompress(): zlib.Gunzip }).createZstdDecompress();
  } else if (first.subarray(0, 2).equals(GZIP_MAGIC)) {
    z = zlib.createGunzip();
  } else {
    if (first.length < BLOCK) throw new PrematureEof();
    throw importError('the input is neither a tar archive nor gzip or zstd compressed');
  }
  // Feed the decompressor from the raw input with backpressure.
  let stopped = false;
  const pump = async () => {
    const waitDrain = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          z.off('drain', done);
          z.off('close', done);
          resolve();
        };
        z.on('drain', done);
        z.on('close', done);
      });
    try {
      if (!z.write(first)) await waitDrain();
      for (const b of raw.buffered()) if (!z.write(b)) await waitDrain();
      const it = raw.iterator;
      while (!stopped && !z.destroyed) {
        const r = await it.next();
        if (r.done) break;
        if (!z.write(r.value)) await waitDrain();
      }
      if (!z.destroyed) z.end();
    } catch (e) {
      z.destroy(e as Error);
    }
  };
  void pump();
  const src = new ByteSource(z[Symbol.asyncIterator]());
  const h = await src.read(BLOCK).catch((e) => {
    throw mapDecompressError(e);
  });
  return {
    src,
    first: h,
    close: () => {
      stopped = true;
      z.destroy();
    },
  };
}

function mapDecompressError(e: unknown): unknown {
  if (e instanceof PrematureEof || e instanceof XvaImportError || e instanceof TarFormatError) return e;
  const err = e as NodeJS.ErrnoException | undefined;
  // zlib reports a truncated stream as "unexpected end of file" with code Z_BUF_ERROR.
  if (err?.code === 'Z_BUF_ERROR') return new PrematureEof();
  if (typeof err?.code === 'string' && err.code.startsWith('Z_')) return importError(`decompression failed: ${err.message}`);
  return e;
}

/** The message xapi puts in IMPORT_ERROR for an exception its error mapper does not know. */
function internal(exn: string, msg: string): XvaImportError {
  return importError(`INTERNAL_ERROR: [ ${exn}(${JSON.stringify(msg)}) ]`);
}

/** Caps on members that are buffered whole. */
const MAX_OVA_XML = 256 * 1024 * 1024;
const MAX_CHECKSUM_MEMBER = 4096;

/**
 * Imports an XVA: parses ova.xml, hands the metadata to onMetadata, then writes every disk chunk
 * to its target, verifying checksums. Rejects with XvaImportError (or onMetadata's / a target's
 * own error). Compressed input (gzip, zstd where Node.js has it) is detected automatically.
 */
export async function readXva(input: Readable, opts: ReadXvaOptions): Promise<void> {
  let archive: OpenArchive | undefined;
  try {
    archive = await openArchive(input);
    await importArchive(archive, opts);
    if (opts.drain ?? true) await archive.src.drain();
  } catch (e) {
    throw toImportError(mapDecompressError(e));
  } finally {
    archive?.close();
  }
}

function toImportError(e: unknown): unknown {
  if (e instanceof XvaImportError) return e;
  if (e instanceof PrematureEof) return new XvaImportError('IMPORT_ERROR_PREMATURE_EOF', []);
  if (e instanceof TarFormatError || e instanceof OvaXmlError) return importError(e.message);
  return e; // the caller's own errors (onMetadata, target writes, abort) pass through unchanged
}

async function importArchive(archive: OpenArchive, opts: ReadXvaOptions): Promise<void> {
  const { src } = archive;
  const { signal } = opts;
  const force = opts.force ?? false;

  const hdr = await nextEntry(src, archive.first);
  if (hdr === null) throw new PrematureEof();
  if (hdr.name !== OVA_XML) throw new XvaImportError('IMPORT_ERROR_UNEXPECTED_FILE', [OVA_XML, hdr.name]);
  if (hdr.size > MAX_OVA_XML) throw importError(`ova.xml too large (${hdr.size} bytes)`);
  const xml = (await src.read(hdr.size)).toString('utf8');
  await src.skip(padding(hdr.size));
  const meta = parseOvaXml(xml);

  const targets = await opts.onMetadata(meta);
  const ids = [...targets.keys()].sort(byName);
  const total = ids.reduce((s, id) => s + targets.get(id)!.size, 0);
  let done = 0;

  const exportVsn = meta.header.export_vsn;
  const verifyInline = exportVsn > 0 && !force;
  // Pre-Miami exports (export_vsn < 2) end with a table of checksums to compare against.
  const table: Map<string, string> | undefined = exportVsn < 2 ? new Map() : undefined;
  const h64 = await getXxh64();

  /** The next file member, skipping directory entries (xapi never writes them; other tools might). */
  const nextFile = async (): Promise<TarEntry> => {
    for (;;) {
      const e = await nextEntry(src);
      if (e === null) throw new PrematureEof(); // end-of-archive marker while data was still expected
      if (e.type === '5') {
        await src.skip(e.size + padding(e.size));
        continue;
      }
      return e;
    }
  };

  for (const id of ids) {
    const target = targets.get(id)!;
    const prefix = id + '/';
    let offset = 0;
    let last = -1;
    let gapUnit = -1; // length of this disk's first chunk: the size of each omitted chunk
    while (offset < target.size) {
      signal?.throwIfAborted();
      const e = await nextFile();
      if (!e.name.startsWith(prefix))
        throw internal('Stream_vdi.Failure', `Invalid XVA file: expected VDI chunk prefixed ${id}; got ${e.name}`);
      const suffix = e.name.slice(prefix.length);
      if (!/^\d+$/.test(suffix)) throw internal('Stream_vdi.Failure', `Invalid XVA file: unexpected member ${e.name}`);
      const n = parseInt(suffix, 10);
      if (n <= last) throw internal('Stream_vdi.Failure', `Invalid XVA file: chunk ${e.name} does not increase (last = ${last})`);
      if (gapUnit < 0) gapUnit = e.size;
      const skipped = (n - last - 1) * gapUnit;
      offset += skipped;
      if (offset + e.size > target.size) throw importError(`chunk ${e.name} lies beyond the end of the disk (${target.size} bytes)`);
      const data = await src.read(e.size);
      await src.skip(padding(e.size));

      const c = await nextFile();
      let computed: string;
      if (c.name.endsWith('.xxhash')) computed = h64(data).toString(16).toUpperCase().padStart(16, '0');
      else if (c.name.endsWith('.checksum')) computed = sha1Hex(data);
      else throw internal('Stream_vdi.Failure', `Found unsupported checksum file: ${c.name}`);
      if (c.name.slice(0, c.name.lastIndexOf('.')) !== e.name)
        throw internal('Stream_vdi.Failure', `checksum member ${c.name} does not follow its chunk ${e.name}`);
      if (c.size > MAX_CHECKSUM_MEMBER) throw importError(`checksum member ${c.name} too large`);
      const stored = (await src.read(c.size)).toString('latin1');
      await src.skip(padding(c.size));
      table?.set(e.name, computed);
      // Compared exactly, as xapi does (so case matters: xxhash upper, SHA-1 lower).
      if (verifyInline && stored !== computed) {
        throw internal('Stream_vdi.Invalid_checksum', `Block ${e.name} checksum failed: original = ${stored}; recomputed = ${computed}`);
      }

      // Targets are fresh sparse disks: zeros need not be written.
      if (data.length > 0 && !isAllZero(data)) await target.write(offset, data);
      offset += data.length;
      last = n;
      if (opts.onProgress && total > 0) opts.onProgress((done + Math.min(offset, target.size)) / total);
    }
    done += target.size;
  }

  if (table) {
    // The checksum table member (any name): an XML-RPC struct of chunk name -> checksum.
    const e = await nextFile();
    if (e.size > MAX_OVA_XML) throw importError('checksum table too large');
    const xml = (await src.read(e.size)).toString('utf8');
    await src.skip(padding(e.size));
    let expected: Map<string, string>;
    try {
      const v = parseXmlRpcResponse(
        '<methodResponse><params><param>' + xml.replace(/^\uFEFF?\s*<\?xml[^>]*\?>/, '') + '</param></params></methodResponse>',
      );
      if (!isStruct(v)) throw new Error('not a struct');
      expected = new Map(Object.entries(v).map(([k, x]) => [k, String(x)]));
    } catch (err) {
      throw importError(`invalid checksum table: ${(err as Error).message}`);
    }
    let ok = true;
    for (const [name, sum] of table) if (expected.get(name) !== sum) ok = false;
    if (!ok && !force) throw new XvaImportError('IMPORT_ERROR_SOME_CHECKSUMS_FAILED', []);
  }
}

// Exposed for tests and tools that inspect archives.
export { decodeHeader, encodeHeader, nextEntry, ByteSource, PrematureEof, TarFormatError };
