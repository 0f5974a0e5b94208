// PUT /import_raw_vdi and GET /export_raw_vdi (xapi's import_raw_vdi.ml, export_raw_vdi.ml), the
// wire only: query parameters, headers, the streams in and out, status codes. What a transfer does
// to VDIs is src/xapi/vdi-import-export.ts. Import answers 200 before it reads the data, as xapi
// does (clients probe with an empty body first); its outcome is on the task.
import { XapiError } from '../rpc/errors.js';
import type { Dispatcher } from '../api/dispatch.js';
import { createImportVdi, exportVdi, openVdiImport, vdiTransferHost, type Storage } from '../xapi/vdi-import-export.js';
import type { HandlerTable } from './handlers.js';
import { VM_ADMIN, acceptUpload, sendStream, transferHandler, type Transfer } from './transfer.js';

const VDI_REF = { k: 'ref', cls: 'VDI' } as const;
const CONTENT_TYPE: Record<string, string> = { raw: 'application/octet-stream', vhd: 'application/vhd' };

const withStatus = (httpStatus: number, e: XapiError) => Object.assign(e, { httpStatus });

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
  const sr = vdi ? undefined : ((await t.resolve('SR', t.param('sr_id'))) ?? (await t.resolve('SR', t.param('sr_uuid'))));
  const elsewhere = await vdiTransferHost(call, { vdi, sr });
  if (elsewhere) return { redirect: elsewhere };
  if (!vdi) {
    if (!sr) throw new XapiError('INTERNAL_ERROR', ['one of vdi, sr_id or sr_uuid is needed']);
    if (format !== 'raw' || chunked)
      throw withStatus(400, new XapiError('INTERNAL_ERROR', ['a new VDI can only be made from a plain raw image']));
    const size = Number(req.headers['content-length']);
    if (size === 0 && req.headers['content-length'] === '0') {
      // Nothing to import: Xen Orchestra's putResource probes with an empty body (and no task)
      // before it sends a stream. Answer it without making a VDI (xapi would make an empty one).
      acceptUpload(res, call.task);
      res.end();
      return undefined;
    }
    if (!Number.isSafeInteger(size) || size <= 0)
      throw new XapiError('INTERNAL_ERROR', ['a new VDI needs the Content-Length of its image']);
    vdi = await createImportVdi(storage, call, sr, size);
    made = true;
  }
  const target = await openVdiImport(storage, call, vdi, made);
  // As xapi: the answer goes out before the data is read; the outcome is on the task.
  acceptUpload(res, call.task);
  await target.fill(req, { format, chunked });
  res.end();
  return { type: VDI_REF, value: vdi };
}

async function exportRawVdi(storage: Storage, t: Transfer) {
  const { call, res } = t;
  const format = t.param('format') ?? 'raw';
  if (format !== 'raw' && format !== 'vhd') throw withStatus(404, new XapiError('INTERNAL_ERROR', [`Unknown format ${format}`]));
  const vdi = await t.resolve('VDI', t.param('vdi'));
  if (!vdi) throw new XapiError('INTERNAL_ERROR', ['the vdi parameter is needed']);
  const elsewhere = await vdiTransferHost(call, { vdi });
  if (elsewhere) return { redirect: elsewhere };
  const baseRef = await t.resolve('VDI', t.param('base'));
  if (baseRef && format !== 'vhd') throw new XapiError('INTERNAL_ERROR', ['base needs format=vhd']);
  await exportVdi(storage, call, { vdi, base: baseRef, format }, async ({ uuid, stream, length }) => {
    res.writeHead(200, {
      'content-type': CONTENT_TYPE[format]!,
      'content-length': length,
      'content-disposition': `attachment; filename="${uuid}.${format}"`,
      'task-id': call.task,
    });
    await sendStream(res, stream);
  });
  return undefined;
}

export function registerVdiTransfers(table: HandlerTable, d: Dispatcher, storage: Storage): void {
  table
    .add(
      'PUT',
      '/import_raw_vdi',
      transferHandler(d, 'put_import_raw_vdi', 'VDI import', VM_ADMIN, (t) => importRawVdi(storage, t)),
    )
    .add(
      'GET',
      '/export_raw_vdi',
      transferHandler(d, 'get_export_raw_vdi', 'VDI export', VM_ADMIN, (t) => exportRawVdi(storage, t)),
    );
}
