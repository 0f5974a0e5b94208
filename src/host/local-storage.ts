// A fresh host's storage (what the XenServer installer and xapi's first boot leave): a
// "Local storage" SR of type ext under the state directory, the pool's default, suspend-image
// and crash-dump SR; and at every start, this host's PBDs plugged again (xapi re-attaches its
// SRs at start-up; one that fails stays unplugged and is logged).
import { mkdir } from 'node:fs/promises';
import type { Storage } from '../xapi/storage.js';
import { createSr } from '../xapi/sr.js';
import { plugPbd } from '../xapi/pbd.js';

export async function ensureLocalStorage(storage: Storage, dir: string): Promise<void> {
  const { db, hostRef, poolRef } = storage.host;
  await mkdir(dir, { recursive: true });
  const srRef = await createSr(storage, {
    host: hostRef,
    deviceConfig: { device: dir },
    physicalSize: 0,
    nameLabel: 'Local storage',
    nameDescription: '',
    type: 'ext',
    contentType: 'user',
    shared: false,
    smConfig: { devserial: 'xapi-ts-local' },
    otherConfig: { 'i18n-key': 'local-storage', 'i18n-original-value-name_label': 'Local storage' },
  });
  await db.update('pool', poolRef, { default_SR: srRef, suspend_image_SR: srRef, crash_dump_SR: srRef });
  await db.update('host', hostRef, { suspend_image_sr: srRef, crash_dump_sr: srRef });
  await db.commit();
}

export async function plugLocalPbds(storage: Storage): Promise<void> {
  const { db, hostRef, log } = storage.host;
  for (const [ref, pbd] of await db.find('PBD', { host: hostRef })) {
    await db.update('PBD', ref, { currently_attached: false });
    try {
      await plugPbd(storage, ref);
    } catch (e) {
      log.warn({ err: e, pbd: ref, sr: pbd.SR }, 'PBD could not be plugged at start');
    }
  }
  await db.commit();
}
