// GET /export, PUT /import and GET /export_metadata (xapi's export.ml, import.ml): whole VMs
// as XVA archives (ova.xml, then each disk in checksummed 1 MiB chunks), streamed with bounded
// memory. Import answers 200 before reading (clients probe with an empty body first); the new
// VMs are the task's result; a failed import leaves nothing behind unless `force`.
import { XapiError } from '../api/errors.js';
import type { Dispatcher } from '../api/dispatch.js';
import { NULL_REF } from '../schema/types.js';
import { candidateChunks } from '../storage/copy.js';
import type { OpenDisk } from '../storage/driver.js';
import { XvaImportError, readXva, writeMetadataTar, writeXva, type XvaDisk, type XvaDiskTarget } from '../storage/xva/index.js';
import type { Storage } from '../xapi/storage.js';
import { openVdi } from '../xapi/vdi.js';
import { exportHeader, exportObjects, importObjects } from '../xapi/vm-export.js';
import { withVmOperation } from '../xapi/vm-lifecycle.js';
import type { HandlerTable } from './handlers.js';
import { VM_ADMIN, acceptUpload, sendStream, transferHandler, type Transfer } from './transfer.js';

const VM_SET = { k: 'set', of: { k: 'ref', cls: 'VM' } } as const;
const truthy = (v: string | undefined) => v === 'true' || v === '1' || v === 'yes' || v === 'on';

async function vmOf(t: Transfer): Promise<string> {
  const vm = (await t.resolve('VM', t.param('ref'))) ?? (await t.resolve('VM', t.param('uuid')));
  if (!vm) throw new XapiError('INTERNAL_ERROR', ['a VM is needed: ref or uuid']);
  return vm;
}

/** A VDI's data as the XVA writer reads it; only the chain's allocated blocks are visited. */
function xvaDisk(id: string, disk: OpenDisk): XvaDisk {
  return {
    id,
    size: disk.size,
    read: (offset, length) => disk.read(offset, length),
    async *allocated() {
      for (const offset of candidateChunks(disk)) yield { offset, length: Math.min(2 * 1024 * 1024, disk.size - offset) };
    },
  };
}

async function exportVm(storage: Storage, t: Transfer) {
  const { call, res } = t;
  const vm = await vmOf(t);
  const compression = t.param('use_compression');
  const mode = compression === 'true' || compression === 'gzip' ? 'gzip' : compression === 'zstd' ? 'zstd' : 'none';
  await withVmOperation(call, vm, 'export', async () => {
    const { objects, disks } = await exportObjects(call, vm, { withSuspendImage: truthy(t.param('preserve_power_state')) });
    const open: OpenDisk[] = [];
    try {
      for (const vdi of disks.values()) open.push(await openVdi(storage, vdi, true));
      const stream = writeXva({
        header: exportHeader(call),
        objects,
        disks: [...disks.keys()].map((id, i) => xvaDisk(id, open[i]!)),
        compression: mode,
        onProgress: (f) => void call.setProgress(f),
      });
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-disposition': 'attachment; filename="export.xva"',
        'task-id': call.task,
      });
      await sendStream(res, stream);
    } finally {
      for (const d of open) await d.close();
    }
  });
  return undefined;
}

async function exportMetadata(t: Transfer) {
  const { call, res } = t;
  const vm = await vmOf(t);
  const { objects } = await exportObjects(call, vm, { withSuspendImage: false });
  const stream = writeMetadataTar(exportHeader(call), objects);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-disposition': 'attachment; filename="export.xva"', 'task-id': call.task });
  await sendStream(res, stream);
  return undefined;
}

async function importVm(storage: Storage, t: Transfer) {
  const { call, req, res } = t;
  const pool = (await call.db.all('pool'))[0]![1];
  const sr = (await t.resolve('SR', t.param('sr_id'))) ?? (await t.resolve('SR', t.param('sr_uuid'))) ?? pool.default_SR;
  if (sr === NULL_REF || !(await call.db.tryGet('SR', sr))) throw new XapiError('SR_HAS_NO_PBDS', [sr]);
  if ((await call.db.get('SR', sr)).content_type === 'iso') throw new XapiError('SR_OPERATION_NOT_SUPPORTED', [sr]);
  const force = truthy(t.param('force'));
  // As xapi: 200 before the data; the outcome is on the task.
  acceptUpload(res, call.task);
  let made: Awaited<ReturnType<typeof importObjects>> | undefined;
  const open: OpenDisk[] = [];
  try {
    await readXva(req, {
      force,
      onProgress: (f) => void call.setProgress(f),
      onMetadata: async (meta) => {
        made = await importObjects(storage, call, meta.objects, { sr, restore: truthy(t.param('restore')) });
        const targets = new Map<string, XvaDiskTarget>();
        for (const [id, vdi] of made.disks) {
          const disk = await openVdi(storage, vdi, false, { deferSync: true });
          open.push(disk);
          targets.set(id, { size: disk.size, write: (o, d) => disk.write(o, d) });
        }
        return targets;
      },
    });
  } catch (e) {
    const requested = open.reduce((n, d) => n + d.size, 0);
    for (const d of open.splice(0)) await d.close().catch(() => undefined);
    if (made && !force) await made.undo();
    if (e instanceof XvaImportError) throw new XapiError(e.code, e.params);
    throw await storage.spaceError(e, sr, requested); // a full SR is SR_FULL
  } finally {
    for (const d of open) await d.close();
  }
  for (const vdi of made!.disks.values()) await storage.updateVdi(vdi);
  await storage.updateStats(sr);
  res.end();
  return { type: VM_SET, value: made!.vms };
}

export function registerVmTransfers(table: HandlerTable, d: Dispatcher, storage: Storage): void {
  table
    .add('GET', '/export', transferHandler(d, 'get_export', 'VM export', VM_ADMIN, (t) => exportVm(storage, t)))
    .add('GET', '/export_metadata', transferHandler(d, 'get_export_metadata', 'VM metadata export', VM_ADMIN, (t) => exportMetadata(t)))
    .add('PUT', '/import', transferHandler(d, 'put_import', 'VM import', VM_ADMIN, (t) => importVm(storage, t)));
}
