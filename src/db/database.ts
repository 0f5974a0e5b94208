// The database: one in-memory table per datamodel class, every object a row of field values,
// every write stamped with the next generation number (as xapi's DB does, which is what
// event.from reads). Writes apply to memory at once and are made durable by group commit: a
// call's reply waits on commit(), and all writes made before a flush share its one fsync.
//
// Rows are immutable: a write replaces the row object, so a reader holding a row (a snapshot in
// an event, a record being marshalled) never sees it change underneath. They are frozen, which
// enforces that, and carry a slot where the marshaller keeps the text written from them
// (row-text.ts).
//
// A flush that fails (a full disk) must not leave memory ahead of the disk: the rows its batch
// changed are put back as they were before it (the very objects, still frozen), its waiters
// fail, and every write is refused until a probe write succeeds again (the disk got space back).
// Calls that were running across the failure may have had writes rolled back under them:
// commit(since) fails them too.
import { XapiError, handleInvalid } from '../rpc/errors.js';
import type { ClassDef, Schema } from '../schema/schema.js';
import { zeroValue, NULL_REF, type Type } from '../schema/types.js';
import type { SqliteStore, Batch, StoredReply, Tombstone } from './store.js';
import { WriteRefused, type AnyDb, type AnyRow as Row, type ChangeSet } from './interface.js';
import { flat } from '../util/flat.js';
import { forgetRowText, frozenRow } from './row-text.js';

interface Entry {
  row: Row;
  created: number;
  modified: number;
}

/** A dirty row, with what it was before the batch that will write it (null: it did not exist). */
interface Dirty {
  cls: string;
  ref: string;
  before: Readonly<Entry> | null;
}

interface LogEntry {
  gen: number;
  cls: string;
  ref: string;
}

const LOG_LIMIT = 200_000;
const ALL = '*';
const TOMBSTONE_LIMIT = 100_000;
/** While writes are refused, how often a probe write checks whether the store takes them again. */
const PROBE_INTERVAL_MS = 1000;

export class LocalDb implements AnyDb {
  private readonly tables = new Map<string, Map<string, Entry>>();
  private readonly uuidIndex = new Map<string, Map<string, string>>();
  private gen = 0;
  /** Every change in generation order; entries before logStart have been trimmed. */
  private log: LogEntry[] = [];
  private logStart = 0;
  private tombstones = new Map<string, Tombstone>();
  private tombstoneOrder: Tombstone[] = [];
  /** relations indexed by the "many" side: class -> field -> the "one" side */
  private readonly manySide = new Map<string, { field: string; oneClass: string; oneField: string }[]>();

  private dirty = new Map<string, Dirty>();
  private pendingTombstones: Tombstone[] = [];
  private pendingReplies: StoredReply[] = [];
  private flushScheduled = false;
  /** The last flush's sync while it runs (it settles as that flush's commits do). */
  private unsynced: Promise<void> | undefined;
  private waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  /** Set while the store refuses writes: the error every write gets. */
  private unwritable: WriteRefused | undefined;
  /** How many flushes failed (and were rolled back); see commit(since). */
  private failures = 0;
  private lastFailure: WriteRefused | undefined;
  private probeTimer: NodeJS.Timeout | undefined;

  /** Wake-up keys changed since the last notify: `<class>`, `<class>/<ref>`, `deleted/<ref>`. */
  private changedKeys = new Set<string>();
  private notifyScheduled = false;
  /** lower-case class (or ALL) -> wake-up functions of the watchers waiting on it */
  private readonly watchers = new Map<string, Set<() => void>>();

  private readonly logLimit: number;
  private readonly onWritable: (writable: boolean, cause?: unknown) => void;
  private readonly probeIntervalMs: number;

  constructor(
    readonly schema: Schema,
    private readonly store: SqliteStore | null,
    opts: { logLimit?: number; onWritable?: (writable: boolean, cause?: unknown) => void; probeIntervalMs?: number } = {},
  ) {
    this.logLimit = opts.logLimit ?? LOG_LIMIT;
    this.probeIntervalMs = opts.probeIntervalMs ?? PROBE_INTERVAL_MS;
    this.onWritable = opts.onWritable ?? (() => {});
    for (const c of schema.dbClasses()) {
      this.tables.set(c.name, new Map());
      this.uuidIndex.set(c.name, new Map());
    }
    for (const r of schema.relations) {
      const list = this.manySide.get(r.many.class) ?? [];
      list.push({ field: r.many.field, oneClass: r.one.class, oneField: r.one.field });
      this.manySide.set(r.many.class, list);
    }
    if (store) this.load(store);
  }

  /** Reads the whole store into memory, filling fields that a newer datamodel added. */
  private load(store: SqliteStore): void {
    store.checkFormat();
    this.gen = Number(store.getMeta('generation') ?? 0);
    for (const cls of this.schema.dbClasses()) {
      store.ensureTable(cls.name);
      const table = this.tables.get(cls.name)!;
      const uuids = this.uuidIndex.get(cls.name)!;
      for (const r of store.loadTable(cls.name)) {
        const stored = JSON.parse(r.data) as Record<string, unknown>;
        const row: Record<string, unknown> = {};
        for (const f of cls.fields) row[f.name] = f.name in stored ? stored[f.name] : this.defaultOf(cls, f.name);
        table.set(r.ref, { row: frozenRow(row), created: r.created, modified: r.modified });
        if (typeof row.uuid === 'string') uuids.set(row.uuid, r.ref);
      }
    }
    for (const t of store.loadTombstones(TOMBSTONE_LIMIT)) {
      this.tombstones.set(t.ref, t);
      this.tombstoneOrder.push(t);
    }
    // The change log starts empty after a restart: older tokens are served by a full scan.
    this.logStart = this.gen;
  }

  private defaultOf(cls: ClassDef, field: string): unknown {
    const f = cls.field.get(field)!;
    if (f.hasDefault) return structuredClone(f.default);
    return typeZero(this.schema, f.type);
  }

  private table(cls: string): Map<string, Entry> {
    const t = this.tables.get(cls);
    if (!t) throw new XapiError('INTERNAL_ERROR', [`no table for class ${cls}`]);
    return t;
  }

  // ---- reads ----------------------------------------------------------------------------------

  async get(cls: string, ref: string): Promise<Row> {
    const e = this.table(cls).get(ref);
    if (!e) throw handleInvalid(cls, ref);
    return e.row;
  }

  getSync(cls: string, ref: string): Row | undefined {
    return this.tables.get(cls)?.get(ref)?.row;
  }

  async tryGet(cls: string, ref: string): Promise<Row | undefined> {
    return this.table(cls).get(ref)?.row;
  }

  async refByUuid(cls: string, uuid: string): Promise<string | undefined> {
    return this.uuidIndex.get(cls)?.get(uuid);
  }

  async all(cls: string): Promise<[string, Row][]> {
    const out: [string, Row][] = [];
    for (const [ref, e] of this.table(cls)) out.push([ref, e.row]);
    return out;
  }

  async find(cls: string, match: Record<string, unknown>): Promise<[string, Row][]> {
    const keys = Object.keys(match);
    const out: [string, Row][] = [];
    for (const [ref, e] of this.table(cls)) {
      if (keys.every((k) => e.row[k] === match[k])) out.push([ref, e.row]);
    }
    return out;
  }

  async count(cls: string): Promise<number> {
    return this.table(cls).size;
  }

  // ---- writes ---------------------------------------------------------------------------------

  async create(cls: string, ref: string, fields: Record<string, unknown>): Promise<void> {
    this.assertWritable();
    const def = this.schema.cls(cls);
    const table = this.table(cls);
    if (table.has(ref)) throw new XapiError('INTERNAL_ERROR', [`duplicate reference ${ref} in ${cls}`]);
    const uuid = fields.uuid;
    if (typeof uuid === 'string' && this.uuidIndex.get(cls)!.has(uuid)) {
      throw new XapiError('DB_UNIQUENESS_CONSTRAINT_VIOLATION', [cls, 'uuid', uuid]);
    }
    // A ref or uuid just made by crypto.randomUUID is a tree of some fifteen string fragments
    // (~490 bytes; under 130 once flat, as those of rows read from disk are). Flattened here,
    // once, rather than by the first reply that writes the row: for the 20,000 ids of 10,000 new
    // rows that took 13-24 ms here, inside one get_all_records.
    flat(ref);
    if (typeof uuid === 'string') flat(uuid);
    const row: Record<string, unknown> = {};
    for (const f of def.fields) row[f.name] = f.name in fields ? fields[f.name] : this.defaultOf(def, f.name);
    this.remember(cls, ref, undefined);
    const gen = ++this.gen;
    table.set(ref, { row: frozenRow(row), created: gen, modified: gen });
    if (typeof row.uuid === 'string') this.uuidIndex.get(cls)!.set(row.uuid, ref);
    this.touched(gen, cls, ref);
    for (const rel of this.manySide.get(cls) ?? []) this.relink(gen, rel.oneClass, rel.oneField, NULL_REF, row[rel.field], ref);
  }

  async update(cls: string, ref: string, changes: Record<string, unknown>): Promise<void> {
    this.assertWritable();
    const table = this.table(cls);
    const e = table.get(ref);
    if (!e) throw handleInvalid(cls, ref);
    const old = e.row;
    forgetRowText(old);
    const row = frozenRow({ ...old, ...changes });
    this.remember(cls, ref, e);
    const gen = ++this.gen;
    e.row = row;
    e.modified = gen;
    if ('uuid' in changes && old.uuid !== row.uuid) {
      const uuids = this.uuidIndex.get(cls)!;
      uuids.delete(old.uuid as string);
      uuids.set(row.uuid as string, ref);
    }
    this.touched(gen, cls, ref);
    for (const rel of this.manySide.get(cls) ?? []) {
      if (rel.field in changes && old[rel.field] !== row[rel.field]) {
        this.relink(gen, rel.oneClass, rel.oneField, old[rel.field], row[rel.field], ref);
      }
    }
  }

  /** add_to_<map>: MAP_DUPLICATE_KEY if the key is there, as xapi's DB raises it. */
  async mapAdd(cls: string, ref: string, field: string, key: string, value: unknown): Promise<void> {
    const row = await this.get(cls, ref);
    const m = (row[field] as Record<string, unknown>) ?? {};
    if (Object.hasOwn(m, key)) {
      throw new XapiError('MAP_DUPLICATE_KEY', [cls, field, ref, key]);
    }
    await this.update(cls, ref, { [field]: withMember(m, key, value) });
  }

  async mapRemove(cls: string, ref: string, field: string, key: string): Promise<void> {
    const row = await this.get(cls, ref);
    const m = (row[field] as Record<string, unknown>) ?? {};
    if (!Object.hasOwn(m, key)) return;
    const next = { ...m };
    delete next[key];
    await this.update(cls, ref, { [field]: next });
  }

  async setAdd(cls: string, ref: string, field: string, value: unknown): Promise<void> {
    const row = await this.get(cls, ref);
    const s = (row[field] as unknown[]) ?? [];
    if (s.includes(value)) return;
    await this.update(cls, ref, { [field]: [...s, value] });
  }

  async setRemove(cls: string, ref: string, field: string, value: unknown): Promise<void> {
    const row = await this.get(cls, ref);
    const s = (row[field] as unknown[]) ?? [];
    if (!s.includes(value)) return;
    await this.update(cls, ref, { [field]: s.filter((x) => x !== value) });
  }

  async destroy(cls: string, ref: string): Promise<void> {
    this.assertWritable();
    const table = this.table(cls);
    const e = table.get(ref);
    if (!e) throw handleInvalid(cls, ref);
    this.remember(cls, ref, e);
    forgetRowText(e.row);
    table.delete(ref);
    if (typeof e.row.uuid === 'string') this.uuidIndex.get(cls)!.delete(e.row.uuid);
    const gen = ++this.gen;
    const t: Tombstone = { cls, ref, created: e.created, deleted: gen };
    this.tombstones.set(ref, t);
    this.tombstoneOrder.push(t);
    this.pendingTombstones.push(t);
    this.changedKeys.add(`deleted/${ref}`);
    if (this.tombstoneOrder.length > TOMBSTONE_LIMIT * 2) {
      for (const old of this.tombstoneOrder.splice(0, TOMBSTONE_LIMIT)) {
        if (this.tombstones.get(old.ref) === old) this.tombstones.delete(old.ref);
      }
    }
    this.touched(gen, cls, ref);
    for (const rel of this.manySide.get(cls) ?? []) this.relink(gen, rel.oneClass, rel.oneField, e.row[rel.field], NULL_REF, ref);
  }

  /** Keeps a one-to-many set in step with the ref on the many side. */
  private relink(gen: number, oneClass: string, oneField: string, from: unknown, to: unknown, manyRef: string): void {
    const table = this.tables.get(oneClass);
    if (!table) return;
    if (typeof from === 'string' && from !== NULL_REF) {
      const e = table.get(from);
      if (e) {
        const s = (e.row[oneField] as string[]) ?? [];
        if (s.includes(manyRef)) {
          this.remember(oneClass, from, e);
          forgetRowText(e.row);
          e.row = frozenRow({ ...e.row, [oneField]: s.filter((x) => x !== manyRef) });
          e.modified = gen;
          this.touched(gen, oneClass, from);
        }
      }
    }
    if (typeof to === 'string' && to !== NULL_REF) {
      const e = table.get(to);
      if (e) {
        const s = (e.row[oneField] as string[]) ?? [];
        if (!s.includes(manyRef)) {
          // xapi prepends new members
          this.remember(oneClass, to, e);
          forgetRowText(e.row);
          e.row = frozenRow({ ...e.row, [oneField]: [manyRef, ...s] });
          e.modified = gen;
          this.touched(gen, oneClass, to);
        }
      }
    }
  }

  private touched(gen: number, cls: string, ref: string): void {
    this.log.push({ gen, cls, ref });
    if (this.log.length > this.logLimit) {
      const cut = this.log.length - Math.floor(this.logLimit / 2);
      this.logStart = this.log[cut - 1]!.gen;
      this.log = this.log.slice(cut);
    }
    const lower = cls.toLowerCase();
    this.changedKeys.add(lower);
    this.changedKeys.add(`${lower}/${ref}`);
    if (!this.notifyScheduled) {
      this.notifyScheduled = true;
      queueMicrotask(() => this.notify());
    }
  }

  /** Marks a row dirty before its first change in this batch, keeping what it was. */
  private remember(cls: string, ref: string, e: Entry | undefined): void {
    if (!this.store) return;
    const key = cls + '\u0000' + ref;
    if (this.dirty.has(key)) return;
    this.dirty.set(key, { cls, ref, before: e ? { row: e.row, created: e.created, modified: e.modified } : null });
    this.scheduleFlush();
  }

  private assertWritable(): void {
    if (this.unwritable) throw this.unwritable;
  }

  // ---- durability -----------------------------------------------------------------------------

  /**
   * Resolves once every write made before the call is durable. With `since` (an epoch() read
   * when a call began), fails if any flush failed since then: the call's earlier writes may have
   * been rolled back, so it must not be acknowledged.
   */
  commit(since?: number): Promise<void> {
    if (since !== undefined && since !== this.failures) return Promise.reject(this.lastFailure);
    if (!this.store) return Promise.resolve();
    // Written already, maybe not yet synced: the last flush's sync covers every earlier one.
    if (this.dirty.size === 0 && !this.flushScheduled) return this.unsynced ?? Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Counts failed flushes; pass it to commit() to learn whether one happened meanwhile. */
  epoch(): number {
    return this.failures;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    const waiters = this.waiters;
    this.waiters = [];
    const dirty = this.dirty;
    const batch: Batch = { upserts: [], deletes: [], tombstones: this.pendingTombstones, generation: this.gen };
    if (this.pendingReplies.length > 0) batch.replies = this.pendingReplies;
    for (const { cls, ref } of dirty.values()) {
      const e = this.tables.get(cls)!.get(ref);
      if (e) batch.upserts.push({ cls, ref, created: e.created, modified: e.modified, data: JSON.stringify(e.row) });
      else batch.deletes.push({ cls, ref });
    }
    this.dirty = new Map();
    this.pendingTombstones = [];
    this.pendingReplies = [];
    try {
      this.store!.writeBatch(batch);
    } catch (e) {
      this.rollBack(dirty, batch.tombstones);
      this.refuseWrites(e);
      for (const w of waiters) w.reject(this.unwritable);
      return;
    }
    // Acknowledged once on disk; the fsync runs off the event loop (store.sync), which meanwhile
    // serves other calls and writes the next batch. A failed fsync fails the batch's calls and
    // refuses writes as a failed write does, but cannot take the batch back out of SQLite.
    const synced = this.store!.sync().then(
      () => {
        for (const w of waiters) w.resolve();
      },
      (e: unknown) => {
        this.refuseWrites(e);
        for (const w of waiters) w.reject(this.unwritable);
        throw this.unwritable;
      },
    );
    this.unsynced = synced;
    synced.then(
      () => {
        if (this.unsynced === synced) this.unsynced = undefined;
      },
      () => undefined,
    );
    if (batch.tombstones.length && this.tombstoneOrder.length % 1000 < batch.tombstones.length) {
      try {
        this.store!.trimTombstones(TOMBSTONE_LIMIT);
      } catch {
        // only housekeeping: the next trim catches up
      }
    }
  }

  /**
   * Puts the rows of a batch that could not be written back as they were before it, so memory
   * shows only what is stored. Each restored row gets a new generation (and a row that had been
   * created a tombstone), so event watchers that saw the change see it undone.
   */
  private rollBack(dirty: Map<string, Dirty>, tombstones: Tombstone[]): void {
    const gen = ++this.gen;
    const undone = new Set(tombstones);
    for (const { cls, ref, before } of dirty.values()) {
      const table = this.tables.get(cls)!;
      const uuids = this.uuidIndex.get(cls)!;
      const now = table.get(ref);
      if (!before && !now) continue; // made and destroyed in the batch: its tombstone stays true
      if (now && typeof now.row.uuid === 'string' && uuids.get(now.row.uuid) === ref) uuids.delete(now.row.uuid);
      if (before) {
        table.set(ref, { row: before.row, created: before.created, modified: gen });
        if (typeof before.row.uuid === 'string') uuids.set(before.row.uuid, ref);
        const t = this.tombstones.get(ref);
        if (t && undone.has(t)) this.tombstones.delete(ref);
      } else {
        table.delete(ref);
        const t: Tombstone = { cls, ref, created: now!.created, deleted: gen };
        this.tombstones.set(ref, t);
        this.tombstoneOrder.push(t);
        this.changedKeys.add(`deleted/${ref}`);
      }
      this.touched(gen, cls, ref);
    }
  }

  /** After a failed flush: refuse writes with a clear error until a probe write succeeds. */
  private refuseWrites(cause: unknown): void {
    this.failures++;
    const code = (cause as { code?: unknown })?.code;
    this.unwritable =
      code === 'SQLITE_FULL' || code === 'ENOSPC'
        ? new WriteRefused('OUT_OF_SPACE', [this.store!.dir])
        : new WriteRefused('INTERNAL_ERROR', [`database write failed: ${String(cause)}`]);
    this.lastFailure = this.unwritable;
    if (this.probeTimer) return;
    this.onWritable(false, cause);
    this.probeTimer = setTimeout(() => this.probe(), this.probeIntervalMs).unref();
  }

  private probe(): void {
    const retry = () => {
      this.probeTimer = setTimeout(() => this.probe(), this.probeIntervalMs).unref();
    };
    try {
      this.store!.writeBatch({ upserts: [], deletes: [], tombstones: [], generation: this.gen });
    } catch {
      retry();
      return;
    }
    this.store!.sync().then(() => {
      this.probeTimer = undefined;
      this.unwritable = undefined;
      this.onWritable(true);
    }, retry);
  }

  // ---- replies to members' writes (remote-serve.ts) --------------------------------------------

  /**
   * Stores a reply in the same transaction as the writes made before it and not yet flushed (the
   * writes it answers): both are durable, or neither (a failed flush drops it with them).
   */
  recordReply(reply: StoredReply): void {
    if (!this.store) return;
    this.pendingReplies.push(reply);
    this.scheduleFlush();
  }

  /** The newest `limit` stored replies, oldest first (none without a store). */
  storedReplies(limit: number): StoredReply[] {
    return this.store?.loadReplies(limit) ?? [];
  }

  /** Drops stored replies older than `notBefore` and all but the newest `keep` (housekeeping: a failure waits for the next). */
  pruneReplies(notBefore: number, keep: number): void {
    if (this.unwritable) return;
    try {
      this.store?.pruneReplies(notBefore, keep);
    } catch {
      // the next prune catches up
    }
  }

  // ---- changes, for events --------------------------------------------------------------------

  generation(): number {
    return this.gen;
  }

  retainedSince(): number {
    return this.logStart;
  }

  /**
   * What changed after generation `since` in the classes accepted by `wanted`, coalesced to one
   * entry per object as xapi's event.from does: created after the token -> add; existing before
   * and still there -> mod; existed at the token and gone -> del.
   */
  changesSince(since: number, wanted: (lowerCls: string, ref: string) => boolean): ChangeSet {
    const seen = new Map<string, string>(); // ref -> cls
    if (since >= this.logStart) {
      let lo = 0;
      let hi = this.log.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (this.log[mid]!.gen <= since) lo = mid + 1;
        else hi = mid;
      }
      for (let i = lo; i < this.log.length; i++) {
        const l = this.log[i]!;
        if (!seen.has(l.ref) && wanted(l.cls.toLowerCase(), l.ref)) seen.set(l.ref, l.cls);
      }
    } else {
      for (const [cls, table] of this.tables) {
        for (const [ref, e] of table) if (e.modified > since && wanted(cls.toLowerCase(), ref)) seen.set(ref, cls);
      }
      for (const t of this.tombstones.values()) if (t.deleted > since && wanted(t.cls.toLowerCase(), t.ref)) seen.set(t.ref, t.cls);
    }
    const out: ChangeSet = { adds: [], mods: [], dels: [], lastGen: since };
    for (const [ref, cls] of seen) {
      const e = this.tables.get(cls)!.get(ref);
      if (e) {
        if (e.modified > out.lastGen) out.lastGen = e.modified;
        (e.created > since ? out.adds : out.mods).push({ cls, ref, gen: e.modified, row: e.row });
      } else {
        const t = this.tombstones.get(ref);
        if (!t) continue;
        if (t.deleted > out.lastGen) out.lastGen = t.deleted;
        if (t.created <= since) out.dels.push({ cls, ref, gen: t.deleted });
      }
    }
    return out;
  }

  /** Bumps an object's generation so a `mod` event appears (event.inject). */
  async touch(cls: string, ref: string): Promise<number> {
    this.assertWritable();
    const e = this.table(cls).get(ref);
    if (!e) throw handleInvalid(cls, ref);
    this.remember(cls, ref, e);
    const gen = ++this.gen;
    e.modified = gen;
    this.touched(gen, cls, ref);
    return gen;
  }

  /**
   * Resolves on the next change matching one of `keys` — a lower-case class (`vm`), one object
   * (`vm/<ref>`), or an object's deletion (`deleted/<ref>`); null = any change — or after
   * `timeoutMs`. Watchers are indexed by key, so a write wakes only those it concerns and idle
   * watchers cost a map entry and a timer, nothing per write.
   */
  waitForChange(wanted: Set<string> | null, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const keys = wanted === null ? [ALL] : [...wanted];
      const wake = () => {
        clearTimeout(timer);
        for (const k of keys) this.watchers.get(k)?.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, Math.max(0, Math.min(timeoutMs, 2 ** 31 - 1)));
      for (const k of keys) {
        let set = this.watchers.get(k);
        if (!set) {
          set = new Set();
          this.watchers.set(k, set);
        }
        set.add(wake);
      }
    });
  }

  private notify(): void {
    this.notifyScheduled = false;
    const woken = new Set<() => void>();
    for (const c of [...this.changedKeys, ALL]) for (const w of this.watchers.get(c) ?? []) woken.add(w);
    this.changedKeys = new Set();
    for (const w of woken) w();
  }

  /**
   * A consistent image of the stored database (an SQLite file), once every write made before the
   * call is durable: the pool backup a member downloads (GET /pool/xmldbdump).
   */
  async backupImage(): Promise<Buffer> {
    if (!this.store) throw new XapiError('INTERNAL_ERROR', ['this database has no store to back up']);
    await this.commit();
    return this.store.serialize();
  }

  /** Gives back what the store caches (an idle host's memory); the tables stay. */
  releaseMemory(): void {
    this.store?.releaseMemory();
  }

  close(): void {
    clearTimeout(this.probeTimer);
    if (this.flushScheduled) this.flush();
    this.store?.close();
  }
}

function withMember(m: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  const next = { ...m };
  if (key === '__proto__') Object.defineProperty(next, key, { value, enumerable: true, writable: true, configurable: true });
  else next[key] = value;
  return next;
}

/** A field's value when the datamodel gives no default: xapi's zero, or an enum's first value. */
export function typeZero(schema: Schema, t: Type): unknown {
  if (t.k === 'enum') return schema.enums[t.name]?.[0] ?? '';
  return zeroValue(t);
}
