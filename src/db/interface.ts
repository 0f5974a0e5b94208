// The one way code reaches the database. The coordinator runs LocalDb behind it; a pool member
// will run the same message implementations against a remote face that forwards these calls to
// the coordinator, which is why every operation is asynchronous.
import type { Schema } from '../schema/schema.js';

/** A row: field name -> datamodel value (see src/schema/types.ts). Never mutated in place. */
export type Row = Readonly<Record<string, unknown>>;

export interface ChangeSet {
  adds: { cls: string; ref: string; gen: number; row: Row }[];
  mods: { cls: string; ref: string; gen: number; row: Row }[];
  dels: { cls: string; ref: string; gen: number }[];
  /** The newest generation among the changes returned (or the token's, if none). */
  lastGen: number;
}

export interface Db {
  readonly schema: Schema;

  /** The row, or HANDLE_INVALID [cls; ref]. */
  get(cls: string, ref: string): Promise<Row>;
  tryGet(cls: string, ref: string): Promise<Row | undefined>;
  refByUuid(cls: string, uuid: string): Promise<string | undefined>;
  all(cls: string): Promise<[string, Row][]>;
  /** Rows whose fields equal all the given values. */
  find(cls: string, match: Record<string, unknown>): Promise<[string, Row][]>;
  count(cls: string): Promise<number>;

  /** Creates a row; fields not given take the datamodel default (or the type's zero). */
  create(cls: string, ref: string, fields: Record<string, unknown>): Promise<void>;
  update(cls: string, ref: string, changes: Record<string, unknown>): Promise<void>;
  mapAdd(cls: string, ref: string, field: string, key: string, value: unknown): Promise<void>;
  mapRemove(cls: string, ref: string, field: string, key: string): Promise<void>;
  setAdd(cls: string, ref: string, field: string, value: unknown): Promise<void>;
  setRemove(cls: string, ref: string, field: string, value: unknown): Promise<void>;
  destroy(cls: string, ref: string): Promise<void>;

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
  touch(cls: string, ref: string): Promise<number>;
  /** Resolves on a change matching a key (`vm`, `vm/<ref>`, `deleted/<ref>`; null = any) or a timeout. */
  waitForChange(keys: Set<string> | null, timeoutMs: number): Promise<void>;
}
