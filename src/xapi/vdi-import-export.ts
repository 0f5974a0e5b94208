// What a VDI import or export does (xapi's import_raw_vdi.ml, export_raw_vdi.ml), for the
// handlers of PUT /import_raw_vdi and GET /export_raw_vdi (src/http/vdi-transfer.ts), which keep
// only the wire. Import: a new VDI (marked with its import task, so a crash leaves nothing) or an
// existing one, filled from a raw image, xapi's chunked raw format or a VHD; a VDI the import made
// is destroyed again if it fails, and a full SR is SR_FULL. Export: a VDI's content as a raw
// image or a VHD, a delta against a `base` VDI if one is given, never buffered whole.
import { Readable } from 'node:stream';
import type { Call } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { importChunked } from '../storage/chunked.js';
import type { OpenDisk } from '../storage/driver.js';
import type { ImportTarget, Vhd } from '../storage/vhd/index.js';
import { ImportError, exportRaw, exportVhd, importRaw, importVhd } from '../storage/vhd/index.js';
import { MAX_VHD_SIZE } from '../storage/vhd/format.js';
import type { Storage } from './storage.js';
import { createVdi, destroyVdi, openVdi } from './vdi.js';
import { transferHost } from './forward.js';

export type { Storage } from './storage.js';

/**
 * The address of the host a transfer of this SR's disks must be redirected to, or undefined to
 * serve it here (import_raw_vdi.ml, export_raw_vdi.ml: a host sees only its plugged SRs).
 */
export async function vdiTransferHost(call: Call, target: { vdi?: string; sr?: string }): Promise<string | undefined> {
  const sr = target.vdi ? (await call.db.get('VDI', target.vdi)).SR : target.sr;
  return sr ? transferHost(call, [sr]) : undefined;
}

/** The formats of a disk's content on the wire. */
export type DiskFormat = 'raw' | 'vhd';

/** The stream-layer failures as the XenAPI errors a client sees on the task. */
function transferError(e: unknown, vdi: string, size: number): unknown {
  if (!(e instanceof ImportError)) {
    const code = (e as NodeJS.ErrnoException)?.code;
    if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE') return new XapiError('VDI_IO_ERROR', ['Device I/O errors']);
    return e;
  }
  switch (e.code) {
    case 'TOO_LARGE':
      return new XapiError('VDI_TOO_LARGE', [vdi, String(size)]);
    case 'TRUNCATED':
      return new XapiError('VDI_IO_ERROR', ['Device I/O errors']);
    default:
      return new XapiError('IMPORT_ERROR', [e.message]);
  }
}

/** The VHD node of `leaf`'s chain holding the same content as `base`, for a delta export. */
async function deltaBase(leaf: Vhd, base: OpenDisk): Promise<string | undefined> {
  const chain = new Set<string>();
  for (let n: Vhd | null = leaf; n; n = n.parent) chain.add(n.uuid);
  // A snapshot leaf is empty: its content is its parent's; skip such nodes up the base's chain.
  for (let n: Vhd | null = base.vhd ?? null; n; n = n.parent) {
    if (n.allocatedBlocks().length === 0) continue;
    if (chain.has(n.uuid)) return n.uuid;
    throw new XapiError('VDI_INCOMPATIBLE_TYPE', ['', 'base is not an ancestor of the VDI']);
  }
  return undefined; // the base is all zeros: a full export is the delta
}

/**
 * A raw image written over an existing VHD-backed VDI, block by block, leaving out what would not
 * change the content: all-zero stretches on blocks no node of the chain holds (they read as zeros
 * already), and stretches equal to what the chain holds there. So uploading a whole image does not
 * allocate every block — the VDI stays sparse, and a delta export against a snapshot taken before
 * holds only the blocks whose content changed.
 */
function sparseTarget(disk: OpenDisk): ImportTarget {
  const vhd = disk.vhd;
  if (!vhd) return disk;
  const bs = vhd.blockSize;
  const held = new Set<number>();
  for (let n: Vhd | null = vhd; n; n = n.parent) {
    for (const b of n.allocatedBlocks()) {
      // Nodes may have other block sizes: mark every block of ours that the node's block overlaps.
      const from = Math.floor((b * n.blockSize) / bs);
      const to = Math.ceil(((b + 1) * n.blockSize) / bs);
      for (let i = from; i < to; i++) held.add(i);
    }
  }
  const isZero = (d: Buffer) => {
    for (let i = 0; i < d.length; i += ZEROS.length) {
      const piece = d.subarray(i, Math.min(d.length, i + ZEROS.length));
      if (!piece.equals(ZEROS.subarray(0, piece.length))) return false;
    }
    return true;
  };
  return {
    async write(offset, data) {
      // Split at block boundaries and merge the pieces that must be written into runs.
      let runStart = -1;
      let p = 0;
      while (p < data.length) {
        const block = Math.floor((offset + p) / bs);
        const end = Math.min(data.length, (block + 1) * bs - offset);
        const piece = data.subarray(p, end);
        const skip = held.has(block) ? piece.equals(await disk.read(offset + p, piece.length)) : isZero(piece);
        if (skip && runStart >= 0) {
          await disk.write(offset + runStart, data.subarray(runStart, p));
          runStart = -1;
        } else if (!skip && runStart < 0) runStart = p;
        if (!skip) held.add(block);
        p = end;
      }
      if (runStart >= 0) await disk.write(offset + runStart, data.subarray(runStart));
    },
  };
}
const ZEROS = Buffer.alloc(64 * 1024);

/**
 * The VDI an import of a `size`-byte raw image into `sr` makes. Its sm_config names the import's
 * task (import_task, as xapi's import), so a restart after a crash mid-import removes it.
 */
export async function createImportVdi(storage: Storage, call: Call, sr: string, size: number): Promise<string> {
  return createVdi(storage, call, sr, size, {
    name_label: 'Imported VDI',
    name_description: '',
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: {},
    xenstore_data: {},
    sm_config: { import_task: call.task },
    tags: [],
  });
}

/** A VDI open for an import: `fill` writes the body into it, closes it and updates its records. */
export interface VdiImport {
  fill(body: Readable, how: { format: DiskFormat; chunked: boolean }): Promise<void>;
}

/**
 * Opens `vdi` for an import; `made` says the import made it (createImportVdi), so it is written
 * whole (zeros skipped) and destroyed again if the import fails. Writes are made durable once, at
 * close: the import's result is only reported after that.
 */
export async function openVdiImport(storage: Storage, call: Call, vdi: string, made: boolean): Promise<VdiImport> {
  const srRef = (await call.db.get('VDI', vdi)).SR;
  const target = await openVdi(storage, vdi, false, { deferSync: true });
  const fill = async (body: Readable, { format, chunked }: { format: DiskFormat; chunked: boolean }) => {
    const onProgress = (f: number) => void call.setProgress(f);
    try {
      if (chunked) await importChunked(body, target);
      else if (format === 'raw')
        await importRaw(body, made ? target : sparseTarget(target), { size: target.size, exact: false, skipZeros: made, onProgress });
      else await importVhd(body, target, { onProgress });
    } catch (e) {
      await target.close().catch(() => undefined);
      if (made) await destroyVdi(storage, call, vdi).catch((err) => call.host.log.warn({ err, vdi }, 'removing a failed import'));
      // a full SR is SR_FULL, not an INTERNAL_ERROR about ENOSPC
      throw transferError(await storage.spaceError(e, srRef, target.size), vdi, target.size);
    }
    try {
      await target.close();
    } catch (e) {
      // the last writes (the VHD's allocation table) may find the disk full too
      if (made) await destroyVdi(storage, call, vdi).catch((err) => call.host.log.warn({ err, vdi }, 'removing a failed import'));
      throw await storage.spaceError(e, srRef, target.size);
    }
    await storage.updateVdi(vdi);
    await storage.updateStats(srRef);
  };
  return { fill };
}

/** What an export sends: the content's stream and length, and the VDI's uuid (to name the file). */
export interface VdiContent {
  uuid: string;
  stream: Readable;
  length: number;
}

/**
 * Exports a VDI's content in `format` (a VHD holding only what changed since `base`, if given):
 * opens the VDI (and the base), hands the content to `send`, and closes them once it is sent.
 */
export async function exportVdi(
  storage: Storage,
  call: Call,
  target: { vdi: string; base: string | undefined; format: DiskFormat },
  send: (content: VdiContent) => Promise<void>,
): Promise<void> {
  const { vdi, base: baseRef, format } = target;
  const row = await call.db.get('VDI', vdi);
  if (format === 'vhd' && row.virtual_size > MAX_VHD_SIZE) throw new XapiError('VDI_TOO_LARGE', [vdi, String(MAX_VHD_SIZE)]);
  const disk = await openVdi(storage, vdi, true);
  const base = baseRef ? await openVdi(storage, baseRef, true) : undefined;
  try {
    const onProgress = (f: number) => void call.setProgress(f);
    let stream: Readable & { length?: number };
    if (disk.vhd) {
      const baseUuid = base ? await deltaBase(disk.vhd, base) : undefined;
      stream = format === 'raw' ? exportRaw(disk.vhd, { onProgress }) : exportVhd(disk.vhd, { baseUuid, onProgress });
    } else {
      if (format !== 'raw') throw new XapiError('VDI_INCOMPATIBLE_TYPE', [vdi, 'not a VHD']);
      stream = Object.assign(Readable.from(rawChunks(disk)), { length: disk.size });
    }
    await send({ uuid: row.uuid, stream, length: stream.length! });
  } finally {
    await disk.close();
    await base?.close();
  }
}

async function* rawChunks(disk: OpenDisk): AsyncGenerator<Buffer> {
  const step = 2 * 1024 * 1024;
  for (let o = 0; o < disk.size; o += step) yield await disk.read(o, Math.min(step, disk.size - o));
}
