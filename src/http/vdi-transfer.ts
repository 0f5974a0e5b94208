// PUT /import_raw_vdi and GET /export_raw_vdi (xapi's import_raw_vdi.ml, export_raw_vdi.ml):
// a VDI's content streamed in or out, raw or as a VHD (a VHD export may be a delta against a
// `base` VDI), never buffered whole. Import answers 200 before it reads the data, as xapi does
// (clients probe with an empty body first); its outcome is on the task. A VDI the import made
// is destroyed again if the import fails.
import { Readable } from 'node:stream';
import { XapiError } from '../api/errors.js';
import type { Dispatcher } from '../api/dispatch.js';
import type { Vhd } from '../storage/vhd/index.js';
import { ImportError, exportRaw, exportVhd, importRaw, importVhd } from '../storage/vhd/index.js';
import type { OpenDisk } from '../storage/driver.js';
import { MAX_VHD_SIZE } from '../storage/vhd/format.js';
import type { Storage } from '../xapi/storage.js';
import { createVdi, destroyVdi, openVdi } from '../xapi/vdi.js';
import type { HandlerTable } from './handlers.js';
import { VM_ADMIN, transferHandler, type Transfer } from './transfer.js';

const VDI_REF = { k: 'ref', cls: 'VDI' } as const;
const CONTENT_TYPE: Record<string, string> = { raw: 'application/octet-stream', vhd: 'application/vhd' };

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

async function importRawVdi(storage: Storage, t: Transfer) {
  const { call, req, res } = t;
  const format = t.param('format') ?? 'raw';
  if (format !== 'raw' && format !== 'vhd') throw new XapiError('INTERNAL_ERROR', [`Unknown format ${format}`]);
  if (req.headers['transfer-encoding']) throw new XapiError('INTERNAL_ERROR', ['Cannot handle encoding']);
  if (t.param('chunked') !== undefined) throw new XapiError('INTERNAL_ERROR', ['the chunked upload protocol is not supported']);
  let vdi = await t.resolve('VDI', t.param('vdi'));
  let made = false;
  if (!vdi) {
    const sr = (await t.resolve('SR', t.param('sr_id'))) ?? (await t.resolve('SR', t.param('sr_uuid')));
    if (!sr) throw new XapiError('INTERNAL_ERROR', ['one of vdi, sr_id or sr_uuid is needed']);
    if (format !== 'raw') throw new XapiError('INTERNAL_ERROR', ['a new VDI can only be made from a raw image']);
    const size = Number(req.headers['content-length']);
    if (!Number.isSafeInteger(size) || size <= 0) throw new XapiError('INTERNAL_ERROR', ['a new VDI needs the Content-Length of its image']);
    vdi = await createVdi(storage, call, sr, size, {
      name_label: 'Imported VDI', name_description: '', type: 'user', sharable: false, read_only: false,
      other_config: {}, xenstore_data: {}, sm_config: {}, tags: [],
    });
    made = true;
  }
  const target = await openVdi(storage, vdi, false);
  // As xapi: the answer goes out before the data is read; the outcome is on the task.
  res.writeHead(200, { 'content-length': 0, 'task-id': call.task });
  res.flushHeaders();
  const onProgress = (f: number) => void call.setProgress(f);
  try {
    if (format === 'raw') await importRaw(req, target, { size: target.size, exact: false, skipZeros: made, onProgress });
    else await importVhd(req, target, { onProgress });
  } catch (e) {
    await target.close().catch(() => undefined);
    if (made) await destroyVdi(storage, call, vdi).catch(() => undefined);
    throw transferError(e, vdi, target.size);
  }
  await target.close();
  await storage.updateVdi(vdi);
  await storage.updateStats((await call.db.get('VDI', vdi)).SR as string);
  res.end();
  return { type: VDI_REF, value: vdi };
}

async function exportRawVdi(storage: Storage, t: Transfer) {
  const { call, res } = t;
  const format = t.param('format') ?? 'raw';
  if (format !== 'raw' && format !== 'vhd') throw new XapiError('INTERNAL_ERROR', [`Unknown format ${format}`]);
  const vdi = await t.resolve('VDI', t.param('vdi'));
  if (!vdi) throw new XapiError('INTERNAL_ERROR', ['the vdi parameter is needed']);
  const baseRef = await t.resolve('VDI', t.param('base'));
  if (baseRef && format !== 'vhd') throw new XapiError('INTERNAL_ERROR', ['base needs format=vhd']);
  const row = await call.db.get('VDI', vdi);
  if (format === 'vhd' && Number(row.virtual_size) > MAX_VHD_SIZE) throw new XapiError('VDI_TOO_LARGE', [vdi, String(MAX_VHD_SIZE)]);
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
      'content-disposition': `attachment; filename="${row.uuid as string}.${format}"`,
      'task-id': call.task,
    });
    await new Promise<void>((resolve, reject) => {
      stream.on('error', reject);
      res.on('close', () => (res.writableFinished ? resolve() : reject(new XapiError('VDI_IO_ERROR', ['Device I/O errors']))));
      stream.pipe(res);
    });
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
