// Operation marks on SRs and VDIs (xapi's message_forwarding.ml with_sr_andor_vdi): an operation
// is written into current_operations for as long as it runs, after the checks of
// storage-operations.ts allow it, and allowed_operations follows.
import type { Call, HostContext } from '../api/context.js';
import { untyped } from '../db/interface.js';
import { untilStored } from '../db/until-stored.js';
import type { storage_operations, vdi_operations } from '../schema/generated.js';
import { gateOf, retryWithGlobalLock, withGlobalLock } from './retry.js';
import { isForwardedHere } from './forward.js';
import { srOperationError, updateSrAllowedOperations, updateVdiAllowedOperations, vdiOperationError } from './storage-operations.js';

/** What an operation marks: an SR operation, a VDI operation, or both, and a check run first. */
export interface StorageOpTarget {
  sr?: [string, storage_operations];
  vdi?: [string, vdi_operations];
  precheck?: () => Promise<void>;
}

/**
 * Marks the SR and/or VDI operation, runs fn, unmarks. While another operation holds them the
 * call waits (xapi's retry on OTHER_OPERATION_IN_PROGRESS, woken when an operation ends) and can
 * be cancelled meanwhile; other refusals are raised at once. `precheck` runs first under the same
 * lock (PBD.unplug's check of the SR's VDIs).
 */
export async function withStorageOp<T>(host: HostContext, call: Call, target: StorageOpTarget, fn: () => Promise<T>): Promise<T> {
  // the member's half of a forwarded call: the coordinator holds the marks
  if (isForwardedHere(call)) return fn();
  const db = host.db;
  await retryWithGlobalLock(call, async () => {
    await target.precheck?.();
    if (target.sr) {
      const err = await srOperationError(db, target.sr[0], target.sr[1]);
      if (err) throw err;
      await mark(host, 'SR', target.sr[0], call.task, target.sr[1]);
    }
    if (target.vdi) {
      const err = await vdiOperationError(db, target.vdi[0], target.vdi[1]);
      if (err) {
        if (target.sr) await mark(host, 'SR', target.sr[0], call.task, undefined);
        throw err;
      }
      await mark(host, 'VDI', target.vdi[0], call.task, target.vdi[1]);
    }
  });
  try {
    return await fn();
  } finally {
    // the marks must come off even if the database refuses writes just now (a full disk)
    await untilStored(db, () =>
      withGlobalLock(host, async () => {
        if (target.vdi) await mark(host, 'VDI', target.vdi[0], call.task, undefined);
        if (target.sr) await mark(host, 'SR', target.sr[0], call.task, undefined);
      }),
    ).catch((e) => host.log.warn({ err: e }, 'unmarking a storage operation failed'));
    gateOf(host).broadcast();
  }
}

async function mark(
  host: HostContext,
  cls: 'SR' | 'VDI',
  ref: string,
  task: string,
  op: storage_operations | vdi_operations | undefined,
): Promise<void> {
  // Either class: the same field, written through the database's by-name face.
  const db = untyped(host.db);
  const row = await db.tryGet(cls, ref);
  if (!row) return;
  const ops = { ...(row.current_operations as Record<string, string>) };
  if (op) ops[task] = op;
  else delete ops[task];
  await db.update(cls, ref, { current_operations: ops });
  if (cls === 'SR') await updateSrAllowedOperations(host.db, ref);
  else await updateVdiAllowedOperations(host.db, ref);
}
