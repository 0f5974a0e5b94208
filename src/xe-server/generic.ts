// The commands xapi generates for every record class (cli_operations.ml make_param_funs):
// <class>-list with filters, params= and --minimal, and <class>-param-list/get/set/add/remove/clear.
import type { RpcStruct } from '../rpc/rpc.js';
import { CliFailure, MissingField } from './errors.js';
import { has, type Params, param, STD_PARAMS } from './parse.js';
import type { PrintRecord } from './printer.js';
import { type Field, fieldKey, fieldLookup, LazyFields, makeFields, RECORD_CLASSES, RefNames, safeGet } from './records.js';
import type { CommandTable, Ctx } from './table.js';

/** One object and its fields (made when asked for: a listing reads a few of each object's). */
export interface Obj {
  ref: string;
  readonly fields: Field[];
  field(name: string): Field | undefined;
  named(names: string[]): Field[];
}

export function lazyObj(ctx: Ctx, kind: string, ref: string, rec: () => Promise<RpcStruct>, names: RefNames): Obj {
  const lazy = new LazyFields(ctx, kind, { ref, rec }, names);
  return {
    ref,
    get fields() {
      return lazy.fields;
    },
    field: (name) => lazy.field(name),
    named: (wanted) => lazy.named(wanted),
  };
}

function fieldOf(o: Obj, name: string): Field {
  const f = o.field(name);
  if (!f) throw new MissingField(name);
  return f;
}

/** Every object of a class with its record, as `<Class>.get_all_records_where "true"` gives them. */
export async function allObjects(ctx: Ctx, kind: string, names = new RefNames(ctx)): Promise<Obj[]> {
  const { cls } = RECORD_CLASSES[kind]!;
  const entries = await ctx.api.allRecords(ctx.session, cls, 'true');
  return entries.map(([ref, r]) => lazyObj(ctx, kind, ref, async () => r, names));
}

/** One object by uuid, its record fetched when a field needs it. */
export async function objectByUuid(ctx: Ctx, kind: string, uuid: string): Promise<Obj> {
  const { cls } = RECORD_CLASSES[kind]!;
  const ref = String(await ctx.call(`${cls}.get_by_uuid`, uuid));
  let rec: Promise<RpcStruct> | undefined;
  const get = () => {
    rec ??= ctx.call(`${cls}.get_record`, ref).then((r) => r as RpcStruct);
    return rec;
  };
  return lazyObj(ctx, kind, ref, get, new RefNames(ctx));
}

type FieldKind = { k: 'normal' } | { k: 'set'; name: string } | { k: 'map'; name: string };

/** cli_operations.ml get_field_type: a field, `map:key` / `set:contains`, or the legacy `map-key`. */
export function fieldKind(name: string, fields: Field[]): FieldKind {
  if (fields.some((f) => f.name === name)) return { k: 'normal' };
  const colon = name.indexOf(':');
  if (colon >= 0) {
    const real = name.slice(0, colon);
    const f = fields.find((x) => x.name === real);
    if (!f) throw new CliFailure(`Unknown field '${name}'`);
    if (f.getSet) return { k: 'set', name: f.name };
    if (f.getMap) return { k: 'map', name: f.name };
    throw new CliFailure(`Field '${f.name}' is not a set or map`);
  }
  const longestFirst = (xs: Field[]) => [...xs].sort((a, b) => b.name.length - a.name.length);
  const map = longestFirst(fields.filter((f) => f.getMap)).find((f) => name.startsWith(`${f.name}-`));
  if (map) return { k: 'map', name: map.name };
  const set = longestFirst(fields.filter((f) => f.getSet)).find((f) => name.startsWith(`${f.name}-`));
  if (set) return { k: 'set', name: set.name };
  throw new CliFailure(`Unknown field '${name}'`);
}

/** Keeps the objects matching one filter (filter_records_on_fields); the kind is read off the first. */
export async function filterObjects(objs: Obj[], [k, v]: [string, string]): Promise<Obj[]> {
  if (objs.length === 0) return [];
  const kind = fieldKind(k, objs[0]!.fields);
  const keep = await Promise.all(
    objs.map(async (o) => {
      if (kind.k === 'normal') {
        const f = fieldOf(o, k);
        const value = await safeGet(f);
        return f.caseInsensitive ? value.toLowerCase() === v.toLowerCase() : value === v;
      }
      const f = fieldOf(o, kind.name);
      const sub = k.slice(kind.name.length + 1);
      try {
        if (kind.k === 'set') {
          if (sub !== 'contains') throw new CliFailure('Invalid syntax for set filtering (should be set-param:contains=key)');
          const set = await f.getSet!();
          return f.caseInsensitive ? set.some((m) => m.toLowerCase() === v.toLowerCase()) : set.includes(v);
        }
        const map = await f.getMap!();
        const hit = f.caseInsensitive ? map.find(([mk]) => mk.toLowerCase() === sub.toLowerCase()) : map.find(([mk]) => mk === sub);
        return hit !== undefined && (f.caseInsensitive ? hit[1].toLowerCase() === v.toLowerCase() : hit[1] === v);
      } catch (e) {
        if (e instanceof CliFailure) throw e;
        return false;
      }
    }),
  );
  return objs.filter((_, i) => keep[i]);
}

export async function applyFilters(objs: Obj[], filters: [string, string][]): Promise<Obj[]> {
  let out = objs;
  for (const f of filters) out = await filterObjects(out, f);
  return out;
}

/** The fields to print: params=a,b (record order), params=all, or the class's defaults. */
function selectFields(params: Params, o: Obj, defaults: string[]): Field[] {
  const p = param(params, 'params');
  const wanted = p === undefined ? defaults : p === 'all' ? [] : p.split(',');
  return wanted.length === 0 ? o.fields : o.named(wanted);
}

export async function printRecord(fields: Field[], expensiveHidden: boolean): Promise<PrintRecord> {
  return Promise.all(
    fields
      .filter((f) => !f.hidden)
      .map(async (f): Promise<[string, string]> => [fieldKey(f), expensiveHidden && f.expensive ? '<expensive field>' : await safeGet(f)]),
  );
}

interface GenericClass {
  /** The command prefix (`vm`, `template`...). */
  name: string;
  /** The record kind (RECORD_CLASSES). */
  kind: string;
  filters: [string, string][];
  columns: string[];
}

const GENERIC: GenericClass[] = [
  { name: 'pool', kind: 'pool', filters: [], columns: ['uuid', 'name-label', 'name-description', 'master', 'default-SR'] },
  { name: 'pif', kind: 'pif', filters: [], columns: ['uuid', 'device', 'VLAN', 'MAC', 'network-uuid', 'currently-attached', 'host-uuid'] },
  { name: 'vif', kind: 'vif', filters: [], columns: ['uuid', 'device', 'vm-uuid', 'network-uuid'] },
  { name: 'network', kind: 'network', filters: [], columns: ['uuid', 'name-label', 'name-description', 'bridge'] },
  { name: 'console', kind: 'console', filters: [], columns: ['uuid', 'vm-uuid', 'vm-name-label', 'protocol', 'location'] },
  { name: 'vm', kind: 'vm', filters: [['is-a-template', 'false']], columns: ['name-label', 'uuid', 'power-state'] },
  {
    name: 'template',
    kind: 'vm',
    filters: [
      ['is-a-template', 'true'],
      ['is-a-snapshot', 'false'],
    ],
    columns: ['name-label', 'name-description', 'uuid'],
  },
  {
    name: 'snapshot',
    kind: 'vm',
    filters: [['is-a-snapshot', 'true']],
    columns: ['name-label', 'name-description', 'uuid', 'snapshot_of', 'snapshot_time', 'is-vmss-snapshot'],
  },
  { name: 'host', kind: 'host', filters: [], columns: ['uuid', 'name-label', 'name-description'] },
  {
    name: 'vdi',
    kind: 'vdi',
    filters: [],
    columns: ['uuid', 'name-label', 'name-description', 'virtual-size', 'read-only', 'sharable', 'sr-uuid'],
  },
  { name: 'vbd', kind: 'vbd', filters: [], columns: ['uuid', 'vm-uuid', 'vm-name-label', 'vdi-uuid', 'device', 'empty'] },
  { name: 'sr', kind: 'sr', filters: [], columns: ['uuid', 'name-label', 'name-description', 'host', 'type', 'content-type'] },
  { name: 'pbd', kind: 'pbd', filters: [], columns: ['uuid', 'host-uuid', 'sr-uuid', 'device-config', 'currently-attached'] },
  { name: 'task', kind: 'task', filters: [], columns: ['uuid', 'name-label', 'name-description', 'status', 'progress'] },
];

/** Adds every generic command of every class to the table. */
export function addGenericCommands(table: CommandTable, ctxFields: (kind: string) => Field[]): void {
  for (const g of GENERIC) {
    // The parameter lists of help come from a record with no object behind it, as xapi's do.
    const all = ctxFields(g.kind).filter((f) => !f.hidden);
    const names = all.map((f) => f.name);
    const settable = [
      ...all.filter((f) => f.set).map((f) => f.name),
      ...all.filter((f) => f.addToMap || f.setMap).map((f) => `${f.name}:`),
    ];
    const addable = all.filter((f) => f.addToSet || f.addToMap).map((f) => f.name);
    const clearable = all.filter((f) => f.set || f.getSet || f.getMap).map((f) => f.name);
    const setFilters = all.filter((f) => f.getSet).map((f) => `${f.name}:contains`);
    const plural = `${g.name}s`;
    const std = g.name === 'vm' || g.name === 'network' || g.name === 'sr';
    const spec = (name: string, reqd: string[], optn: string[], help: string, run: (ctx: Ctx) => Promise<void>, standard = false) => ({
      name: `${g.name}-${name}`,
      reqd,
      optn,
      help,
      flags: standard ? ['Standard'] : [],
      local: false,
      run,
    });
    if (settable.length > 0) {
      table.add(
        spec(
          'param-set',
          ['uuid'],
          settable,
          "Sets the parameter specified. If param-value is not given, the parameter is set to a null value. To set a (key,value) pair in a map parameter, use the syntax 'map-param:key=value'.",
          (ctx) => paramSet(ctx, g),
        ),
      );
    }
    table.add(
      spec(
        'list',
        [],
        ['params', 'database:', ...names, ...setFilters],
        `Lists all the ${plural}, filtering on the optional arguments. To filter on map parameters, use the syntax 'map-param:key=value'`,
        (ctx) => list(ctx, g),
        std,
      ),
    );
    table.add(
      spec('param-list', ['uuid'], ['database:'], 'Lists all the parameters of the object specified by the uuid.', (ctx) =>
        paramList(ctx, g),
      ),
    );
    table.add(
      spec(
        'param-get',
        ['uuid', 'param-name'],
        ['param-key', 'database:'],
        "Gets the parameter specified of the object. If the parameter is a map of key=value pairs, use 'param-key=<key>' to get the value associated with a particular key.",
        (ctx) => paramGet(ctx, g),
      ),
    );
    if (addable.length > 0) {
      table.add(
        spec(
          'param-add',
          ['uuid', 'param-name'],
          ['param-key'],
          "Adds to a set or map parameter. If the parameter is a set, use param-key=<key to add>. If the parameter is a map, pass the values to add as 'key=value' pairs.",
          (ctx) => paramAdd(ctx, g),
        ),
      );
      table.add(
        spec(
          'param-remove',
          ['uuid', 'param-name', 'param-key'],
          [],
          'Removes a member or a key,value pair from a set/map respectively.',
          (ctx) => paramRemove(ctx, g),
        ),
      );
    }
    if (clearable.length > 0) {
      table.add(
        spec(
          'param-clear',
          ['uuid', 'param-name'],
          [],
          `Clears the specified parameter (param-name can be ${clearable.join(',')}).`,
          (ctx) => paramClear(ctx, g),
        ),
      );
    }
  }
}

/** A record's fields with no object behind them (for the help lists). */
export function blankFields(ctx: Ctx, kind: string): Field[] {
  return makeFields(ctx, kind, { ref: 'OpaqueRef:NULL', rec: async () => Object.create(null) as RpcStruct }, new RefNames(ctx));
}

function refuseDatabase(params: Params): void {
  if (params.some(([k]) => k.startsWith('database:'))) throw new CliFailure('database: parameters are not supported');
}

async function list(ctx: Ctx, g: GenericClass): Promise<void> {
  refuseDatabase(ctx.params);
  const objs = await allObjects(ctx, g.kind);
  const filters = [...g.filters, ...ctx.params.filter(([k]) => k !== 'params' && !STD_PARAMS.includes(k) && !k.startsWith('database:'))];
  const matching = await applyFilters(objs, filters);
  const printAll = has(ctx.params, 'all') && param(ctx.params, 'all') !== 'false';
  const shown = printAll ? objs : matching;
  ctx.printer.table(await Promise.all(shown.map((o) => printRecord(selectFields(ctx.params, o, g.columns), true))));
}

async function paramList(ctx: Ctx, g: GenericClass): Promise<void> {
  refuseDatabase(ctx.params);
  const o = await objectByUuid(ctx, g.kind, param(ctx.params, 'uuid')!);
  ctx.printer.table([await printRecord(o.fields, false)]);
}

async function paramGet(ctx: Ctx, g: GenericClass): Promise<void> {
  refuseDatabase(ctx.params);
  const o = await objectByUuid(ctx, g.kind, param(ctx.params, 'uuid')!);
  const f = fieldLookup(o.fields, param(ctx.params, 'param-name')!);
  const key = param(ctx.params, 'param-key');
  if (key !== undefined && f.getMap) {
    const hit = (await f.getMap()).find(([k]) => k === key);
    if (!hit) throw new CliFailure(`Key ${key} not found in map`);
    ctx.printer.list([hit[1]]);
    return;
  }
  ctx.printer.list([await safeGet(f)]);
}

async function paramSet(ctx: Ctx, g: GenericClass): Promise<void> {
  const o = await objectByUuid(ctx, g.kind, param(ctx.params, 'uuid')!);
  const setMaps = new Map<Field, [string, string][]>();
  for (const [k, v] of ctx.params.filter(([k]) => k !== 'uuid' && !STD_PARAMS.includes(k))) {
    const kind = fieldKind(k, o.fields);
    if (kind.k === 'map') {
      const f = fieldLookup(o.fields, kind.name);
      const key = k.slice(kind.name.length + 1);
      if (f.setMap && !f.addToMap) {
        setMaps.set(f, [...(setMaps.get(f) ?? []), [key, v]]);
        continue;
      }
      if (!f.addToMap) throw new CliFailure(`Map field '${kind.name}' is read-only.`);
      if ((await f.getMap!()).some(([mk]) => mk === key)) await f.removeFromMap?.(key);
      await f.addToMap(key, v);
    } else if (kind.k === 'set') {
      throw new CliFailure('Cannot param-set on set fields');
    } else {
      const f = fieldLookup(o.fields, k);
      if (!f.set)
        throw new CliFailure(f.addToMap ? `Field '${k}' is a map or set. use the 'name:key=value' syntax.` : `Field '${k}' is read-only.`);
      await f.set(v);
    }
  }
  for (const [f, pairs] of setMaps) {
    const current = new Map(await f.getMap!());
    for (const [k, v] of pairs.reverse()) current.set(k, v);
    await f.setMap!([...current]);
  }
}

async function paramAdd(ctx: Ctx, g: GenericClass): Promise<void> {
  const o = await objectByUuid(ctx, g.kind, param(ctx.params, 'uuid')!);
  const f = fieldLookup(o.fields, param(ctx.params, 'param-name')!);
  const rest = ctx.params.filter(([k]) => !['uuid', 'param-name', 'param-key', ...STD_PARAMS].includes(k));
  if (f.addToSet) {
    const key = param(ctx.params, 'param-key');
    if (key === undefined)
      throw new CliFailure('When adding a key to a set, use the syntax: *-param-add param-name=<name> param-key=<key>');
    await f.addToSet(key);
  } else if (f.addToMap) {
    for (const [k, v] of rest) await f.addToMap(k, v);
  } else if (f.getSet || f.getMap) throw new CliFailure('Parameter is read-only');
  else throw new CliFailure('Can only add to parameters of type Set or Map');
}

async function paramRemove(ctx: Ctx, g: GenericClass): Promise<void> {
  const o = await objectByUuid(ctx, g.kind, param(ctx.params, 'uuid')!);
  const f = fieldLookup(o.fields, param(ctx.params, 'param-name')!);
  const key = param(ctx.params, 'param-key')!;
  if (f.getSet && f.removeFromSet) {
    if (!(await f.getSet()).includes(key)) throw new CliFailure(`Key ${key} is not in the set`);
    await f.removeFromSet(key);
  } else if (f.getMap && f.removeFromMap) {
    if (!(await f.getMap()).some(([k]) => k === key)) throw new CliFailure(`Key ${key} is not in map`);
    await f.removeFromMap(key);
  } else if (f.getSet || f.getMap) throw new CliFailure('Cannot remove parameters from read-only map');
  else throw new CliFailure('Can only remove from parameters of type Set or Map');
}

async function paramClear(ctx: Ctx, g: GenericClass): Promise<void> {
  const o = await objectByUuid(ctx, g.kind, param(ctx.params, 'uuid')!);
  const f = fieldLookup(o.fields, param(ctx.params, 'param-name')!);
  if (f.getSet && f.removeFromSet) {
    for (const m of await f.getSet()) await f.removeFromSet(m);
  } else if (f.clearMap) await f.clearMap();
  else if (f.setMap) await f.setMap([]);
  else if (f.getMap && f.removeFromMap) {
    for (const [k] of await f.getMap()) await f.removeFromMap(k);
  } else if (f.set) {
    try {
      await f.set('');
    } catch {
      throw new CliFailure('Cannot clear this parameter');
    }
  } else throw new CliFailure('Can only clear RW parameters');
}
