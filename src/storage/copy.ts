// Block-wise disk copy, as xapi's sparse_dd: only what holds data is written, and with a base
// only the blocks that differ from it (a delta onto a copy of the base).
import type { OpenDisk } from './driver.js';

const CHUNK = 2 * 1024 * 1024;

/** Offsets of the CHUNK-sized pieces that may hold data: every piece, or a VHD chain's allocated blocks. */
export function candidateChunks(disk: OpenDisk): number[] {
  const vhd = disk.vhd;
  if (!vhd || vhd.type === 'fixed' || vhd.blockSize !== CHUNK) {
    return Array.from({ length: Math.ceil(disk.size / CHUNK) }, (_, i) => i * CHUNK);
  }
  const blocks = new Set<number>();
  for (let node: typeof vhd | null = vhd; node; node = node.parent) {
    if (node.type === 'fixed') return Array.from({ length: Math.ceil(disk.size / CHUNK) }, (_, i) => i * CHUNK);
    for (const b of node.allocatedBlocks()) blocks.add(b);
  }
  return [...blocks]
    .sort((a, b) => a - b)
    .map((b) => b * CHUNK)
    .filter((o) => o < disk.size);
}

const isZero = (b: Buffer) => b.every((x) => x === 0);

/**
 * Copies src into dst (dst at least as large, freshly created or holding `base`'s content).
 * With `base`, pieces equal to base's are skipped; otherwise all-zero pieces are.
 */
export async function copyDisk(
  src: OpenDisk,
  dst: OpenDisk,
  opts: { base?: OpenDisk; onProgress?(f: number): Promise<void> | void; checkCancelled?(): Promise<void> } = {},
): Promise<void> {
  // Where the base holds data the source may hold zeros: those pieces are compared too.
  const chunks = opts.base
    ? [...new Set([...candidateChunks(src), ...candidateChunks(opts.base).filter((o) => o < src.size)])].sort((a, b) => a - b)
    : candidateChunks(src);
  let done = 0;
  let lastReported = -1;
  for (const off of chunks) {
    const len = Math.min(CHUNK, src.size - off);
    const data = await src.read(off, len);
    const skip = opts.base ? off + len <= opts.base.size && (await opts.base.read(off, len)).equals(data) : isZero(data);
    if (!skip) await dst.write(off, data);
    done++;
    const pct = Math.floor((done / chunks.length) * 100);
    if (pct !== lastReported) {
      lastReported = pct;
      await opts.onProgress?.(done / chunks.length);
      await opts.checkCancelled?.();
    }
  }
}
