// The one way code reaches the database. The coordinator runs LocalDb behind it; a pool member
// will run the same message implementations against a remote face that forwards these calls to
// the coordinator, which is why every operation is asynchronous.
//
// Two faces of the same object: Db, typed by the schema (src/schema/generated.ts), for code that
// names its classes; AnyDb, by class name and untyped row, for code that picks the class at run
// time (the generic implicit messages, events, the database itself). untyped(db) and typed(db)
// switch between them; they are the same object at run time.
import type { FieldDef, Schema } from '../schema/schema.js';
import type { DbClassName, MapFields, Records, Ref, SetFields } from '../schema/generated.js';
import { XapiError } from '../rpc/errors.js';

/** A write the database store refused (or undid): the disk is full, or the store failed. */
export class WriteRefused extends XapiError {}

/** A row of class C: its record, every field present. Never mutated in place. */
export type Row<C extends DbClassName> = Readonly<Records[C]>;

/** A row of a class chosen at run time: field name -> datamodel value (see src/schema/types.ts). */
export type AnyRow = Readonly<Record<string, unknown>>;

/** The value type of map field F of class C. */
export type MapValue<C extends DbClassName, F extends keyof Records[C]> = Records[C][F] extends Record<string, infer V> ? V : never;
/** The element type of set field F of class C. */
export type SetElement<C extends DbClassName, F extends keyof Records[C]> = Records[C][F] extends (infer E)[] ? E : never;

export interface ChangeSet {
  adds: { cls: string; ref: string; gen: number; row: AnyRow }[];
  mods: { cls: string; ref: string; gen: number; row: AnyRow }[];
  dels: { cls: string; ref: string; gen: number }[];
  /** The newest generation among the changes returned (or the token's, if none). */
  lastGen: number;
}

/** What both faces share: durability and the change log, which are not per class. */
interface DbCommon {
  readonly schema: Schema;

  /**
   * Resolves once every write made before the call is durable (group commit). With `since` (an
   * epoch() value), fails if a flush failed since: writes made before it may have been undone.
   */
  commit(since?: number): Promise<void>;
  /** How many flushes have failed; read it when a call begins and give it to commit(). */
  epoch(): number;

  generation(): number;
  /** The oldest generation after which every change is still individually known. */
  retainedSince(): number;
  changesSince(since: number, wanted: (lowerCls: string, ref: string) => boolean): ChangeSet;
  /** Resolves on a change matching a key (`vm`, `vm/<ref>`, `deleted/<ref>`; null = any) or a timeout. */
  waitForChange(keys: Set<string> | null, timeoutMs: number): Promise<void>;
}

/** The database, typed by the schema: an unknown class or field fails to compile. */
export interface Db extends DbCommon {
  /** The row, or HANDLE_INVALID [cls; ref]. */
  get<C extends DbClassName>(cls: C, ref: Ref<C>): Promise<Row<C>>;
  tryGet<C extends DbClassName>(cls: C, ref: Ref<C>): Promise<Row<C> | undefined>;
  refByUuid<C extends DbClassName>(cls: C, uuid: string): Promise<Ref<C> | undefined>;
  all<C extends DbClassName>(cls: C): Promise<[Ref<C>, Row<C>][]>;
  /** Rows whose fields equal all the given values. */
  find<C extends DbClassName>(cls: C, match: Partial<Records[C]>): Promise<[Ref<C>, Row<C>][]>;
  count(cls: DbClassName): Promise<number>;

  /** Creates a row; fields not given take the datamodel default (or the type's zero). */
  create<C extends DbClassName>(cls: C, ref: Ref<C>, fields: Partial<Records[C]>): Promise<void>;
  update<C extends DbClassName>(cls: C, ref: Ref<C>, changes: Partial<Records[C]>): Promise<void>;
  mapAdd<C extends DbClassName, F extends MapFields[C] & keyof Records[C]>(
    cls: C,
    ref: Ref<C>,
    field: F,
    key: string,
    value: MapValue<C, F>,
  ): Promise<void>;
  mapRemove<C extends DbClassName>(cls: C, ref: Ref<C>, field: MapFields[C], key: string): Promise<void>;
  setAdd<C extends DbClassName, F extends SetFields[C] & keyof Records[C]>(
    cls: C,
    ref: Ref<C>,
    field: F,
    value: SetElement<C, F>,
  ): Promise<void>;
  setRemove<C extends DbClassName, F extends SetFields[C] & keyof Records[C]>(
    cls: C,
    ref: Ref<C>,
    field: F,
    value: SetElement<C, F>,
  ): Promise<void>;
  destroy(cls: DbClassName, ref: string): Promise<void>;
  touch(cls: DbClassName, ref: string): Promise<number>;
}

/** The database by class name, for code that picks the class at run time. */
export interface AnyDb extends DbCommon {
  /** The row, or HANDLE_INVALID [cls; ref]. */
  get(cls: string, ref: string): Promise<AnyRow>;
  tryGet(cls: string, ref: string): Promise<AnyRow | undefined>;
  refByUuid(cls: string, uuid: string): Promise<string | undefined>;
  all(cls: string): Promise<[string, AnyRow][]>;
  /** Rows whose fields equal all the given values. */
  find(cls: string, match: Record<string, unknown>): Promise<[string, AnyRow][]>;
  count(cls: string): Promise<number>;

  /** Creates a row; fields not given take the datamodel default (or the type's zero). */
  create(cls: string, ref: string, fields: Record<string, unknown>): Promise<void>;
  update(cls: string, ref: string, changes: Record<string, unknown>): Promise<void>;
  mapAdd(cls: string, ref: string, field: string, key: string, value: unknown): Promise<void>;
  mapRemove(cls: string, ref: string, field: string, key: string): Promise<void>;
  setAdd(cls: string, ref: string, field: string, value: unknown): Promise<void>;
  setRemove(cls: string, ref: string, field: string, value: unknown): Promise<void>;
  destroy(cls: string, ref: string): Promise<void>;
  touch(cls: string, ref: string): Promise<number>;
}

// The two faces differ only in their static types: an implementation keeps every row complete
// (create fills each field), so the rows of a class are that class's records.
/** The same database, by class name and untyped row. */
export const untyped = (db: Db): AnyDb => db as unknown as AnyDb;
/** The same database, typed by the schema. */
export const typed = (db: AnyDb): Db => db as unknown as Db;

/**
 * The fields of `row` that `keep` selects (and that `row` has), by the schema's list: a copy's
 * fields, say, all but the RO/runtime ones.
 */
export function pickFields<C extends DbClassName>(
  schema: Schema,
  cls: C,
  row: Partial<Records[C]>,
  keep: (f: FieldDef) => boolean,
): Partial<Records[C]> {
  const from: Partial<Record<string, unknown>> = row;
  const out: Partial<Record<string, unknown>> = {};
  for (const f of schema.cls(cls).fields) if (keep(f) && f.name in from) out[f.name] = from[f.name];
  return out as Partial<Records[C]>;
}
