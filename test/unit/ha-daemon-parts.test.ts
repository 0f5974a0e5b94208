// The HA daemon's pure parts: xapi's derived timeouts, the statefile's layout (xha's
// statefile.h offsets, signatures and checksums), and the survival rules (ha.md §4.4).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deriveTimeouts } from '../../src/ha/timeouts.js';
import {
  CorruptBlock,
  PoolState,
  STATEFILE_SIZE,
  StatefileIo,
  decodeSlot,
  encodeGlobal,
  encodeSlot,
  initStatefile,
} from '../../src/ha/statefile.js';
import { survives, type SurvivalInput } from '../../src/ha/survival.js';
import { decodePacket, encodePacket } from '../../src/ha/packet.js';

test('timeouts from T as xapi derives them (ha.md §2.3), T < 10 refused', () => {
  const pick = (t: number) => {
    const x = deriveTimeouts(t);
    return [
      x.heartbeatInterval,
      x.stateFileInterval,
      x.heartbeatTimeout,
      x.heartbeatWatchdogTimeout,
      x.stateFileWatchdogTimeout,
      x.bootJoinTimeout,
    ];
  };
  assert.deepEqual(pick(10), [2, 2, 10, 10, 25, 70]);
  assert.deepEqual(pick(30), [3, 2, 30, 30, 45, 90]);
  assert.deepEqual(pick(60), [3, 3, 60, 60, 75, 120]);
  assert.throws(() => deriveTimeouts(9), /constraint violation: timeout >= 10/);
});

test('statefile: 266,240 bytes, the global block and slots at xha offsets', async () => {
  assert.equal(STATEFILE_SIZE, 266_240);
  const g = encodeGlobal({ generation: '11111111-2222-3333-4444-555555555555', poolState: PoolState.Active, master: '', configHosts: 3 });
  assert.equal(g.toString('latin1', 0, 4), 'pool');
  assert.equal(g.readUInt32LE(4), (~g.readUInt32LE(0) >>> 3) >>> 0);
  assert.equal(g.readUInt32LE(12), 2, 'version');
  assert.equal(g.readUInt32LE(60), 2, 'pool state ACTIVE');
  assert.equal(g.toString('latin1', 28, 60), '11111111222233334444555555555555');
  assert.equal(g.toString('latin1', 100, 104), 'endp');
  const slot = {
    sequence: 7,
    index: 2,
    uuid: 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee',
    excluded: false,
    starting: false,
    current: [0, 1, 2],
    proposed: [0, 2],
    hbdomain: [0, 2],
    sfdomain: [0, 1, 2],
    smPhase: 1,
    weight: 1,
  };
  const s = encodeSlot(slot);
  assert.equal(s.toString('latin1', 0, 4), 'host');
  assert.equal(s.toString('latin1', 628, 632), 'endh');
  assert.equal(s.readUInt32LE(12), 7);
  assert.equal(s.readBigUInt64LE(576), 0b111n);
  assert.equal(s.readBigUInt64LE(584), 0b101n);
  assert.deepEqual(decodeSlot(s), slot);
  s.writeUInt32LE(8, 12); // sequence changed without the checksum
  assert.throws(() => decodeSlot(s), CorruptBlock);

  const dir = await mkdtemp(join(tmpdir(), 'statefile-'));
  try {
    const path = join(dir, 'sf');
    await initStatefile(path, '11111111-2222-3333-4444-555555555555', 3);
    assert.equal((await stat(path)).size, STATEFILE_SIZE);
    const io = await StatefileIo.open(path);
    assert.equal((await io.readGlobal()).poolState, PoolState.Init);
    assert.equal(await io.readSlot(2), undefined, 'blank');
    await io.writeSlot({ ...slot, sequence: 9 });
    assert.equal((await io.readSlot(2))?.sequence, 9);
    await io.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('heartbeat packets: round trip, anything else dropped', () => {
  const p = {
    generation: 'g',
    uuid: 'u',
    index: 1,
    sequence: 5,
    phase: 'online' as const,
    liveset: [0, 1],
    proposed: [0, 1],
    hbdomain: [0, 1],
    sfdomain: [1],
    sfAccess: true,
    fenceRequest: false,
  };
  assert.deepEqual(decodePacket(encodePacket(p)), p);
  assert.equal(decodePacket(Buffer.from('not json')), undefined);
  assert.equal(decodePacket(Buffer.from(JSON.stringify({ ...p, sig: 'nope' }))), undefined);
});

const base = (me: number, o: Partial<SurvivalInput>): SurvivalInput => ({
  me,
  liveset: [0, 1, 2],
  hbdomain: [0, 1, 2],
  sfdomain: [0, 1, 2],
  weight: 1,
  published: new Map(),
  statefileAccess: new Map(),
  excluded: new Set(),
  ...o,
});

test('survival rule 1a: a crashed host is gone from both channels', () => {
  assert.deepEqual(survives(base(0, { hbdomain: [0, 1], sfdomain: [0, 1] })), { survive: true, rule: '1a' });
});

test('survival rule 1b: one against two, the statefile intact: the pair stays, the single host fences', () => {
  const published = new Map([
    [0, { hbdomain: [0, 2], sfdomain: [0, 1, 2], weight: 1 }],
    [1, { hbdomain: [1], sfdomain: [0, 1, 2], weight: 1 }],
    [2, { hbdomain: [0, 2], sfdomain: [0, 1, 2], weight: 1 }],
  ]);
  assert.deepEqual(survives(base(1, { hbdomain: [1], published })), { survive: false });
  assert.deepEqual(survives(base(0, { hbdomain: [0, 2], published })), { survive: true, rule: '1b' });
  assert.deepEqual(survives(base(2, { hbdomain: [0, 2], published })), { survive: true, rule: '1b' });
});

test('survival rule 1b: equal halves, the lowest index wins', () => {
  const liveset = [0, 1, 2, 3];
  const published = new Map([
    [0, { hbdomain: [0, 1], sfdomain: liveset, weight: 1 }],
    [1, { hbdomain: [0, 1], sfdomain: liveset, weight: 1 }],
    [2, { hbdomain: [2, 3], sfdomain: liveset, weight: 1 }],
    [3, { hbdomain: [2, 3], sfdomain: liveset, weight: 1 }],
  ]);
  const at = (me: number, hb: number[]) => survives(base(me, { liveset, sfdomain: liveset, hbdomain: hb, published })).survive;
  assert.deepEqual([at(0, [0, 1]), at(1, [0, 1]), at(2, [2, 3]), at(3, [2, 3])], [true, true, false, false]);
});

test('survival rule 2: the statefile lost for all, everyone heard: stay; a host lost too: fence', () => {
  const access = new Map([
    [0, false],
    [1, false],
    [2, false],
  ]);
  assert.deepEqual(survives(base(0, { sfdomain: [], statefileAccess: access })), { survive: true, rule: '2' });
  assert.deepEqual(survives(base(0, { sfdomain: [], hbdomain: [0, 1], statefileAccess: access })), { survive: false });
  // ... unless the silent host left cleanly (excluded)
  assert.deepEqual(survives(base(0, { sfdomain: [], hbdomain: [0, 1], statefileAccess: access, excluded: new Set([2]) })), {
    survive: true,
    rule: '2',
  });
});
