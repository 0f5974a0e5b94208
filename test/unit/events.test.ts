// event.from's batching: answers to one session are spread at least the batching delay apart,
// and a watcher that has heard nothing for that long is answered at once; and what it hands
// out is already on disk. The clock and the
// batching sleep are the test's: a window stays open until the test closes it, so what it
// gathers is checked by order of events, never by elapsed time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalDb } from '../../src/db/database.js';
import { SqliteStore } from '../../src/db/store.js';
import { typed } from '../../src/db/interface.js';
import { memoryHost } from '../../src/host/memory-host.js';
import { EventService } from '../../src/xapi/event.js';
import type { Call } from '../../src/api/context.js';
import type { RpcStruct } from '../../src/rpc/rpc.js';
import { apiClient } from './api-client.js';

const DELAY = 1000;

async function setup() {
  let clock = 1_000_000;
  const h = await memoryHost({ rootPassword: 'pw', now: () => clock });
  const session = (await apiClient(h).ok('session.login_with_password', 'root', 'pw')) as string;
  const call: Call = {
    host: h.host,
    db: h.host.db,
    wireName: 'event.from',
    session: { ref: session, row: await h.host.db.get('session', session) },
    task: 'DummyRef:|test|event.from',
    checkCancelled: async () => {},
    setProgress: async () => {},
  };
  // Batching sleeps are held until the test releases them.
  const held: { ms: number; release: () => void }[] = [];
  let onSleep = () => {};
  const events = new EventService(h.host, h.db, {
    delayMs: DELAY,
    sleep: (ms) =>
      new Promise<void>((release) => {
        held.push({ ms, release });
        onSleep();
      }),
  });
  const sleeping = (n: number) =>
    new Promise<void>((resolve) => {
      onSleep = () => held.length >= n && resolve();
      onSleep();
    });
  const [pool] = (await h.db.all('pool')).map(([ref]) => ref);
  const [host] = (await h.db.all('host')).map(([ref]) => ref);
  const from = (token: string) => events.from(call, ['pool', 'host'], token, 30) as Promise<RpcStruct>;
  const changed = (r: RpcStruct) => (r.events as RpcStruct[]).map((e) => `${e.operation} ${e.class}`).sort();
  return {
    ...h,
    held,
    sleeping,
    from,
    changed,
    pool: pool!,
    host: host!,
    advance: (ms: number) => (clock += ms),
  };
}

test('an idle watcher gets a change as soon as it lands, without the batching delay', async () => {
  const t = await setup();
  const initial = await t.from('');
  t.advance(DELAY); // nothing handed to this session for a whole delay: it is idle
  const waiting = t.from(initial.token as string);
  await t.db.update('pool', t.pool, { name_label: 'one change' });
  const got = await waiting;
  assert.deepEqual(t.changed(got), ['mod pool']);
  assert.equal(t.held.length, 0, 'the watcher waited a batching delay');
});

test('a busy watcher waits out its window, and what lands meanwhile comes in the same answer', async () => {
  const t = await setup();
  const initial = await t.from(''); // answered now: the window is open for DELAY ms
  // Called again with a change already there: it waits out the whole window first.
  await t.db.update('pool', t.pool, { name_label: 'first' });
  const before = t.from(initial.token as string);
  await t.sleeping(1);
  assert.equal(t.held[0]!.ms, DELAY);
  await t.db.update('host', t.host, { name_label: 'second, while the window is open' });
  t.held[0]!.release();
  const batch = await before;
  assert.deepEqual(t.changed(batch), ['mod host', 'mod pool']);

  // Blocked with nothing to report, woken by a change inside the window: the same.
  const blocked = t.from(batch.token as string);
  await t.db.update('host', t.host, { name_label: 'wakes it' });
  await t.sleeping(2);
  assert.equal(t.held[1]!.ms, DELAY);
  await t.db.update('pool', t.pool, { name_label: 'joins the batch' });
  t.held[1]!.release();
  assert.deepEqual(t.changed(await blocked), ['mod host', 'mod pool']);

  // Part of the window gone: only the rest of it is waited.
  t.advance(DELAY / 4);
  await t.db.update('pool', t.pool, { name_label: 'later' });
  const rest = t.from(batch.token as string);
  await t.sleeping(3);
  assert.equal(t.held[2]!.ms, (3 * DELAY) / 4);
  t.held[2]!.release();
  assert.ok(t.changed(await rest).includes('mod pool'));
});

test('a change is handed out only once it is on disk', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-events-'));
  try {
    const h = await memoryHost();
    const store = new SqliteStore(join(dir, 'xapi.db'));
    const written: string[] = [];
    const writeBatch = store.writeBatch.bind(store);
    store.writeBatch = (b) => {
      written.push(...b.upserts.map((u) => u.ref));
      writeBatch(b);
    };
    const db = new LocalDb(h.host.schema, store);
    const session = 'OpaqueRef:session';
    const pool = 'OpaqueRef:pool';
    await db.create('session', session, {});
    await db.create('pool', pool, {});
    await db.commit();
    // no batching delay, so nothing but the wait for the disk stands between the write and the answer
    const events = new EventService({ ...h.host, db: typed(db) }, db, { delayMs: 0, sleep: async () => {} });
    const call: Call = {
      host: h.host,
      db: typed(db),
      wireName: 'event.from',
      session: { ref: session, row: await typed(db).get('session', session) },
      task: 'DummyRef:|test|event.from',
      checkCancelled: async () => {},
      setProgress: async () => {},
    };
    const initial = (await events.from(call, ['pool'], '', 0)) as RpcStruct;
    const waiting = events.from(call, ['pool'], initial.token as string, 30) as Promise<RpcStruct>;
    written.length = 0;
    await db.update('pool', pool, { name_label: 'durable first' }); // not waiting for its commit
    const got = await waiting;
    assert.deepEqual(
      (got.events as RpcStruct[]).map((e) => e.ref),
      [pool],
    );
    assert.ok(written.includes(pool), 'the change was handed out before it was written');
    db.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a watcher waiting for a flush that fails is not failed by it, and sees only what is stored', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-events-'));
  try {
    const h = await memoryHost();
    const store = new SqliteStore(join(dir, 'xapi.db'));
    let full = false;
    const writeBatch = store.writeBatch.bind(store);
    store.writeBatch = (b) => {
      if (full) throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
      writeBatch(b);
    };
    const db = new LocalDb(h.host.schema, store, { probeIntervalMs: 60_000 });
    const session = 'OpaqueRef:session';
    const pool = 'OpaqueRef:pool';
    await db.create('session', session, {});
    await db.create('pool', pool, { name_label: 'stored' });
    await db.commit();
    const events = new EventService({ ...h.host, db: typed(db) }, db, { delayMs: 0, sleep: async () => {} });
    const call: Call = {
      host: h.host,
      db: typed(db),
      wireName: 'event.from',
      session: { ref: session, row: await typed(db).get('session', session) },
      task: 'DummyRef:|test|event.from',
      checkCancelled: async () => {},
      setProgress: async () => {},
    };
    const initial = (await events.from(call, ['pool'], '', 0)) as RpcStruct;
    const waiting = events.from(call, ['pool'], initial.token as string, 30) as Promise<RpcStruct>;
    full = true;
    // wakes the watcher, which waits for this write's flush; the flush fails and rolls it back
    await db.update('pool', pool, { name_label: 'undone' });
    const got = await waiting;
    const seen = (got.events as RpcStruct[]).map((e) => (e.snapshot as RpcStruct).name_label);
    assert.deepEqual(seen, ['stored'], 'the watcher saw a change that was undone');
    db.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
