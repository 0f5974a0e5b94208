// PBD.* explicit messages (xapi's xapi_pbd.ml): create with its uniqueness and key checks,
// plug (the driver's sr_attach, refused for a non-shared SR attached elsewhere), unplug
// (refused while VDIs are in use), destroy of a detached PBD, set_device_config (the storage
// backend's own call, run by the PBD's host).
import { randomUUID } from 'node:crypto';
import type { Call, Registry } from '../api/context.js';
import { isForwardedHere, runOn } from './forward.js';
import { XapiError } from '../rpc/errors.js';
import { newRef } from '../api/implicit.js';
import type { Storage } from './storage.js';
import { duplicatePasswordSecrets, movePasswordsToSecrets } from './secret.js';

/** PBD.plug: attach through the driver, mark attached, then learn the SR's contents. */
export async function plugPbd(storage: Storage, pbdRef: string): Promise<void> {
  const db = storage.host.db;
  const pbd = await db.get('PBD', pbdRef);
  if (pbd.currently_attached === true) return;
  const srRef = pbd.SR;
  const sr = await db.get('SR', srRef);
  if (sr.shared !== true) {
    for (const other of sr.PBDs) {
      const o = await db.tryGet('PBD', other);
      if (other !== pbdRef && o?.currently_attached === true) throw new XapiError('SR_NOT_SHARABLE', [srRef, pbd.host]);
    }
  }
  if (pbd.host !== storage.host.hostRef) throw new XapiError('HOST_OFFLINE', [pbd.host]);
  const { driver, ctx } = await storage.context(srRef, { plugged: false });
  await storage.sm(srRef, () => driver.attach(ctx));
  await db.update('PBD', pbdRef, { currently_attached: true });
  // The SR's master learns its contents at once (xapi's synchronous scan after the coordinator's
  // PBD of a shared SR is plugged); another host plugging a shared SR leaves its records alone.
  const srMaster = sr.PBDs.length <= 1 || storage.host.role.kind === 'master';
  if (srMaster) await storage.scan(srRef);
  await storage.updateSrAllowed(srRef);
  // Only the SR's master collects its garbage: a member's GC on a shared SR would race the
  // master's changes to the same tree (its SR lock is the master's process's), e.g. delete the
  // parent a snapshot has just hidden before the new leaf over it exists.
  if (srMaster) storage.kickGc(srRef);
}

export async function unplugPbd(storage: Storage, pbdRef: string): Promise<void> {
  const db = storage.host.db;
  const pbd = await db.get('PBD', pbdRef);
  if (pbd.currently_attached !== true) return;
  const srRef = pbd.SR;
  const inUse: string[] = [];
  for (const vdi of (await db.get('SR', srRef)).VDIs) if (await storage.isActive(vdi)) inUse.push(vdi);
  if (inUse.length > 0) throw new XapiError('VDI_IN_USE', inUse);
  const { driver, ctx } = await storage.context(srRef);
  await storage.sm(srRef, () => driver.detach(ctx));
  await db.update('PBD', pbdRef, { currently_attached: false });
  await storage.updateSrAllowed(srRef);
}

/** PBD.unplug waits while any of the SR's VDIs has an operation in progress (with_unplug_locks). */
async function assertVdisIdle(storage: Storage, srRef: string): Promise<void> {
  for (const vdi of (await storage.host.db.get('SR', srRef)).VDIs) {
    const row = await storage.host.db.tryGet('VDI', vdi);
    const [busy] = Object.entries(row?.current_operations ?? {});
    if (busy) throw new XapiError('OTHER_OPERATION_IN_PROGRESS', ['VDI', vdi, busy[1], busy[0]]);
  }
}

/**
 * Whether the call's session may act as the storage backend of this SR (sm.ml's
 * session_has_internal_sr_access): xapi gives the sessions it makes for its SM plugins the key
 * `_sm_session` naming their SR in the session's other_config.
 */
function hasInternalSrAccess(call: Call, srRef: string): boolean {
  return call.session?.row.other_config._sm_session === srRef;
}

/** forward_pbd_op: a PBD is plugged and unplugged by its host; a forwarded call runs here. */
async function runOnPbdHost(call: Call, host: string, wire: string, pbd: string, local: () => Promise<void>): Promise<void> {
  if (isForwardedHere(call)) return local();
  await runOn(call, host, wire, [pbd], local);
}

export function register(r: Registry, storage: Storage): void {
  // Creating and destroying PBDs are operations on the SR: they change whether it may be destroyed.
  r.implement('PBD.create', async (call, [rec]) => {
    // A field the record lacks arrives undefined, and the lookups refuse it.
    const sr = rec.SR!;
    const host = rec.host!;
    const given = rec.device_config ?? {};
    return storage.withOp(call, { sr: [sr, 'pbd_create'] }, async () => {
      await call.db.get('host', host);
      if ('SRmaster' in given)
        throw new XapiError('VALUE_NOT_SUPPORTED', ['SRmaster', given.SRmaster!, 'This key is for internal use only']);
      const existing = await call.db.find('PBD', { SR: sr, host });
      if (existing.length > 0) throw new XapiError('PBD_EXISTS', [sr, host, existing[0]![0]]);
      // Secrets named by the caller are copied for this PBD; passwords given in the clear go
      // into secrets of its own (xapi moves them first, then copies every secret, leaving the
      // first ones behind: here nothing is left behind).
      const dc = await movePasswordsToSecrets(call, await duplicatePasswordSecrets(call, given));
      const ref = newRef();
      await call.db.create('PBD', ref, {
        uuid: randomUUID(),
        host,
        SR: sr,
        device_config: dc,
        currently_attached: false,
        other_config: rec.other_config ?? {},
      });
      return ref;
    });
  })
    .implement('PBD.destroy', async (call, [self]) => {
      const pbd = await call.db.get('PBD', self);
      await storage.withOp(call, { sr: [pbd.SR, 'pbd_destroy'] }, async () => {
        if ((await call.db.get('PBD', self)).currently_attached)
          throw new XapiError('OPERATION_NOT_ALLOWED', ['PBD is currently attached']);
        await call.db.destroy('PBD', self);
      });
    })
    .implement('PBD.plug', async (call, [self]) => {
      const pbd = await call.db.get('PBD', self);
      await storage.withOp(call, { sr: [pbd.SR, 'plug'] }, () =>
        runOnPbdHost(call, pbd.host, 'PBD.plug', self, () => plugPbd(storage, self)),
      );
    })
    .implement('PBD.unplug', async (call, [self]) => {
      const pbd = await call.db.get('PBD', self);
      await storage.withOp(call, { sr: [pbd.SR, 'unplug'], precheck: () => assertVdisIdle(storage, pbd.SR) }, () =>
        runOnPbdHost(call, pbd.host, 'PBD.unplug', self, () => unplugPbd(storage, self)),
      );
    })
    .implement('PBD.set_device_config', async (call, [self, value]) => {
      // The PBD's host stores it (xapi_pbd.ml: the SRmaster key is for xapi alone).
      const store = async () => {
        if ('SRmaster' in value)
          throw new XapiError('VALUE_NOT_SUPPORTED', ['SRmaster', value.SRmaster!, 'This key is for internal use only']);
        await call.db.update('PBD', self, { device_config: value });
      };
      if (isForwardedHere(call)) return store();
      // The coordinator (message_forwarding.ml): only a session the SR's backend holds may change
      // how its hosts reach the SR. xapi moves passwords into secrets before this check, so a
      // refused call still leaves secrets behind; here they are made only for a call that runs.
      const pbd = await call.db.get('PBD', self);
      if (!hasInternalSrAccess(call, pbd.SR)) throw new XapiError('PERMISSION_DENIED', ['']);
      value = await movePasswordsToSecrets(call, value);
      await runOn(call, pbd.host, 'PBD.set_device_config', [self, value], store);
    });
}
