// The implicit messages every datamodel class gets (getters, setters, map/set updates,
// get_record, get_by_uuid, get_all*, generated create/destroy), implemented once, generically,
// from the schema: what xapi's IDL generates per class.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Impl, MessageImpl } from './context.js';
import type { ClassDef, FieldDef, MessageDef, Schema } from '../schema/schema.js';
import type { DbClassName, MessageName, Records, Ref } from '../schema/generated.js';
import { parseWhere, evalWhere, WhereParseError, type WhereExpr } from '../db/where.js';
import { untyped, type AnyRow, type Row } from '../db/interface.js';
import type { Type } from '../schema/types.js';

export const newRef = () => `OpaqueRef:${randomUUID()}`;

const db = (call: Call) => untyped(call.db);

/**
 * The generic implementation of a message of the schema, for an explicit implementation that
 * adds checks around it (VM.create, VBD.create...). Throws if the message has none.
 */
export function genericImpl<W extends MessageName>(schema: Schema, wire: W): MessageImpl<W> {
  const impl = implicitImpl(schema.messages.get(wire)!);
  if (!impl) throw new Error(`no generic implementation of ${wire}`);
  // The generic code serves every class from the schema: its arguments and result are message W's.
  return impl as MessageImpl<W>;
}

/**
 * The implementation of an implicit message, or undefined if its name is not one we know. The
 * class is chosen at run time, so this works on the untyped face of the database.
 */
export function implicitImpl(msg: MessageDef): Impl | undefined {
  const cls = msg.cls;
  const c = cls.name;
  const name = msg.name;
  switch (name) {
    case 'get_record':
      return (call, [self]) => db(call).get(c, self as string);
    case 'get_by_uuid':
      return async (call, [uuid]) => {
        const ref = await db(call).refByUuid(c, uuid as string);
        if (!ref) throw new XapiError('UUID_INVALID', [c, uuid as string]);
        return ref;
      };
    case 'get_by_name_label':
      return async (call, [label]) => (await db(call).find(c, { name_label: label })).map(([ref]) => ref);
    case 'get_all':
      return async (call) => (await db(call).all(c)).map(([ref]) => ref);
    // The [ref, row] pairs as the database lists them, not an object with a key per row: the
    // marshaller writes either, and 10,000 keys cost more to build than to write (see
    // marshal.ts, members).
    case 'get_all_records':
      return (call) => db(call).all(c);
    case 'get_all_records_where':
      return (call, [expr]) => where(call, cls, expr as string);
    case 'get_all_where':
      return async (call, [expr]) => (await where(call, cls, expr as string)).map(([ref]) => ref);
    case 'create':
      return (call, [record]) => create(call, cls, record as Record<string, unknown>);
    case 'destroy':
      return async (call, [self]) => {
        await db(call).destroy(c, self as string);
      };
  }
  const op = fieldOp(cls, name);
  if (!op) return undefined;
  const f = op.field.name;
  switch (op.kind) {
    case 'get':
      return async (call, [self]) => (await db(call).get(c, self as string))[f];
    case 'set':
      return async (call, [self, value]) => {
        await db(call).get(c, self as string);
        await db(call).update(c, self as string, { [f]: value });
      };
    case 'add_to':
      return (call, [self, key, value]) => db(call).mapAdd(c, self as string, f, key as string, value);
    case 'remove_from':
      return (call, [self, key]) => db(call).mapRemove(c, self as string, f, key as string);
    case 'add':
      return (call, [self, value]) => db(call).setAdd(c, self as string, f, value);
    case 'remove':
      return (call, [self, value]) => db(call).setRemove(c, self as string, f, value);
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

/**
 * The fields a constructor's record gives, as xapi's unmarshaller reads them: each writable
 * field from the record, or its default; one without a default missing fails the call
 * (Dispatcher_FieldNotFound) before any implementation runs. Runtime fields are not included.
 */
function constructorFields(cls: ClassDef, record: Record<string, unknown>, withDefaults: boolean): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (const f of cls.fields) {
    if (f.qualifier === 'RO/runtime') continue;
    if (f.name in record) fields[f.name] = record[f.name];
    else if (!f.hasDefault) {
      throw new XapiError('INTERNAL_ERROR', [`Server_helpers.Dispatcher_FieldNotFound("${f.name}")`]);
    } else if (withDefaults) fields[f.name] = structuredClone(f.default);
  }
  return fields;
}

/**
 * A hand-written constructor's arguments: the record completed with the defaults, or the
 * unmarshaller's error. Only the constructor's fields are present (the runtime ones are not).
 */
export function constructorArgs<C extends DbClassName>(schema: Schema, cls: C, record: Partial<Records[C]>): Records[C] {
  // Every field a constructor takes is now present, which is what callers read.
  return constructorFields(schema.cls(cls), record, true) as Records[C];
}

async function create(call: Call, cls: ClassDef, record: Record<string, unknown>): Promise<string> {
  const fields = constructorFields(cls, record, false);
  const ref = newRef();
  fields.uuid = randomUUID();
  await db(call).create(cls.name, ref, fields);
  return ref;
}

export async function where(call: Call, cls: ClassDef, expr: string): Promise<[string, AnyRow][]> {
  let parsed: WhereExpr;
  try {
    parsed = parseWhere(expr);
  } catch (e) {
    if (e instanceof WhereParseError) throw new XapiError('INVALID_VALUE', [expr, e.message]);
    throw e;
  }
  const rows = await db(call).all(cls.name);
  return rows.filter(([ref, row]) =>
    evalWhere(parsed, (column) => {
      if (column === '_ref') return ref;
      const f = cls.field.get(column.replace(/__/g, '_'));
      if (!f) throw new XapiError('INTERNAL_ERROR', [`Db_exn.DBCache_NotFound("missing field", "${column}", "")`]);
      return dbString(f.type, row[f.name]);
    }),
  );
}

/** where() for a class the code names: its rows are that class's records. */
export async function rowsWhere<C extends DbClassName>(call: Call, cls: C, expr: string): Promise<[Ref<C>, Row<C>][]> {
  return (await where(call, call.host.schema.cls(cls), expr)) as [Ref<C>, Row<C>][];
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
