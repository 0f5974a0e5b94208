// VM commands beyond the power operations (cli_operations.ml): install from a template, clone,
// copy, snapshot, checkpoint, revert, uninstall, memory settings, disks, CDs and VIFs, migration.
import { XapiError } from '../../rpc/errors.js';
import type { Rpc, RpcStruct } from '../../rpc/rpc.js';
import { CliFailure } from '../errors.js';
import { applyFilters, allObjects, printRecord } from '../generic.js';
import { boolParam, has, param, required } from '../parse.js';
import { bytesOfString, type Field, makeFields, RefNames } from '../records.js';
import { doVmOp } from '../selectors.js';
import type { CommandTable, Ctx } from '../table.js';
import { byUuid, defaultSrUuid, hostByNameOrId, poolAndMaster, record, uuidOf } from './util.js';

const NULL = 'OpaqueRef:NULL';

/** VM.clone/snapshot/checkpoint of the selected VMs; the new uuids printed (vm_clone_aux). */
function cloneLike(method: string, includeTemplates: boolean) {
  return async (ctx: Ctx) => {
    const name = required(ctx.params, 'new-name-label');
    const desc = param(ctx.params, 'new-name-description');
    let extra: Rpc[] = [];
    if (method === 'VM.snapshot' && ctx.api.dispatcher.host.schema.messages.get('VM.snapshot')!.params.length > 2) {
      const ignored = param(ctx.params, 'ignore-vdi-uuids');
      const refs =
        ignored === undefined ? [] : await Promise.all(ignored.split(',').map(async (u) => String(await ctx.call('VDI.get_by_uuid', u))));
      extra = [refs];
    }
    const news = await doVmOp(
      ctx,
      { includeTemplates, ignore: ['new-name-label', 'new-name-description', 'ignore-vdi-uuids'] },
      async (vm) => String(await ctx.call(method, vm.ref, name, ...extra)),
    );
    if (desc !== undefined) await ctx.call('VM.set_name_description', news[0]!, desc);
    ctx.printer.list(await Promise.all(news.map((v) => uuidOf(ctx, 'VM', v))));
  };
}

function snapshotUuid(ctx: Ctx): string {
  const v = param(ctx.params, 'snapshot-uuid') ?? param(ctx.params, 'uuid');
  if (v === undefined) throw new CliFailure('Required parameter not found: snapshot-uuid or uuid.');
  return v;
}

async function snapshotByUuid(ctx: Ctx, uuid: string): Promise<string> {
  const ref = String(await ctx.call('VM.get_by_uuid', uuid));
  if ((await ctx.call('VM.get_is_a_snapshot', ref)) !== true) {
    throw new CliFailure(`This operation can only be performed on a VM snapshot. ${uuid} is not a VM snapshot.`);
  }
  return ref;
}

async function templateByUuid(ctx: Ctx, uuid: string): Promise<string> {
  const ref = String(await ctx.call('VM.get_by_uuid', uuid));
  if ((await ctx.call('VM.get_is_a_template', ref)) !== true) {
    throw new CliFailure(`This operation can only be performed on a VM template. ${uuid} is not a VM template.`);
  }
  return ref;
}

/** vm_uninstall_common: lists what goes (the VMs, the disks they own, suspend images), asks, destroys. */
async function uninstall(ctx: Ctx, vms: string[]): Promise<void> {
  const lines: string[] = [];
  const work: (() => Promise<void>)[] = [];
  const vdiLine = async (vdi: string) => {
    const r = await record(ctx, 'VDI', vdi);
    const shared = Array.isArray(r.VBDs) && r.VBDs.length > 1 ? ' ** WARNING: disk is shared by other VMs' : '';
    return `VDI: ${String(r.uuid)} (${String(r.name_label)}) ${shared}`;
  };
  for (const vm of vms) {
    const r = await record(ctx, 'VM', vm);
    const vdis: string[] = [];
    for (const vbd of (r.VBDs as Rpc[]) ?? []) {
      try {
        const oc = (await ctx.call('VBD.get_other_config', vbd)) as RpcStruct;
        const vdi = String(await ctx.call('VBD.get_VDI', vbd));
        await ctx.call('VDI.get_uuid', vdi);
        if ('owner' in oc) vdis.push(vdi);
      } catch {
        // an empty drive or a VDI already gone
      }
    }
    let suspend = NULL;
    try {
      const s = String(r.suspend_VDI);
      await ctx.call('VDI.get_uuid', s);
      suspend = s;
    } catch {
      suspend = NULL;
    }
    lines.push(`VM : ${String(r.uuid)} (${String(r.name_label)})`);
    for (const v of vdis) lines.push(await vdiLine(v));
    if (suspend !== NULL) lines.push(await vdiLine(suspend));
    work.push(async () => {
      if ((await ctx.call('VM.get_power_state', vm)) !== 'Halted') await ctx.call('VM.hard_shutdown', vm);
      await ctx.call('VM.destroy', vm);
      for (const v of vdis) await ctx.call('VDI.destroy', v);
      if (suspend !== NULL) await ctx.call('VDI.destroy', suspend).catch(() => undefined);
    });
  }
  ctx.channel.print('The following items are about to be destroyed');
  for (const l of lines) ctx.channel.print(l);
  if (boolParam(ctx.params, 'force') || (await ctx.channel.userSaysYes())) {
    for (const w of work) await w();
    ctx.channel.print('All objects destroyed');
  }
}

/** The `sr` attribute of each <disk> of a template's provisioning document set to the new SR. */
function rewriteDisks(xml: string, srUuid: string): string {
  return xml.replace(/<disk\b[^>]*>/g, (el) => el.replace(/\bsr="[^"]*"/, `sr="${srUuid}"`));
}

async function vmInstall(ctx: Ctx): Promise<void> {
  const p = ctx.params;
  let template: string;
  const byName = async (name: string) => {
    const all = await allObjects(ctx, 'vm');
    const hits = await applyFilters(all, [
      ['name-label', name],
      ['is-a-template', 'true'],
      ['is-control-domain', 'false'],
    ]);
    if (hits.length === 0) throw new CliFailure('No templates matched');
    if (hits.length > 1) throw new CliFailure('More than one matching template found');
    return hits[0]!.ref;
  };
  if (has(p, 'template-uuid')) {
    try {
      template = String(await ctx.call('VM.get_by_uuid', param(p, 'template-uuid')!));
    } catch {
      throw new CliFailure('Cannot find template');
    }
  } else if (has(p, 'template-name-label') || has(p, 'template-name')) {
    template = await byName(param(p, 'template-name-label') ?? param(p, 'template-name')!);
  } else if (has(p, 'template')) {
    try {
      template = String(await ctx.call('VM.get_by_uuid', param(p, 'template')!));
    } catch {
      template = await byName(param(p, 'template')!);
    }
  } else {
    throw new CliFailure("Template must be specified by parameter 'template-uuid', 'template-name', 'template-name-label' or 'template'");
  }
  if ((await ctx.call('VM.get_is_a_template', template)) !== true) throw new CliFailure('Can only install from templates');
  const name = required(p, 'new-name-label');

  let sr: string | undefined;
  if ((await ctx.call('VM.get_is_a_snapshot', template)) === true) {
    if (has(p, 'sr-name-label') || has(p, 'sr-uuid')) {
      throw new CliFailure(
        'Do not use the sr-name-label or sr-uuid argument when installing from a snapshot. By default, it will install each new disk on the same SR as the corresponding snapshot disks.',
      );
    }
    sr = NULL;
  } else if (has(p, 'sr-uuid')) sr = String(await ctx.call('SR.get_by_uuid', param(p, 'sr-uuid')!));
  if (has(p, 'sr-name-label')) {
    const list = ((await ctx.call('SR.get_by_name_label', param(p, 'sr-name-label')!)) as Rpc[]).map(String);
    if (list.length === 0) throw new CliFailure('No SR with that name-label found');
    if (sr !== undefined) {
      if (!list.includes(sr)) throw new CliFailure("SR specified via sr-uuid doesn't have the name specified via sr-name-label");
    } else if (list.length === 1) sr = list[0];
    else throw new CliFailure('Multiple SRs with that name-label found');
  }
  let suspendSr: string;
  if (sr !== undefined && sr !== NULL) suspendSr = sr;
  else suspendSr = String(await ctx.call('VM.get_suspend_SR', template));
  let srUuid = '';
  if (sr !== undefined && sr !== NULL) srUuid = String(await ctx.call('SR.get_uuid', sr));
  else {
    const dflt = await defaultSrUuid(ctx);
    if (dflt !== undefined) srUuid = dflt;
    else {
      const oc = (await ctx.call('VM.get_other_config', template)) as RpcStruct;
      if ('disks' in oc)
        throw new CliFailure('Failed to find a valid default SR for the Pool. Please provide an sr-name-label or sr-uuid parameter.');
    }
  }
  const vm = String(
    sr !== undefined && sr !== NULL ? await ctx.call('VM.copy', template, name, sr) : await ctx.call('VM.clone', template, name),
  );
  try {
    await ctx.call('VM.set_name_description', vm, 'Installed via xe CLI');
    await ctx.call('VM.set_suspend_SR', vm, suspendSr);
    const oc = (await ctx.call('VM.get_other_config', vm)) as RpcStruct;
    if (typeof oc.disks === 'string') {
      await ctx.call('VM.remove_from_other_config', vm, 'disks');
      await ctx.call('VM.add_to_other_config', vm, 'disks', rewriteDisks(oc.disks, srUuid));
    }
    const recommendations = String(await ctx.call('VM.get_recommendations', template));
    const { pool } = await poolAndMaster(ctx);
    const policyOk = (await ctx.call('pool.get_policy_no_vendor_device', pool)) !== true;
    const wantDevice = /<restriction\b[^>]*field="has-vendor-device"[^>]*value="true"/.test(recommendations) && policyOk;
    // xapi sets it unconditionally; the project has no VM.set_has_vendor_device, so only a change is asked for.
    if ((await ctx.call('VM.get_has_vendor_device', vm)) !== wantDevice) await ctx.call('VM.set_has_vendor_device', vm, wantDevice);
    await ctx.call('VM.provision', vm);
    if (has(p, 'copy-bios-strings-from')) {
      await ctx.call('VM.copy_bios_strings', vm, String(await ctx.call('host.get_by_uuid', param(p, 'copy-bios-strings-from')!)));
    }
    ctx.printer.list([await uuidOf(ctx, 'VM', vm)]);
  } catch (e) {
    await ctx.call('VM.destroy', vm).catch(() => undefined);
    throw e;
  }
}

/** vm_disk_list_aux: each disk's (or CD's) VBD record, then its VDI's. */
async function diskList(ctx: Ctx, vm: string, cds: boolean): Promise<void> {
  const names = new RefNames(ctx);
  const vbdRefs = ((await record(ctx, 'VM', vm)).VBDs as Rpc[]).map(String);
  const wanted: string[] = [];
  for (const v of vbdRefs) if ((await ctx.call('VBD.get_type', v)) === (cds ? 'CD' : 'Disk')) wanted.push(v);
  const sub = (name: string): [string, string][] => {
    const v = param(ctx.params, name);
    return v === undefined ? [] : [['params', v]];
  };
  const pick = (fields: Field[], given: [string, string][], dflt: string[]) => {
    const p = given[0]?.[1];
    const list = p === undefined ? dflt : p === 'all' ? [] : p.split(',');
    return list.length === 0 ? fields : fields.filter((f) => list.includes(f.name));
  };
  let n = 0;
  for (const vbd of wanted) {
    const label = `${cds ? 'CD' : 'Disk'} ${n}`;
    const vbdFields = makeFields(ctx, 'vbd', { ref: vbd, rec: () => record(ctx, 'VBD', vbd) }, names);
    ctx.printer.msg(`${label} VBD:`);
    ctx.printer.table([
      await printRecord(
        pick(
          vbdFields,
          sub('vbd-params'),
          cds ? ['uuid', 'vm-name-label', 'userdevice', 'empty'] : ['uuid', 'vm-name-label', 'userdevice'],
        ),
        false,
      ),
    ]);
    if ((await ctx.call('VBD.get_empty', vbd)) !== true) {
      const vdi = String(await ctx.call('VBD.get_VDI', vbd));
      const vdiFields = makeFields(ctx, 'vdi', { ref: vdi, rec: () => record(ctx, 'VDI', vdi) }, names);
      ctx.printer.msg(`${label} VDI:`);
      ctx.printer.table([
        await printRecord(pick(vdiFields, sub('vdi-params'), ['uuid', 'name-label', 'virtual-size', 'sr-name-label']), false),
      ]);
    }
    n++;
  }
}

async function isoVdisNamed(ctx: Ctx, name: string): Promise<string[]> {
  const out: string[] = [];
  for (const v of ((await ctx.call('VDI.get_by_name_label', name)) as Rpc[]).map(String)) {
    const sr = String(await ctx.call('VDI.get_SR', v));
    if ((await ctx.call('SR.get_content_type', sr)) === 'iso') out.push(v);
  }
  return out;
}

/** create_vbd_and_plug: a VBD made and plugged, a refused plug ignored (the VM may be halted). */
async function createVbdAndPlug(
  ctx: Ctx,
  vm: string,
  vdi: string,
  device: string,
  mode: 'RO' | 'RW',
  type: 'CD' | 'Disk',
  owner: boolean,
): Promise<string> {
  const rec = Object.assign(Object.create(null) as RpcStruct, {
    VM: vm,
    VDI: vdi,
    userdevice: device,
    bootable: false,
    mode,
    type,
    unpluggable: true,
    empty: false,
    qos_algorithm_type: '',
    qos_algorithm_params: Object.create(null) as RpcStruct,
    other_config: Object.assign(Object.create(null) as RpcStruct, owner ? { owner: '' } : {}),
    device: '',
    currently_attached: false,
  });
  const vbd = String(await ctx.call('VBD.create', rec));
  try {
    await ctx.call('VBD.plug', vbd);
  } catch (e) {
    if (!(e instanceof XapiError)) throw e;
  }
  return vbd;
}

/** The memory setters: byte sizes with units, templates and control domains included. */
function memoryCommand(table: CommandTable, name: string, keys: string[], method: string, opts: { templates: boolean }) {
  table.define(name, async (ctx) => {
    const values = keys.map((k) => bytesOfString(k, required(ctx.params, k)));
    const args = name === 'vm-memory-target-set' ? [values[0]!, values[0]!] : values;
    await doVmOp(ctx, { includeControl: true, includeTemplates: opts.templates, ignore: keys }, (vm) => ctx.call(method, vm.ref, ...args));
  });
}

export function addVmConfigCommands(table: CommandTable): void {
  table
    .define('vm-install', vmInstall)
    .define('vm-clone', cloneLike('VM.clone', true))
    .define('vm-snapshot', cloneLike('VM.snapshot', false))
    .define('vm-checkpoint', cloneLike('VM.checkpoint', false))
    .define('vm-snapshot-with-quiesce', cloneLike('VM.snapshot_with_quiesce', false))
    .define('vm-copy', async (ctx) => {
      const name = required(ctx.params, 'new-name-label');
      const desc = param(ctx.params, 'new-name-description');
      const sr = has(ctx.params, 'sr-uuid') ? await byUuid(ctx, 'SR', 'sr-uuid') : NULL;
      const news = await doVmOp(
        ctx,
        { multiple: false, includeTemplates: true, ignore: ['new-name-label', 'sr-uuid', 'new-name-description'] },
        async (vm) => String(await ctx.call('VM.copy', vm.ref, name, sr)),
      );
      if (desc !== undefined) await ctx.call('VM.set_name_description', news[0]!, desc);
      ctx.printer.list(await Promise.all(news.map((v) => uuidOf(ctx, 'VM', v))));
    })
    .define('vm-uninstall', async (ctx) => {
      const vms = await doVmOp(ctx, { ignore: [] }, async (vm) => vm.ref);
      const snaps: string[] = [];
      for (const vm of vms) snaps.push(...((await ctx.call('VM.get_snapshots', vm)) as Rpc[]).map(String));
      await uninstall(ctx, [...vms, ...snaps]);
    })
    .define('template-uninstall', async (ctx) => uninstall(ctx, [await templateByUuid(ctx, required(ctx.params, 'template-uuid'))]))
    .define('snapshot-uninstall', async (ctx) => uninstall(ctx, [await snapshotByUuid(ctx, snapshotUuid(ctx))]))
    .define('snapshot-revert', async (ctx) => {
      await ctx.call('VM.revert', await snapshotByUuid(ctx, snapshotUuid(ctx)));
    })
    .define('snapshot-destroy', async (ctx) => {
      const snap = await snapshotByUuid(ctx, snapshotUuid(ctx));
      if ((await ctx.call('VM.get_power_state', snap)) !== 'Halted') await ctx.call('VM.hard_shutdown', snap);
      await ctx.call('VM.destroy', snap);
    })
    .define('snapshot-clone', async (ctx) => snapshotOp(ctx, (snap, name) => ctx.call('VM.clone', snap, name)))
    .define('snapshot-copy', async (ctx) => {
      const sr = has(ctx.params, 'sr-uuid') ? await byUuid(ctx, 'SR', 'sr-uuid') : NULL;
      await snapshotOp(ctx, (snap, name) => ctx.call('VM.copy', snap, name, sr));
    })
    .define('snapshot-reset-powerstate', async (ctx) => {
      if (!boolParam(ctx.params, 'force'))
        throw new CliFailure('This operation is dangerous and may cause data loss. This operation must be forced (use --force).');
      await ctx.call('VM.power_state_reset', await snapshotByUuid(ctx, snapshotUuid(ctx)));
    })
    .define('snapshot-disk-list', async (ctx) => {
      const snap = await snapshotByUuid(ctx, snapshotUuid(ctx));
      await diskList(ctx, snap, false);
    })
    .define('vm-disk-list', async (ctx) => {
      await doVmOp(ctx, { ignore: ['vbd-params', 'vdi-params'] }, (vm) => diskList(ctx, vm.ref, false));
    })
    .define('vm-cd-list', async (ctx) => {
      await doVmOp(ctx, { ignore: ['vbd-params', 'vdi-params'] }, (vm) => diskList(ctx, vm.ref, true));
    })
    .define('vm-vif-list', async (ctx) => {
      const names = new RefNames(ctx);
      const params: [string, string][] = [['multiple', 'true'], ...ctx.params];
      await doVmOp({ ...ctx, params }, { ignore: ['params'] }, async (vm) => {
        const vifs = ((await record(ctx, 'VM', vm.ref)).VIFs as Rpc[]).map(String);
        const p = param(ctx.params, 'params');
        const list =
          p === undefined
            ? ['uuid', 'device', 'MAC', 'network-uuid', 'network-name-label', 'vm-name-label']
            : p === 'all'
              ? []
              : p.split(',');
        const records = await Promise.all(
          vifs.map((vif) => {
            const fields = makeFields(ctx, 'vif', { ref: vif, rec: () => record(ctx, 'VIF', vif) }, names);
            return printRecord(list.length === 0 ? fields : fields.filter((f) => list.includes(f.name)), false);
          }),
        );
        ctx.printer.table(records);
      });
    })
    .define('vm-disk-add', async (ctx) => {
      const size = bytesOfString('disk-size', required(ctx.params, 'disk-size'));
      const device = required(ctx.params, 'device');
      let sr: string;
      if (has(ctx.params, 'sr-uuid')) sr = await byUuid(ctx, 'SR', 'sr-uuid');
      else {
        const dflt = await defaultSrUuid(ctx);
        if (dflt === undefined) throw new CliFailure('No default Pool SR set; you must specify an SR on the commandline');
        sr = String(await ctx.call('SR.get_by_uuid', dflt));
      }
      await doVmOp(ctx, { ignore: ['sr-uuid', 'device', 'disk-size'] }, async (vm) => {
        const vmUuid = await uuidOf(ctx, 'VM', vm.ref);
        const vdi = String(
          await ctx.call(
            'VDI.create',
            Object.assign(Object.create(null) as RpcStruct, {
              name_label: 'Created by xe',
              name_description: 'Created by xe',
              SR: sr,
              virtual_size: size,
              type: 'user',
              sharable: false,
              read_only: false,
              other_config: Object.create(null) as RpcStruct,
              xenstore_data: Object.create(null) as RpcStruct,
              sm_config: Object.assign(Object.create(null) as RpcStruct, { vmhint: vmUuid }),
              tags: [],
            }),
          ),
        );
        try {
          await createVbdAndPlug(ctx, vm.ref, vdi, device, 'RW', 'Disk', true);
        } catch (e) {
          await ctx.call('VDI.destroy', vdi);
          throw e;
        }
      });
    })
    .define('vm-disk-remove', async (ctx) => {
      const device = required(ctx.params, 'device');
      await doVmOp(ctx, { ignore: ['device'] }, async (vm) => {
        const vbds = ((await record(ctx, 'VM', vm.ref)).VBDs as Rpc[]).map(String);
        let hit: string | undefined;
        for (const v of vbds) if (!hit && (await ctx.call('VBD.get_userdevice', v)) === device) hit = v;
        if (!hit) throw new CliFailure('Disk not found');
        const vdi = String(await ctx.call('VBD.get_VDI', hit));
        await ctx.call('VBD.destroy', hit);
        await ctx.call('VDI.destroy', vdi);
      });
    })
    .define('vm-cd-add', async (ctx) => {
      const name = required(ctx.params, 'cd-name');
      const vdis = await isoVdisNamed(ctx, name);
      if (vdis.length === 0) throw new CliFailure(`CD ${name} not found!`);
      await doVmOp(ctx, { ignore: ['cd-name', 'device', 'cd-location'] }, (vm) =>
        createVbdAndPlug(ctx, vm.ref, vdis[0]!, required(ctx.params, 'device'), 'RO', 'CD', false),
      );
    })
    .define('vm-cd-remove', async (ctx) => {
      const name = required(ctx.params, 'cd-name');
      await doVmOp(ctx, { ignore: ['cd-name'] }, async (vm) => {
        const vbds = ((await record(ctx, 'VM', vm.ref)).VBDs as Rpc[]).map(String);
        let hit: string | undefined;
        for (const v of vbds) {
          if (hit) break;
          try {
            const vdi = String(await ctx.call('VBD.get_VDI', v));
            const sr = String(await ctx.call('VDI.get_SR', vdi));
            if ((await ctx.call('SR.get_content_type', sr)) === 'iso' && (await ctx.call('VDI.get_name_label', vdi)) === name) hit = v;
          } catch {
            if (name === '<EMPTY>') hit = v;
          }
        }
        if (!hit) throw new CliFailure('Disk not found');
        await ctx.call('VBD.destroy', hit);
      });
    })
    .define('vm-cd-eject', async (ctx) => {
      await doVmOp(ctx, { ignore: [] }, async (vm) => {
        const vbds = ((await record(ctx, 'VM', vm.ref)).VBDs as Rpc[]).map(String);
        const cds: string[] = [];
        for (const v of vbds) if ((await ctx.call('VBD.get_type', v)) === 'CD') cds.push(v);
        if (cds.length === 0) throw new CliFailure('No CDs found');
        if (cds.length > 1) throw new CliFailure('Two or more CDs found. Please use vbd-eject');
        await ctx.call('VBD.eject', cds[0]!);
      });
    })
    .define('vm-cd-insert', async (ctx) => {
      const name = required(ctx.params, 'cd-name');
      const vdis = await isoVdisNamed(ctx, name);
      if (vdis.length === 0) throw new CliFailure(`CD ${name} not found`);
      if (vdis.length > 1) throw new CliFailure(`Multiple CDs named ${name} found. Please use vbd-insert and specify uuids`);
      await doVmOp(ctx, { ignore: ['cd-name'] }, async (vm) => {
        const vbds = ((await record(ctx, 'VM', vm.ref)).VBDs as Rpc[]).map(String);
        const empty: string[] = [];
        for (const v of vbds)
          if ((await ctx.call('VBD.get_type', v)) === 'CD' && (await ctx.call('VBD.get_empty', v)) === true) empty.push(v);
        if (empty.length === 0) throw new XapiError('VM_NO_EMPTY_CD_VBD', [vm.ref]);
        if (empty.length > 1) throw new CliFailure('Two or more empty CD devices found. Please use vbd-insert');
        await ctx.call('VBD.insert', empty[0]!, vdis[0]!);
      });
    })
    .define('vm-migrate', async (ctx) => {
      // host-uuid and host-name are older spellings of host.
      const params: [string, string][] = ctx.params.map(([k, v]) => (k === 'host-uuid' || k === 'host-name' ? ['host', v] : [k, v]));
      const sxm = ['remote-master', 'remote-username', 'vif', 'remote-password', 'remote-network', 'vdi', 'vgpu', 'image-format'];
      if (params.some(([k]) => sxm.some((s) => k.startsWith(s)))) {
        throw new CliFailure('Storage live migration to another pool is not available from this command line yet.');
      }
      const options = Object.create(null) as RpcStruct;
      const compress = param(params, 'compress');
      if (compress !== undefined) options.compress = compress;
      for (const k of ['force', 'live', 'copy']) {
        const v = param(params, k) ?? 'false';
        if (v !== 'true' && v !== 'false') throw new Error('bool_of_string');
        options[k] = v;
      }
      const hostName = param(params, 'host');
      if (hostName === undefined) throw new CliFailure('No destination host specified');
      const host = await hostByNameOrId(ctx, hostName);
      await doVmOp({ ...ctx, params }, { includeControl: true, ignore: ['host', 'host-uuid', 'host-name', 'live', 'compress'] }, (vm) =>
        ctx.call('VM.pool_migrate', vm.ref, host, options),
      );
    });
  memoryCommand(table, 'vm-memory-dynamic-range-set', ['min', 'max'], 'VM.set_memory_dynamic_range', { templates: true });
  memoryCommand(table, 'vm-memory-static-range-set', ['min', 'max'], 'VM.set_memory_static_range', { templates: true });
  memoryCommand(table, 'vm-memory-limits-set', ['static-min', 'static-max', 'dynamic-min', 'dynamic-max'], 'VM.set_memory_limits', {
    templates: true,
  });
  memoryCommand(table, 'vm-memory-set', ['memory'], 'VM.set_memory', { templates: true });
  memoryCommand(table, 'vm-memory-target-set', ['target'], 'VM.set_memory_dynamic_range', { templates: false });
}

async function snapshotOp(ctx: Ctx, op: (snap: string, name: string) => Promise<Rpc>): Promise<void> {
  const name = required(ctx.params, 'new-name-label');
  const desc = param(ctx.params, 'new-name-description');
  const snap = await snapshotByUuid(ctx, snapshotUuid(ctx));
  const made = String(await op(snap, name));
  if (desc !== undefined) await ctx.call('VM.set_name_description', made, desc);
  ctx.printer.list([await uuidOf(ctx, 'VM', made)]);
}
