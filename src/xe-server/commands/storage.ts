// Storage commands (cli_operations.ml sr_*, pbd_*, vdi_*, vbd_*): each one API call on the object
// its uuid names, the new object's uuid printed by the constructors; vdi-import/vdi-export move
// the data over a separate HTTP connection the client opens (track_http_operation).
import { XapiError } from '../../rpc/errors.js';
import type { Rpc, RpcStruct } from '../../rpc/rpc.js';
import { CliFailure } from '../errors.js';
import { boolParam, has, mapParams, param, required, setParams, struct } from '../parse.js';
import { ProgressBar } from '../progress.js';
import { bytesOfString } from '../records.js';
import type { CommandTable, Ctx } from '../table.js';
import { byUuid, opt, poolAndMaster, uuidOf } from './util.js';

const NULL = 'OpaqueRef:NULL';
const rec = (o: Record<string, Rpc>): RpcStruct => Object.assign(Object.create(null) as RpcStruct, o);

/** A command that calls one message on the object named by `uuid=`. */
function onUuid(table: CommandTable, name: string, cls: string, method: string) {
  table.define(name, async (ctx) => {
    await ctx.call(method, await byUuid(ctx, cls, 'uuid'));
  });
}

/** parse_host_uuid: host-uuid=, else the coordinator when alone or when asked to default to it. */
async function hostFor(ctx: Ctx, defaultMaster: boolean): Promise<string> {
  if (has(ctx.params, 'host-uuid')) return byUuid(ctx, 'host', 'host-uuid');
  const hosts = (await ctx.call('host.get_all')) as Rpc[];
  if (hosts.length === 1 || defaultMaster) return (await poolAndMaster(ctx)).master;
  throw new CliFailure('Required parameter not found: host-uuid');
}

const VDI_TYPES = ['system', 'user', 'suspend', 'crashdump'];
function vdiType(v: string): string {
  if (!VDI_TYPES.includes(v)) throw new CliFailure(`Unknown vdi type: ${v}`);
  return v;
}

/**
 * track_http_operation: a task for the transfer, the client told to PUT or GET the URL (carrying
 * the session and the task), then the task's outcome; a client-side failure before the handler
 * took the task gives the task's error or CLIENT_ERROR. The task's result (XML-RPC text) is
 * returned; the task is destroyed after.
 */
export async function httpTransfer(
  ctx: Ctx,
  label: string,
  kind: 'httpPut' | 'httpGet',
  file: string,
  url: (task: string) => string,
  description = '',
): Promise<string> {
  const task = String(await ctx.call('task.create', label, description));
  try {
    ctx.channel.send({ tag: kind, file, url: url(task) });
    const answer = ctx.channel.next();
    const bar = boolParam(ctx.params, 'progress') ? new ProgressBar(80) : undefined;
    const done = waitForTask(ctx, task, Number.POSITIVE_INFINITY, bar);
    const first = await Promise.race([answer.then((a) => ({ a })), done.then(() => ({ a: undefined }))]);
    const reply = first.a ?? (await answer);
    const ok = reply.kind === 'response' && reply.response === 'ok';
    if (!ok) {
      // The handler may have taken the task and fail it as the connection drops: given a few
      // seconds to; a task nobody took is failed here with CLIENT_ERROR.
      await waitForTask(ctx, task, 5);
      if ((await ctx.call('task.get_status', task)) === 'pending') {
        await ctx.call('task.set_error_info', task, ['CLIENT_ERROR']);
        await ctx.call('task.set_status', task, 'failure');
      }
      const info = ((await ctx.call('task.get_error_info', task)) as Rpc[]).map(String);
      throw new XapiError(info[0] ?? 'CLIENT_ERROR', info.slice(1));
    }
    await done;
    if ((await ctx.call('task.get_status', task)) !== 'success') {
      const info = ((await ctx.call('task.get_error_info', task)) as Rpc[]).map(String);
      throw new XapiError(info[0] ?? 'INTERNAL_ERROR', info.slice(1));
    }
    return String(await ctx.call('task.get_result', task));
  } finally {
    await ctx.call('task.destroy', task).catch(() => undefined);
  }
}

/**
 * Until the task leaves pending (events on it, 30 s each), or for at most `limitS` seconds; with a
 * bar, drawn at each change of the task's progress (wait_for_task_completion_with_progress).
 */
async function waitForTask(ctx: Ctx, task: string, limitS = Number.POSITIVE_INFINITY, bar?: ProgressBar): Promise<void> {
  let token = '';
  const end = Date.now() + limitS * 1000;
  for (;;) {
    const rec = (await ctx.call('task.get_record', task)) as RpcStruct;
    if (bar?.update(Number(rec.progress ?? 0))) ctx.channel.stderr(`\r${bar.text()}`);
    if (rec.status !== 'pending') {
      if (bar) {
        ctx.channel.stderr('\n');
        ctx.channel.stderr(bar.summarise());
      }
      return;
    }
    const left = (end - Date.now()) / 1000;
    if (left <= 0) return;
    const ev = (await ctx.call('event.from', [`task/${task}`], token, Math.min(30, left))) as RpcStruct;
    token = String(ev.token ?? '');
  }
}

export function addStorageCommands(table: CommandTable): void {
  table
    .define('sr-create', async (ctx) => {
      const shared = boolParam(ctx.params, 'shared');
      const host = await hostFor(ctx, shared);
      let size = 0n;
      try {
        size = bytesOfString('physical-size', required(ctx.params, 'physical-size'));
      } catch {
        size = 0n;
      }
      // device-config:KEY-filename=FILE: the value is the content of the client's FILE.
      const config: [string, string][] = [];
      for (const [k, v] of mapParams(ctx.params, 'device-config')) {
        if (!k.endsWith('-filename')) {
          config.push([k, v]);
          continue;
        }
        const data = await ctx.channel.load(v);
        if (data === undefined) {
          ctx.channel.stderr(`File not found: ${v}`);
          throw new CliFailure('File not found');
        }
        config.push([k.slice(0, -'-filename'.length), data.toString()]);
      }
      const sr = await ctx.call(
        'SR.create',
        host,
        struct(config),
        size,
        required(ctx.params, 'name-label'),
        opt(ctx, 'name-description'),
        required(ctx.params, 'type'),
        opt(ctx, 'content-type'),
        shared,
        struct(mapParams(ctx.params, 'sm-config')),
      );
      ctx.channel.print(await uuidOf(ctx, 'SR', sr));
    })
    .define('sr-introduce', async (ctx) => {
      const uuid = required(ctx.params, 'uuid');
      await ctx.call(
        'SR.introduce',
        uuid,
        required(ctx.params, 'name-label'),
        opt(ctx, 'name-description'),
        required(ctx.params, 'type'),
        opt(ctx, 'content-type'),
        boolParam(ctx.params, 'shared'),
        struct(mapParams(ctx.params, 'sm-config')),
      );
      ctx.printer.list([uuid]);
    })
    .define('pbd-create', async (ctx) => {
      const host = await byUuid(ctx, 'host', 'host-uuid');
      const sr = await byUuid(ctx, 'SR', 'sr-uuid');
      const config = ctx.params
        .filter(([k]) => k.startsWith('device-config') && k.length > 'device-config:'.length)
        .map(([k, v]): [string, string] => [k.slice(14), v]);
      const pbd = await ctx.call('PBD.create', rec({ host, SR: sr, device_config: struct(config), other_config: rec({}) }));
      ctx.printer.list([await uuidOf(ctx, 'PBD', pbd)]);
    })
    .define('vdi-create', async (ctx) => {
      const sr = await byUuid(ctx, 'SR', 'sr-uuid');
      const vdi = await ctx.call(
        'VDI.create',
        rec({
          name_label: required(ctx.params, 'name-label'),
          name_description: '',
          SR: sr,
          virtual_size: bytesOfString('virtual-size', required(ctx.params, 'virtual-size')),
          type: has(ctx.params, 'type') ? vdiType(param(ctx.params, 'type')!) : 'user',
          sharable: boolParam(ctx.params, 'sharable'),
          read_only: false,
          xenstore_data: rec({}),
          other_config: rec({}),
          sm_config: struct(mapParams(ctx.params, 'sm-config')),
          tags: setParams(ctx.params, 'tags'),
        }),
      );
      ctx.printer.list([await uuidOf(ctx, 'VDI', vdi)]);
    })
    .define('vdi-resize', async (ctx) => {
      const vdi = await byUuid(ctx, 'VDI', 'uuid');
      const size = bytesOfString('disk-size', required(ctx.params, 'disk-size'));
      await ctx.call(param(ctx.params, 'online') === 'true' ? 'VDI.resize_online' : 'VDI.resize', vdi, size);
    })
    .define('vdi-clone', async (ctx) => {
      const vdi = await byUuid(ctx, 'VDI', 'uuid');
      const made = await ctx.call('VDI.clone', vdi, struct(mapParams(ctx.params, 'driver-params')));
      const label = param(ctx.params, 'new-name-label');
      const desc = param(ctx.params, 'new-name-description');
      if (label !== undefined) await ctx.call('VDI.set_name_label', made, label);
      if (desc !== undefined) await ctx.call('VDI.set_name_description', made, desc);
      ctx.printer.list([await uuidOf(ctx, 'VDI', made)]);
    })
    .define('vdi-snapshot', async (ctx) => {
      const made = await ctx.call('VDI.snapshot', await byUuid(ctx, 'VDI', 'uuid'), struct(mapParams(ctx.params, 'driver-params')));
      ctx.printer.list([await uuidOf(ctx, 'VDI', made)]);
    })
    .define('vdi-copy', async (ctx) => {
      const vdi = await byUuid(ctx, 'VDI', 'uuid');
      const base = has(ctx.params, 'base-vdi-uuid') ? await byUuid(ctx, 'VDI', 'base-vdi-uuid') : NULL;
      if (has(ctx.params, 'sr-uuid') === has(ctx.params, 'into-vdi-uuid')) {
        throw new CliFailure(
          'Please specify one but not both of: a destination sr-uuid (I will create a fresh VDI); or a destination into-vdi-uuid (I will copy the blocks into this VDI)',
        );
      }
      const sr = has(ctx.params, 'sr-uuid') ? await byUuid(ctx, 'SR', 'sr-uuid') : NULL;
      const into = has(ctx.params, 'into-vdi-uuid') ? await byUuid(ctx, 'VDI', 'into-vdi-uuid') : NULL;
      ctx.printer.list([await uuidOf(ctx, 'VDI', await ctx.call('VDI.copy', vdi, sr, base, into))]);
    })
    .define('vdi-introduce', async (ctx) => {
      const made = await ctx.call(
        'VDI.introduce',
        required(ctx.params, 'uuid'),
        opt(ctx, 'name-label'),
        opt(ctx, 'name-description'),
        await byUuid(ctx, 'SR', 'sr-uuid'),
        vdiType(required(ctx.params, 'type')),
        boolParam(ctx.params, 'sharable'),
        boolParam(ctx.params, 'read-only'),
        struct(mapParams(ctx.params, 'other-config')),
        required(ctx.params, 'location'),
        struct(mapParams(ctx.params, 'xenstore-data')),
        struct(mapParams(ctx.params, 'sm-config')),
        boolParam(ctx.params, 'managed'),
        0n,
        0n,
        NULL,
        false,
        '19700101T00:00:00Z',
        NULL,
      );
      ctx.printer.list([await uuidOf(ctx, 'VDI', made)]);
    })
    .define('vdi-import', async (ctx) => {
      const file = required(ctx.params, 'filename');
      const vdi = await byUuid(ctx, 'VDI', 'uuid');
      const format = has(ctx.params, 'format') ? `&format=${param(ctx.params, 'format')}` : '';
      await httpTransfer(
        ctx,
        'VDI import',
        'httpPut',
        file,
        (task) => `/import_raw_vdi?session_id=${ctx.session}&task_id=${task}&vdi=${vdi}${format}`,
      );
    })
    .define('vdi-export', async (ctx) => {
      const file = required(ctx.params, 'filename');
      const vdi = await byUuid(ctx, 'VDI', 'uuid');
      const format = has(ctx.params, 'format') ? `&format=${param(ctx.params, 'format')}` : '';
      const base = has(ctx.params, 'base') ? `&base=${param(ctx.params, 'base')}` : '';
      await httpTransfer(
        ctx,
        'VDI export',
        'httpGet',
        file,
        (task) => `/export_raw_vdi?session_id=${ctx.session}&task_id=${task}&vdi=${vdi}${format}${base}`,
      );
    })
    .define('vbd-create', async (ctx) => {
      const vm = await byUuid(ctx, 'VM', 'vm-uuid');
      const empty = !has(ctx.params, 'vdi-uuid');
      const vdi = empty ? NULL : await byUuid(ctx, 'VDI', 'vdi-uuid');
      let mode = 'RW';
      if (has(ctx.params, 'mode')) {
        const m = param(ctx.params, 'mode')!.toLowerCase();
        if (m !== 'ro' && m !== 'rw') throw new CliFailure(`Unknown mode: ${m} (should be "ro" or "rw"`);
        mode = m.toUpperCase();
      }
      let type = 'Disk';
      if (has(ctx.params, 'type')) {
        const t = param(ctx.params, 'type')!.toLowerCase();
        const known: Record<string, string> = { cd: 'CD', disk: 'Disk', floppy: 'Floppy' };
        if (!known[t]) throw new CliFailure(`"Unknown type: ${t} (should be "cd", "disk" or "floppy"`);
        type = known[t];
      }
      if (type === 'Disk' && empty) throw new CliFailure('Empty VBDs can only be made for type=CD');
      const vbd = await ctx.call(
        'VBD.create',
        rec({
          VM: vm,
          VDI: vdi,
          userdevice: required(ctx.params, 'device'),
          bootable: boolParam(ctx.params, 'bootable'),
          mode,
          type,
          unpluggable: boolParam(ctx.params, 'unpluggable', true),
          empty,
          qos_algorithm_type: '',
          qos_algorithm_params: rec({}),
          other_config: rec({}),
          device: '',
          currently_attached: false,
        }),
      );
      ctx.printer.list([await uuidOf(ctx, 'VBD', vbd)]);
    })
    .define('vbd-insert', async (ctx) => {
      await ctx.call('VBD.insert', await byUuid(ctx, 'VBD', 'uuid'), await byUuid(ctx, 'VDI', 'vdi-uuid'));
    })
    .define('vbd-unplug', async (ctx) => {
      const vbd = await byUuid(ctx, 'VBD', 'uuid');
      const timeoutText = param(ctx.params, 'timeout');
      const timeout = timeoutText === undefined ? 0 : Number(timeoutText);
      if (Number.isNaN(timeout) || timeoutText?.trim() === '')
        throw new CliFailure("Failed to parse parameter 'timeout': expecting a float");
      const start = Date.now();
      try {
        await ctx.call(boolParam(ctx.params, 'force') ? 'VBD.unplug_force' : 'VBD.unplug', vbd);
      } catch (e) {
        if (!(e instanceof XapiError && e.code === 'DEVICE_DETACH_REJECTED')) throw e;
        // The guest refused: wait up to `timeout` seconds for it to let go, looking every 5 s.
        while ((Date.now() - start) / 1000 < timeout) {
          await new Promise((r) => setTimeout(r, 5000));
          if ((await ctx.call('VBD.get_currently_attached', vbd)) !== true) return;
        }
        throw e;
      }
    });
  onUuid(table, 'sr-destroy', 'SR', 'SR.destroy');
  onUuid(table, 'sr-forget', 'SR', 'SR.forget');
  onUuid(table, 'sr-scan', 'SR', 'SR.scan');
  onUuid(table, 'sr-update', 'SR', 'SR.update');
  onUuid(table, 'pbd-destroy', 'PBD', 'PBD.destroy');
  onUuid(table, 'pbd-plug', 'PBD', 'PBD.plug');
  onUuid(table, 'pbd-unplug', 'PBD', 'PBD.unplug');
  onUuid(table, 'vdi-destroy', 'VDI', 'VDI.destroy');
  onUuid(table, 'vdi-forget', 'VDI', 'VDI.forget');
  onUuid(table, 'vdi-update', 'VDI', 'VDI.update');
  onUuid(table, 'vbd-destroy', 'VBD', 'VBD.destroy');
  onUuid(table, 'vbd-eject', 'VBD', 'VBD.eject');
  onUuid(table, 'vbd-plug', 'VBD', 'VBD.plug');
}
