// LocalDb on a real SQLite file: writes are durable after commit, relations are kept, the
// generation counter and tombstones survive a reopen, older files are upgraded and newer refused.
// The behaviour every Db must have runs twice: on a LocalDb, and on a pool member's RemoteDb
// talking over HTTPS to a LocalDb served as a coordinator serves it (remote-db-fixture.ts); the
// change log and row identities are read on the LocalDb underneath, as only it keeps them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { schema } from '../../src/schema/schema.js';
import { LocalDb } from '../../src/db/database.js';
import { SqliteStore, StoreFormatError } from '../../src/db/store.js';
import { XapiError } from '../../src/rpc/errors.js';
import { Marshal } from '../../src/api/marshal.js';
import { parseType } from '../../src/schema/types.js';
import { waitUntil } from '../wait.js';
import { fillable, openLocal, openRemote, type DbFixture } from './remote-db-fixture.js';

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-db-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const open = (dir: string) => new LocalDb(schema(), new SqliteStore(join(dir, 'xapi.db')));

const kinds: [string, (dir: string) => Promise<DbFixture>][] = [
  ['LocalDb', (dir) => openLocal(dir)],
  ['RemoteDb', (dir) => openRemote(dir)],
];

for (const [kind, openDb] of kinds) {
  test(`${kind}: committed writes are read back after reopening, with defaults filled`, () =>
    withDir(async (dir) => {
      const fx = await openDb(dir);
      const db = fx.db;
      await db.create('network', 'OpaqueRef:n1', { uuid: 'u1', name_label: 'one' });
      await db.create('VIF', 'OpaqueRef:v1', { uuid: 'u2', network: 'OpaqueRef:n1', device: '0' });
      await db.mapAdd('network', 'OpaqueRef:n1', 'other_config', 'k', 'v');
      await db.create('network', 'OpaqueRef:n2', { uuid: 'u3' });
      await db.destroy('network', 'OpaqueRef:n2');
      await db.commit();
      const gen = fx.local.generation();
      await fx.close();

      const fx2 = await openDb(dir);
      const again = fx2.db;
      const n1 = await again.get('network', 'OpaqueRef:n1');
      assert.equal(n1.name_label, 'one');
      assert.deepEqual(n1.other_config, { k: 'v' });
      assert.deepEqual(n1.VIFs, ['OpaqueRef:v1']);
      assert.equal(n1.MTU, 1500); // datamodel default
      assert.ok(Object.isFrozen(n1));
      assert.equal(await again.tryGet('network', 'OpaqueRef:n2'), undefined);
      assert.equal(await again.refByUuid('network', 'u1'), 'OpaqueRef:n1');
      assert.equal(await again.refByUuid('network', 'u3'), undefined);
      assert.deepEqual(
        (await again.all('network')).map(([ref, row]) => [ref, row.uuid]),
        [['OpaqueRef:n1', 'u1']],
      );
      assert.deepEqual(
        (await again.find('VIF', { network: 'OpaqueRef:n1', device: '0' })).map(([ref]) => ref),
        ['OpaqueRef:v1'],
      );
      assert.deepEqual(await again.find('VIF', { device: '1' }), []);
      assert.equal(await again.count('VIF'), 1);
      assert.equal(fx2.local.generation(), gen);
      // the deletion is still reported to a token from before it
      const changes = fx2.local.changesSince(gen - 1, () => true);
      assert.deepEqual(
        changes.dels.map((d) => d.ref),
        ['OpaqueRef:n2'],
      );
      // touch bumps the row's generation and says which
      const touched = await again.touch('network', 'OpaqueRef:n1');
      assert.equal(touched, gen + 1);
      assert.equal(fx2.local.generation(), gen + 1);
      await fx2.close();
    }));

  test(`${kind}: one-to-many sets follow the ref on the many side`, () =>
    withDir(async (dir) => {
      const fx = await openDb(dir);
      const db = fx.db;
      await db.create('network', 'OpaqueRef:a', { uuid: 'a' });
      await db.create('network', 'OpaqueRef:b', { uuid: 'b' });
      await db.create('VIF', 'OpaqueRef:v', { uuid: 'v', network: 'OpaqueRef:a' });
      assert.deepEqual((await db.get('network', 'OpaqueRef:a')).VIFs, ['OpaqueRef:v']);
      await db.update('VIF', 'OpaqueRef:v', { network: 'OpaqueRef:b' });
      assert.deepEqual((await db.get('network', 'OpaqueRef:a')).VIFs, []);
      assert.deepEqual((await db.get('network', 'OpaqueRef:b')).VIFs, ['OpaqueRef:v']);
      await db.destroy('VIF', 'OpaqueRef:v');
      assert.deepEqual((await db.get('network', 'OpaqueRef:b')).VIFs, []);
      await fx.close();
    }));

  test(`${kind}: MAP_DUPLICATE_KEY, uuid uniqueness, HANDLE_INVALID, set and map edits`, () =>
    withDir(async (dir) => {
      const fx = await openDb(dir);
      const db = fx.db;
      await db.create('network', 'OpaqueRef:n', { uuid: 'same' });
      await assert.rejects(
        db
          .mapAdd('network', 'OpaqueRef:n', 'other_config', 'k', 'v')
          .then(() => db.mapAdd('network', 'OpaqueRef:n', 'other_config', 'k', 'v')),
        (e: { code: string; params: string[] }) =>
          e instanceof XapiError && e.code === 'MAP_DUPLICATE_KEY' && e.params.join() === 'network,other_config,OpaqueRef:n,k',
      );
      await assert.rejects(
        db.create('network', 'OpaqueRef:m', { uuid: 'same' }),
        (e: XapiError) =>
          e instanceof XapiError && e.code === 'DB_UNIQUENESS_CONSTRAINT_VIOLATION' && e.params.join() === 'network,uuid,same',
      );
      await assert.rejects(
        db.get('network', 'OpaqueRef:nope'),
        (e: XapiError) => e instanceof XapiError && e.code === 'HANDLE_INVALID' && e.params.join() === 'network,OpaqueRef:nope',
      );
      await assert.rejects(db.update('network', 'OpaqueRef:nope', { name_label: 'x' }), (e: XapiError) => e.code === 'HANDLE_INVALID');
      await assert.rejects(db.destroy('network', 'OpaqueRef:nope'), (e: XapiError) => e.code === 'HANDLE_INVALID');
      await db.mapRemove('network', 'OpaqueRef:n', 'other_config', 'k');
      await db.mapRemove('network', 'OpaqueRef:n', 'other_config', 'absent');
      await db.setAdd('network', 'OpaqueRef:n', 'tags', 't1');
      await db.setAdd('network', 'OpaqueRef:n', 'tags', 't1');
      await db.setAdd('network', 'OpaqueRef:n', 'tags', 't2');
      await db.setRemove('network', 'OpaqueRef:n', 'tags', 't1');
      const n = await db.get('network', 'OpaqueRef:n');
      assert.deepEqual(n.other_config, {});
      assert.deepEqual(n.tags, ['t2']);
      await fx.close();
    }));
}

test('rows from an older datamodel are upgraded; a newer store format is refused', () =>
  withDir(async (dir) => {
    const db = open(dir);
    await db.create('network', 'OpaqueRef:n', { uuid: 'n', name_label: 'x' });
    await db.commit();
    db.close();
    // Simulate a file written before some fields existed, and before a class existed.
    const raw = new Database(join(dir, 'xapi.db'));
    raw.prepare(`UPDATE "t_network" SET data = ? WHERE ref = ?`).run(JSON.stringify({ uuid: 'n', name_label: 'x' }), 'OpaqueRef:n');
    raw.exec('DROP TABLE "t_Observer"');
    raw.close();
    const upgraded = open(dir);
    const n = await upgraded.get('network', 'OpaqueRef:n');
    assert.equal(n.MTU, 1500);
    assert.deepEqual(n.other_config, {});
    assert.deepEqual(await upgraded.all('Observer'), []);
    upgraded.close();

    const raw2 = new Database(join(dir, 'xapi.db'));
    raw2.prepare("UPDATE meta SET value = '99' WHERE key = 'store_format'").run();
    raw2.close();
    assert.throws(() => open(dir), StoreFormatError);
  }));

test('a failed flush undoes its batch in memory, refuses writes until the store takes them again, and loses nothing acknowledged', () =>
  withDir(async (dir) => {
    const { store, state } = fillable(dir);
    const db = new LocalDb(schema(), store, { probeIntervalMs: 10 });
    await db.create('network', 'OpaqueRef:n1', { uuid: 'u1', name_label: 'kept' });
    await db.create('VIF', 'OpaqueRef:v1', { uuid: 'v1', network: 'OpaqueRef:n1', device: '0' });
    await db.create('network', 'OpaqueRef:gone', { uuid: 'ug' });
    await db.commit();
    const epoch = db.epoch();
    const token = db.generation();
    // the marshaller keeps the text of a row in the row's own slot
    const marshal = new Marshal(db.schema);
    const record = parseType('network record');
    const keptRow = await db.get('network', 'OpaqueRef:n1');
    const keptText = marshal.xml(record, keptRow);

    state.full = true;
    // one batch: an update, a create that joins a one-to-many set, a create + destroy, a destroy
    await db.update('network', 'OpaqueRef:n1', { name_label: 'changed' });
    const undoneText = marshal.xml(record, await db.get('network', 'OpaqueRef:n1')); // kept too
    await db.create('VIF', 'OpaqueRef:v2', { uuid: 'v2', network: 'OpaqueRef:n1', device: '1' });
    await db.create('network', 'OpaqueRef:brief', { uuid: 'ub' });
    await db.destroy('network', 'OpaqueRef:brief');
    await db.destroy('network', 'OpaqueRef:gone');
    const seenBefore = db.changesSince(token, () => true);
    assert.ok(seenBefore.adds.some((a) => a.ref === 'OpaqueRef:v2'));
    await assert.rejects(db.commit(), (e: XapiError) => e.code === 'OUT_OF_SPACE' && e.params[0] === dir);

    // memory is back to what is stored: the very row object of before, whose kept text is its own
    assert.equal(await db.get('network', 'OpaqueRef:n1'), keptRow);
    assert.ok(Object.isFrozen(keptRow));
    assert.notEqual(undoneText, keptText);
    assert.equal(marshal.xml(record, await db.get('network', 'OpaqueRef:n1')), keptText);
    assert.equal((await db.get('network', 'OpaqueRef:n1')).name_label, 'kept');
    assert.deepEqual((await db.get('network', 'OpaqueRef:n1')).VIFs, ['OpaqueRef:v1']);
    assert.equal(await db.tryGet('VIF', 'OpaqueRef:v2'), undefined);
    assert.equal(await db.refByUuid('VIF', 'v2'), undefined);
    assert.equal(await db.tryGet('network', 'OpaqueRef:brief'), undefined);
    assert.equal((await db.get('network', 'OpaqueRef:gone')).uuid, 'ug');
    assert.equal(await db.refByUuid('network', 'ug'), 'OpaqueRef:gone');
    // a watcher that saw the undone changes sees them undone: the VIF goes, the rest is modified back
    const after = db.changesSince(seenBefore.lastGen, () => true);
    assert.deepEqual(
      after.dels.map((d) => d.ref),
      ['OpaqueRef:v2'],
    );
    assert.deepEqual(after.mods.map((m) => m.ref).sort(), ['OpaqueRef:gone', 'OpaqueRef:n1']);

    // writes are refused, with the same error, without touching memory
    await assert.rejects(db.update('network', 'OpaqueRef:n1', { name_label: 'again' }), (e: XapiError) => e.code === 'OUT_OF_SPACE');
    assert.equal((await db.get('network', 'OpaqueRef:n1')).name_label, 'kept');
    // a call that began before the failure is not acknowledged, even once writes work again
    await assert.rejects(db.commit(epoch), (e: XapiError) => e.code === 'OUT_OF_SPACE');

    state.full = false;
    await waitUntil(
      'the store to take writes again',
      async () => {
        try {
          await db.update('network', 'OpaqueRef:n1', { name_label: 'later' });
          return true;
        } catch (e) {
          assert.equal((e as XapiError).code, 'OUT_OF_SPACE');
          return false;
        }
      },
      { intervalMs: 5 },
    );
    await db.commit(db.epoch());
    await assert.rejects(db.commit(epoch));
    db.close();

    const again = open(dir);
    assert.equal((await again.get('network', 'OpaqueRef:n1')).name_label, 'later');
    assert.deepEqual((await again.get('network', 'OpaqueRef:n1')).VIFs, ['OpaqueRef:v1']);
    assert.equal(await again.tryGet('VIF', 'OpaqueRef:v2'), undefined);
    assert.ok(await again.tryGet('network', 'OpaqueRef:gone'));
    assert.equal(await again.tryGet('network', 'OpaqueRef:brief'), undefined);
    again.close();
  }));

test('a commit is acknowledged only once its batch is synced (off the event loop); a failed sync fails it and refuses writes', () =>
  withDir(async (dir) => {
    const store = new SqliteStore(join(dir, 'xapi.db'));
    // The store's syncs, held until the test lets each go (or fail).
    const held: { resolve: () => void; reject: (e: Error) => void }[] = [];
    const realSync = store.sync.bind(store);
    store.sync = () =>
      new Promise<void>((resolve, reject) => {
        held.push({ resolve: () => realSync().then(resolve, reject), reject });
      });
    const db = new LocalDb(schema(), store, { probeIntervalMs: 10 });
    await db.create('network', 'OpaqueRef:n1', { uuid: 'u1', name_label: 'one' });
    let acked = false;
    const first = db.commit().then(() => (acked = true));
    await waitUntil('the batch written and its sync asked', () => held.length === 1, { intervalMs: 1 });
    // written (another connection reads it), not acknowledged; the event loop serves meanwhile
    const other = new Database(join(dir, 'xapi.db'), { readonly: true });
    assert.equal((other.prepare('SELECT COUNT(*) AS n FROM t_network').get() as { n: number }).n, 1);
    other.close();
    await new Promise((r) => setImmediate(r));
    assert.equal(acked, false);
    // a commit asked now, with nothing left to write, waits for the same sync
    let alsoAcked = false;
    const second = db.commit().then(() => (alsoAcked = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(alsoAcked, false);
    held[0]!.resolve();
    await Promise.all([first, second]);

    // a sync that fails: the commit fails, writes are refused until a probe is written and synced
    await db.update('network', 'OpaqueRef:n1', { name_label: 'two' });
    const failing = db.commit();
    await waitUntil('the second sync asked', () => held.length === 2, { intervalMs: 1 });
    held[1]!.reject(Object.assign(new Error('I/O error'), { code: 'EIO' }));
    await assert.rejects(failing, (e: XapiError) => e.code === 'INTERNAL_ERROR' && /I\/O error/.test(e.params[0]!));
    await assert.rejects(db.update('network', 'OpaqueRef:n1', { name_label: 'three' }), (e: XapiError) => e.code === 'INTERNAL_ERROR');
    await waitUntil('the probe synced', () => held.length === 3, { intervalMs: 1 });
    held[2]!.resolve();
    await waitUntil(
      'writes taken again',
      () =>
        db.update('network', 'OpaqueRef:n1', { name_label: 'four' }).then(
          () => true,
          () => false,
        ),
      { intervalMs: 5 },
    );
    const last = db.commit();
    await waitUntil('the last sync asked', () => held.length === 4, { intervalMs: 1 });
    held[3]!.resolve();
    await last;
    db.close();
    const again = open(dir);
    assert.equal((await again.get('network', 'OpaqueRef:n1')).name_label, 'four');
    again.close();
  }));

test('the store shares its fdatasyncs: callers while one runs wait for the next, which covers their batches', () =>
  withDir(async (dir) => {
    const store = new SqliteStore(join(dir, 'xapi.db'));
    store.ensureTable('network');
    const batch = (n: number) => ({
      upserts: [{ cls: 'network', ref: `OpaqueRef:${n}`, created: n, modified: n, data: '{}' }],
      deletes: [],
      tombstones: [],
      generation: n,
    });
    store.writeBatch(batch(1));
    const a = store.sync();
    store.writeBatch(batch(2));
    const b = store.sync();
    store.writeBatch(batch(3));
    const c = store.sync();
    assert.notEqual(a, b); // b's batch may be after a's fdatasync began
    assert.equal(b, c); // one more covers both
    await Promise.all([a, b, c]);
    assert.notEqual(store.sync(), b); // a new one once those are done
    store.close();
  }));
