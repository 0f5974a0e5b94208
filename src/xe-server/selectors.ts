// Commands that act on the objects their parameters select (cli_operations.ml select_vms,
// do_vm_op, do_multiple): every parameter not the command's own is a filter, `vm=` matches a uuid
// or name-label, no selector selects everything; several matches need --multiple, and then each
// failure is listed and the command fails.
import { XapiError } from '../rpc/errors.js';
import { isStruct, RpcDateTime, type RpcStruct } from '../rpc/rpc.js';
import { CliFailure, MissingField, MultipleFailure } from './errors.js';
import { applyFilters, lazyObj, type Obj } from './generic.js';
import { boolParam, param, STD_PARAMS } from './parse.js';
import { fieldLookup, RefNames, safeGet } from './records.js';
import { failureMessage } from './render-error.js';
import type { Ctx } from './table.js';

export interface VmOpOptions {
  includeControl?: boolean;
  includeTemplates?: boolean;
  /** False for commands that act on one VM only. */
  multiple?: boolean;
  /** The command's own parameters, never filters. */
  ignore: string[];
}

const quote = (s: string) => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"');

/** Objects of a class chosen by a pseudo-field (`vm=`, `host=`, `sr=`) and field filters. */
async function selectObjects(
  ctx: Ctx,
  kind: 'vm' | 'host' | 'sr',
  params: [string, string][],
  pseudo: string,
  matchFields: string[],
  ignore: string[],
): Promise<Obj[]> {
  const cls = { vm: 'VM', host: 'host', sr: 'SR' }[kind];
  const byName = param(params, pseudo);
  let expr = 'true';
  let rest = params;
  if (byName !== undefined) {
    rest = params.filter(([k]) => k !== pseudo);
    const v = quote(byName);
    expr = matchFields.map((f) => `(field "${f}"="${v}")`).join(' or ');
  }
  const names = new RefNames(ctx);
  const objs: Obj[] = (await ctx.api.allRecords(ctx.session, cls, expr)).map(([ref, rec]) =>
    lazyObj(ctx, kind, ref, async () => rec, names),
  );
  const skip = new Set([...STD_PARAMS, ...ignore]);
  const filters = rest.filter(([k]) => !skip.has(k.includes(':') ? k.slice(0, k.indexOf(':')) : k));
  return applyFilters(objs, filters);
}

export function selectVms(ctx: Ctx, o: VmOpOptions, params = ctx.params): Promise<Obj[]> {
  const ps: [string, string][] = [...params];
  if (!o.includeControl) ps.unshift(['is-control-domain', 'false']);
  if (!o.includeTemplates) ps.unshift(['is-a-template', 'false']);
  return selectObjects(ctx, 'vm', ps, 'vm', ['uuid', 'name__label'], o.ignore);
}

export const selectHosts = (ctx: Ctx, ignore: string[]) =>
  selectObjects(ctx, 'host', ctx.params, 'host', ['uuid', 'hostname', 'name__label'], ignore);

export const selectSrs = (ctx: Ctx, ignore: string[]) => selectObjects(ctx, 'sr', ctx.params, 'sr', ['uuid', 'name__label'], ignore);

/** do_host_op: `op` gets how many hosts matched. */
export async function doHostOp<T>(ctx: Ctx, ignore: string[], op: (n: number, host: Obj) => Promise<T>, multiple = true): Promise<T[]> {
  const hosts = await selectHosts(ctx, ignore);
  if (hosts.length === 0) throw new CliFailure('No matching hosts found');
  if (hosts.length === 1) return [await op(1, hosts[0]!)];
  if (multiple && boolParam(ctx.params, 'multiple')) return doMultiple(ctx, hosts, (h) => op(hosts.length, h));
  throw new CliFailure(
    multiple
      ? 'Multiple matching hosts found. --multiple required to complete the operation'
      : 'Multiple matching hosts found. Operation can only be performed on one host at a time',
  );
}

/** do_sr_op (whose no-match message says "hosts", as xapi's does). */
export async function doSrOp<T>(ctx: Ctx, ignore: string[], op: (sr: Obj) => Promise<T>, multiple = true): Promise<T[]> {
  const srs = await selectSrs(ctx, ignore);
  if (srs.length === 0) throw new CliFailure('No matching hosts found');
  if (srs.length === 1) return [await op(srs[0]!)];
  if (multiple && boolParam(ctx.params, 'multiple')) return doMultiple(ctx, srs, op);
  throw new CliFailure(
    multiple
      ? 'Multiple matching SRs found. --multiple required to complete the operation'
      : 'Multiple matching SRs found. Operation can only be performed on one SR at a time',
  );
}

/** Runs `op` on each object in turn; failures gathered as `operation failed on <uuid>: <text>`. */
export async function doMultiple<T>(ctx: Ctx, objs: Obj[], op: (o: Obj) => Promise<T>): Promise<T[]> {
  const fails: [string, string][] = [];
  const out: T[] = [];
  for (const o of objs) {
    try {
      out.push(await op(o));
    } catch (e) {
      fails.push([await safeGet(fieldLookup(o.fields, 'uuid')), await failureMessage(ctx.api, e)]);
    }
  }
  // xapi prepends each failure, so they are listed last first.
  if (fails.length > 0) throw new MultipleFailure(fails.reverse());
  return out;
}

export async function doVmOp<T>(ctx: Ctx, o: VmOpOptions, op: (vm: Obj) => Promise<T>): Promise<T[]> {
  let vms: Obj[];
  try {
    vms = await selectVms(ctx, o);
  } catch (e) {
    if (e instanceof MissingField)
      throw new CliFailure(`Parameter '${e.field}' is not a field of the VM class. Failed to select VM for operation.`);
    throw e;
  }
  const wrapped = (vm: Obj) => withVmMessages(ctx, vm, op);
  if (vms.length === 0) throw new CliFailure('No matching VMs found');
  if (vms.length === 1) return [await wrapped(vms[0]!)];
  const multiple = o.multiple ?? true;
  if (multiple && boolParam(ctx.params, 'multiple')) return doMultiple(ctx, vms, wrapped);
  throw new CliFailure(
    multiple
      ? 'Multiple matches VMs found. --multiple required to complete the operation'
      : 'Multiple matches VMs found. Operation can only be performed on one VM at a time',
  );
}

/**
 * Runs a VM operation, then prints to stderr the VM's messages created meanwhile whose priority
 * is below message-priority (5 unless given) (cli_operations.ml wrap_op).
 */
async function withVmMessages<T>(ctx: Ctx, vm: Obj, op: (vm: Obj) => Promise<T>): Promise<T> {
  const since = new Date(Math.floor(Date.now() / 1000) * 1000);
  const result = await op(vm);
  const prioText = param(ctx.params, 'message-priority');
  const prio = prioText !== undefined && /^-?\d+$/.test(prioText) ? Number(prioText) : 5;
  try {
    const uuid = await safeGet(fieldLookup(vm.fields, 'uuid'));
    const stamp = since
      .toISOString()
      .replace(/[-]/g, '')
      .replace(/\.\d+Z$/, 'Z');
    const msgs = await ctx.call('message.get', 'VM', uuid, new RpcDateTime(stamp));
    for (const m of Object.values(isStruct(msgs) ? msgs : {})) {
      const r = m as RpcStruct;
      if (Number(r.priority) < prio) {
        const ts = r.timestamp instanceof RpcDateTime ? r.timestamp.text : String(r.timestamp);
        ctx.printer.stderr(`Message: time=${ts} priority=${String(r.priority)} name='${String(r.name)}'\n`);
      }
    }
  } catch {
    // xapi ignores any failure to read the messages
  }
  return result;
}

/**
 * Waits for a task the command started (cli_util.ml track: events on the task, 30 s each), then
 * its outcome: its error raised on failure, TASK_CANCELLED if cancelled. With `progress` given,
 * a bar on stderr at each update. The task is destroyed afterwards.
 */
export async function waitTask(ctx: Ctx, task: string): Promise<RpcStruct> {
  const progress = ctx.params.some(([k]) => k === 'progress');
  try {
    let token = '';
    for (;;) {
      const rec = (await ctx.call('task.get_record', task)) as RpcStruct;
      if (progress) progressBar(ctx, Number(rec.progress ?? 0));
      if (rec.status !== 'pending') break;
      const ev = (await ctx.call('event.from', [`task/${task}`], token, 30)) as RpcStruct;
      token = String(ev.token ?? '');
    }
    if (progress) ctx.printer.stderr('\n');
    const rec = (await ctx.call('task.get_record', task)) as RpcStruct;
    if (rec.status === 'cancelling' || rec.status === 'cancelled') throw new XapiError('TASK_CANCELLED', [task]);
    if (rec.status === 'failure') {
      const info = Array.isArray(rec.error_info) ? rec.error_info.map(String) : [];
      throw new XapiError(info[0] ?? 'INTERNAL_ERROR', info.slice(1));
    }
    return rec;
  } finally {
    await ctx.call('task.destroy', task).catch(() => undefined);
  }
}

function progressBar(ctx: Ctx, progress: number): void {
  const pct = Math.trunc(progress * 100);
  const spin = '|/-\\'[pct % 4];
  ctx.printer.stderr(`\r ${String(pct).padStart(3)}% ${spin} ${'#'.repeat(Math.trunc(progress * 70))}`);
}
