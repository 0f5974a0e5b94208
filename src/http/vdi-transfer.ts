// PUT /import_raw_vdi and GET /export_raw_vdi (xapi's import_raw_vdi.ml, export_raw_vdi.ml):
// a VDI's content streamed in or out, raw or as a VHD (a VHD export may be a delta against a
// `base` VDI), never buffered whole. Import answers 200 before it reads the data, as xapi does
// (clients probe with an empty body first); its outcome is on the task. A VDI the import made
// is destroyed again if the import fails.
import { Readable } from 'node:stream';
import { XapiError } from '../api/errors.js';
import type { Dispatcher } from '../api/dispatch.js';
import type { ImportTarget, Vhd } from '../storage/vhd/index.js';
import { ImportError, exportRaw, exportVhd, importRaw, importVhd } from '../storage/vhd/index.js';
import type { OpenDisk } from '../storage/driver.js';
import { MAX_VHD_SIZE } from '../storage/vhd/format.js';
import type { Storage } from '../xapi/storage.js';
import { createVdi, destroyVdi, openVdi } from '../xapi/vdi.js';
import type { HandlerTable } from './handlers.js';
import { VM_ADMIN, acceptUpload, sendStream, transferHandler, type Transfer } from './transfer.js';
import { importChunked } from '../storage/chunked.js';

const VDI_REF = { k: 'ref', cls: 'VDI' } as const;
const CONTENT_TYPE: Record<string, string> = { raw: 'application/octet-stream', vhd: 'application/vhd' };

const withStatus = (httpStatus: number, e: XapiError) => Object.assign(e, { httpStatus });

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

async function importRawVdi(storage: Storage, t: Transfer) {
  const { call, req, res } = t;
  const format = t.param('format') ?? 'raw';
  // xapi answers these with 404 and 403 (import_raw_vdi.ml); the task says why.
  if (format !== 'raw' && format !== 'vhd') throw withStatus(404, new XapiError('INTERNAL_ERROR', [`Unknown format ${format}`]));
  if (req.headers['transfer-encoding']) throw withStatus(403, new XapiError('INTERNAL_ERROR', ['Cannot handle encoding']));
  const chunked = t.param('chunked') !== undefined;
  if (chunked && format !== 'raw') throw withStatus(404, new XapiError('INTERNAL_ERROR', ['Cannot handle chunked VHD']));
  let vdi = await t.resolve('VDI', t.param('vdi'));
  let made = false;
  if (!vdi) {
    const sr = (await t.resolve('SR', t.param('sr_id'))) ?? (await t.resolve('SR', t.param('sr_uuid')));
    if (!sr) throw new XapiError('INTERNAL_ERROR', ['one of vdi, sr_id or sr_uuid is needed']);
    if (format !== 'raw' || chunked) throw withStatus(400, new XapiError('INTERNAL_ERROR', ['a new VDI can only be made from a plain raw image']));
    const size = Number(req.headers['content-length']);
    if (size === 0 && req.headers['content-length'] === '0') {
      // Nothing to import: Xen Orchestra's putResource probes with an empty body (and no task)
      // before it sends a stream. Answer it without making a VDI (xapi would make an empty one).
      acceptUpload(res, call.task);
      res.end();
      return undefined;
    }
    if (!Number.isSafeInteger(size) || size <= 0) throw new XapiError('INTERNAL_ERROR', ['a new VDI needs the Content-Length of its image']);
    // sm_config import_task, as xapi's import: a restart after a crash mid-import removes the VDI
    vdi = await createVdi(storage, call, sr, size, {
      name_label: 'Imported VDI', name_description: '', type: 'user', sharable: false, read_only: false,
      other_config: {}, xenstore_data: {}, sm_config: { import_task: call.task }, tags: [],
    });
    made = true;
  }
  const srRef = (await call.db.get('VDI', vdi)).SR;
  // Durable once, at close: the import's result is only reported after that.
  const target = await openVdi(storage, vdi, false, { deferSync: true });
  // As xapi: the answer goes out before the data is read; the outcome is on the task.
  acceptUpload(res, call.task);
  const onProgress = (f: number) => void call.setProgress(f);
  try {
    if (chunked) await importChunked(req, target);
    else if (format === 'raw') await importRaw(req, made ? target : sparseTarget(target), { size: target.size, exact: false, skipZeros: made, onProgress });
    else await importVhd(req, target, { onProgress });
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
  res.end();
  return { type: VDI_REF, value: vdi };
}

async function exportRawVdi(storage: Storage, t: Transfer) {
  const { call, res } = t;
  const format = t.param('format') ?? 'raw';
  if (format !== 'raw' && format !== 'vhd') throw withStatus(404, new XapiError('INTERNAL_ERROR', [`Unknown format ${format}`]));
  const vdi = await t.resolve('VDI', t.param('vdi'));
  if (!vdi) throw new XapiError('INTERNAL_ERROR', ['the vdi parameter is needed']);
  const baseRef = await t.resolve('VDI', t.param('base'));
  if (baseRef && format !== 'vhd') throw new XapiError('INTERNAL_ERROR', ['base needs format=vhd']);
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
    res.writeHead(200, {
      'content-type': CONTENT_TYPE[format]!,
      'content-length': stream.length!,
      'content-disposition': `attachment; filename="${row.uuid}.${format}"`,
      'task-id': call.task,
    });
    await sendStream(res, stream);
  } finally {
    await disk.close();
    await base?.close();
  }
  return undefined;
}

async function* rawChunks(disk: OpenDisk): AsyncGenerator<Buffer> {
  const step = 2 * 1024 * 1024;
  for (let o = 0; o < disk.size; o += step) yield await disk.read(o, Math.min(step, disk.size - o));
}

export function registerVdiTransfers(table: HandlerTable, d: Dispatcher, storage: Storage): void {
  table
    .add('PUT', '/import_raw_vdi', transferHandler(d, 'put_import_raw_vdi', 'VDI import', VM_ADMIN, (t) => importRawVdi(storage, t)))
    .add('GET', '/export_raw_vdi', transferHandler(d, 'get_export_raw_vdi', 'VDI export', VM_ADMIN, (t) => exportRawVdi(storage, t)));
}
