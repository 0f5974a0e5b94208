// Small helpers the hand-written commands share.
import type { Rpc, RpcStruct } from '../../rpc/rpc.js';
import { CliFailure } from '../errors.js';
import { param, required } from '../parse.js';
import type { Ctx } from '../table.js';

/** `<cls>.get_by_uuid` of a parameter's value. */
export async function byUuid(ctx: Ctx, cls: string, paramName: string): Promise<string> {
  return String(await ctx.call(`${cls}.get_by_uuid`, required(ctx.params, paramName)));
}

export const uuidOf = async (ctx: Ctx, cls: string, ref: Rpc): Promise<string> => String(await ctx.call(`${cls}.get_uuid`, ref));

export const record = async (ctx: Ctx, cls: string, ref: string): Promise<RpcStruct> =>
  (await ctx.call(`${cls}.get_record`, ref)) as RpcStruct;

/** The pool's one object and its coordinator. */
export async function poolAndMaster(ctx: Ctx): Promise<{ pool: string; master: string }> {
  const pools = (await ctx.call('pool.get_all')) as Rpc[];
  if (pools.length === 0) throw new CliFailure('Remote host does not belong to a pool.');
  const pool = String(pools[0]);
  return { pool, master: String(await ctx.call('pool.get_master', pool)) };
}

/** cli_util.ml get_default_sr_uuid: the pool's default SR if it exists. */
export async function defaultSrUuid(ctx: Ctx): Promise<string | undefined> {
  const { pool } = await poolAndMaster(ctx);
  const sr = String(await ctx.call('pool.get_default_SR', pool));
  try {
    return String(await ctx.call('SR.get_uuid', sr));
  } catch {
    return undefined;
  }
}

/** A host by uuid, name-label or hostname (get_host_by_name_or_id). */
export async function hostByNameOrId(ctx: Ctx, v: string): Promise<string> {
  const all = (await ctx.call('host.get_all_records')) as Record<string, RpcStruct>;
  const hit = Object.entries(all).find(([, h]) => h.uuid === v || h.name_label === v || h.hostname === v);
  if (!hit) throw new CliFailure(`Host ${v} not found`);
  return hit[0];
}

/** An optional parameter's value, or a default. */
export const opt = (ctx: Ctx, name: string, dflt = ''): string => param(ctx.params, name) ?? dflt;

/** xapi's Constants.fuse_time as OCaml's string_of_float prints it: how long before a restart. */
export const FUSE_TIME = '10.';
