// The implicit messages every datamodel class gets (getters, setters, map/set updates,
// get_record, get_by_uuid, get_all*, generated create/destroy), implemented once, generically,
// from the schema: what xapi's IDL generates per class.
import { randomUUID } from 'node:crypto';
import { XapiError } from './errors.js';
import type { Call, Impl } from './context.js';
import type { ClassDef, FieldDef, MessageDef } from '../schema/schema.js';
import { parseWhere, evalWhere, WhereParseError } from '../db/where.js';
import type { Row } from '../db/interface.js';
import type { Type } from '../schema/types.js';

export const newRef = () => `OpaqueRef:${randomUUID()}`;

/** The implementation of an implicit message, or undefined if its name is not one we know. */
export function implicitImpl(msg: MessageDef): Impl | undefined {
  const cls = msg.cls;
  const c = cls.name;
  const name = msg.name;
  switch (name) {
    case 'get_record':
      return (call, [self]) => call.db.get(c, self as string);
    case 'get_by_uuid':
      return async (call, [uuid]) => {
        const ref = await call.db.refByUuid(c, uuid as string);
        if (!ref) throw new XapiError('UUID_INVALID', [c, uuid as string]);
        return ref;
      };
    case 'get_by_name_label':
      return async (call, [label]) => (await call.db.find(c, { name_label: label })).map(([ref]) => ref);
    case 'get_all':
      return async (call) => (await call.db.all(c)).map(([ref]) => ref);
    case 'get_all_records':
      return async (call) => Object.fromEntries(await call.db.all(c));
    case 'get_all_records_where':
      return async (call, [expr]) => Object.fromEntries(await where(call, cls, expr as string));
    case 'get_all_where':
      return async (call, [expr]) => (await where(call, cls, expr as string)).map(([ref]) => ref);
    case 'create':
      return (call, [record]) => create(call, cls, record as Record<string, unknown>);
    case 'destroy':
      return async (call, [self]) => {
        await call.db.destroy(c, self as string);
      };
  }
  const op = fieldOp(cls, name);
  if (!op) return undefined;
  const f = op.field.name;
  switch (op.kind) {
    case 'get':
      return async (call, [self]) => (await call.db.get(c, self as string))[f];
    case 'set':
      return async (call, [self, value]) => {
        await call.db.get(c, self as string);
        await call.db.update(c, self as string, { [f]: value });
      };
    case 'add_to':
      return (call, [self, key, value]) => call.db.mapAdd(c, self as string, f, key as string, value);
    case 'remove_from':
      return (call, [self, key]) => call.db.mapRemove(c, self as string, f, key as string);
    case 'add':
      return (call, [self, value]) => call.db.setAdd(c, self as string, f, value);
    case 'remove':
      return (call, [self, value]) => call.db.setRemove(c, self as string, f, value);
  }
}

type FieldOpKind = 'get' | 'set' | 'add_to' | 'remove_from' | 'add' | 'remove';

/** Splits `add_to_other_config` into (add_to, other_config) by looking the field up. */
export function fieldOp(cls: ClassDef, name: string): { kind: FieldOpKind; field: FieldDef } | undefined {
  for (const kind of ['add_to', 'remove_from', 'get', 'set', 'add', 'remove'] as const) {
    const prefix = kind + '_';
    if (name.startsWith(prefix)) {
      const field = cls.field.get(name.slice(prefix.length));
      if (field) return { kind, field };
    }
  }
  return undefined;
}

async function create(call: Call, cls: ClassDef, record: Record<string, unknown>): Promise<string> {
  const fields: Record<string, unknown> = {};
  for (const f of cls.fields) {
    if (f.qualifier === 'RO/runtime') continue;
    if (f.name in record) fields[f.name] = record[f.name];
    else if (!f.hasDefault) {
      throw new XapiError('INTERNAL_ERROR', [`Server_helpers.Dispatcher_FieldNotFound("${f.name}")`]);
    }
  }
  const ref = newRef();
  fields.uuid = randomUUID();
  await call.db.create(cls.name, ref, fields);
  return ref;
}

export async function where(call: Call, cls: ClassDef, expr: string): Promise<[string, Row][]> {
  let parsed;
  try {
    parsed = parseWhere(expr);
  } catch (e) {
    if (e instanceof WhereParseError) throw new XapiError('INVALID_VALUE', [expr, e.message]);
    throw e;
  }
  const rows = await call.db.all(cls.name);
  return rows.filter(([ref, row]) =>
    evalWhere(parsed, (column) => {
      if (column === '_ref') return ref;
      const f = cls.field.get(column.replace(/__/g, '_'));
      if (!f) throw new XapiError('INTERNAL_ERROR', [`Db_exn.DBCache_NotFound("missing field", "${column}", "")`]);
      return dbString(f.type, row[f.name]);
    }),
  );
}

/** A value as xapi's database stores it in text: what where-expressions compare against. */
export function dbString(t: Type, v: unknown): string {
  switch (t.k) {
    case 'bool':
      return v ? 'true' : 'false';
    case 'int':
    case 'float':
      return String(v);
    case 'set':
      return '(' + ((v as unknown[]) ?? []).map((x) => sexpString(dbString(t.of, x))).join(' ') + ')';
    case 'map':
      return (
        '(' +
        Object.entries((v as Record<string, unknown>) ?? {})
          .map(([k, x]) => `(${sexpString(k)} ${sexpString(dbString(t.val, x))})`)
          .join(' ') +
        ')'
      );
    default:
      return v === undefined || v === null ? '' : String(v);
  }
}

const sexpString = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
