// How a VBD or VIF operation runs (message_forwarding.ml with_vbd_marked / with_vif_marked): under
// the global lock it is checked against the device's operations table and recorded in
// current_operations; while another operation holds the device (or its disk) the call waits, as
// xapi retries OTHER_OPERATION_IN_PROGRESS; afterwards the mark goes and allowed_operations is
// recomputed, whatever happened.
import type { Call } from '../api/context.js';
import type { Ref, vbd_operations, vif_operations } from '../schema/generated.js';
import { gateOf, retryWithGlobalLock, withGlobalLock } from './retry.js';
import { assertVbdOperation, assertVifOperation, updateVbdAllowedOperations, updateVifAllowedOperations } from './device-checks.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { untilStored } from '../db/until-stored.js';
import { isForwardedHere } from './forward.js';

/**
 * Runs `check` then `mark` under the global lock; while `check` refuses with
 * OTHER_OPERATION_IN_PROGRESS the call waits as every operation does (retry.ts: xapi's back-off,
 * woken when any operation ends, cancellable). Any other refusal is raised at once.
 */
async function markWhenFree(call: Call, check: () => Promise<void>, mark: () => Promise<void>): Promise<void> {
  await retryWithGlobalLock(call, async () => {
    await check();
    await mark();
  });
}

/**
 * Removes the call's mark under the lock, then wakes whoever waits for the device. The mark must
 * come off even if the database refuses writes just now (a full disk).
 */
async function unmark(call: Call, fn: () => Promise<void>): Promise<void> {
  await untilStored(call.db, () => withGlobalLock(call.host, fn));
  gateOf(call.host).broadcast();
}

export async function withVbdMarked<T>(call: Call, ref: Ref<'VBD'>, op: vbd_operations, fn: () => Promise<T>): Promise<T> {
  if (isForwardedHere(call)) return fn(); // the coordinator holds the mark
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
    await unmark(call, async () => {
      const vbd = await db.tryGet('VBD', ref);
      if (!vbd) return;
      const current = { ...vbd.current_operations };
      delete current[call.task];
      await db.update('VBD', ref, { current_operations: current });
      await updateVbdAllowedOperations(db, ref);
    });
  }
}

export async function withVifMarked<T>(call: Call, ref: Ref<'VIF'>, op: vif_operations, fn: () => Promise<T>): Promise<T> {
  if (isForwardedHere(call)) return fn(); // the coordinator holds the mark
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
    await unmark(call, async () => {
      const vif = await db.tryGet('VIF', ref);
      if (!vif) return;
      const current = { ...vif.current_operations };
      delete current[call.task];
      await db.update('VIF', ref, { current_operations: current });
      await updateVifAllowedOperations(db, ref);
    });
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
