// GET /export, PUT /import and GET /export_metadata (xapi's export.ml, import.ml), the wire only:
// query parameters, headers, the streams in and out, status codes. What a transfer does to VMs is
// src/xapi/vm-import-export.ts: whole VMs as XVA archives, streamed with bounded memory. Import
// answers 200 before reading (clients probe with an empty body first); the new VMs are the task's
// result.
import { XapiError } from '../rpc/errors.js';
import type { Dispatcher } from '../api/dispatch.js';
import {
  assertImportAllowed,
  exportVm,
  exportVmMetadata,
  importHost,
  importSr,
  importVm,
  importVmMetadata,
  vmExportHost,
  type Storage,
} from '../xapi/vm-import-export.js';
import type { HandlerTable } from './handlers.js';
import { VM_ADMIN, acceptUpload, sendStream, transferHandler, type Transfer } from './transfer.js';

const VM_SET = { k: 'set', of: { k: 'ref', cls: 'VM' } } as const;
const truthy = (v: string | undefined) => v === 'true' || v === '1' || v === 'yes' || v === 'on';

async function vmOf(t: Transfer): Promise<string> {
  const vm = (await t.resolve('VM', t.param('ref'))) ?? (await t.resolve('VM', t.param('uuid')));
  if (!vm) throw new XapiError('INTERNAL_ERROR', ['a VM is needed: ref or uuid']);
  return vm;
}

async function getExport(storage: Storage, t: Transfer) {
  const { call, res } = t;
  const vm = await vmOf(t);
  const elsewhere = await vmExportHost(call, vm);
  if (elsewhere) return { redirect: elsewhere };
  const compression = t.param('use_compression');
  const mode = compression === 'true' || compression === 'gzip' ? 'gzip' : compression === 'zstd' ? 'zstd' : 'none';
  await exportVm(storage, call, vm, { compression: mode, withSuspendImage: truthy(t.param('preserve_power_state')) }, async (stream) => {
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-disposition': 'attachment; filename="export.xva"',
      'task-id': call.task,
    });
    await sendStream(res, stream);
  });
  return undefined;
}

async function getExportMetadata(t: Transfer) {
  const { call, res } = t;
  const vm = await vmOf(t);
  const stream = await exportVmMetadata(call, vm);
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-disposition': 'attachment; filename="export.xva"',
    'task-id': call.task,
  });
  await sendStream(res, stream);
  return undefined;
}

async function putImport(storage: Storage, t: Transfer) {
  const { call, req, res } = t;
  const sr = await importSr(call, (await t.resolve('SR', t.param('sr_id'))) ?? (await t.resolve('SR', t.param('sr_uuid'))));
  const elsewhere = await importHost(call, sr);
  if (elsewhere) return { redirect: elsewhere };
  await assertImportAllowed(call);
  // As xapi: 200 before the data; the outcome is on the task.
  acceptUpload(res, call.task);
  const vms = await importVm(storage, call, req, { sr, force: truthy(t.param('force')), restore: truthy(t.param('restore')) });
  res.end();
  return { type: VM_SET, value: vms };
}

/**
 * PUT /import_metadata (import.ml metadata_handler): 200 at once, then the metadata read and
 * imported; the VMs are the task's result. `restore`, `force`, `dry_run`, `live`, `check_cpu` as
 * xapi's (a cross-pool migration's mark comes in the export, each VM's other_config migrate_task).
 */
async function putImportMetadata(storage: Storage, t: Transfer) {
  const { call, req, res } = t;
  acceptUpload(res, call.task);
  const vms = await importVmMetadata(storage, call, req, {
    restore: truthy(t.param('restore')),
    force: truthy(t.param('force')),
    dryRun: truthy(t.param('dry_run')),
    live: truthy(t.param('live')),
    checkCpu: truthy(t.param('check_cpu')),
  });
  res.end();
  return { type: VM_SET, value: vms };
}

export function registerVmTransfers(table: HandlerTable, d: Dispatcher, storage: Storage): void {
  table
    .add(
      'GET',
      '/export',
      transferHandler(d, 'get_export', 'VM export', VM_ADMIN, (t) => getExport(storage, t)),
    )
    .add(
      'GET',
      '/export_metadata',
      transferHandler(d, 'get_export_metadata', 'VM metadata export', VM_ADMIN, (t) => getExportMetadata(t)),
    )
    .add(
      'PUT',
      '/import_metadata',
      transferHandler(d, 'put_import_metadata', 'VM metadata import', VM_ADMIN, (t) => putImportMetadata(storage, t)),
    )
    .add(
      'PUT',
      '/import',
      transferHandler(d, 'put_import', 'VM import', VM_ADMIN, (t) => putImport(storage, t)),
    );
}
