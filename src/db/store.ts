// Durable storage under the in-memory tables: SQLite in WAL mode (better-sqlite3) with
// synchronous=FULL, so a committed transaction survives kill -9 and power loss. One SQLite table
// per datamodel class, a row per object holding its JSON, plus the generation counter and the
// tombstones that event.from needs to report deletions.
import { closeSync, fdatasync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { DB_SCHEMA_VERSION } from '../schema/schema.js';

/**
 * The on-disk layout's version, in meta `store_format`. Bump it when the layout changes, with a
 * step in UPGRADES from the previous one: an older file is upgraded when it is opened, a newer
 * one refused.
 *  1: a table per class (`t_<class>`: ref, created, modified, the row's JSON), `meta`
 *     (store_format, generation), `tombstones`, `remote_replies`.
 *  2: meta also holds `db_schema`: the newest datamodel (xapi's schema major.minor) that has read
 *     the rows. Rows are read through the datamodel of whoever opens the file (fields it adds get
 *     their defaults), so a build whose datamodel is older than that must not open it.
 */
export const STORE_FORMAT = 2;

/** The datamodel every format-1 file was written with (the only one before format 2). */
const FORMAT_1_DB_SCHEMA = '5.909';

/** The step from format n - 1 to n, run in the transaction that stamps n. */
const UPGRADES: Record<number, (db: Database.Database) => void> = {
  2: (db) => db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run('db_schema', FORMAT_1_DB_SCHEMA),
};

/** Compares two datamodel versions (major.minor, numerically). */
export function compareDbSchema(a: string, b: string): number {
  const [a1 = 0, a2 = 0] = a.split('.').map(Number);
  const [b1 = 0, b2 = 0] = b.split('.').map(Number);
  return Math.sign(a1 - b1) || Math.sign(a2 - b2);
}

export interface StoredRow {
  ref: string;
  created: number;
  modified: number;
  data: string;
}

export interface Tombstone {
  cls: string;
  ref: string;
  created: number;
  deleted: number;
}

/**
 * The reply to a pool member's write request, kept with the write (remote-serve.ts): `at` is
 * when it was recorded (ms since the epoch), `reply` the reply body.
 */
export interface StoredReply {
  id: string;
  op: string;
  at: number;
  reply: string;
}

export interface Batch {
  upserts: { cls: string; ref: string; created: number; modified: number; data: string }[];
  deletes: { cls: string; ref: string }[];
  tombstones: Tombstone[];
  /** Replies to the member requests whose writes this batch holds (absent: none). */
  replies?: StoredReply[];
  generation: number;
}

export class StoreFormatError extends Error {}

const tableName = (cls: string) => `"t_${cls}"`;

export class SqliteStore {
  private readonly db: Database.Database;
  private readonly upsert = new Map<string, Database.Statement>();
  private readonly remove = new Map<string, Database.Statement>();
  private readonly writeBatchTx: (b: Batch) => void;
  private readonly deferSync: Database.Statement;
  private readonly syncEachCommit: Database.Statement;
  private readonly path: string;
  /** The WAL file, opened at the first sync(): what a batch's fdatasync is done on. */
  private walFd: number | undefined;
  /** The fdatasync running, and the one that follows it for the batches written meanwhile. */
  private syncing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  /** The directory the store lives in (where a full disk is reported). */
  readonly dir: string;

  constructor(path: string) {
    this.path = path;
    this.dir = dirname(path);
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.deferSync = this.db.prepare('PRAGMA synchronous = NORMAL');
    this.syncEachCommit = this.db.prepare('PRAGMA synchronous = FULL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, cls TEXT NOT NULL,
        ref TEXT NOT NULL, created INTEGER NOT NULL, deleted INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS remote_replies (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, op TEXT NOT NULL,
        at INTEGER NOT NULL, reply TEXT NOT NULL);`);
    const putReply = this.db.prepare('INSERT INTO remote_replies (id, op, at, reply) VALUES (?, ?, ?, ?)');
    const putTomb = this.db.prepare('INSERT INTO tombstones (cls, ref, created, deleted) VALUES (?, ?, ?, ?)');
    const putMeta = this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)');
    this.writeBatchTx = this.db.transaction((b: Batch) => {
      for (const u of b.upserts) this.upsert.get(u.cls)!.run(u.ref, u.created, u.modified, u.data);
      for (const d of b.deletes) this.remove.get(d.cls)!.run(d.ref);
      for (const t of b.tombstones) putTomb.run(t.cls, t.ref, t.created, t.deleted);
      for (const r of b.replies ?? []) putReply.run(r.id, r.op, r.at, r.reply);
      putMeta.run('generation', String(b.generation));
    });
  }

  getMeta(key: string): string | undefined {
    const r = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return r?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run(key, value);
  }

  /**
   * Checks the file's layout version and brings it up to this build's: a fresh file is stamped;
   * an older one is upgraded step by step (one transaction: a crash leaves the old format whole);
   * a newer one, or one whose rows a newer datamodel has read, is refused (an older xapi-ts must
   * never misread it). Then the file records that this datamodel has read it.
   */
  checkFormat(dbSchema: string = DB_SCHEMA_VERSION): void {
    const v = this.getMeta('store_format');
    if (v !== undefined && !/^\d+$/.test(v)) throw new StoreFormatError(`unknown store format ${JSON.stringify(v)} in the state directory`);
    const found = v === undefined ? STORE_FORMAT : Number(v);
    if (found > STORE_FORMAT) {
      throw new StoreFormatError(
        `the state directory was written by a newer xapi-ts (store format ${v}, this one reads up to ${STORE_FORMAT}); refusing to start rather than misread it`,
      );
    }
    if (found < 1) throw new StoreFormatError(`unknown store format ${JSON.stringify(v)} in the state directory`);
    this.db.transaction(() => {
      for (let n = found + 1; n <= STORE_FORMAT; n++) UPGRADES[n]!(this.db);
      const read = this.getMeta('db_schema');
      if (read !== undefined && compareDbSchema(read, dbSchema) > 0) {
        throw new StoreFormatError(
          `the state directory's database was read by a newer datamodel (${read}; this xapi-ts has ${dbSchema}); refusing to start rather than misread it`,
        );
      }
      this.setMeta('store_format', String(STORE_FORMAT));
      this.setMeta('db_schema', dbSchema);
    })();
  }

  tableExists(cls: string): boolean {
    return !!this.db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name = ?").get(`t_${cls}`);
  }

  ensureTable(cls: string): void {
    this.db.exec(
      `CREATE TABLE IF NOT EXISTS ${tableName(cls)} (ref TEXT PRIMARY KEY, created INTEGER NOT NULL, modified INTEGER NOT NULL, data TEXT NOT NULL)`,
    );
    this.upsert.set(cls, this.db.prepare(`INSERT OR REPLACE INTO ${tableName(cls)} (ref, created, modified, data) VALUES (?, ?, ?, ?)`));
    this.remove.set(cls, this.db.prepare(`DELETE FROM ${tableName(cls)} WHERE ref = ?`));
  }

  loadTable(cls: string): StoredRow[] {
    return this.db.prepare(`SELECT ref, created, modified, data FROM ${tableName(cls)}`).all() as StoredRow[];
  }

  loadTombstones(limit: number): Tombstone[] {
    return (
      this.db.prepare('SELECT cls, ref, created, deleted FROM tombstones ORDER BY seq DESC LIMIT ?').all(limit) as Tombstone[]
    ).reverse();
  }

  trimTombstones(keep: number): void {
    this.db.prepare('DELETE FROM tombstones WHERE seq <= (SELECT MAX(seq) FROM tombstones) - ?').run(keep);
  }

  /** The newest `limit` stored replies, oldest first. */
  loadReplies(limit: number): StoredReply[] {
    return (
      this.db.prepare('SELECT id, op, at, reply FROM remote_replies ORDER BY seq DESC LIMIT ?').all(limit) as StoredReply[]
    ).reverse();
  }

  /** Drops the stored replies recorded before `notBefore` and all but the newest `keep`. */
  pruneReplies(notBefore: number, keep: number): void {
    this.db.prepare('DELETE FROM remote_replies WHERE at < ? OR seq <= (SELECT MAX(seq) FROM remote_replies) - ?').run(notBefore, keep);
  }

  /**
   * One transaction: the group commit. It is written (to the WAL, in the kernel's cache: a kill -9
   * loses nothing from here) but durable only once sync() has resolved. SQLite's own fsync at
   * commit (synchronous=FULL) ran on the event loop, 4-9 ms on this disk during which the host
   * answered nothing; under synchronous=NORMAL a commit does not sync, while a checkpoint still
   * syncs the WAL before copying it into the database and the database before the WAL is reused,
   * so the file is never torn (SQLite's guarantee for NORMAL in WAL mode). Every other write of
   * this class stays synchronous=FULL.
   */
  writeBatch(b: Batch): void {
    this.deferSync.run();
    try {
      this.writeBatchTx(b);
    } finally {
      this.syncEachCommit.run();
    }
  }

  /**
   * Resolves once every batch written before the call is on disk: an fdatasync of the WAL on
   * libuv's thread pool, off the event loop. Callers while one runs share the next one (the
   * running one may have started before their batch was written), as commits share a flush.
   */
  sync(): Promise<void> {
    if (!this.syncing) {
      this.syncing = this.datasync().finally(() => {
        this.syncing = undefined;
      });
      return this.syncing;
    }
    this.queued ??= this.syncing.then(noop, noop).then(() => {
      this.queued = undefined;
      return this.sync();
    });
    return this.queued;
  }

  private datasync(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.walFd ??= this.openWal();
      fdatasync(this.walFd, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** The WAL (it exists once the store has written), its name in the directory made durable first. */
  private openWal(): number {
    const fd = openSync(`${this.path}-wal`, 'r');
    const dir = openSync(this.dir, 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return fd;
  }

  rewriteAll(cls: string, rows: StoredRow[]): void {
    this.db.transaction(() => {
      this.db.exec(`DELETE FROM ${tableName(cls)}`);
      const up = this.upsert.get(cls)!;
      for (const r of rows) up.run(r.ref, r.created, r.modified, r.data);
    })();
  }

  /**
   * The whole database as one SQLite file image, as of the last committed transaction (it reads
   * through the WAL, in one read transaction): what a pool member keeps as its backup.
   */
  serialize(): Buffer {
    const image = this.db.serialize();
    // The header still says WAL (bytes 18-19 = 2), which an image opened from memory cannot use
    // ("unable to open database file"): mark it a rollback-journal file; whoever opens it as a
    // live store switches it back to WAL.
    image[18] = 1;
    image[19] = 1;
    return image;
  }

  /**
   * Gives back SQLite's page cache (up to 2 MiB: cache_size's default), to be filled again from
   * the file as the next writes need its pages. For an idle host: its tables are in memory above
   * this store, which only writes.
   */
  releaseMemory(): void {
    if (this.db.open) this.db.pragma('shrink_memory');
  }

  close(): void {
    this.db.close(); // its last checkpoint syncs everything written (synchronous=FULL again)
    const fd = this.walFd;
    if (fd === undefined) return;
    this.walFd = undefined;
    // Not while an fdatasync uses it: the number could name another file by then.
    const last = this.queued ?? this.syncing;
    if (last) last.then(noop, noop).then(() => closeSync(fd));
    else closeSync(fd);
  }
}

const noop = () => undefined;
