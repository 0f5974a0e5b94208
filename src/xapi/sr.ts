// SR.* explicit messages (xapi's xapi_sr.ml): create (records, PBDs, the driver's sr_create,
// plug), introduce, probe, scan, update, forget, destroy, and the setters xapi checks.
import { randomUUID } from 'node:crypto';
import type { Call, Registry } from '../api/context.js';
import type { Rpc } from '../rpc/rpc.js';
import { isForwardedHere, runOn, runOnSrMaster } from './forward.js';
import { XapiError } from '../rpc/errors.js';
import { newRef } from '../api/implicit.js';
import type { Storage } from './storage.js';
import { plugPbd } from './pbd.js';
import { movePasswordsToSecrets } from './secret.js';
import { runOnAllSrHosts, srPbdHosts } from './forward-to.js';
import { assertRollingUpgradeNotInProgress } from './rpu.js';

export interface SrSpec {
  host: string;
  deviceConfig: Record<string, string>;
  physicalSize: number;
  nameLabel: string;
  nameDescription: string;
  type: string;
  contentType: string;
  shared: boolean;
  smConfig: Record<string, string>;
  otherConfig?: Record<string, string>;
}

/**
 * SR.create: the SR and PBD records (one PBD per host when shared), the driver's sr_create
 * (on failure the records go again), the returned device_config stored in every PBD, then
 * every PBD plugged.
 */
export async function createSr(storage: Storage, spec: SrSpec): Promise<string> {
  const db = storage.host.db;
  const type = spec.type.toLowerCase();
  const driver = storage.driver(type);
  if ('SRmaster' in spec.deviceConfig)
    throw new XapiError('VALUE_NOT_SUPPORTED', ['SRmaster', spec.deviceConfig.SRmaster!, 'This key is for internal use only']);
  await db.get('host', spec.host);
  const srRef = newRef();
  const uuid = randomUUID();
  await db.create('SR', srRef, {
    uuid,
    name_label: spec.nameLabel,
    name_description: spec.nameDescription,
    type,
    content_type: spec.contentType,
    shared: spec.shared,
    sm_config: spec.smConfig,
    other_config: spec.otherConfig ?? {},
    physical_size: 0,
    physical_utilisation: 0,
    virtual_allocation: 0,
  });
  const hosts = spec.shared ? [spec.host, ...(await db.all('host')).map(([r]) => r).filter((r) => r !== spec.host)] : [spec.host];
  const pbds: string[] = [];
  for (const host of hosts) {
    const pbd = newRef();
    await db.create('PBD', pbd, {
      uuid: randomUUID(),
      host,
      SR: srRef,
      device_config: spec.deviceConfig,
      currently_attached: false,
      other_config: {},
    });
    pbds.push(pbd);
  }
  let deviceConfig: Record<string, string>;
  try {
    const ctx = { uuid, deviceConfig: { ...spec.deviceConfig, SRmaster: 'true' }, poolUuid: await storage.poolUuid() };
    deviceConfig = await storage.sm(srRef, () => driver.create(ctx, spec.physicalSize));
  } catch (e) {
    for (const pbd of pbds) await db.destroy('PBD', pbd);
    await db.destroy('SR', srRef);
    throw e;
  }
  delete deviceConfig.SRmaster;
  for (const pbd of pbds) await db.update('PBD', pbd, { device_config: deviceConfig });
  for (const pbd of pbds) {
    const row = await db.get('PBD', pbd);
    if (row.host === storage.host.hostRef) await plugPbd(storage, pbd);
  }
  await storage.updateSrAllowed(srRef);
  return srRef;
}

/**
 * After SR.create on the coordinator, the PBDs of the other hosts are plugged there, each on its
 * host (xapi plugs every PBD through the API and waits for all, whatever each one's outcome).
 */
async function plugOnOtherHosts(call: Call, storage: Storage, srRef: string): Promise<void> {
  for (const pbdRef of (await call.db.get('SR', srRef)).PBDs) {
    const pbd = await call.db.get('PBD', pbdRef);
    if (pbd.host === call.host.hostRef || pbd.currently_attached) continue;
    await runOn(call, pbd.host, 'PBD.plug', [pbdRef], () => plugPbd(storage, pbdRef)).catch((e) =>
      call.host.log.warn({ err: e, pbd: pbdRef, host: pbd.host }, 'plugging a new SR on a host failed'),
    );
  }
}

export function register(r: Registry, storage: Storage): void {
  r.implement('SR.create', async (call, args) => {
    const [host, given, physicalSize, nameLabel, nameDescription, type, contentType, shared, smConfig] = args;
    // Passwords into secrets, on the coordinator (a forwarded call has them moved already).
    const deviceConfig = isForwardedHere(call) ? given : await movePasswordsToSecrets(call, given);
    const create = async () => {
      // no new SR while the pool's hosts run different releases
      await assertRollingUpgradeNotInProgress(call.db);
      const sr = await createSr(storage, {
        host,
        deviceConfig,
        physicalSize,
        nameLabel,
        nameDescription,
        type,
        contentType,
        shared: shared === true,
        smConfig,
      });
      if (!isForwardedHere(call)) await plugOnOtherHosts(call, storage, sr);
      return sr;
    };
    // a shared SR is made by the coordinator (the host named is ignored), a local one by its host
    if (shared === true || isForwardedHere(call)) return create();
    await call.db.get('host', host);
    const forwarded = [host, deviceConfig, physicalSize, nameLabel, nameDescription, type, contentType, shared, smConfig];
    return (await runOn(call, host, 'SR.create', forwarded as Rpc[], create)) as string;
  })
    // Deprecated: xapi's refuses it on the host named (after moving the passwords given into
    // secrets, which here are not made for a call that cannot succeed).
    .implement('SR.make', async (call, [host]) => {
      await call.db.get('host', host);
      throw new XapiError('MESSAGE_DEPRECATED', []);
    })
    .implement('SR.introduce', async (call, [uuid, nameLabel, nameDescription, type, contentType, shared, smConfig]) => {
      const id = uuid || randomUUID();
      if (await call.db.refByUuid('SR', id)) throw new XapiError('SR_UUID_EXISTS', [id]);
      const ref = newRef();
      await call.db.create('SR', ref, {
        uuid: id,
        name_label: nameLabel,
        name_description: nameDescription,
        type: type.toLowerCase(),
        content_type: contentType,
        shared: shared === true,
        sm_config: smConfig,
        other_config: {},
        physical_size: -1,
        physical_utilisation: -1,
        virtual_allocation: 0,
      });
      await storage.updateSrAllowed(ref);
      return ref;
    })
    // xapi moves probe's passwords into secrets too, then never removes them: a secret left
    // behind at every probe. Here the driver is given the config as it came.
    .implement('SR.probe', async (_call, [host, deviceConfig, type]) => {
      await storage.host.db.get('host', host);
      const driver = storage.driver(type);
      if (!('SR_PROBE' in driver.features))
        throw new XapiError('SR_BACKEND_FAILURE', ["Operation 'sr_probe' not supported by this SR type", '', '']);
      return storage.sm('', () => driver.probe(deviceConfig));
    })
    .implement('SR.probe_ext', async (_call, [, , type]) => {
      storage.driver(type);
      throw new XapiError('SR_OPERATION_NOT_SUPPORTED', []);
    })
    .implement('SR.get_supported_types', () => [...storage.drivers.keys()])
    .implement('SR.scan', (call, [sr]) =>
      storage.withOp(call, { sr: [sr, 'scan'] }, () => runOnSrMaster(call, sr, 'SR.scan', [sr], () => storage.scan(sr))),
    )
    .implement('SR.update', (call, [sr]) =>
      storage.withOp(call, { sr: [sr, 'update'] }, () => runOnSrMaster(call, sr, 'SR.update', [sr], () => storage.updateStats(sr))),
    )
    // SR.forget and SR.destroy: checked and marked on the coordinator; destroy's driver call on
    // the SR's master (unplugged PBDs count), then every host holding a PBD forgets the SR
    // (an offline one is skipped), then the records go (message_forwarding.ml forward_sr_all_op).
    .implement('SR.forget', (call, [sr]) => {
      if (isForwardedHere(call)) return storage.forgetSr(sr);
      return storage.withOp(call, { sr: [sr, 'forget'] }, async () => {
        const row = await call.db.get('SR', sr);
        for (const pbd of row.PBDs) {
          if ((await call.db.get('PBD', pbd)).currently_attached === true) throw new XapiError('SR_HAS_PBD', [sr]);
        }
        await runOnAllSrHosts(call, sr, 'SR.forget', async () => storage.forgetSr(sr));
        await forgetRecords(storage, sr);
      });
    })
    .implement('SR.destroy', (call, [sr]) => {
      const destroyHere = async () => {
        const { driver, ctx } = await storage.context(sr, { plugged: false });
        await storage.sm(sr, () => driver.delete(ctx));
      };
      if (isForwardedHere(call)) return destroyHere();
      return storage.withOp(call, { sr: [sr, 'destroy'] }, async () => {
        const row = await call.db.get('SR', sr);
        const pbds = row.PBDs;
        for (const pbd of pbds) if ((await call.db.get('PBD', pbd)).currently_attached === true) throw new XapiError('SR_HAS_PBD', [sr]);
        if (row.other_config.indestructible === 'true') throw new XapiError('SR_INDESTRUCTIBLE', [sr]);
        if (pbds.length === 0) throw new XapiError('SR_HAS_NO_PBDS', [sr]);
        for (const v of row.VDIs) {
          const vdi = await call.db.tryGet('VDI', v);
          if (vdi && vdi.managed === true && vdi.type !== 'rrd') throw new XapiError('SR_NOT_EMPTY', []);
        }
        const [master] = await srPbdHosts(call, sr);
        await runOn(call, master!, 'SR.destroy', [sr], destroyHere);
        await runOnAllSrHosts(call, sr, 'SR.forget', async () => storage.forgetSr(sr));
        await forgetRecords(storage, sr);
      });
    })
    .implement('SR.set_shared', async (call, [sr, value]) => {
      const row = await call.db.get('SR', sr);
      if (value !== true && row.PBDs.length > 1) throw new XapiError('SR_HAS_MULTIPLE_PBDS', row.PBDs);
      await call.db.update('SR', sr, { shared: value === true });
    })
    .implement('SR.set_name_label', (call, [sr, v]) => call.db.update('SR', sr, { name_label: v }))
    .implement('SR.set_name_description', (call, [sr, v]) => call.db.update('SR', sr, { name_description: v }))
    .implement('SR.set_physical_size', (call, [sr, v]) => call.db.update('SR', sr, { physical_size: v }))
    .implement('SR.set_physical_utilisation', (call, [sr, v]) => call.db.update('SR', sr, { physical_utilisation: v }))
    .implement('SR.set_virtual_allocation', (call, [sr, v]) => call.db.update('SR', sr, { virtual_allocation: v }));
}

/** Drops an SR's records: its VDIs (and what points at them), its PBDs, the SR. */
async function forgetRecords(storage: Storage, srRef: string): Promise<void> {
  const db = storage.host.db;
  const row = await db.get('SR', srRef);
  for (const v of row.VDIs) await storage.destroyVdiRecord(v);
  for (const pbd of row.PBDs) if (await db.tryGet('PBD', pbd)) await db.destroy('PBD', pbd);
  for (const [pool, p] of await db.all('pool')) {
    const clear: Partial<Record<'default_SR' | 'suspend_image_SR' | 'crash_dump_SR', string>> = {};
    for (const f of ['default_SR', 'suspend_image_SR', 'crash_dump_SR'] as const) if (p[f] === srRef) clear[f] = 'OpaqueRef:NULL';
    if (Object.keys(clear).length) await db.update('pool', pool, clear);
  }
  await db.destroy('SR', srRef);
}
