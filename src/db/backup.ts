// A pool member's copy of the coordinator's database (pool.md §2.3): the coordinator serves a
// consistent image of its SQLite store at GET /pool/xmldbdump (pool secret); the member downloads
// it and keeps it as its own <state-dir>/xapi.db, which is what it starts from if it ever becomes
// the coordinator (pool.emergency_transition_to_master).
//
// The file is replaced atomically: the image is checked (it opens, passes SQLite's quick_check,
// and has a store format this build reads), written to a temporary file and fsynced, then renamed
// over xapi.db. An SQLite database in WAL mode is three files: a stale xapi.db-wal left beside
// the new file would be replayed into it on open, so the old database is checkpointed (its WAL
// folded in and removed) before the rename. Nothing may hold xapi.db open as a live database
// meanwhile: a member never opens it, a host joining a pool must close its database first.
import https from 'node:https';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { XapiError } from '../rpc/errors.js';
import { writeFileAtomic } from '../util/files.js';
import { faultPoint } from '../util/fault-point.js';
import { STORE_FORMAT } from './store.js';
import { DB_SCHEMA_VERSION } from '../schema/schema.js';

export const BACKUP_PATH = '/pool/xmldbdump';
export const DB_FILE = 'xapi.db';
/** A download that sends nothing for this long is abandoned. */
export const BACKUP_IDLE_TIMEOUT_MS = 60_000;

export interface FetchBackupOptions {
  /** The coordinator's address and HTTPS port. */
  address: string;
  port: number;
  poolSecret: string;
  /** The member's state directory: the image becomes <stateDir>/xapi.db. */
  stateDir: string;
  idleTimeoutMs?: number;
}

/** Downloads the coordinator's database image and installs it as this host's xapi.db. */
export async function fetchBackup(opts: FetchBackupOptions): Promise<{ generation: number; bytes: number }> {
  const image = await download(opts);
  const generation = checkImage(image);
  faultPoint('backup.downloaded');
  await installImage(join(opts.stateDir, DB_FILE), image);
  return { generation, bytes: image.length };
}

/** The generation of the database in <stateDir>/xapi.db, or undefined if there is none. */
export function storedGeneration(stateDir: string): number | undefined {
  let db: Database.Database;
  try {
    db = new Database(join(stateDir, DB_FILE), { fileMustExist: true });
  } catch {
    return undefined;
  }
  try {
    const r = db.prepare("SELECT value FROM meta WHERE key = 'generation'").get() as { value: string } | undefined;
    return r === undefined ? undefined : Number(r.value);
  } catch {
    return undefined;
  } finally {
    db.close();
  }
}

function download(opts: FetchBackupOptions): Promise<Buffer> {
  const idle = opts.idleTimeoutMs ?? BACKUP_IDLE_TIMEOUT_MS;
  const where = `https://${opts.address}:${opts.port}${BACKUP_PATH}`;
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: opts.address,
      port: opts.port,
      method: 'GET',
      path: BACKUP_PATH,
      rejectUnauthorized: false, // host-to-host TLS is not verified (xapi's default)
      headers: { cookie: `pool_secret=${opts.poolSecret}` },
      timeout: idle,
    });
    const fail = (e: unknown) => reject(new XapiError('INTERNAL_ERROR', [`database backup from ${where} failed: ${(e as Error).message}`]));
    req.on('timeout', () => req.destroy(new Error(`nothing received for ${idle} ms`)));
    req.on('error', fail);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', fail);
      res.on('close', () => {
        if (!res.complete) fail(new Error('the download was cut short'));
      });
      res.on('end', () => {
        if (res.statusCode !== 200) {
          const text = Buffer.concat(chunks)
            .toString('utf8')
            .replace(/<[^>]*>/g, ' ')
            .trim();
          fail(new Error(`HTTP ${res.statusCode} ${text}`));
        } else resolve(Buffer.concat(chunks));
      });
    });
    req.end();
  });
}

/**
 * What a coordinator serves instead of its database during a rolling upgrade (xapi sends the
 * oldest release's minimal database then): an empty store of no format, which every member
 * refuses (RESTORE_INCOMPATIBLE_VERSION) and so keeps the copy it has, one its own release wrote.
 */
export function minimalImage(): Buffer {
  const db = new Database(':memory:');
  try {
    db.exec('CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
    return db.serialize();
  } finally {
    db.close();
  }
}

/** Checks an image before it replaces anything; returns its generation. */
export function checkImage(image: Buffer): number {
  let db: Database.Database;
  try {
    // SQLite cannot open an in-memory copy of a WAL-mode file: the check reads a copy whose
    // header says rollback journal (bytes 18-19, the file format versions: 2 = WAL, 1 = legacy).
    const copy = Buffer.from(image);
    if (copy.length >= 20 && copy[18] === 2 && copy[19] === 2) copy.fill(1, 18, 20);
    db = new Database(copy);
  } catch (e) {
    throw new XapiError('INTERNAL_ERROR', [`the database backup is not an SQLite database: ${(e as Error).message}`]);
  }
  try {
    const check = db.pragma('quick_check', { simple: true });
    if (check !== 'ok') throw new XapiError('INTERNAL_ERROR', [`the database backup is damaged: ${String(check)}`]);
    const meta = (key: string) => (db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
    // xapi's schema check on a backup: a store this build cannot read is refused.
    // A member keeps only an image it can start from as it is: this store format and datamodel.
    if (meta('store_format') !== String(STORE_FORMAT) || meta('db_schema') !== DB_SCHEMA_VERSION)
      throw new XapiError('RESTORE_INCOMPATIBLE_VERSION', []);
    return Number(meta('generation') ?? 0);
  } catch (e) {
    if (e instanceof XapiError) throw e;
    throw new XapiError('INTERNAL_ERROR', [`the database backup is damaged: ${(e as Error).message}`]);
  } finally {
    db.close();
  }
}

/** Writes the image as `path`, atomically, with no stale WAL beside it. */
export async function installImage(path: string, image: Buffer): Promise<void> {
  await writeFileAtomic(path, image, 0o600, async () => {
    faultPoint('backup.written');
    await foldWal(path);
    faultPoint('backup.folded');
  });
}

/** Folds the old database's WAL into it (closing the last connection does) and removes the rest. */
async function foldWal(path: string): Promise<void> {
  if (await exists(`${path}-wal`)) {
    try {
      const old = new Database(path, { fileMustExist: true });
      old.pragma('wal_checkpoint(TRUNCATE)');
      old.close();
    } catch {
      // An unreadable old database is replaced anyway; its WAL must not outlive it.
    }
  }
  await rm(`${path}-wal`, { force: true });
  await rm(`${path}-shm`, { force: true });
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
