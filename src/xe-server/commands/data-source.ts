// The data-source commands of hosts and VMs (cli_operations.ml host_data_source_* and
// vm_data_source_*): one object each (VMs include control domains), the API's data-source calls,
// the list printed as one record per source and a query's value as C's "%f".
import type { RpcStruct } from '../../rpc/rpc.js';
import { param } from '../parse.js';
import type { PrintRecord } from '../printer.js';
import { doHostOp, doVmOp } from '../selectors.js';
import type { CommandTable, Ctx } from '../table.js';

/** OCaml's string_of_float: "%.12g", with a trailing "." when that reads as an integer. */
export function ocamlFloat(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  let s: string;
  const exp = x === 0 ? 0 : Math.floor(Math.log10(Math.abs(Number(x.toPrecision(12)))));
  if (exp < -4 || exp >= 12) {
    const [m, e] = x.toExponential(11).split('e') as [string, string];
    const mant = m.includes('.') ? m.replace(/0+$/, '').replace(/\.$/, '') : m;
    const n = Number(e);
    s = `${mant}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
  } else {
    s = x.toFixed(Math.max(0, 11 - exp));
    if (s.includes('.')) s = s.replace(/0+$/, '').replace(/\.$/, '');
  }
  return /^-?\d+$/.test(s) ? `${s}.` : s;
}

/** C's "%f": six decimals. */
export function cFixed(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  return x.toFixed(6);
}

function sourceRecord(ds: RpcStruct): PrintRecord {
  return [
    ['name_label', String(ds.name_label)],
    ['name_description', String(ds.name_description)],
    ['enabled', String(ds.enabled)],
    ['standard', String(ds.standard)],
    ['min', ocamlFloat(Number(ds.min))],
    ['max', ocamlFloat(Number(ds.max))],
    ['units', String(ds.units)],
  ];
}

const dataSource = (ctx: Ctx) => param(ctx.params, 'data-source')!;

/** The four commands of one class: `on` runs the operation on the one object the selectors pick. */
function addFamily(
  table: CommandTable,
  prefix: 'host' | 'vm',
  cls: 'host' | 'VM',
  on: (ctx: Ctx, ignore: string[], op: (ref: string) => Promise<void>) => Promise<void>,
): void {
  table
    .define(`${prefix}-data-source-list`, (ctx) =>
      on(ctx, [], async (ref) => {
        const sources = (await ctx.call(`${cls}.get_data_sources`, ref)) as RpcStruct[];
        ctx.printer.table(sources.map(sourceRecord));
      }),
    )
    .define(`${prefix}-data-source-record`, (ctx) =>
      on(ctx, ['data-source'], async (ref) => {
        await ctx.call(`${cls}.record_data_source`, ref, dataSource(ctx));
      }),
    )
    .define(`${prefix}-data-source-query`, (ctx) =>
      on(ctx, ['data-source'], async (ref) => {
        ctx.printer.list([cFixed(Number(await ctx.call(`${cls}.query_data_source`, ref, dataSource(ctx))))]);
      }),
    )
    .define(`${prefix}-data-source-forget`, (ctx) =>
      on(ctx, ['data-source'], async (ref) => {
        await ctx.call(`${cls}.forget_data_source_archives`, ref, dataSource(ctx));
      }),
    );
}

export function addDataSourceCommands(table: CommandTable): void {
  addFamily(table, 'host', 'host', async (ctx, ignore, op) => {
    await doHostOp(ctx, ignore, (_n, h) => op(h.ref), false);
  });
  addFamily(table, 'vm', 'VM', async (ctx, ignore, op) => {
    await doVmOp(ctx, { includeControl: true, multiple: false, ignore }, (vm) => op(vm.ref));
  });
}
