// xe's records (records.ml): per class, the fields xe shows, in xe's order, each rendered as xe
// renders it, with the edits it allows (param-set/add/remove/clear). Which API field a field
// shows and how it is converted come from the reference (facts.ts); the edits are the API's own
// messages (`<Class>.set_<field>`, `add_to_<field>`...), called like any client would.
import { XapiError } from '../rpc/errors.js';
import { isStruct, type Rpc, RpcDateTime, type RpcStruct } from '../rpc/rpc.js';
import type { FieldDef } from '../schema/schema.js';
import type { Type } from '../schema/types.js';
import { CliFailure, MissingField } from './errors.js';
import { type RecordFieldFacts, xeFacts } from './facts.js';
import type { Ctx } from './table.js';

export const NID = '<not in database>';

/** One field of one object's record. */
export interface Field {
  name: string;
  hidden: boolean;
  expensive: boolean;
  deprecated: boolean;
  caseInsensitive: boolean;
  get(): Promise<string>;
  set?: (v: string) => Promise<void>;
  getSet?: () => Promise<string[]>;
  addToSet?: (k: string) => Promise<void>;
  removeFromSet?: (k: string) => Promise<void>;
  getMap?: () => Promise<[string, string][]>;
  addToMap?: (k: string, v: string) => Promise<void>;
  removeFromMap?: (k: string) => Promise<void>;
  setMap?: (m: [string, string][]) => Promise<void>;
  clearMap?: () => Promise<void>;
}

/** The xe record kinds this project serves: records.ml's name and the API class. */
export const RECORD_CLASSES: Record<string, { facts: string; cls: string }> = {
  vm: { facts: 'vm', cls: 'VM' },
  host: { facts: 'host', cls: 'host' },
  pool: { facts: 'pool', cls: 'pool' },
  sr: { facts: 'sr', cls: 'SR' },
  pbd: { facts: 'pbd', cls: 'PBD' },
  vdi: { facts: 'vdi', cls: 'VDI' },
  vbd: { facts: 'vbd', cls: 'VBD' },
  vif: { facts: 'vif', cls: 'VIF' },
  network: { facts: 'net', cls: 'network' },
  pif: { facts: 'pif', cls: 'PIF' },
  task: { facts: 'task', cls: 'task' },
  console: { facts: 'console', cls: 'console' },
};

// Enum renderings xapi's Record_util writes by hand (the others print the wire value).
const ENUM_TEXT: Record<string, Record<string, string>> = {
  protocol_to_string: { vt100: 'VT100', rfb: 'RFB', rdp: 'RDP' },
  task_allowed_operations_to_string: { cancel: 'Cancel', destroy: 'Destroy' },
  on_normal_exit_to_string: { destroy: 'Destroy', restart: 'Restart' },
  on_crash_behaviour_to_string: {
    destroy: 'Destroy',
    coredump_and_destroy: 'Core dump and destroy',
    restart: 'Restart',
    coredump_and_restart: 'Core dump and restart',
    preserve: 'Preserve',
    rename_restart: 'Rename restart',
  },
  on_softreboot_behaviour_to_string: { destroy: 'Destroy', restart: 'Restart', preserve: 'Preserve', soft_reboot: 'Soft reboot' },
  vdi_type_to_string: {
    system: 'System',
    user: 'User',
    ephemeral: 'Ephemeral',
    suspend: 'Suspend',
    crashdump: 'Crashdump',
    ha_statefile: 'HA statefile',
    metadata: 'Metadata',
    redo_log: 'Redo log',
    rrd: 'rrd',
    pvs_cache: 'PVS cache',
    cbt_metadata: 'CBT metadata',
  },
  vm_operation_to_string: { assert_operation_valid: 'assertoperationvalid', data_source_op: 'data_sources_op' },
  host_operation_to_string: { vm_start: 'VM.start', vm_resume: 'VM.resume', vm_migrate: 'VM.migrate' },
  tristate_to_string: { yes: 'true', no: 'false' },
  domain_type_to_string: { pv_in_pvh: 'pv-in-pvh' },
  bond_mode_to_string: { balanceslb: 'balance-slb', activebackup: 'active-backup' },
};

function enumText(fn: string, v: string): string {
  if (fn === 'vm_power_state_to_lowercase_string') return v.charAt(0).toLowerCase() + v.slice(1);
  if (fn === 'sr_operation_to_string' && v.startsWith('vdi_')) return `VDI.${v.slice(4)}`;
  if (fn === 'sr_operation_to_string' && v.startsWith('pbd_')) return `PBD.${v.slice(4)}`;
  return ENUM_TEXT[fn]?.[v] ?? v;
}

const scalar = (v: Rpc): string => {
  if (v instanceof RpcDateTime) return v.text;
  if (typeof v === 'number') return v.toFixed(3);
  if (v === null) return '';
  return String(v);
};
const members = (v: Rpc): Rpc[] => (Array.isArray(v) ? v : []);
const pairs = (v: Rpc): [string, Rpc][] => (isStruct(v) ? Object.entries(v) : []);

/** Names refs: uuid (or name-label), memoised per command. */
export class RefNames {
  private readonly cache = new Map<string, Promise<{ uuid: string; name?: string } | undefined>>();
  constructor(private readonly ctx: Ctx) {}
  private find(cls: string, ref: string) {
    let p = this.cache.get(ref);
    if (!p) {
      p = this.ctx.api.lookup(cls, ref);
      this.cache.set(ref, p);
    }
    return p;
  }
  async uuid(cls: string, ref: string): Promise<string> {
    return (await this.find(cls, ref))?.uuid ?? NID;
  }
  async name(cls: string, ref: string): Promise<string> {
    const hit = await this.find(cls, ref);
    return hit?.name ?? NID;
  }
}

const refClass = (t: Type | undefined): string => {
  if (!t) return '';
  if (t.k === 'ref') return t.cls;
  if (t.k === 'set' || t.k === 'option') return refClass(t.of);
  if (t.k === 'map') return refClass(t.val);
  return '';
};

/** A field's text by its conversion (records.ml getter with the field written X). */
async function convert(conv: string, v: Rpc, type: Type | undefined, names: RefNames): Promise<string> {
  const cls = refClass(type);
  const semi = (xs: string[]) => xs.join('; ');
  switch (conv) {
    case 'get_uuid_from_ref X':
    case 'try get_uuid_from_ref X with _ - > nid':
      return names.uuid(cls, scalar(v));
    case 'get_name_from_ref X':
    case 'try get_name_from_ref X with _ - > nid':
      return names.name(cls, scalar(v));
    case 'get_uuids_from_refs X':
    case 'map_and_concat (fun x - > get_uuid_from_ref (Ref.of_string x)) X':
      return semi(await Promise.all(members(v).map((r) => names.uuid(cls, scalar(r)))));
    case 'get_from_map X':
      return semi(pairs(v).map(([k, x]) => `${k}: ${scalar(x)}`));
    case 'get_uuid_map_from_ref_map X':
      return semi(await Promise.all(pairs(v).map(async ([k, x]) => `${k}: ${await names.uuid(cls, scalar(x))}`)));
    case 'concat_with_semi X':
    case 'map_and_concat Int64.to_string X':
      return semi(members(v).map(scalar));
    case 'concat_with_comma X':
      return members(v).map(scalar).join(', ');
    case '"\'" ^ X ^ "\'"':
      return `'${scalar(v)}'`;
    case 'let r = X in if r = "" then "<not set>" else r':
      return scalar(v) === '' ? '<not set>' : scalar(v);
    case 'Int64.to_string X ^ " Mbit/s"':
      return `${scalar(v)} Mbit/s`;
  }
  let m = /^map_and_concat(_compat)? Record_util\.(\w+) X$/.exec(conv);
  if (m)
    return members(v)
      .map((x) => enumText(m![2]!, scalar(x)))
      .join(m[1] ? ', ' : '; ');
  m = /^map_and_concat \(fun \(_ , (\w+)\) - > Record_util\.(\w+) \1\) X$/.exec(conv);
  if (m) return semi(pairs(v).map(([, x]) => enumText(m![2]!, scalar(x))));
  m = /^get_from_map \(List\.map \(fun \(k , v\) - > \(Record_util\.(\w+) k , v\)\) X\)$/.exec(conv);
  if (m) return semi(pairs(v).map(([k, x]) => `${enumText(m![1]!, k)}: ${scalar(x)}`));
  m = /^(?:Record_util\.(\w+) X|X \| > Record_util\.(\w+))$/.exec(conv);
  if (m) return enumText(m[1] ?? m[2]!, scalar(v));
  if (conv.startsWith('map_and_concat')) return semi(members(v).map(scalar));
  return scalar(v); // X, string_of_bool, Int64.to_string, Date.to_rfc3339, string_of_float, match X with ...
}

/** A value typed for the API from what the user wrote (records.ml's setters' parsing). */
function parseValue(f: FieldDef, cliName: string, v: string): Rpc {
  const t = f.type;
  switch (t.k) {
    case 'int':
      if (cliName.startsWith('memory')) return bytesOfString(cliName, v);
      if (!/^[-+]?\d+$/.test(v.trim())) throw new CliFailure(`Failed to parse parameter '${cliName}': expecting an integer`);
      return BigInt(v.trim());
    case 'float': {
      const n = Number(v);
      if (v.trim() === '' || Number.isNaN(n)) throw new CliFailure(`Parameter ${cliName} must be a floating-point number`);
      return n;
    }
    case 'bool':
      if (v !== 'true' && v !== 'false')
        throw new CliFailure(`Failed to parse parameter '${cliName}': expecting a boolean (true or false)`);
      return v === 'true';
    default:
      return v;
  }
}

const UNITS: Record<string, bigint> = {
  '': 1n,
  b: 1n,
  bytes: 1n,
  k: 1n << 10n,
  kb: 1n << 10n,
  kib: 1n << 10n,
  m: 1n << 20n,
  mb: 1n << 20n,
  mib: 1n << 20n,
  g: 1n << 30n,
  gb: 1n << 30n,
  gib: 1n << 30n,
  t: 1n << 40n,
  tb: 1n << 40n,
  tib: 1n << 40n,
};

/** Record_util.bytes_of_string: an integer and an optional binary unit (`4GiB`). */
export function bytesOfString(field: string, v: string): bigint {
  const m = /^\s*([-+]?\d+)\s*(\S*)\s*$/.exec(v);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined || BigInt(m[1]!) < 0n) {
    throw new CliFailure(`Failed to parse field '${field}': expecting an integer (possibly with suffix KiB, MiB, GiB, TiB), got '${v}'`);
  }
  return BigInt(m[1]!) * unit;
}

type Special = (ctx: Ctx, ref: string, rec: () => Promise<RpcStruct>, names: RefNames) => Promise<string>;

const safe = async (f: () => Promise<string>, fallback: string) => {
  try {
    return await f();
  } catch {
    return fallback;
  }
};

/** The fields whose value needs more than their record (records.ml's hand-written getters). */
const SPECIALS: Record<string, Record<string, Special>> = {
  vm: {
    'memory-target': async (ctx, ref) => {
      try {
        return BigInt(Math.trunc(Number(await ctx.call('VM.query_data_source', ref, 'memory_target')))).toString();
      } catch (e) {
        return e instanceof XapiError && e.code === 'VM_BAD_POWER_STATE' ? '0' : '<unknown>';
      }
    },
    'allowed-VBD-devices': (ctx, ref) =>
      safe(
        async () =>
          members(await ctx.call('VM.get_allowed_VBD_devices', ref))
            .map(scalar)
            .join('; '),
        '',
      ),
    'allowed-VIF-devices': (ctx, ref) =>
      safe(
        async () =>
          members(await ctx.call('VM.get_allowed_VIF_devices', ref))
            .map(scalar)
            .join('; '),
        '',
      ),
    'possible-hosts': async (ctx, ref, _r, names) =>
      (await Promise.all(members(await ctx.call('VM.get_possible_hosts', ref)).map((h) => names.uuid('host', scalar(h))))).join('; '),
    'VCPUs-utilisation': async () => '',
    cooperative: (ctx, ref) => safe(async () => String(await ctx.call('VM.get_cooperative', ref)), 'true'),
  },
  host: {
    'memory-free-computed': async (ctx, ref) => scalar(await ctx.call('host.compute_free_memory', ref)),
    patches: async () => '',
    updates: async () => '',
  },
  sr: {
    host: async (_ctx, _ref, rec, names) => {
      const pbds = members((await rec()).PBDs ?? []);
      if (pbds.length > 1) return '<shared>';
      if (pbds.length === 0) return NID;
      const pbd = await _ctx.call('PBD.get_record', pbds[0]!).catch(() => undefined);
      return pbd && isStruct(pbd) ? names.name('host', scalar(pbd.host ?? '')) : NID;
    },
  },
  vbd: {
    'vdi-name-label': async (_ctx, _ref, rec, names) => {
      const r = await rec();
      return r.empty === true ? '<EMPTY>' : names.name('VDI', scalar(r.VDI ?? ''));
    },
    attachable: async (ctx, ref) => {
      try {
        await ctx.call('VBD.assert_attachable', ref);
        return 'true';
      } catch (e) {
        const err = e instanceof XapiError ? `Server_error(${e.code}, [ ${e.params.join('; ')} ])` : String(e);
        return `false (error: ${err})`;
      }
    },
  },
  vdi: {
    'metadata-of-pool': async (ctx, _ref, rec, names) => {
      const pools = members(await ctx.call('pool.get_all'));
      const mine = scalar((await rec()).metadata_of_pool ?? '');
      return pools[0] === mine ? names.uuid('pool', mine) : NID;
    },
  },
};

/** Fields whose value is a data source: `<unknown>` (the simulator records none). */
const UNKNOWN_SPECIAL = async () => '<unknown>';

export interface RecordSource {
  ref: string;
  /** The object's record as the wire gives it, fetched once when first needed. */
  rec: () => Promise<RpcStruct>;
}

/** The fields of one object, in xe's order. */
/** What a field is, worked out once per class (facts, schema types, which edits exist). */
interface FieldPlan {
  f: RecordFieldFacts;
  base: Pick<Field, 'name' | 'hidden' | 'expensive' | 'deprecated' | 'caseInsensitive'>;
  special?: Special;
  def?: FieldDef;
  metricsType?: Type;
  edits: { set: boolean; addSet: boolean; removeSet: boolean; addMap: boolean; removeMap: boolean; setMap: boolean; clearMap: boolean };
}

const plans = new WeakMap<object, Map<string, FieldPlan[]>>();

function fieldPlans(ctx: Ctx, kind: string): FieldPlan[] {
  const schema = ctx.api.dispatcher.host.schema;
  let byKind = plans.get(schema);
  if (!byKind) {
    byKind = new Map();
    plans.set(schema, byKind);
  }
  const known = byKind.get(kind);
  if (known) return known;
  const { facts: factsName, cls } = RECORD_CLASSES[kind]!;
  const classDef = schema.classes.get(cls)!;
  const has = (name: string) => schema.messages.has(`${cls}.${name}`);
  const out = (xeFacts().records[factsName] ?? []).map((f): FieldPlan => {
    const base = {
      name: f.name,
      hidden: f.hidden === true,
      expensive: f.expensive === true,
      deprecated: f.deprecated === true,
      caseInsensitive: f.case_insensitive === true,
    };
    const none = { set: false, addSet: false, removeSet: false, addMap: false, removeMap: false, setMap: false, clearMap: false };
    if (f.from === 'special' || !f.field) return { f, base, special: SPECIALS[kind]?.[f.name] ?? UNKNOWN_SPECIAL, edits: none };
    const wire = f.field;
    if (f.from !== 'rec') {
      const mcls = f.from === 'metrics' ? `${cls}_metrics` : `${cls}_guest_metrics`;
      return { f, base, metricsType: schema.classes.get(mcls)?.field.get(wire)?.type, edits: none };
    }
    const def = classDef.field.get(wire);
    return {
      f,
      base,
      def,
      edits: {
        set: f.set === true && def !== undefined && has(`set_${wire}`),
        addSet: f.get_set === true && f.add_to_set === true && has(`add_${wire}`),
        removeSet: f.get_set === true && f.remove_from_set === true && has(`remove_${wire}`),
        addMap: f.get_map === true && f.add_to_map === true && has(`add_to_${wire}`),
        removeMap: f.get_map === true && f.remove_from_map === true && has(`remove_from_${wire}`),
        setMap: f.get_map === true && f.set_map === true && has(`set_${wire}`),
        clearMap: f.get_map === true && f.clear_map === true && has(`set_${wire}`),
      },
    };
  });
  byKind.set(kind, out);
  return out;
}

/** One object's view for making its fields: its record, metrics and names, fetched when needed. */
interface ObjectContext {
  ctx: Ctx;
  cls: string;
  src: RecordSource;
  names: RefNames;
  metrics: () => Promise<RpcStruct | undefined>;
  guest: () => Promise<RpcStruct | undefined>;
}

function objectContext(ctx: Ctx, kind: string, src: RecordSource, names: RefNames): ObjectContext {
  const { cls } = RECORD_CLASSES[kind]!;
  const metricsOf = (which: 'metrics' | 'guest_metrics') => {
    let p: Promise<RpcStruct | undefined> | undefined;
    return () => {
      p ??= (async () => {
        const r = await src.rec();
        const ref = scalar(r[which] ?? '');
        const mcls = which === 'metrics' ? `${cls}_metrics` : `${cls}_guest_metrics`;
        const m = await ctx.call(`${mcls}.get_record`, ref).catch(() => undefined);
        return m && isStruct(m) ? m : undefined;
      })();
      return p;
    };
  };
  return { ctx, cls, src, names, metrics: metricsOf('metrics'), guest: metricsOf('guest_metrics') };
}

/** The fields of one object, in xe's order. */
export function makeFields(ctx: Ctx, kind: string, src: RecordSource, names: RefNames): Field[] {
  const oc = objectContext(ctx, kind, src, names);
  return fieldPlans(ctx, kind).map((p) => makeField(oc, p));
}

/** An object whose fields are made when first asked for, one by one or all together. */
export class LazyFields {
  private all?: Field[];
  private readonly one = new Map<string, Field>();
  private readonly oc: ObjectContext;
  constructor(
    private readonly ctx: Ctx,
    private readonly kind: string,
    src: RecordSource,
    names: RefNames,
  ) {
    this.oc = objectContext(ctx, kind, src, names);
  }
  get fields(): Field[] {
    this.all ??= fieldPlans(this.ctx, this.kind).map((p) => this.one.get(p.f.name) ?? makeField(this.oc, p));
    return this.all;
  }
  /** The fields with these names (record order), without making the others. */
  named(names: string[]): Field[] {
    return fieldPlans(this.ctx, this.kind)
      .filter((p) => names.includes(p.f.name))
      .map((p) => this.field(p.f.name)!);
  }
  field(name: string): Field | undefined {
    if (this.all) return this.all.find((f) => f.name === name);
    let f = this.one.get(name);
    if (!f) {
      const hits = fieldPlans(this.ctx, this.kind).filter((p) => p.f.name === name);
      if (hits.length !== 1) return undefined;
      f = makeField(this.oc, hits[0]!);
      this.one.set(name, f);
    }
    return f;
  }
}

function makeField(oc: ObjectContext, p: FieldPlan): Field {
  const { ctx, cls, src, names } = oc;
  const { f, base } = p;
  if (p.special) {
    const special = p.special;
    return { ...base, get: () => special(ctx, src.ref, src.rec, names) };
  }
  const wire = f.field!;
  const conv = f.conv ?? 'X';
  if (f.from !== 'rec') {
    const m = f.from === 'metrics' ? oc.metrics : oc.guest;
    return {
      ...base,
      get: async () => {
        const r = await m();
        return r ? convert(conv, r[wire] ?? '', p.metricsType, names) : (f.none ?? NID);
      },
    };
  }
  const def = p.def;
  const value = async (): Promise<Rpc> => (await src.rec())[wire] ?? '';
  const field: Field = { ...base, get: async () => convert(conv, await value(), def?.type, names) };
  const self = src.ref;
  const e = p.edits;
  if (e.set && def) field.set = async (v) => void (await ctx.call(`${cls}.set_${wire}`, self, parseValue(def, f.name, v)));
  if (f.get_set) {
    field.getSet = async () => members(await value()).map(scalar);
    if (e.addSet) field.addToSet = async (k) => void (await ctx.call(`${cls}.add_${wire}`, self, k));
    if (e.removeSet) field.removeFromSet = async (k) => void (await ctx.call(`${cls}.remove_${wire}`, self, k));
  }
  if (f.get_map) {
    field.getMap = async () => pairs(await value()).map(([k, x]) => [k, scalar(x)]);
    if (e.addMap) field.addToMap = async (k, v) => void (await ctx.call(`${cls}.add_to_${wire}`, self, k, v));
    if (e.removeMap) field.removeFromMap = async (k) => void (await ctx.call(`${cls}.remove_from_${wire}`, self, k));
    if (e.setMap || e.clearMap) {
      const setMap = async (m: [string, string][]) => {
        const s = Object.create(null) as RpcStruct;
        for (const [k, v] of m) s[k] = v;
        await ctx.call(`${cls}.set_${wire}`, self, s);
      };
      if (e.setMap) field.setMap = setMap;
      if (e.clearMap) field.clearMap = () => setMap([]);
    }
  }
  return field;
}

/** records.ml field_lookup. */
export function fieldLookup(fields: Field[], name: string): Field {
  const hits = fields.filter((f) => f.name === name);
  if (hits.length !== 1) throw new MissingField(name);
  return hits[0]!;
}

/** A field's key as xe prints it: name, kind marker, deprecation (print_field). */
export function fieldKey(f: Field): string {
  const marker = f.getSet
    ? f.addToSet
      ? ' (SRW)'
      : ' (SRO)'
    : f.getMap
      ? f.addToMap
        ? ' (MRW)'
        : ' (MRO)'
      : f.set
        ? ' ( RW)'
        : ' ( RO)';
  return `${f.name}${marker}${f.deprecated ? ' [DEPRECATED]' : ''}`;
}

/** cli_operations.ml safe_get_field: a dangling handle reads as `<invalid reference>`. */
export async function safeGet(f: Field): Promise<string> {
  try {
    return await f.get();
  } catch (e) {
    if (e instanceof XapiError && e.code === 'HANDLE_INVALID') return '<invalid reference>';
    throw e;
  }
}
