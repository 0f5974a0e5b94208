// A running domain's disk mirrored to a copy elsewhere during a storage migration (SM's
// DATA.MIRROR: tapdisk sends every guest write to the destination as well as to the leaf).
// The mirror is registered by the leaf file's path; every handle openDiskFile gives out (the
// domain's view of the disk) sends its writes through it once written locally. What a write
// sends is the whole 512-byte sectors it touched, read back from the leaf, so the destination
// can keep those sectors as the mirror gave them whatever the bulk copy brings later.
import { resolve } from 'node:path';
import { pauseLeaf } from './leaf-gate.js';

export const SECTOR = 512;

/** Where mirrored writes go: the copy, on this host or through the other host's connection. */
export interface MirrorSink {
  /** Sector-aligned data written by the guest at `offset`. */
  write(offset: number, data: Buffer): Promise<void>;
}

export interface Mirror {
  /** How many guest writes were mirrored so far. */
  readonly writes: number;
  /** The first failure of the sink, if any: the copy is no longer the disk's image. */
  readonly failed: Error | undefined;
  /** Stops mirroring (idempotent); writes after it are no longer sent. */
  stop(): void;
}

interface Registered {
  sink: MirrorSink;
  writes: number;
  failed: Error | undefined;
}

const mirrors = new Map<string, Registered>();

/**
 * Starts mirroring the leaf at `path` into `sink`. It waits until no handle on the leaf is open
 * (a write under way before the mirror started would not be sent), then registers the mirror:
 * every handle opened from then on sends its writes.
 */
export async function startMirror(path: string, sink: MirrorSink): Promise<Mirror> {
  const key = resolve(path);
  const entry: Registered = { sink, writes: 0, failed: undefined };
  await pauseLeaf(key, async () => {
    if (mirrors.has(key)) throw new Error(`${path} is mirrored already`);
    mirrors.set(key, entry);
  });
  return {
    get writes() {
      return entry.writes;
    },
    get failed() {
      return entry.failed;
    },
    stop() {
      if (mirrors.get(key) === entry) mirrors.delete(key);
    },
  };
}

/**
 * After a write of `length` bytes at `offset` landed in the leaf at `path`: sends the sectors it
 * touched (read back through `read`) to the leaf's mirror, if it has one. A failing sink does not
 * fail the guest's write (the leaf has it); the mirror is marked failed and the migration fails.
 */
export async function mirrorWrite(
  path: string,
  offset: number,
  length: number,
  size: number,
  read: (offset: number, length: number) => Promise<Buffer>,
): Promise<void> {
  const entry = mirrors.get(resolve(path));
  if (!entry || entry.failed || length === 0) return;
  const from = Math.floor(offset / SECTOR) * SECTOR;
  const to = Math.min(size, Math.ceil((offset + length) / SECTOR) * SECTOR);
  try {
    await entry.sink.write(from, await read(from, to - from));
    entry.writes++;
  } catch (e) {
    entry.failed = e instanceof Error ? e : new Error(String(e));
  }
}

/** Whether the leaf at `path` is mirrored now (for tests). */
export function isMirrored(path: string): boolean {
  return mirrors.has(resolve(path));
}

/**
 * The destination's side: which sectors a mirrored write gave, so that the bulk copy, which may
 * bring older data for them later, leaves them alone (xapi's mirror leaf over the copied parent).
 */
export class MirroredSectors {
  private readonly bits: Uint8Array;
  constructor(size: number) {
    this.bits = new Uint8Array(Math.ceil(Math.ceil(size / SECTOR) / 8));
  }

  mark(offset: number, length: number): void {
    for (let s = Math.floor(offset / SECTOR), end = Math.ceil((offset + length) / SECTOR); s < end; s++) {
      this.bits[s >> 3]! |= 1 << (s & 7);
    }
  }

  private has(s: number): boolean {
    return (this.bits[s >> 3]! & (1 << (s & 7))) !== 0;
  }

  /** The pieces of [offset, offset + length) no mirrored write gave (offset sector-aligned). */
  unmirrored(offset: number, length: number): { offset: number; length: number }[] {
    const out: { offset: number; length: number }[] = [];
    const end = offset + length;
    let start: number | undefined;
    for (let pos = offset; pos < end; pos += SECTOR) {
      const free = !this.has(Math.floor(pos / SECTOR));
      if (free && start === undefined) start = pos;
      if (!free && start !== undefined) {
        out.push({ offset: start, length: pos - start });
        start = undefined;
      }
    }
    if (start !== undefined) out.push({ offset: start, length: end - start });
    return out;
  }
}
