// Live migration between two simulator backends in one process, over a real HTTPS connection
// (the destination's end served as src/host/migrate-receive.ts serves it): the guest's state
// and memory arrive whole, the pre-copy rounds follow the dirty rate, and every failure before
// the commit leaves the guest running on the source; a copy left by a process that died is
// settled by resolveMigration as xapi's database says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:https';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { SimulatorBackend } from '../../src/xenopsd/backends/simulator.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { DomainError, type MigrationReceiveHooks, type VmConfig } from '../../src/xenopsd/interface.js';
import { loadOrCreateCertificate } from '../../src/http/tls.js';
import { GuestWrites, MAX_LIVE_ROUNDS } from '../../src/xenopsd/backends/sim-migrate.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 ** 2;
const FAST = { bootTimeMs: 5, agentDelayMs: 5, shutdownTimeMs: 5, maxWaitMs: 100 };

function config(id: string, memory: number, extra: Partial<VmConfig> = {}): VmConfig {
  return {
    id,
    name: id,
    domainType: 'hvm',
    memoryStaticMax: memory,
    memoryDynamicMax: memory,
    memoryDynamicMin: memory,
    vcpuMax: 2,
    vcpus: 2,
    platform: {},
    vbds: [{ id: `${id}-disk`, position: '0', mode: 'RW', type: 'Disk', backend: `/src/${id}.vhd`, unpluggable: false }],
    vifs: [{ id: `${id}-vif`, position: 0, mac: '02:00:00:00:00:07', mtu: 1500, bridge: 'xenbr0' }],
    ...extra,
  };
}

interface Host {
  dir: string;
  backend: SimulatorBackend;
  server: Server;
  url: string;
  /** How the destination answers "is the arrived domain the VM now?". */
  owned: MigrationReceiveHooks['owned'];
}

/** A simulated host: a backend and the HTTPS end a source migrates to (destination config: its own disk paths). */
async function startHost(memoryMiB = 8192): Promise<Host> {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-migrate-'));
  const backend = new SimulatorBackend({ machine: simulatedMachine({ seed: dir, memoryMiB }), stateDir: dir, ...FAST });
  const tls = await loadOrCreateCertificate(dir, 'localhost');
  const host: Host = { dir, backend, server: undefined as unknown as Server, url: '', owned: async () => false };
  host.server = createServer(tls, (req, res) => {
    const id = req.url!.split('/').pop()!.split('?')[0]!;
    res.writeHead(200);
    res.flushHeaders();
    const memory = Number(new URL(req.url!, 'https://x').searchParams.get('memory'));
    const cfg = config(id, memory);
    cfg.vbds[0]!.backend = `/dest/${id}.vhd`;
    void backend.migrateReceive(cfg, { input: req, output: res }, { owned: (d) => host.owned(d) }).finally(() => res.end());
  });
  await new Promise<void>((r) => host.server.listen(0, '127.0.0.1', r));
  host.url = `https://127.0.0.1:${(host.server.address() as AddressInfo).port}`;
  return host;
}

async function stopHost(h: Host): Promise<void> {
  h.server.closeAllConnections();
  await new Promise((r) => h.server.close(r));
  await h.backend.close();
  await rm(h.dir, { recursive: true, force: true });
}

const target = (h: Host, id: string, memory: number) => ({ url: `${h.url}/services/xenops/migrate/vm/${id}?memory=${memory}` });

async function runningVm(h: Host, id: string, memory: number, extra: Partial<VmConfig> = {}): Promise<void> {
  await h.backend.add(config(id, memory, extra));
  await h.backend.start(id, { paused: false });
  await waitUntil('guest agent up', async () => (await h.backend.stat(id)).guestAgent !== undefined);
}

test('a running guest moves whole: state, devices, memory digest; the source forgets it', async () => {
  const [a, b] = [await startHost(), await startHost()];
  try {
    const memory = 64 * MiB;
    await runningVm(a, 'vm1', memory);
    const before = await a.backend.stat('vm1');
    let committed: number | undefined;
    const fractions: number[] = [];
    const report = await a.backend.migrateSend('vm1', target(b, 'vm1', memory), {
      commit: async (domid) => {
        // at the commit the destination holds a paused copy, the source a paused domain
        const here = await a.backend.stat('vm1');
        assert.equal(here.powerState, 'Paused');
        const there = await b.backend.stat('vm1');
        assert.equal(there.powerState, 'Halted');
        assert.deepEqual(there.migration, { incoming: domid, outgoing: undefined });
        committed = domid;
      },
      progress: (f) => fractions.push(f),
    });
    assert.equal(report.destinationDomid, committed);
    assert.ok(report.rounds.length >= 2 && report.rounds.at(-1)!.final, JSON.stringify(report.rounds));
    assert.equal(report.rounds[0]!.pages, memory / 4096, 'round 1 sends every page');
    assert.ok(report.bytes > memory);
    assert.ok(report.downtimeMs >= 0 && report.downtimeMs <= report.totalMs);
    assert.ok(fractions.length > 3 && fractions.at(-1) === 1 && fractions.every((f, i) => i === 0 || f >= fractions[i - 1]!));

    await assert.rejects(a.backend.stat('vm1'), (e: unknown) => e instanceof DomainError && e.kind === 'Does_not_exist');
    const after = await b.backend.stat('vm1');
    assert.equal(after.powerState, 'Running');
    assert.equal(after.domid, committed);
    assert.equal(after.migration, undefined);
    assert.equal(after.lastStartTime, before.lastStartTime, 'the guest kept running: same start');
    assert.equal(after.vcpus, before.vcpus);
    assert.equal(after.memoryActual, before.memoryActual);
    assert.deepEqual(after.guestAgent, before.guestAgent);
    const disk = await b.backend.deviceState('vm1', 'vm1-disk');
    assert.equal(disk.plugged, true);
    assert.equal(disk.backend, '/dest/vm1.vhd', "the disk is the destination's path to it");
    assert.equal((await b.backend.deviceState('vm1', 'vm1-vif')).plugged, true);
    // the memory the source gave back, the destination took
    const freeA = (await a.backend.hostMemory()).free;
    assert.ok(freeA > (await b.backend.hostMemory()).free);
    // and the guest goes on living there
    await b.backend.shutdown('vm1', 5_000);
    assert.equal((await b.backend.stat('vm1')).powerState, 'Halted');
  } finally {
    await Promise.all([stopHost(a), stopHost(b)]);
  }
});

test('a fast writer needs more rounds, and its last round is bigger', async () => {
  const [a, b] = [await startHost(), await startHost()];
  try {
    const memory = 32 * MiB;
    await runningVm(a, 'idle', memory, { simDirtyRate: 0 });
    await runningVm(a, 'busy', memory, { simDirtyRate: 400 * MiB });
    const idle = await a.backend.migrateSend('idle', target(b, 'idle', memory), { commit: async () => {} });
    const busy = await a.backend.migrateSend('busy', target(b, 'busy', memory), { commit: async () => {} });
    assert.equal(idle.rounds.length, 2, 'nothing written: one full round and an empty last one');
    assert.equal(idle.rounds[1]!.pages, 0);
    assert.ok(busy.rounds.length > 2, JSON.stringify(busy.rounds));
    // past libxc's 5 only while each round leaves at most 3/4 of the one before
    const live = busy.rounds.filter((r) => !r.final);
    for (let i = MAX_LIVE_ROUNDS; i < live.length; i++) assert.ok(live[i]!.pages <= 0.75 * live[i - 1]!.pages, JSON.stringify(live));
    assert.ok(busy.bytes > idle.bytes);
    assert.equal((await b.backend.stat('busy')).powerState, 'Running');
  } finally {
    await Promise.all([stopHost(a), stopHost(b)]);
  }
});

test('the dirty model: writes land in a working set, each round takes what was written since the last', () => {
  const g = new GuestWrites(4096, 4096 * 1000, 0); // 1000 pages a second
  g.advance(500);
  const first = g.takeDirty();
  assert.ok(first.length > 300 && first.length <= 500, String(first.length));
  assert.equal(g.dirtyCount, 0);
  g.advance(600);
  assert.ok(g.dirtyCount > 50 && g.dirtyCount <= 100);
  const span = Math.max(...first) - Math.min(...first);
  assert.ok(span < 4096 / 4 + 1, 'a quarter of memory is written');
});

test('a commit that fails, a destination without room, or one that is gone: the guest runs on at the source', async () => {
  const [a, b] = [await startHost(), await startHost(1024)];
  try {
    const memory = 32 * MiB;
    await runningVm(a, 'vm2', memory);
    const start = (await a.backend.stat('vm2')).lastStartTime;
    await assert.rejects(
      a.backend.migrateSend('vm2', target(b, 'vm2', memory), {
        commit: async () => {
          throw new Error('refused');
        },
      }),
      /refused/,
    );
    const s = await a.backend.stat('vm2');
    assert.equal(s.powerState, 'Running');
    assert.equal(s.lastStartTime, start);
    assert.equal(s.migration, undefined);
    // the destination drops its copy (and the record it made) when it reads the abort
    await waitUntil('the copy dropped', () =>
      b.backend.stat('vm2').then(
        () => false,
        (e) => e instanceof DomainError && e.kind === 'Does_not_exist',
      ),
    );
    const freeB = (await b.backend.hostMemory()).free;

    // 2 GiB does not fit a 1 GiB host: refused before any page is sent
    await runningVm(a, 'big', 2048 * MiB);
    await assert.rejects(
      a.backend.migrateSend('big', target(b, 'big', 2048 * MiB), { commit: async () => assert.fail('no commit') }),
      (e: unknown) => e instanceof DomainError && e.kind === 'Cannot_free_this_much_memory',
    );
    assert.equal((await a.backend.stat('big')).powerState, 'Running');
    assert.equal((await b.backend.hostMemory()).free, freeB, 'the reservation went back');

    // nobody listening
    const dead = { url: 'https://127.0.0.1:1/services/xenops/migrate/vm/vm2' };
    await assert.rejects(
      a.backend.migrateSend('vm2', dead, { commit: async () => assert.fail('no commit') }),
      (e: unknown) => e instanceof DomainError && e.kind === 'Failed_to_contact_remote_service',
    );
    assert.equal((await a.backend.stat('vm2')).powerState, 'Running');
  } finally {
    await Promise.all([stopHost(a), stopHost(b)]);
  }
});

test('to the same host: a new domain replaces the old one', async () => {
  const a = await startHost();
  try {
    await runningVm(a, 'vm3', 16 * MiB);
    const before = await a.backend.stat('vm3');
    const report = await a.backend.migrateSend('vm3', target(a, 'vm3', 16 * MiB), { commit: async () => {} });
    const after = await a.backend.stat('vm3');
    assert.equal(after.powerState, 'Running');
    assert.equal(after.domid, report.destinationDomid);
    assert.notEqual(after.domid, before.domid);
    assert.equal(after.lastStartTime, before.lastStartTime);
    assert.equal(a.backend.memoryBroker().domains().length, 1, 'one domain holds memory');
  } finally {
    await stopHost(a);
  }
});

test('a copy left by a dead process is settled as the database says', async () => {
  const [a, b] = [await startHost(), await startHost()];
  try {
    const memory = 16 * MiB;
    await runningVm(a, 'vm4', memory);
    const own = (await a.backend.stat('vm4')).domid;
    // The commit never returns: both sides hold a paused copy, as a process dying here leaves them.
    let atCommit!: (domid: number) => void;
    const reached = new Promise<number>((r) => (atCommit = r));
    const sending = a.backend.migrateSend('vm4', target(b, 'vm4', memory), {
      commit: (domid) => {
        atCommit(domid);
        return new Promise(() => {});
      },
    });
    sending.catch(() => undefined);
    const domid = await reached;
    assert.deepEqual((await a.backend.stat('vm4')).migration, { incoming: undefined, outgoing: own });
    assert.deepEqual((await b.backend.stat('vm4')).migration, { incoming: domid, outgoing: undefined });
    // New backends on the same state directories (the processes died and restarted).
    for (const h of [a, b]) h.server.closeAllConnections();
    await Promise.all([a.backend.close(), b.backend.close()]);
    const a2 = new SimulatorBackend({ machine: simulatedMachine({ seed: a.dir }), stateDir: a.dir, ...FAST });
    const b2 = new SimulatorBackend({ machine: simulatedMachine({ seed: b.dir }), stateDir: b.dir, ...FAST });
    try {
      assert.equal((await a2.stat('vm4')).powerState, 'Paused');
      assert.deepEqual((await b2.stat('vm4')).migration, { incoming: domid, outgoing: undefined });
      // the database says the destination's domain is the VM
      await a2.resolveMigration('vm4', undefined);
      await b2.resolveMigration('vm4', domid);
      assert.equal((await a2.stat('vm4')).powerState, 'Halted');
      const there = await b2.stat('vm4');
      assert.equal(there.powerState, 'Running');
      assert.equal(there.domid, domid);
      assert.equal(there.migration, undefined);
    } finally {
      await Promise.all([a2.close(), b2.close()]);
    }
  } finally {
    for (const h of [a, b]) {
      h.server.closeAllConnections();
      h.server.close();
      await h.backend.close();
      await rm(h.dir, { recursive: true, force: true });
    }
  }
});
