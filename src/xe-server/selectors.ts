// Commands that act on the objects their parameters select (cli_operations.ml select_vms,
// do_vm_op, do_multiple): every parameter not the command's own is a filter, `vm=` matches a uuid
// or name-label, no selector selects everything; several matches need --multiple, and then each
// failure is listed and the command fails.
import { XapiError } from '../rpc/errors.js';
import { isStruct, type RpcStruct } from '../rpc/rpc.js';
import { CliFailure, MissingField, MultipleFailure } from './errors.js';
import { applyFilters, type Obj } from './generic.js';
import { boolParam, param, STD_PARAMS } from './parse.js';
import { fieldLookup, makeFields, RefNames, safeGet } from './records.js';
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

export async function selectVms(ctx: Ctx, o: VmOpOptions): Promise<Obj[]> {
  let params = [...ctx.params];
  if (!o.includeControl) params.unshift(['is-control-domain', 'false']);
  if (!o.includeTemplates) params.unshift(['is-a-template', 'false']);
  const byName = param(params, 'vm');
  let expr = 'true';
  if (byName !== undefined) {
    params = params.filter(([k]) => k !== 'vm');
    const v = quote(byName);
    expr = `(field "uuid"="${v}") or (field "name__label"="${v}")`;
  }
  const all = await ctx.call('VM.get_all_records_where', expr);
  const names = new RefNames(ctx);
  const objs: Obj[] = (isStruct(all) ? Object.entries(all) : []).map(([ref, rec]) => ({
    ref,
    fields: makeFields(ctx, 'vm', { ref, rec: async () => rec as RpcStruct }, names),
  }));
  const skip = new Set([...STD_PARAMS, ...o.ignore]);
  const filters = params.filter(([k]) => !skip.has(k.includes(':') ? k.slice(0, k.indexOf(':')) : k));
  return applyFilters(objs, filters);
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
  if (vms.length === 0) throw new CliFailure('No matching VMs found');
  if (vms.length === 1) return [await op(vms[0]!)];
  const multiple = o.multiple ?? true;
  if (multiple && boolParam(ctx.params, 'multiple')) return doMultiple(ctx, vms, op);
  throw new CliFailure(
    multiple
      ? 'Multiple matches VMs found. --multiple required to complete the operation'
      : 'Multiple matches VMs found. Operation can only be performed on one VM at a time',
  );
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
