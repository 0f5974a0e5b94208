// A coordinator's database served over real HTTPS on 127.0.0.1 (the host's own HTTP servers and
// handler table) and a RemoteDb talking to it: what the database tests run against besides a bare
// LocalDb. The certificate is made once per process.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalDb } from '../../src/db/database.js';
import type { AnyDb } from '../../src/db/interface.js';
import { RemoteDb, type RemoteDbOptions } from '../../src/db/remote.js';
import type { RemoteDbServer } from '../../src/db/remote-serve.js';
import { SqliteStore } from '../../src/db/store.js';
import { HandlerTable, type Handler } from '../../src/http/handlers.js';
import { startHttpServers, type HttpServers } from '../../src/http/server.js';
import { loadOrCreateCertificate } from '../../src/http/tls.js';
import { type PoolDbRole, registerPoolDbHandlers } from '../../src/host/pool-db.js';
import { schema } from '../../src/schema/schema.js';

export const SECRET = 'aaaaaaaa-0000-0000-0000-000000000001/bbbbbbbb-0000-0000-0000-000000000002/cccccccc-0000-0000-0000-000000000003';
export const ADDRESS = '127.0.0.1';

let tls: Promise<{ key: string; cert: string }> | undefined;
export function certificate(): Promise<{ key: string; cert: string }> {
  tls ??= mkdtemp(join(tmpdir(), 'xapi-tls-')).then((dir) => loadOrCreateCertificate(dir, 'localhost'));
  return tls;
}

const quietLog = { info() {}, warn() {}, error() {} };

/** The pool-database handlers of a host (coordinator or member) on an HTTPS server of their own. */
export async function servePoolDb(
  role: PoolDbRole,
  opts: { httpsPort?: number; wrap?: (h: Handler) => Handler; secrets?: string[] } = {},
): Promise<{ servers: HttpServers; port: number; server: RemoteDbServer | undefined }> {
  const inner = new HandlerTable();
  const server = registerPoolDbHandlers(inner, { role, poolSecrets: () => opts.secrets ?? [SECRET] });
  // The same handlers, behind the test's wrapper if any (to lose a reply, count requests...).
  const table = new HandlerTable();
  for (const [method, path] of inner.routes()) {
    const h = inner.match(method, path)!;
    table.add(method, path, opts.wrap ? opts.wrap(h) : h);
  }
  const servers = await startHttpServers({
    address: ADDRESS,
    httpPort: 0,
    httpsPort: opts.httpsPort ?? 0,
    tls: await certificate(),
    table,
    log: quietLog,
  });
  return { servers, port: servers.httpsPort, server };
}

export interface DbFixture {
  /** The database under test: the LocalDb itself, or a RemoteDb in front of it. */
  db: AnyDb;
  /** The LocalDb holding the rows (the coordinator's, for a remote fixture). */
  local: LocalDb;
  close(): Promise<void>;
}

export const openLocal = async (dir: string, store = new SqliteStore(join(dir, 'xapi.db'))): Promise<DbFixture> => {
  const local = new LocalDb(schema(), store);
  return { db: local, local, close: async () => local.close() };
};

export async function openRemote(
  dir: string,
  store = new SqliteStore(join(dir, 'xapi.db')),
  localOpts: ConstructorParameters<typeof LocalDb>[2] = {},
  remoteOpts: Partial<RemoteDbOptions> = {},
): Promise<DbFixture & { remote: RemoteDb; server: RemoteDbServer; port: number }> {
  const local = new LocalDb(schema(), store, localOpts);
  const { servers, port, server } = await servePoolDb({ coordinator: true, db: local });
  const remote = new RemoteDb(schema(), { address: ADDRESS, port, poolSecret: () => SECRET, ...remoteOpts });
  return {
    db: remote,
    local,
    remote,
    server: server!,
    port,
    async close() {
      remote.close();
      await servers.close();
      local.close();
    },
  };
}

/** A store whose writes fail with SQLITE_FULL while `full` is set, as on a full disk. */
export function fillable(dir: string) {
  const store = new SqliteStore(join(dir, 'xapi.db'));
  const state = { full: false };
  const write = store.writeBatch.bind(store);
  store.writeBatch = (b) => {
    if (state.full) throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    write(b);
  };
  return { store, state };
}
