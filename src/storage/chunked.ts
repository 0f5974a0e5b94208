// xapi's chunked raw upload (PUT /import_raw_vdi?chunked, vhd-tool's chunked.ml): a sequence
// of chunks, each a 12-byte little-endian header {offset: uint64; length: uint32} followed by
// `length` bytes to write at `offset` of the disk, ended by a header of zeros. Clients use it to
// send only the parts of a disk that hold data.
import type { Readable } from 'node:stream';
import { ImportError, type ImportTarget } from './vhd/stream.js';

const HEADER = 12;
/** A chunk bigger than this is refused rather than buffered (vhd-tool's writers send ≤ 2 MiB). */
const MAX_CHUNK = 64 * 1024 * 1024;

/** Applies a chunked upload to `target`; returns the bytes written. */
export async function importChunked(
  input: Readable,
  target: ImportTarget & { size: number },
  opts: { onProgress?(bytes: number): void } = {},
): Promise<number> {
  let pending: Buffer[] = [];
  let have = 0;
  const it = input[Symbol.asyncIterator]();
  const take = async (n: number): Promise<Buffer | undefined> => {
    while (have < n) {
      const r = await it.next();
      if (r.done) return undefined;
      const b = Buffer.from(r.value as Uint8Array);
      pending.push(b);
      have += b.length;
    }
    const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending);
    const out = all.subarray(0, n);
    pending = all.length > n ? [all.subarray(n)] : [];
    have -= n;
    return out;
  };
  let written = 0;
  for (;;) {
    const h = await take(HEADER);
    if (!h) throw new ImportError('TRUNCATED', 'the upload ended before its end-of-stream chunk');
    const offset = h.readBigUInt64LE(0);
    const length = h.readUInt32LE(8);
    if (offset === 0n && length === 0) break;
    if (length > MAX_CHUNK) throw new ImportError('BAD_FORMAT', `chunk of ${length} bytes is too large`);
    if (offset + BigInt(length) > BigInt(target.size))
      throw new ImportError('TOO_LARGE', `chunk at ${offset} (+${length}) is beyond the end of the disk (${target.size})`);
    const data = await take(length);
    if (!data) throw new ImportError('TRUNCATED', `the upload ended inside the chunk at ${offset}`);
    await target.write(Number(offset), Buffer.from(data));
    written += length;
    opts.onProgress?.(written);
  }
  return written;
}
