// The coordinator's liveness table on an in-memory host with a second host record and a
// clock the test moves: the dead interval, heartbeats bringing a host back, a clean shutdown
// holding it dead until pool.hello, the tasks hello cancels, and the clock-skew alert.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { memoryHost } from '../../src/host/memory-host.js';
import { Liveness } from '../../src/xapi/liveness.js';

const DEAD_MS = 10_000;

async function setup() {
  let now = 1_700_000_000_000;
  const h = await memoryHost({ now: () => now });
  const db = h.host.db;
  const metrics = `OpaqueRef:${randomUUID()}`;
  const member = `OpaqueRef:${randomUUID()}`;
  await db.create('host_metrics', metrics, { uuid: randomUUID(), live: true });
  await db.create('host', member, { uuid: randomUUID(), name_label: 'member', address: '127.0.0.2', metrics, enabled: true });
  const liveness = new Liveness(h.host, { deadIntervalMs: DEAD_MS });
  return {
    h,
    db,
    member,
    liveness,
    live: async () => (await db.get('host_metrics', metrics)).live,
    advance: (ms: number) => {
      now += ms;
    },
    now: () => now,
  };
}

describe('the coordinator liveness table', () => {
  it('takes a silent host for dead after the interval and live again at its next heartbeat', async () => {
    const t = await setup();
    await t.liveness.check(t.db); // first sight: a fresh timer
    t.advance(DEAD_MS - 1);
    await t.liveness.check(t.db);
    assert.equal(await t.live(), true);
    t.advance(1);
    await t.liveness.check(t.db);
    assert.equal(await t.live(), false);
    await t.liveness.heartbeat(t.db, t.member, { time: String(t.now() / 1000) });
    await t.liveness.check(t.db);
    assert.equal(await t.live(), true);
    await t.h.close();
  });

  it('holds a host that said shutting-down dead, whatever heartbeats follow, until its hello', async () => {
    const t = await setup();
    await t.liveness.heartbeat(t.db, t.member, { time: String(t.now() / 1000), 'shutting-down': 'true' });
    assert.equal(await t.live(), false);
    await t.liveness.heartbeat(t.db, t.member, { time: String(t.now() / 1000) });
    await t.liveness.check(t.db);
    assert.equal(await t.live(), false);
    // pool.hello sets live itself, then the table forgets the shutdown
    await t.db.update('host_metrics', (await t.db.get('host', t.member)).metrics, { live: true });
    await t.liveness.hello(t.db, t.member);
    t.advance(DEAD_MS - 1);
    await t.liveness.check(t.db);
    assert.equal(await t.live(), true);
    await t.h.close();
  });

  it('at hello, cancels the tasks that ran on the host and clears the operations they marked', async () => {
    const t = await setup();
    const task = `OpaqueRef:${randomUUID()}`;
    const other = `OpaqueRef:${randomUUID()}`;
    await t.db.create('task', task, { uuid: randomUUID(), status: 'pending', resident_on: t.member });
    await t.db.create('task', other, { uuid: randomUUID(), status: 'pending', resident_on: t.h.host.hostRef });
    const vm = `OpaqueRef:${randomUUID()}`;
    await t.db.create('VM', vm, {
      uuid: randomUUID(),
      name_label: 'vm',
      power_state: 'Halted',
      current_operations: { [task]: 'start', [other]: 'export' },
    });
    await t.liveness.hello(t.db, t.member);
    assert.equal(await t.db.tryGet('task', task), undefined);
    assert.ok(await t.db.tryGet('task', other));
    assert.deepEqual((await t.db.get('VM', vm)).current_operations, { [other]: 'export' });
    await t.h.close();
  });

  it('reports a clock skew above 5 minutes once, until it falls below half of that', async () => {
    const t = await setup();
    const skewed = async (s: number) => {
      await t.liveness.heartbeat(t.db, t.member, { time: String(t.now() / 1000 - s) });
      await t.liveness.check(t.db);
      return (await t.db.find('message', { name: 'HOST_CLOCK_SKEW_DETECTED' })).length;
    };
    assert.equal(await skewed(299), 0);
    assert.equal(await skewed(301), 1);
    assert.equal(await skewed(400), 1);
    assert.equal(await skewed(149), 1);
    assert.equal(await skewed(301), 2);
    const [, message] = (await t.db.find('message', { name: 'HOST_CLOCK_SKEW_DETECTED' }))[0]!;
    assert.equal(message.cls, 'Host');
    assert.equal(message.priority, 3);
    assert.equal(message.obj_uuid, (await t.db.get('host', t.member)).uuid);
    await t.h.close();
  });
});
