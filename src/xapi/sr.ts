// SR.* explicit messages (xapi's xapi_sr.ml): create (records, PBDs, the driver's sr_create,
// plug), introduce, probe, scan, update, forget, destroy, and the setters xapi checks.
import { randomUUID } from 'node:crypto';
import type { Registry } from '../api/context.js';
import { XapiError } from '../api/errors.js';
import { newRef } from '../api/implicit.js';
import type { Storage } from './storage.js';
import { plugPbd } from './pbd.js';

const s = (v: unknown) => v as string;

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
  if ('SRmaster' in spec.deviceConfig) throw new XapiError('VALUE_NOT_SUPPORTED', ['SRmaster', spec.deviceConfig.SRmaster!, 'This key is for internal use only']);
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
    await db.create('PBD', pbd, { uuid: randomUUID(), host, SR: srRef, device_config: spec.deviceConfig, currently_attached: false, other_config: {} });
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

export function register(r: Registry, storage: Storage): void {
  r.implement('SR.create', async (_call, [host, deviceConfig, physicalSize, nameLabel, nameDescription, type, contentType, shared, smConfig]) =>
    createSr(storage, {
      host: s(host),
      deviceConfig: deviceConfig as Record<string, string>,
      physicalSize: Number(physicalSize),
      nameLabel: s(nameLabel),
      nameDescription: s(nameDescription),
      type: s(type),
      contentType: s(contentType),
      shared: shared === true,
      smConfig: smConfig as Record<string, string>,
    }),
  )
    .implement('SR.make', async (call, [host, deviceConfig, physicalSize, nameLabel, nameDescription, type, contentType, smConfig]) => {
      const ref = await createSr(storage, {
        host: s(host), deviceConfig: deviceConfig as Record<string, string>, physicalSize: Number(physicalSize), nameLabel: s(nameLabel),
        nameDescription: s(nameDescription), type: s(type), contentType: s(contentType), shared: false, smConfig: smConfig as Record<string, string>,
      });
      return s((await call.db.get('SR', ref)).uuid);
    })
    .implement('SR.introduce', async (call, [uuid, nameLabel, nameDescription, type, contentType, shared, smConfig]) => {
      const id = s(uuid) || randomUUID();
      if (await call.db.refByUuid('SR', id)) throw new XapiError('SR_UUID_EXISTS', [id]);
      const ref = newRef();
      await call.db.create('SR', ref, {
        uuid: id, name_label: s(nameLabel), name_description: s(nameDescription), type: s(type).toLowerCase(),
        content_type: s(contentType), shared: shared === true, sm_config: smConfig, other_config: {},
        physical_size: -1, physical_utilisation: -1, virtual_allocation: 0,
      });
      await storage.updateSrAllowed(ref);
      return ref;
    })
    .implement('SR.probe', async (_call, [host, deviceConfig, type]) => {
      await storage.host.db.get('host', s(host));
      const driver = storage.driver(s(type));
      if (!('SR_PROBE' in driver.features)) throw new XapiError('SR_BACKEND_FAILURE', ["Operation 'sr_probe' not supported by this SR type", '', '']);
      return storage.sm('', () => driver.probe(deviceConfig as Record<string, string>));
    })
    .implement('SR.probe_ext', async (_call, [, , type]) => {
      storage.driver(s(type));
      throw new XapiError('SR_OPERATION_NOT_SUPPORTED', []);
    })
    .implement('SR.get_supported_types', () => [...storage.drivers.keys()])
    .implement('SR.scan', (call, [sr]) => storage.withOp(call, { sr: [s(sr), 'scan'] }, () => storage.scan(s(sr))))
    .implement('SR.update', (call, [sr]) => storage.withOp(call, { sr: [s(sr), 'update'] }, () => storage.updateStats(s(sr))))
    .implement('SR.forget', (call, [sr]) =>
      storage.withOp(call, { sr: [s(sr), 'forget'] }, async () => {
        const row = await call.db.get('SR', s(sr));
        for (const pbd of row.PBDs as string[]) {
          if ((await call.db.get('PBD', pbd)).currently_attached === true) throw new XapiError('SR_HAS_PBD', [s(sr)]);
        }
        await forgetRecords(storage, s(sr));
      }),
    )
    .implement('SR.destroy', (call, [sr]) =>
      storage.withOp(call, { sr: [s(sr), 'destroy'] }, async () => {
        const row = await call.db.get('SR', s(sr));
        const pbds = row.PBDs as string[];
        for (const pbd of pbds) if ((await call.db.get('PBD', pbd)).currently_attached === true) throw new XapiError('SR_HAS_PBD', [s(sr)]);
        if ((row.other_config as Record<string, string>).indestructible === 'true') throw new XapiError('SR_INDESTRUCTIBLE', [s(sr)]);
        if (pbds.length === 0) throw new XapiError('SR_HAS_NO_PBDS', [s(sr)]);
        for (const v of row.VDIs as string[]) {
          const vdi = await call.db.tryGet('VDI', v);
          if (vdi && vdi.managed === true && vdi.type !== 'rrd') throw new XapiError('SR_NOT_EMPTY', []);
        }
        const { driver, ctx } = await storage.context(s(sr), { plugged: false });
        await storage.sm(s(sr), () => driver.delete(ctx));
        await forgetRecords(storage, s(sr));
      }),
    )
    .implement('SR.set_shared', async (call, [sr, value]) => {
      const row = await call.db.get('SR', s(sr));
      if (value !== true && (row.PBDs as string[]).length > 1) throw new XapiError('SR_HAS_MULTIPLE_PBDS', row.PBDs as string[]);
      await call.db.update('SR', s(sr), { shared: value === true });
    })
    .implement('SR.set_name_label', (call, [sr, v]) => call.db.update('SR', s(sr), { name_label: s(v) }))
    .implement('SR.set_name_description', (call, [sr, v]) => call.db.update('SR', s(sr), { name_description: s(v) }))
    .implement('SR.set_physical_size', (call, [sr, v]) => call.db.update('SR', s(sr), { physical_size: Number(v) }))
    .implement('SR.set_physical_utilisation', (call, [sr, v]) => call.db.update('SR', s(sr), { physical_utilisation: Number(v) }))
    .implement('SR.set_virtual_allocation', (call, [sr, v]) => call.db.update('SR', s(sr), { virtual_allocation: Number(v) }));
}

/** Drops an SR's records: its VDIs (and what points at them), its PBDs, the SR. */
async function forgetRecords(storage: Storage, srRef: string): Promise<void> {
  const db = storage.host.db;
  const row = await db.get('SR', srRef);
  for (const v of row.VDIs as string[]) await storage.destroyVdiRecord(v);
  for (const pbd of row.PBDs as string[]) if (await db.tryGet('PBD', pbd)) await db.destroy('PBD', pbd);
  for (const [pool, p] of await db.all('pool')) {
    const clear: Partial<Record<'default_SR' | 'suspend_image_SR' | 'crash_dump_SR', string>> = {};
    for (const f of ['default_SR', 'suspend_image_SR', 'crash_dump_SR'] as const) if (p[f] === srRef) clear[f] = 'OpaqueRef:NULL';
    if (Object.keys(clear).length) await db.update('pool', pool, clear);
  }
  await db.destroy('SR', srRef);
}
