// VDI.* explicit messages (xapi's xapi_vdi.ml, storage_smapiv1.ml): create, destroy, resize,
// snapshot and clone through the SR's driver, copy (block-wise, delta with a base), introduce,
// forget, update, and the setters. Every driver call runs under the SR/VDI operation marks.
import type { Call, MessageImpl, Registry } from '../api/context.js';
import type { Messages, VDI_record } from '../schema/generated.js';
import { XapiError } from '../rpc/errors.js';
import { formatDateTime, NULL_REF } from '../schema/types.js';
import { copyDisk } from '../storage/copy.js';
import type { OpenDisk } from '../storage/driver.js';
import type { Storage } from './storage.js';
import { isForwardedHere, runOn, runOnSrMaster } from './forward.js';
import { hostSeeing } from './forward-to.js';
import type { Rpc } from '../rpc/rpc.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The fields a new VDI takes from its creator (VDI.create passes the client's record on). */
export type VdiFields = Partial<VDI_record>;

/** CA-26514 in xapi: the implementations of most VDI operations refuse an unmanaged VDI. */
async function assertManaged(call: Call, vdiRef: string): Promise<void> {
  if (!(await call.db.get('VDI', vdiRef)).managed) throw new XapiError('VDI_NOT_MANAGED', [vdiRef]);
}

/** VDI.create's work, for the API and for xapi's own disks (provision, import, suspend images). */
export async function createVdi(storage: Storage, call: Call, srRef: string, size: number, fields: VdiFields): Promise<string> {
  if (fields.type === 'cbt_metadata') throw new XapiError('VDI_INCOMPATIBLE_TYPE', ['', 'cbt_metadata']);
  const record = { ...fields, SR: srRef, virtual_size: size } as unknown as Rpc;
  return storage.withOp(call, { sr: [srRef, 'vdi_create'] }, () =>
    runOnSrMaster(call, srRef, 'VDI.create', [record], async () => {
      const { driver, ctx } = await storage.context(srRef);
      const info = await storage.sm(srRef, () => driver.vdiCreate(ctx, size, { nameLabel: fields.name_label ?? '' }));
      const ref = await storage.createVdi(srRef, info, { ...fields, sm_config: fields.sm_config ?? {} });
      await storage.updateStats(srRef);
      return ref;
    }),
  );
}

/** VDI.destroy's work: the driver hides or removes the data, the record goes, the GC is kicked. */
export async function destroyVdi(storage: Storage, call: Call, vdiRef: string): Promise<void> {
  const vdi = await call.db.get('VDI', vdiRef);
  const srRef = vdi.SR;
  if (vdi.type === 'rrd') throw new XapiError('VDI_HAS_RRDS', [vdiRef]);
  await storage.withOp(call, { sr: [srRef, 'vdi_destroy'], vdi: [vdiRef, 'destroy'] }, () =>
    runOnSrMaster(call, srRef, 'VDI.destroy', [vdiRef], async () => {
      await assertManaged(call, vdiRef);
      const { driver, ctx } = await storage.context(srRef);
      await storage.sm(srRef, () => driver.vdiDelete(ctx, vdi.location), vdiRef);
      await storage.destroyVdiRecord(vdiRef);
      await storage.updateStats(srRef).catch(() => undefined);
      storage.kickGc(srRef);
    }),
  );
}

/**
 * VDI.snapshot / VDI.clone: the driver makes the new leaf; xapi copies the source's metadata
 * onto it (name, description, type, sharable, other_config, xenstore_data, on_boot,
 * allow_caching, tags; sm_config's base_mirror) and, for a snapshot, links it to the source.
 */
export async function snapshotVdi(storage: Storage, call: Call, vdiRef: string, kind: 'snapshot' | 'clone'): Promise<string> {
  const vdi = await call.db.get('VDI', vdiRef);
  const srRef = vdi.SR;
  if (kind === 'snapshot' && vdi.sharable === true) throw new XapiError('VDI_IS_SHARABLE', [vdiRef]);
  if (kind === 'snapshot' && vdi.on_boot === 'reset') throw new XapiError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', []);
  const srOp = kind === 'snapshot' ? 'vdi_snapshot' : 'vdi_clone';
  return storage.withOp(call, { sr: [srRef, srOp], vdi: [vdiRef, kind] }, () =>
    runOnSrMaster(call, srRef, kind === 'snapshot' ? 'VDI.snapshot' : 'VDI.clone', [vdiRef, {}], async () => {
      await assertManaged(call, vdiRef);
      const { driver, ctx } = await storage.context(srRef);
      const info = await storage.sm(srRef, () => driver.vdiSnapshot(ctx, vdi.location, kind), vdiRef);
      const smConfig: Record<string, string> = {};
      const base = vdi.sm_config.base_mirror;
      if (base !== undefined) smConfig.base_mirror = base;
      const ref = await storage.createVdi(srRef, info, {
        name_label: vdi.name_label,
        name_description: vdi.name_description,
        type: vdi.type,
        sharable: vdi.sharable,
        other_config: vdi.other_config,
        xenstore_data: vdi.xenstore_data,
        on_boot: vdi.on_boot,
        allow_caching: vdi.allow_caching,
        tags: vdi.tags,
        sm_config: smConfig,
        ...(kind === 'snapshot'
          ? { is_a_snapshot: true, snapshot_of: vdiRef, snapshot_time: formatDateTime(new Date(storage.host.now())) }
          : {}),
      });
      // The source now sits over the new hidden parent.
      await storage.updateVdi(vdiRef);
      await storage.updateStats(srRef);
      return ref;
    }),
  );
}

/**
 * Opens a VDI's data on this host (for copy, import and export). `deferSync` for a target whose
 * content counts only once the operation succeeded: one fsync at close, not two per new block.
 */
export async function openVdi(storage: Storage, vdiRef: string, readOnly: boolean, opts: { deferSync?: boolean } = {}): Promise<OpenDisk> {
  const vdi = await storage.host.db.get('VDI', vdiRef);
  const { driver, ctx } = await storage.context(vdi.SR);
  if (readOnly) return storage.sm(vdi.SR, () => driver.vdiOpen(ctx, vdi.location, { readOnly, deferSync: opts.deferSync }), vdiRef);
  // Claimed before the open: a GC step that has not started yet will leave this leaf alone.
  const release = storage.claimWriter(vdiRef);
  try {
    const disk = await storage.sm(vdi.SR, () => driver.vdiOpen(ctx, vdi.location, { readOnly, deferSync: opts.deferSync }), vdiRef);
    return { ...disk, close: () => disk.close().finally(release) };
  } catch (e) {
    release();
    throw e;
  }
}

/**
 * VDI.copy: into `into` if given, else a new VDI in `sr` like the source (read_only false,
 * empty sm_config); data copied block-wise, with `base` only what differs from it. A VDI this
 * call made is destroyed again when the copy fails.
 */
export async function copyVdi(
  storage: Storage,
  call: Call,
  vdiRef: string,
  srRef: string,
  baseRef: string,
  intoRef: string,
): Promise<string> {
  return storage.withOp(call, { vdi: [vdiRef, 'copy'] }, async () => {
    // forward_sr_multiple_op: a host seeing both SRs (a member rather than the coordinator),
    // else one seeing the source's; with neither, xapi's Not_found escapes as it is
    const work = () => copyHere(storage, call, vdiRef, srRef, baseRef, intoRef);
    if (isForwardedHere(call)) return work();
    const srcSr = (await call.db.get('VDI', vdiRef)).SR;
    const host = await hostSeeing(call, [srcSr, srRef], true).catch(() =>
      hostSeeing(call, [srcSr], true).catch(() => {
        throw new XapiError('INTERNAL_ERROR', ['Not_found']);
      }),
    );
    return (await runOn(call, host, 'VDI.copy', [vdiRef, srRef, baseRef, intoRef], work)) as string;
  });
}

/** VDI.copy's work, on a host that sees the SRs. */
async function copyHere(storage: Storage, call: Call, vdiRef: string, srRef: string, baseRef: string, intoRef: string): Promise<string> {
  const db = call.db;
  {
    await assertManaged(call, vdiRef);
    const src = await db.get('VDI', vdiRef);
    let dst = intoRef;
    let made = false;
    if (dst === NULL_REF || !dst) {
      await db.get('SR', srRef);
      dst = await createVdi(storage, call, srRef, src.virtual_size, {
        name_label: src.name_label,
        name_description: src.name_description,
        type: src.type,
        sharable: src.sharable === true,
        read_only: false,
        other_config: src.other_config,
        xenstore_data: src.xenstore_data,
        // marked like an import's target: a restart after a crash mid-copy removes it
        sm_config: { import_task: call.task },
        tags: src.tags,
      });
      if (src.on_boot === 'reset') await db.update('VDI', dst, { on_boot: 'reset' });
      made = true;
    } else {
      const into = await db.get('VDI', dst);
      if (into.read_only === true) throw new XapiError('VDI_READONLY', [dst]);
      if (into.virtual_size < src.virtual_size) throw new XapiError('VDI_TOO_SMALL', [dst, String(src.virtual_size)]);
    }
    try {
      const from = await openVdi(storage, vdiRef, true);
      try {
        const to = await openVdi(storage, dst, false, { deferSync: true });
        try {
          // A base only helps a target that holds its content already (into_vdi); a fresh VDI reads
          // as zeros, so skipping what equals the base would lose data.
          const base = !made && baseRef && baseRef !== NULL_REF ? await openVdi(storage, baseRef, true) : undefined;
          try {
            await copyDisk(from, to, { base, onProgress: (f) => call.setProgress(f), checkCancelled: () => call.checkCancelled() });
          } finally {
            await base?.close();
          }
        } finally {
          await to.close();
        }
      } finally {
        await from.close();
      }
    } catch (e) {
      if (made) await destroyVdi(storage, call, dst).catch(() => undefined);
      throw e;
    }
    await storage.updateVdi(dst);
    await storage.updateStats((await db.get('VDI', dst)).SR);
    return dst;
  }
}

/** VDI.introduce's parameters, and db_introduce's, which add cbt_enabled. */
type IntroduceParams = [...Messages['VDI.introduce']['params'], cbt_enabled?: boolean];

const introduceArgs = (a: IntroduceParams) => {
  const [
    uuid,
    name_label,
    name_description,
    SR,
    type,
    sharable,
    read_only,
    other_config,
    location,
    xenstore_data,
    sm_config,
    managed,
    virtual_size,
    physical_utilisation,
    metadata_of_pool,
    is_a_snapshot,
    snapshot_time,
    snapshot_of,
    cbt_enabled,
  ] = a;
  return {
    uuid,
    name_label,
    name_description,
    SR,
    type,
    sharable,
    read_only,
    other_config,
    location,
    xenstore_data,
    sm_config,
    managed,
    virtual_size,
    physical_utilisation,
    metadata_of_pool,
    is_a_snapshot,
    snapshot_time,
    snapshot_of,
    cbt_enabled,
  };
};

export function register(r: Registry, storage: Storage): void {
  const dbIntroduce: MessageImpl<'VDI.db_introduce' | 'VDI.pool_introduce'> = async (call, args) => {
    const a = introduceArgs(args);
    const uuid = a.uuid;
    if (!UUID.test(uuid)) throw new XapiError('UUID_INVALID', ['VDI', uuid]);
    await call.db.get('SR', a.SR);
    const ref = `OpaqueRef:${crypto.randomUUID()}`;
    // The parameters are VDI fields of the same names.
    const fields = Object.fromEntries(Object.entries(a).filter(([, v]) => v !== undefined)) as Partial<VDI_record>;
    await call.db.create('VDI', ref, {
      ...fields,
      xenstore_data: a.xenstore_data ?? {},
      other_config: a.other_config ?? {},
      sm_config: a.sm_config ?? {},
    });
    return ref;
  };

  // A field the record lacks arrives undefined, and the SR lookup refuses it.
  r.implement('VDI.create', (call, [rec]) => createVdi(storage, call, rec.SR!, Number(rec.virtual_size), rec))
    .implement('VDI.destroy', (call, [self]) => destroyVdi(storage, call, self))
    // driver_params: the file SRs take none (SMAPIv1 drivers ignore what they do not know)
    .implement('VDI.snapshot', (call, [self]) => snapshotVdi(storage, call, self, 'snapshot'))
    .implement('VDI.clone', (call, [self]) => snapshotVdi(storage, call, self, 'clone'))
    .implement('VDI.copy', (call, [vdi, sr, base, into]) => copyVdi(storage, call, vdi, sr, base, into))
    .implement('VDI.resize', (call, [self, size]) => resize(call, self, size, 'resize'))
    .implement('VDI.resize_online', (call, [self, size]) => resize(call, self, size, 'resize_online'))
    .implement('VDI.update', async (call, [self]) => {
      const srRef = (await call.db.get('VDI', self)).SR;
      await storage.withOp(call, { vdi: [self, 'update'] }, () =>
        runOnSrMaster(call, srRef, 'VDI.update', [self], () => storage.updateVdi(self)),
      );
    })
    .implement('VDI.forget', (call, [self]) =>
      storage.withOp(call, { vdi: [self, 'forget'] }, async () => {
        const vdi = await call.db.get('VDI', self);
        if (vdi.type === 'rrd') throw new XapiError('VDI_HAS_RRDS', [self]);
        await storage.destroyVdiRecord(self);
      }),
    )
    .implement('VDI.db_forget', (_call, [self]) => storage.destroyVdiRecord(self))
    .implement('VDI.introduce', async (call, args) => {
      const a = introduceArgs(args);
      const srRef = a.SR;
      const location = a.location;
      return storage.withOp(call, { sr: [srRef, 'vdi_introduce'] }, async () => {
        const { driver, ctx } = await storage.context(srRef);
        if ((await call.db.find('VDI', { SR: srRef, location })).length > 0) throw new XapiError('LOCATION_NOT_UNIQUE', [srRef, location]);
        const info = await storage.sm(srRef, () => driver.vdiIntroduce(ctx, location));
        const uuid = a.uuid;
        if (uuid && (await call.db.refByUuid('VDI', uuid))) throw new XapiError('UUID_INVALID', ['VDI', uuid]);
        const fields: Partial<VDI_record> = {
          type: a.type,
          sharable: a.sharable,
          other_config: a.other_config,
          xenstore_data: a.xenstore_data,
          sm_config: a.sm_config,
          managed: a.managed ?? true,
          ...(a.name_label ? { name_label: a.name_label } : {}),
          ...(a.name_description ? { name_description: a.name_description } : {}),
        };
        return storage.createVdi(srRef, { ...info, uuid: uuid || info.uuid, readOnly: info.readOnly || a.read_only === true }, fields);
      });
    })
    .implement('VDI.db_introduce', dbIntroduce)
    .implement('VDI.pool_introduce', dbIntroduce)
    .implement('VDI.set_name_label', (call, [self, v]) => call.db.update('VDI', self, { name_label: v }))
    .implement('VDI.set_name_description', (call, [self, v]) => call.db.update('VDI', self, { name_description: v }))
    .implement('VDI.set_on_boot', async (call, [self, mode]) => {
      const vdi = await call.db.get('VDI', self);
      await storage.withOp(call, { sr: [vdi.SR, 'vdi_set_on_boot'], vdi: [self, 'set_on_boot'] }, async () => {
        if (vdi.on_boot === mode) return;
        const { driver, ctx } = await storage.context(vdi.SR);
        await storage.sm(vdi.SR, async () => driver.vdiSetOnBoot?.(ctx, vdi.location, mode), self);
        await call.db.update('VDI', self, { on_boot: mode });
        await storage.updateVdi(self);
      });
    })
    .implement('VDI.set_allow_caching', (call, [self, v]) => call.db.update('VDI', self, { allow_caching: v === true }));

  async function resize(call: Call, vdiRef: string, size: number, op: 'resize' | 'resize_online'): Promise<void> {
    const vdi = await call.db.get('VDI', vdiRef);
    const srRef = vdi.SR;
    await storage.withOp(call, { sr: [srRef, 'vdi_resize'], vdi: [vdiRef, op] }, () =>
      runOnSrMaster(call, srRef, `VDI.${op}`, [vdiRef, size], async () => {
        await assertManaged(call, vdiRef);
        const { driver, ctx } = await storage.context(srRef);
        await storage.refreshVdi(vdiRef, await storage.sm(srRef, () => driver.vdiResize(ctx, vdi.location, size), vdiRef));
        await storage.updateStats(srRef);
      }),
    );
  }
}
