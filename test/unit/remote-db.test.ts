// A pool member's database (RemoteDb) against a coordinator's (POST /remote_db_access) over real
// HTTPS on 127.0.0.1, beyond the behaviour db.test.ts runs on both: the pool secret, a member
// asked to serve, the request bound, a reply lost and the request resent, the coordinator down
// and back, durability of what is acknowledged; and the backups (GET /pool/xmldbdump).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { copyFile, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { LocalDb } from '../../src/db/database.js';
import { WriteRefused } from '../../src/db/interface.js';
import { RemoteDb, RemoteDbRefused } from '../../src/db/remote.js';
import { REMOTE_DB_REQUEST_LIMIT } from '../../src/db/remote-protocol.js';
import { RemoteDbServer } from '../../src/db/remote-serve.js';
import { checkImage, fetchBackup, storedGeneration } from '../../src/db/backup.js';
import { SqliteStore } from '../../src/db/store.js';
import type { Handler } from '../../src/http/handlers.js';
import { XapiError } from '../../src/rpc/errors.js';
import { schema } from '../../src/schema/schema.js';
import { requestBackup, startBackupLoop, syncDatabase } from '../../src/xapi/pool-backup.js';
import { waitUntil } from '../wait.js';
import { ADDRESS, SECRET, fillable, openRemote, servePoolDb } from './remote-db-fixture.js';

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-remote-db-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One HTTPS request, its status and body. */
function request(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: Buffer | string,
): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: ADDRESS, port, method, path, headers, rejectUnauthorized: false, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const jsonRequest = (op: string, args: unknown[], id = `id-${Math.random()}`) => JSON.stringify({ id, op, args });

test('the pool secret: none is 401, a wrong one 403, and a RemoteDb with a wrong one fails at once', () =>
  withDir(async (dir) => {
    const fx = await openRemote(dir);
    try {
      const body = jsonRequest('count', ['VM']);
      assert.equal((await request(fx.port, 'POST', '/remote_db_access', {}, body)).status, 401);
      assert.equal((await request(fx.port, 'POST', '/remote_db_access', { cookie: 'pool_secret=wrong' }, body)).status, 403);
      const ok = await request(fx.port, 'POST', '/remote_db_access', { cookie: `other=1; pool_secret=${SECRET}` }, body);
      assert.equal(ok.status, 200);
      assert.deepEqual(JSON.parse(ok.body.toString()), { ok: true, result: 0 });

      let retries = 0;
      const wrong = new RemoteDb(schema(), { address: ADDRESS, port: fx.port, poolSecret: () => 'wrong', onRetry: () => retries++ });
      await assert.rejects(wrong.count('VM'), (e: Error) => e instanceof RemoteDbRefused && /HTTP 403/.test(e.message));
      assert.equal(retries, 0);
      wrong.close();
      // a body that is not the protocol: 400, never applied
      assert.equal(
        (await request(fx.port, 'POST', '/remote_db_access', { cookie: `pool_secret=${SECRET}` }, '{"id":"x","op":"close","args":[]}'))
          .status,
        400,
      );
      assert.equal((await request(fx.port, 'POST', '/remote_db_access', { cookie: `pool_secret=${SECRET}` }, 'not json')).status, 400);
      assert.equal(await fx.db.count('VM'), 0);
    } finally {
      await fx.close();
    }
  }));

test('a member asked for the database answers HOST_IS_SLAVE with its coordinator', async () => {
  const member = await servePoolDb({ coordinator: false, coordinatorAddress: '127.0.0.9' });
  const db = new RemoteDb(schema(), { address: ADDRESS, port: member.port, poolSecret: () => SECRET });
  try {
    await assert.rejects(
      db.get('VM', 'OpaqueRef:x'),
      (e: XapiError) => e instanceof XapiError && e.code === 'HOST_IS_SLAVE' && e.params.join() === '127.0.0.9',
    );
    const dump = await request(member.port, 'GET', '/pool/xmldbdump', { cookie: `pool_secret=${SECRET}` });
    assert.equal(dump.status, 503);
    assert.match(dump.body.toString(), /127\.0\.0\.9/);
  } finally {
    db.close();
    await member.servers.close();
  }
});

/** A coordinator on a fresh database in `dir` that counts the requests it is sent, and a member's RemoteDb on it. */
async function countingCoordinator(dir: string) {
  const sent = { requests: 0 };
  const local = new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));
  const counting =
    (h: Handler): Handler =>
    (req, res, url) => {
      sent.requests++;
      return h(req, res, url);
    };
  const { servers, port } = await servePoolDb({ coordinator: true, db: local }, { wrap: counting });
  const db = new RemoteDb(schema(), { address: ADDRESS, port, poolSecret: () => SECRET });
  return { local, servers, port, db, sent };
}

test('a request over the bound fails at once, unsent; the coordinator answers 413 to one', () =>
  withDir(async (dir) => {
    const { local, servers, port, db, sent } = await countingCoordinator(dir);
    try {
      await db.create('network', 'OpaqueRef:n', { uuid: 'n' });
      assert.equal(sent.requests, 1);
      const big = 'x'.repeat(REMOTE_DB_REQUEST_LIMIT);
      await assert.rejects(
        db.update('network', 'OpaqueRef:n', { name_description: big }),
        (e: XapiError) => e instanceof RemoteDbRefused && e.code === 'INTERNAL_ERROR' && /too large: update on network/.test(e.params[0]!),
      );
      assert.equal(sent.requests, 1);
      const raw = await request(
        port,
        'POST',
        '/remote_db_access',
        { cookie: `pool_secret=${SECRET}` },
        jsonRequest('update', ['network', 'OpaqueRef:n', { name_description: big }]),
      );
      assert.equal(raw.status, 413);
      assert.equal((await db.get('network', 'OpaqueRef:n')).name_description, '');
      // a large value under the bound goes through
      const fits = 'y'.repeat(300 * 1024);
      await db.update('network', 'OpaqueRef:n', { name_description: fits });
      assert.equal((await db.get('network', 'OpaqueRef:n')).name_description, fits);
    } finally {
      db.close();
      await servers.close();
      local.close();
    }
  }));

test('a write whose reply is lost is resent with its id and applied once', () =>
  withDir(async (dir) => {
    const local = new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));
    const server = new RemoteDbServer(local);
    let loseNext = 0;
    let lost = 0;
    // After the handler has served the request, cut the connection instead of sending its reply.
    const losing =
      (h: Handler): Handler =>
      (req, res, url) => {
        if (loseNext > 0) {
          loseNext--;
          let cut = false;
          // (res.end calls writeHead again when no headers went out)
          res.writeHead = (() => {
            if (!cut) lost++;
            cut = true;
            res.socket?.destroy();
            return res;
          }) as unknown as typeof res.writeHead;
        }
        return h(req, res, url);
      };
    const { servers, port } = await servePoolDb({ coordinator: true, db: local, server }, { wrap: losing });
    const retries: unknown[] = [];
    const db = new RemoteDb(schema(), {
      address: ADDRESS,
      port,
      poolSecret: () => SECRET,
      retry: { initialMs: 1, maxMs: 1 },
      onRetry: (e) => retries.push(e),
    });
    try {
      await db.create('network', 'OpaqueRef:n', { uuid: 'n' });
      loseNext = 1;
      // mapAdd applied twice would fail with MAP_DUPLICATE_KEY; create twice with a duplicate ref
      await db.mapAdd('network', 'OpaqueRef:n', 'other_config', 'k', 'v');
      assert.equal(lost, 1);
      assert.equal(retries.length, 1, String(retries));
      assert.equal(server.resent, 1);
      loseNext = 1;
      await db.create('network', 'OpaqueRef:m', { uuid: 'm' });
      loseNext = 1;
      const gen = await db.touch('network', 'OpaqueRef:m');
      assert.equal(gen, local.generation());
      assert.equal(lost, 3);
      assert.equal(server.resent, 3);
      assert.deepEqual((await db.get('network', 'OpaqueRef:n')).other_config, { k: 'v' });
      assert.equal(await db.count('network'), 2);
      // a read whose reply is lost is simply run again
      loseNext = 1;
      assert.equal((await db.get('network', 'OpaqueRef:m')).uuid, 'm');
      assert.equal(lost, 4);
      assert.equal(server.resent, 3);
    } finally {
      db.close();
      await servers.close();
      local.close();
    }
  }));

test('a write resent to a coordinator that forgot its id (restarted): its own row, key or destroy counts as done', () =>
  withDir(async (dir) => {
    const local = new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));
    // Remembers no id at all: every resend is applied again, as by a coordinator restarted
    // after it made the first attempt durable and before it replied.
    const server = new RemoteDbServer(local, { replyLimit: 0 });
    let loseNext = 0;
    const losing =
      (h: Handler): Handler =>
      (req, res, url) => {
        if (loseNext > 0) {
          loseNext--;
          res.writeHead = (() => {
            res.socket?.destroy();
            return res;
          }) as unknown as typeof res.writeHead;
        }
        return h(req, res, url);
      };
    const { servers, port } = await servePoolDb({ coordinator: true, db: local, server }, { wrap: losing });
    const db = new RemoteDb(schema(), { address: ADDRESS, port, poolSecret: () => SECRET, retry: { initialMs: 1, maxMs: 1 } });
    try {
      loseNext = 1;
      await db.create('network', 'OpaqueRef:n', { uuid: 'n' });
      loseNext = 1;
      await db.mapAdd('network', 'OpaqueRef:n', 'other_config', 'k', 'v');
      assert.deepEqual((await db.get('network', 'OpaqueRef:n')).other_config, { k: 'v' });
      loseNext = 1;
      await db.destroy('network', 'OpaqueRef:n');
      assert.equal(await db.count('network'), 0);
      assert.equal(server.resent, 0);
      // A refusal that is not the first attempt's own doing is still raised.
      await db.create('network', 'OpaqueRef:m', { uuid: 'm', other_config: { k: 'theirs' } });
      loseNext = 1;
      await assert.rejects(
        db.mapAdd('network', 'OpaqueRef:m', 'other_config', 'k', 'mine'),
        (e: XapiError) => e.code === 'MAP_DUPLICATE_KEY',
      );
      await assert.rejects(db.create('network', 'OpaqueRef:m', { uuid: 'm2' }), /duplicate reference/);
    } finally {
      db.close();
      await servers.close();
      local.close();
    }
  }));

test('a remote id reused for another operation is refused; old replies are forgotten past their bound', async () => {
  const local = new LocalDb(schema(), null);
  const server = new RemoteDbServer(local, { replyLimit: 2 });
  await server.serve(jsonRequest('create', ['network', 'OpaqueRef:a', { uuid: 'a' }], 'one'));
  await assert.rejects(server.serve(jsonRequest('destroy', ['network', 'OpaqueRef:a'], 'one')), /another operation/);
  await server.serve(jsonRequest('create', ['network', 'OpaqueRef:b', { uuid: 'b' }], 'two'));
  await server.serve(jsonRequest('create', ['network', 'OpaqueRef:c', { uuid: 'c' }], 'three'));
  // "one" was pushed out: resent now, it runs again (and meets its own row)
  const again = JSON.parse(await server.serve(jsonRequest('create', ['network', 'OpaqueRef:a', { uuid: 'a' }], 'one')));
  assert.equal(again.ok, false);
  assert.equal(server.resent, 0);
});

test('replies to writes are stored with them: a coordinator reopened from its file answers a resent request with the first reply', () =>
  withDir(async (dir) => {
    const open = () => {
      const local = new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));
      return { local, server: new RemoteDbServer(local, { journal: local }) };
    };
    const create = jsonRequest('create', ['network', 'OpaqueRef:a', { uuid: 'a' }], 'create-a');
    const touch = jsonRequest('touch', ['network', 'OpaqueRef:a'], 'touch-a');
    const batch = JSON.stringify({
      id: 'batch-b',
      batch: [
        { op: 'create', args: ['network', 'OpaqueRef:b', { uuid: 'b' }] },
        { op: 'mapAdd', args: ['network', 'OpaqueRef:b', 'other_config', 'k', 'v'] },
        { op: 'destroy', args: ['network', 'OpaqueRef:missing'] },
      ],
    });
    const failed = jsonRequest('destroy', ['network', 'OpaqueRef:missing'], 'failed');
    let { local, server } = open();
    const first = [await server.serve(create), await server.serve(touch), await server.serve(batch)];
    assert.match(await server.serve(failed), /HANDLE_INVALID/);
    local.close();

    // The coordinator restarted: each resend gets the reply the first attempt got, nothing runs twice.
    ({ local, server } = open());
    try {
      assert.deepEqual([await server.serve(create), await server.serve(touch), await server.serve(batch)], first);
      assert.equal(server.resent, 3);
      assert.equal(await local.count('network'), 2);
      assert.deepEqual((await local.get('network', 'OpaqueRef:b')).other_config, { k: 'v' });
      // a request that wrote nothing was not stored: resent, it runs again
      assert.match(await server.serve(failed), /HANDLE_INVALID/);
      assert.equal(server.resent, 3);
    } finally {
      local.close();
    }
  }));

test('a write whose flush fails stores no reply; stored replies are pruned by age and count', () =>
  withDir(async (dir) => {
    const { store, state } = fillable(dir);
    let now = 1_000_000;
    let local = new LocalDb(schema(), store, { probeIntervalMs: 10 });
    let server = new RemoteDbServer(local, { journal: local, now: () => now, replyLimit: 1500, replyTtlMs: 60_000 });
    const create = jsonRequest('create', ['network', 'OpaqueRef:full', { uuid: 'full' }], 'on-a-full-disk');
    state.full = true;
    assert.equal(JSON.parse(await server.serve(create)).code, 'OUT_OF_SPACE');
    state.full = false;
    await waitUntil('writes accepted again', async () => {
      try {
        await local.create('network', 'OpaqueRef:probe', { uuid: 'probe' });
        return true;
      } catch {
        return false;
      }
    });
    await local.commit();
    assert.deepEqual(local.storedReplies(10), []);
    // 1,000 replies, then a minute later 1,000 more: the prune after the 2,000th (every 1,000
    // recorded) drops those over a minute old, then keeps the newest 1,500 at most.
    for (let i = 0; i < 2000; i++) {
      if (i === 1000) now += 60_001;
      await server.serve(jsonRequest('touch', ['network', 'OpaqueRef:probe'], `t${i}`));
    }
    const kept = local.storedReplies(5000);
    assert.equal(kept.length, 1000);
    assert.equal(kept[0]!.id, 't1000');
    local.close();
    // reopened, the replies kept are loaded (newest first within the limit)
    local = new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));
    server = new RemoteDbServer(local, { journal: local, replyLimit: 10 });
    try {
      assert.equal((await server.serve(jsonRequest('touch', ['network', 'OpaqueRef:probe'], 't1999'))).length > 0, true);
      assert.equal(server.resent, 1);
      await server.serve(jsonRequest('touch', ['network', 'OpaqueRef:probe'], 't1000'));
      assert.equal(server.resent, 1, 'older than the newest 10: not loaded, run again');
    } finally {
      local.close();
    }
  }));

test('a batch: its operations run in order, each answered on its own; one holding writes is resent once', async () => {
  const local = new LocalDb(schema(), null);
  const server = new RemoteDbServer(local);
  const batch = JSON.stringify({
    id: 'b1',
    batch: [
      { op: 'create', args: ['network', 'OpaqueRef:a', { uuid: 'a', name_label: 'A' }] },
      { op: 'get', args: ['network', 'OpaqueRef:missing'] },
      { op: 'get', args: ['network', 'OpaqueRef:a'] },
      { op: 'count', args: ['network'] },
    ],
  });
  const reply = JSON.parse(await server.serve(batch));
  assert.equal(reply.ok, true);
  assert.equal(reply.result.length, 4);
  assert.deepEqual(reply.result[0], { ok: true });
  assert.equal(reply.result[1].code, 'HANDLE_INVALID');
  assert.equal(reply.result[2].result.name_label, 'A');
  assert.deepEqual(reply.result[3], { ok: true, result: 1 });
  // resent after a lost reply: the first reply, nothing applied twice
  assert.deepEqual(JSON.parse(await server.serve(batch)), reply);
  assert.equal(server.resent, 1);
  assert.equal(await local.count('network'), 1);
  assert.throws(() => server.serve(JSON.stringify({ id: 'b2', batch: [] })), /batch must be an array of 1 to/);
  assert.throws(() => server.serve(JSON.stringify({ id: 'b3', batch: [{ op: 'close', args: [] }] })), /unknown operation/);
});

test('calls a member makes at the same moment share requests, reads apart from writes, each answered', () =>
  withDir(async (dir) => {
    const { local, servers, db, sent } = await countingCoordinator(dir);
    try {
      const refs = Array.from({ length: 20 }, (_, i) => `OpaqueRef:n${i}`);
      await Promise.all(refs.map((ref, i) => db.create('network', ref, { uuid: `n${i}`, name_label: `N${i}` })));
      assert.ok(sent.requests < 20, `20 writes in ${sent.requests} requests`);
      const before = sent.requests;
      const [rows, missing] = await Promise.all([
        Promise.all(refs.map((ref) => db.get('network', ref))),
        db.get('network', 'OpaqueRef:missing').then(
          () => undefined,
          (e: XapiError) => e.code,
        ),
      ]);
      assert.deepEqual(
        rows.map((r) => r.name_label),
        refs.map((_, i) => `N${i}`),
      );
      assert.equal(missing, 'HANDLE_INVALID');
      assert.ok(sent.requests - before < 21, `21 reads in ${sent.requests - before} requests`);
      // every acknowledged write is in the coordinator's file
      const file = new Database(join(dir, 'xapi.db'), { readonly: true });
      try {
        assert.equal((file.prepare('SELECT count(*) AS n FROM "t_network"').get() as { n: number }).n, 20);
      } finally {
        file.close();
      }
    } finally {
      db.close();
      await servers.close();
      local.close();
    }
  }));

test('the coordinator down: calls wait and retry, and complete when woken after it is back', () =>
  withDir(async (dir) => {
    const local = new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));
    let coordinator = await servePoolDb({ coordinator: true, db: local });
    const port = coordinator.port;
    let failed = 0;
    let failedOnce!: () => void;
    const firstFailure = new Promise<void>((r) => {
      failedOnce = r;
    });
    const db = new RemoteDb(schema(), {
      address: ADDRESS,
      port,
      poolSecret: () => SECRET,
      // far longer than the test: only wake() can bring the retry forward
      retry: { initialMs: 600_000, maxMs: 600_000 },
      onRetry: () => {
        failed++;
        failedOnce();
      },
    });
    try {
      await db.create('network', 'OpaqueRef:n', { uuid: 'n' });
      await coordinator.servers.close();
      const write = db.update('network', 'OpaqueRef:n', { name_label: 'while down' });
      const read = db.count('network');
      await firstFailure;
      await waitUntil('both calls to have failed once', () => failed >= 2);
      coordinator = await servePoolDb({ coordinator: true, db: local }, { httpsPort: port });
      db.wake();
      await write;
      assert.equal(await read, 1);
      assert.ok(failed >= 2, `${failed} failed attempts`);
      assert.equal((await db.get('network', 'OpaqueRef:n')).name_label, 'while down');
      await db.commit();
      // close() ends a call waiting to retry
      await coordinator.servers.close();
      const stuck = db.count('network');
      await waitUntil('the call to fail once more', () => failed >= 3);
      db.close();
      await assert.rejects(stuck, (e: Error) => e instanceof RemoteDbRefused && /closed/.test(e.message));
    } finally {
      db.close();
      await coordinator.servers.close();
      local.close();
    }
  }));

test('an acknowledged write is in the coordinator file; a refused one is a WriteRefused and undone', () =>
  withDir(async (dir) => {
    const { store, state } = fillable(dir);
    const fx = await openRemote(dir, store, { probeIntervalMs: 10 });
    try {
      await fx.db.create('network', 'OpaqueRef:n', { uuid: 'n', name_label: 'stored' });
      // another connection to the file sees it: it was committed before the reply
      const reader = new Database(join(dir, 'xapi.db'), { readonly: true });
      const row = reader.prepare('SELECT data FROM "t_network" WHERE ref = ?').get('OpaqueRef:n') as { data: string };
      reader.close();
      assert.equal(JSON.parse(row.data).name_label, 'stored');

      state.full = true;
      await assert.rejects(
        fx.db.update('network', 'OpaqueRef:n', { name_label: 'lost' }),
        (e: XapiError) => e instanceof WriteRefused && e.code === 'OUT_OF_SPACE' && e.params[0] === dir,
      );
      assert.equal((await fx.db.get('network', 'OpaqueRef:n')).name_label, 'stored');
      // a write in flight when commit() is called: commit fails with it
      const w = fx.db.update('network', 'OpaqueRef:n', { name_label: 'lost too' });
      await assert.rejects(fx.db.commit(), (e: XapiError) => e instanceof WriteRefused);
      await assert.rejects(w, (e: XapiError) => e.code === 'OUT_OF_SPACE');
      state.full = false;
      await waitUntil('writes to work again', () =>
        fx.db.update('network', 'OpaqueRef:n', { name_label: 'later' }).then(
          () => true,
          () => false,
        ),
      );
      await fx.db.commit(fx.db.epoch());
      assert.equal((await fx.db.get('network', 'OpaqueRef:n')).name_label, 'later');
    } finally {
      await fx.close();
    }
  }));

test('a member does not serve the change log: clear errors, epoch 0', () =>
  withDir(async (dir) => {
    const fx = await openRemote(dir);
    try {
      assert.equal(fx.db.epoch(), 0);
      assert.throws(() => fx.db.generation(), /not available on a pool member/);
      assert.throws(() => fx.db.retainedSince(), /not available on a pool member/);
      assert.throws(() => fx.db.changesSince(0, () => true), /not available on a pool member/);
      await assert.rejects(fx.db.waitForChange(null, 10), /not available on a pool member/);
    } finally {
      await fx.close();
    }
  }));

/** Every class's rows, the generation and the tombstones of a database file. */
async function contents(path: string) {
  const store = new SqliteStore(path);
  const db = new LocalDb(schema(), store);
  const tables: Record<string, unknown> = {};
  for (const c of schema().dbClasses()) tables[c.name] = await db.all(c.name);
  const out = { tables, generation: db.generation(), tombstones: store.loadTombstones(1000) };
  db.close();
  return out;
}

test('a backup downloaded from the coordinator restores to an identical database, replacing the old one and its WAL', () =>
  withDir(async (dir) => {
    const coordDir = join(dir, 'coordinator');
    const memberDir = join(dir, 'member');
    const oldDir = join(dir, 'old');
    for (const d of [coordDir, memberDir, oldDir]) await mkdir(d);
    const local = new LocalDb(schema(), new SqliteStore(join(coordDir, 'xapi.db')));
    const { servers, port } = await servePoolDb({ coordinator: true, db: local });
    try {
      await local.create('network', 'OpaqueRef:n1', { uuid: 'u1', name_label: 'one', other_config: { a: 'b' } });
      await local.create('VIF', 'OpaqueRef:v1', { uuid: 'v1', network: 'OpaqueRef:n1', device: '0' });
      await local.create('network', 'OpaqueRef:n2', { uuid: 'u2' });
      await local.destroy('network', 'OpaqueRef:n2');
      // not yet flushed when the dump is asked for: the dump includes it
      void local.update('network', 'OpaqueRef:n1', { name_label: 'latest' });

      // the member's old xapi.db, with a WAL holding rows the old file does not
      const old = new LocalDb(schema(), new SqliteStore(join(oldDir, 'xapi.db')));
      await old.create('network', 'OpaqueRef:stale', { uuid: 'stale' });
      await old.commit();
      await copyFile(join(oldDir, 'xapi.db'), join(memberDir, 'xapi.db'));
      await copyFile(join(oldDir, 'xapi.db-wal'), join(memberDir, 'xapi.db-wal'));
      old.close();
      assert.ok((await stat(join(memberDir, 'xapi.db-wal'))).size > 0);

      assert.equal((await request(port, 'GET', '/pool/xmldbdump', {})).status, 401);
      assert.equal((await request(port, 'GET', '/pool/xmldbdump?pool_secret=nope', {})).status, 403);
      const viaQuery = await request(port, 'GET', `/pool/xmldbdump?pool_secret=${encodeURIComponent(SECRET)}`, {});
      assert.equal(viaQuery.status, 200);
      assert.equal(checkImage(viaQuery.body), local.generation());

      const got = await fetchBackup({ address: ADDRESS, port, poolSecret: SECRET, stateDir: memberDir });
      assert.equal(got.generation, local.generation());
      await assert.rejects(stat(join(memberDir, 'xapi.db-wal')), { code: 'ENOENT' });
      await local.commit();
      const want = await contents(join(coordDir, 'xapi.db'));
      const have = await contents(join(memberDir, 'xapi.db'));
      assert.deepEqual(have, want);
      assert.equal((have.tables.network as [string, { name_label: string }][])[0]![1].name_label, 'latest');
      assert.equal(storedGeneration(memberDir), local.generation());

      // host.request_backup: a copy at the coordinator's generation is left alone unless forced
      const base = {
        host: 'OpaqueRef:h',
        localHost: 'OpaqueRef:h',
        coordinator: null,
        coordinatorAddress: ADDRESS,
        httpsPort: port,
        poolSecret: SECRET,
        stateDir: memberDir,
      };
      assert.equal(await requestBackup({ ...base, generation: local.generation(), force: false }), 'current');
      assert.equal(await requestBackup({ ...base, generation: local.generation(), force: true }), 'fetched');
      await local.update('network', 'OpaqueRef:n1', { name_label: 'newer' });
      assert.equal(await requestBackup({ ...base, generation: local.generation(), force: false }), 'fetched');
      assert.equal(storedGeneration(memberDir), local.generation());
      assert.equal(await requestBackup({ ...base, coordinator: local, generation: 0, force: false }), 'flushed');
      await assert.rejects(requestBackup({ ...base, host: 'OpaqueRef:other', generation: 0, force: true }), (e: XapiError) =>
        /wrong host/.test(e.params[0]!),
      );
      // a wrong secret: the download fails and the copy stays
      await assert.rejects(fetchBackup({ address: ADDRESS, port, poolSecret: 'wrong', stateDir: memberDir }), /HTTP 403/);
      assert.equal(storedGeneration(memberDir), local.generation());
    } finally {
      await servers.close();
      local.close();
    }
  }));

test('a backup image of another store format is refused as RESTORE_INCOMPATIBLE_VERSION; a damaged one as INTERNAL_ERROR', () => {
  const db = new Database(':memory:');
  db.exec("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('store_format', '99')");
  const image = db.serialize();
  db.close();
  assert.throws(
    () => checkImage(image),
    (e: XapiError) => e.code === 'RESTORE_INCOMPATIBLE_VERSION' && e.params.length === 0,
  );
  assert.throws(
    () => checkImage(Buffer.from('not a database at all, not at all')),
    (e: XapiError) => e.code === 'INTERNAL_ERROR',
  );
});

test('the backup loop asks each member in turn, one interval apart, and goes on past failures', async () => {
  const pushed: [string, number][] = [];
  const errors: unknown[] = [];
  let generation = 7;
  const loop = startBackupLoop({
    members: () => ['a', 'b'],
    generation: () => generation++,
    push: async (m, g) => {
      pushed.push([m, g]);
      if (m === 'b') throw new Error('b is down');
    },
    intervalMs: 1,
    onError: (m, e) => errors.push([m, (e as Error).message]),
  });
  await waitUntil('two rounds', () => pushed.length >= 4);
  await loop.stop();
  const n = pushed.length;
  assert.deepEqual(pushed.slice(0, 4), [
    ['a', 7],
    ['b', 7],
    ['a', 8],
    ['b', 8],
  ]);
  assert.deepEqual(errors[0], ['b', 'b is down']);
  assert.equal(pushed.length, n); // stopped

  // an empty pool waits a whole interval per round, and stop() ends the wait at once
  const idle = startBackupLoop({ members: () => [], generation: () => 0, push: async () => {}, intervalMs: 600_000 });
  await idle.stop();
});

test('pool.sync_database asks every host at once with force, and raises a failure after all have run', async () => {
  const asked: [string, number, boolean][] = [];
  await syncDatabase({ hosts: ['c', 'm1'], generation: 5, requestBackup: async (h, g, f) => void asked.push([h, g, f]) });
  assert.deepEqual(asked.sort(), [
    ['c', 5, true],
    ['m1', 5, true],
  ]);
  const done: string[] = [];
  await assert.rejects(
    syncDatabase({
      hosts: ['c', 'm1', 'm2'],
      generation: 6,
      requestBackup: async (h) => {
        if (h === 'm1') throw new XapiError('CANNOT_CONTACT_HOST', [h]);
        done.push(h);
      },
    }),
    (e: XapiError) => e.code === 'CANNOT_CONTACT_HOST',
  );
  assert.deepEqual(done.sort(), ['c', 'm2']);
});
