// What a VM export or import does (xapi's export.ml, import.ml), for the handlers of GET /export,
// GET /export_metadata and PUT /import (src/http/vm-transfer.ts), which keep only the wire. An
// export runs as the VM's `export` operation and writes an XVA archive (ova.xml, then each disk
// in checksummed 1 MiB chunks, only the chain's allocated blocks read); an import reads one into
// an SR, its objects made as vm-object-import.ts says, and leaves nothing behind if it fails (unless
// `force`); a full SR is SR_FULL.
import type { Readable } from 'node:stream';
import type { Call } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { NULL_REF } from '../schema/types.js';
import { candidateChunks } from '../storage/copy.js';
import type { OpenDisk } from '../storage/driver.js';
import {
  XvaImportError,
  readXva,
  writeMetadataTar,
  writeXva,
  type XvaCompression,
  type XvaDisk,
  type XvaDiskTarget,
} from '../storage/xva/index.js';
import type { Storage } from './storage.js';
import { openVdi } from './vdi.js';
import { exportHeader, exportObjects } from './vm-export.js';
import { importObjects, MIGRATE_TASK, type ObjectImport } from './vm-object-import.js';
import { watchIncoming } from './disk-mirror.js';
import { withVmOperation } from './vm-lifecycle.js';
import { transferHost } from './forward.js';
import { rollingUpgradeInProgress } from './rpu.js';

export type { Storage } from './storage.js';

/**
 * The address of the host a VM export must be redirected to (export.ml: one that sees every SR
 * of the VM's disks), or undefined to serve it here.
 */
export async function vmExportHost(call: Call, vm: string): Promise<string | undefined> {
  const srs = new Set<string>();
  for (const vbdRef of (await call.db.get('VM', vm)).VBDs) {
    const vbd = await call.db.get('VBD', vbdRef);
    if (vbd.empty || vbd.VDI === NULL_REF) continue;
    const vdi = await call.db.tryGet('VDI', vbd.VDI);
    if (vdi) srs.add(vdi.SR);
  }
  return transferHost(call, [...srs]);
}

/** The address of the host an import into `sr` must be redirected to, or undefined for here. */
export function importHost(call: Call, sr: string): Promise<string | undefined> {
  return transferHost(call, [sr]);
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

/**
 * Exports a VM as an XVA archive under its `export` operation: hands the archive's stream to
 * `send` and closes the disks once it is sent. With `withSuspendImage`, a suspended VM's memory
 * image goes with it.
 */
export async function exportVm(
  storage: Storage,
  call: Call,
  vm: string,
  opts: { compression: XvaCompression; withSuspendImage: boolean },
  send: (stream: Readable) => Promise<void>,
): Promise<void> {
  await withVmOperation(call, vm, 'export', async () => {
    const { objects, disks } = await exportObjects(call, vm, { withSuspendImage: opts.withSuspendImage });
    const open: OpenDisk[] = [];
    try {
      for (const vdi of disks.values()) open.push(await openVdi(storage, vdi, true));
      const stream = writeXva({
        header: exportHeader(call),
        objects,
        disks: [...disks.keys()].map((id, i) => xvaDisk(id, open[i]!)),
        compression: opts.compression,
        onProgress: (f) => void call.setProgress(f),
      });
      await send(stream);
    } finally {
      for (const d of open) await d.close();
    }
  });
}

/** A VM's metadata alone: a tar holding only ova.xml. */
export async function exportVmMetadata(call: Call, vm: string): Promise<Readable> {
  const { objects } = await exportObjects(call, vm, { withSuspendImage: false });
  return writeMetadataTar(exportHeader(call), objects);
}

/** The SR an import goes to: the one given, or the pool's default SR; it must exist and hold disks. */
export async function importSr(call: Call, given: string | undefined): Promise<string> {
  const pool = (await call.db.all('pool'))[0]![1];
  const sr = given ?? pool.default_SR;
  if (sr === NULL_REF || !(await call.db.tryGet('SR', sr))) throw new XapiError('SR_HAS_NO_PBDS', [sr]);
  if ((await call.db.get('SR', sr)).content_type === 'iso') throw new XapiError('SR_OPERATION_NOT_SUPPORTED', [sr]);
  return sr;
}

/** No VM import while the pool's hosts run different releases (xapi answers HTTP 400). */
export async function assertImportAllowed(call: Call): Promise<void> {
  if (await rollingUpgradeInProgress(call.db)) throw Object.assign(new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []), { httpStatus: 400 });
}

/**
 * Imports the XVA archive `body` into `sr` (see importSr): the VMs it made. A failed import undoes
 * what it made, unless `force`; `restore` keeps the archive's uuids and MACs.
 */
export async function importVm(
  storage: Storage,
  call: Call,
  body: Readable,
  opts: { sr: string; force: boolean; restore: boolean },
): Promise<string[]> {
  const { sr, force } = opts;
  let made: ObjectImport | undefined;
  const open: OpenDisk[] = [];
  try {
    await readXva(body, {
      force,
      onProgress: (f) => void call.setProgress(f),
      onMetadata: async (meta) => {
        made = await importObjects(call, meta.objects, { type: { kind: 'full', storage, sr }, restore: opts.restore, force });
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
  return made!.vms;
}

/** PUT /import_metadata's options (import.ml metadata_handler's query flags; see vm-object-import.ts). */
export interface MetadataImportOptions {
  restore: boolean;
  force: boolean;
  dryRun: boolean;
  live: boolean;
  checkCpu: boolean;
}

/**
 * PUT /import_metadata: the body is a tar holding ova.xml (what GET /export_metadata writes);
 * the VMs made from it (none for a dry run). See vm-object-import.ts.
 */
export async function importVmMetadata(storage: Storage, call: Call, body: Readable, opts: MetadataImportOptions): Promise<string[]> {
  let vms: string[] = [];
  try {
    await readXva(body, {
      force: opts.force,
      onMetadata: async (meta) => {
        const { restore, force, ...metadata } = opts;
        vms = (await importObjects(call, meta.objects, { type: { kind: 'metadata', ...metadata }, restore, force })).vms;
        return new Map();
      },
    });
  } catch (e) {
    if (e instanceof XvaImportError) throw new XapiError(e.code, e.params);
    throw e;
  }
  // a migration's VMs wait for its claim while its sender keeps a connection here
  const mark = vms.length > 0 ? (await call.db.get('VM', vms[0]!)).other_config[MIGRATE_TASK] : undefined;
  if (mark !== undefined) watchIncoming(storage, mark);
  return vms;
}
