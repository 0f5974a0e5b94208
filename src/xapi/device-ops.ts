// How a VBD or VIF operation runs (message_forwarding.ml with_vbd_marked / with_vif_marked): under
// the global lock it is checked against the device's operations table and recorded in
// current_operations; while another operation holds the device (or its disk) the call waits, as
// xapi retries OTHER_OPERATION_IN_PROGRESS; afterwards the mark goes and allowed_operations is
// recomputed, whatever happened.
import { XapiError } from '../api/errors.js';
import type { Call } from '../api/context.js';
import type { Ref, vbd_operations, vif_operations } from '../schema/generated.js';
import { globalLock } from './vm-lifecycle.js';
import { assertVbdOperation, assertVifOperation, updateVbdAllowedOperations, updateVifAllowedOperations } from './device-checks.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { untilStored } from '../db/until-stored.js';

/** xapi's standard retry policy gives up after two hours of waiting. */
const MAX_WAIT_MS = 2 * 3600 * 1000;
/** Between checks when no change to the holder wakes the waiter earlier. */
const RECHECK_MS = 1000;

/**
 * Runs `check` then `mark` under the global lock; while `check` refuses with
 * OTHER_OPERATION_IN_PROGRESS the call waits for the holder to change (or RECHECK_MS) and tries
 * again, until cancelled or MAX_WAIT_MS. Any other refusal is raised at once.
 */
async function markWhenFree(call: Call, check: () => Promise<void>, mark: () => Promise<void>): Promise<void> {
  const started = Date.now();
  for (;;) {
    await call.checkCancelled();
    let busy: XapiError | undefined;
    await globalLock.run(async () => {
      try {
        await check();
      } catch (e) {
        if (!(e instanceof XapiError) || e.code !== 'OTHER_OPERATION_IN_PROGRESS' || Date.now() - started >= MAX_WAIT_MS) throw e;
        busy = e;
        return;
      }
      await mark();
    });
    if (!busy) return;
    // The holder is named by the error: [class, ref, operation, task].
    const [cls, ref] = busy.params;
    await call.db.waitForChange(new Set([`${cls!.toLowerCase()}/${ref}`]), RECHECK_MS);
  }
}

export async function withVbdMarked<T>(call: Call, ref: Ref<'VBD'>, op: vbd_operations, fn: () => Promise<T>): Promise<T> {
  const db = call.db;
  await markWhenFree(
    call,
    () => assertVbdOperation(db, ref, op),
    async () => {
      const vbd = await db.get('VBD', ref);
      await db.update('VBD', ref, { current_operations: { ...vbd.current_operations, [call.task]: op } });
      await updateVbdAllowedOperations(db, ref);
    },
  );
  try {
    return await fn();
  } finally {
    // the mark must come off even if the database refuses writes just now (a full disk)
    await untilStored(db, () =>
      globalLock.run(async () => {
        const vbd = await db.tryGet('VBD', ref);
        if (!vbd) return;
        const current = { ...vbd.current_operations };
        delete current[call.task];
        await db.update('VBD', ref, { current_operations: current });
        await updateVbdAllowedOperations(db, ref);
      }),
    );
  }
}

export async function withVifMarked<T>(call: Call, ref: Ref<'VIF'>, op: vif_operations, fn: () => Promise<T>): Promise<T> {
  const db = call.db;
  await markWhenFree(
    call,
    () => assertVifOperation(db, ref, op),
    async () => {
      const vif = await db.get('VIF', ref);
      await db.update('VIF', ref, { current_operations: { ...vif.current_operations, [call.task]: op } });
      await updateVifAllowedOperations(db, ref);
    },
  );
  try {
    return await fn();
  } finally {
    // the mark must come off even if the database refuses writes just now (a full disk)
    await untilStored(db, () =>
      globalLock.run(async () => {
        const vif = await db.tryGet('VIF', ref);
        if (!vif) return;
        const current = { ...vif.current_operations };
        delete current[call.task];
        await db.update('VIF', ref, { current_operations: current });
        await updateVifAllowedOperations(db, ref);
      }),
    );
  }
}

/** Asks the domain manager, maps its errors, and re-reads the VM's state whatever happened. */
export async function onDomain(sync: XenopsSync, vmRef: Ref<'VM'>, deviceRef: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    throw xenopsError(vmRef, e, deviceRef);
  } finally {
    await sync.refresh(vmRef);
  }
}
