// Garbage collection of tasks and sessions as xapi's db_gc does it, on an injected clock, and
// EVENTS_LOST for a legacy event.next registration the change log no longer reaches.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryHost } from '../../src/host/memory-host.js';
import { sessionGc } from '../../src/xapi/session.js';
import { apiClient } from './api-client.js';

async function setup(logLimit?: number) {
  let clock = Date.parse('2026-01-01T00:00:00Z');
  const h = await memoryHost({ rootPassword: 'pw', now: () => clock, logLimit });
  const { ok } = apiClient(h);
  const advance = (s: number) => (clock += s * 1000);
  return { ...h, ok, advance };
}

test('completed tasks go after 65 minutes; at most 200 are kept', async () => {
  const t = await setup();
  const s = (await t.ok('session.login_with_password', 'root', 'pw')) as string;
  const tasks: string[] = [];
  for (let i = 0; i < 250; i++) tasks.push((await t.ok('task.create', s, `t${i}`, '')) as string);
  for (const task of tasks.slice(0, 230)) await t.dispatcher.tasks.succeed(task, '<value></value>');
  t.advance(60);
  await t.dispatcher.tasks.gc();
  // 20 pending are never removed for the limit; completed ones go oldest first down to 200 in all
  assert.equal((await t.db.all('task')).length, 200);
  t.advance(3900);
  await t.dispatcher.tasks.gc();
  const left = await t.db.all('task');
  assert.equal(left.length, 20);
  assert.ok(left.every(([, r]) => r.status === 'pending'));
  // pending tasks older than a day whose progress did not move are removed
  t.advance(86400);
  await t.dispatcher.tasks.gc();
  await t.dispatcher.tasks.gc();
  assert.equal((await t.db.all('task')).length, 0);
});

test('sessions idle for a day are destroyed; each originator keeps at most 500', async () => {
  const t = await setup();
  const idle = (await t.ok('session.login_with_password', 'root', 'pw', '1.0', 'old')) as string;
  t.advance(86401);
  for (let i = 0; i < 505; i++) await t.ok('session.login_with_password', 'root', 'pw', '1.0', 'busy');
  await sessionGc(t.host);
  assert.equal(await t.db.tryGet('session', idle), undefined);
  const busy = (await t.db.find('session', { originator: 'busy' })).length;
  assert.equal(busy, 500);
});

test('legacy event.next raises EVENTS_LOST once the log has moved past it', async () => {
  const t = await setup(100);
  const s = (await t.ok('session.login_with_password', 'root', 'pw')) as string;
  await t.ok('event.register', s, ['vm']);
  const vm = Object.keys((await t.ok('VM.get_all_records_where', s, 'field "is_control_domain" = "true"')) as object)[0];
  for (let i = 0; i < 300; i++) await t.ok('VM.set_name_label', s, vm!, `n${i}`);
  const o = await t.dispatcher.dispatch('event.next', [s]);
  assert.deepEqual(o.ok ? [] : o.error, ['EVENTS_LOST']);
  // event.from never loses: an old token falls back to a full scan
  const all = (await t.ok('event.from', s, [`vm/${vm}`], '00000000000000000001,00000000000000000000', 1)) as { events: unknown[] };
  assert.equal(all.events.length, 1);
});

test('local sessions live only in memory and end with local_logout', async () => {
  const t = await setup();
  const local = (await t.ok('session.slave_local_login_with_password', 'root', 'pw')) as string;
  assert.ok(t.host.localSessions.has(local));
  assert.equal(await t.db.tryGet('session', local), undefined);
  assert.ok(Array.isArray(await t.ok('VM.get_all', local)));
  await t.ok('session.local_logout', local);
  const o = await t.dispatcher.dispatch('VM.get_all', [local]);
  assert.deepEqual(o.ok ? [] : o.error, ['SESSION_INVALID', local]);
});

test('local sessions are collected like the others: idle for a day, and at most 400 per group', async () => {
  const t = await setup();
  const idle = (await t.ok('session.slave_local_login_with_password', 'root', 'pw')) as string;
  const used = (await t.ok('session.slave_local_login_with_password', 'root', 'pw')) as string;
  t.advance(86401 - 60);
  await t.ok('VM.get_all', used); // activity keeps a local session, as it keeps a database one
  t.advance(60);
  await sessionGc(t.host);
  assert.equal(t.host.localSessions.has(idle), false, 'a local session idle for a day must go');
  assert.equal(t.host.localSessions.has(used), true, 'a local session in use must stay');
  const flood: string[] = [];
  for (let i = 0; i < 450; i++) {
    flood.push((await t.ok('session.slave_local_login_with_password', 'root', 'pw')) as string);
    t.advance(1);
  }
  await sessionGc(t.host);
  assert.equal(t.host.localSessions.size, 400);
  // the least recently active went first: the oldest of the flood, and `used`
  assert.equal(t.host.localSessions.has(flood[0]!), false);
  assert.equal(t.host.localSessions.has(used), false);
  assert.equal(t.host.localSessions.has(flood[449]!), true);
  // database sessions are counted on their own: the local flood did not push them out
  const s = (await t.ok('session.login_with_password', 'root', 'pw')) as string;
  await sessionGc(t.host);
  assert.ok(await t.db.tryGet('session', s));
});
