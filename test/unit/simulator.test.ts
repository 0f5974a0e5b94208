// The simulator backend on its own: memory from a finite host, ballooning, real sparse suspend
// images checked on resume, coalesced updates, and domains that outlive the backend object.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SimulatorBackend } from '../../src/xenopsd/backends/simulator.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { DomainError, type VmConfig } from '../../src/xenopsd/interface.js';
import { balloon } from '../../src/xenopsd/squeezed.js';

const MiB = 1024 ** 2;
const GiB = 1024 * MiB;

function config(dir: string, id: string, min: number, max: number): VmConfig {
  return {
    id, name: id, domainType: 'hvm', memoryStaticMax: max, memoryDynamicMax: max, memoryDynamicMin: min,
    vcpuMax: 1, vcpus: 1, suspendImage: join(dir, `${id}.img`), platform: {}, vbds: [],
    vifs: [{ id: `${id}-vif`, position: 0, mac: '02:00:00:00:00:01', mtu: 1500, bridge: 'xenbr0' }],
  };
}

async function withBackend(fn: (b: SimulatorBackend, dir: string) => Promise<void>, memoryMiB = 8192) {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-sim-'));
  const b = new SimulatorBackend({ machine: simulatedMachine({ seed: 's', memoryMiB }), stateDir: dir, bootTimeMs: 5, shutdownTimeMs: 5 });
  try {
    await fn(b, dir);
  } finally {
    await b.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('balloon policy: everyone at max when it fits, the same fraction when it does not, none when min does not fit', () => {
  assert.deepEqual(balloon(10 * GiB, [{ min: GiB, max: 2 * GiB }, { min: GiB, max: 4 * GiB }]), [2 * GiB, 4 * GiB]);
  const t = balloon(4 * GiB, [{ min: GiB, max: 3 * GiB }, { min: GiB, max: 3 * GiB }])!;
  assert.deepEqual(t, [2 * GiB, 2 * GiB]);
  assert.equal(balloon(GiB, [{ min: GiB, max: 2 * GiB }, { min: GiB, max: 2 * GiB }]), undefined);
});

test('suspend writes a sparse image of the memory size; resume checks it', () =>
  withBackend(async (b, dir) => {
    await b.add(config(dir, 'vm1', 512 * MiB, 512 * MiB));
    await b.start('vm1', { paused: false });
    await b.suspend('vm1');
    assert.equal((await b.stat('vm1')).powerState, 'Suspended');
    const st = await stat(join(dir, 'vm1.img'));
    assert.equal(st.size, 512 * MiB);
    assert.ok(st.blocks * 512 < 4 * MiB, 'the image is sparse');
    await b.resume('vm1', { paused: false });
    assert.equal((await b.stat('vm1')).powerState, 'Running');
    await b.suspend('vm1');
    // damage one sampled page: resume refuses
    const fh = await open(join(dir, 'vm1.img'), 'r+');
    await fh.write(Buffer.alloc(4096, 7), 0, 4096, 4096);
    await fh.close();
    await assert.rejects(b.resume('vm1', { paused: false }), (e: DomainError) => e.kind === 'Internal_error');
    await writeFile(join(dir, 'vm1.img'), 'short');
    await assert.rejects(b.resume('vm1', { paused: false }), (e: DomainError) => e.kind === 'Internal_error');
  }));

test('memory is finite: dynamic ranges squeeze, then Cannot_free_this_much_memory', () =>
  withBackend(async (b, dir) => {
    // 4 GiB host: dom0 takes 512 MiB
    await b.add(config(dir, 'a', GiB, 3 * GiB));
    await b.start('a', { paused: false });
    assert.equal((await b.stat('a')).memoryTarget, 3 * GiB);
    await b.add(config(dir, 'b', GiB, 3 * GiB));
    await b.start('b', { paused: false });
    const [ta, tb] = [(await b.stat('a')).memoryTarget, (await b.stat('b')).memoryTarget];
    assert.ok(ta < 3 * GiB && ta >= GiB && Math.abs(ta - tb) <= 4096, `${ta} ${tb}`);
    await b.add(config(dir, 'c', 2 * GiB, 2 * GiB));
    await assert.rejects(b.start('c', { paused: false }), (e: DomainError) => e.kind === 'Cannot_free_this_much_memory');
    await b.shutdown('b');
    assert.equal((await b.stat('a')).memoryTarget, 3 * GiB);
  }, 4096));

test('updates are coalesced per object and never lost; domains outlive the backend object', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-sim-'));
  const machine = simulatedMachine({ seed: 's' });
  const b = new SimulatorBackend({ machine, stateDir: dir, bootTimeMs: 1, shutdownTimeMs: 1 });
  await b.add(config(dir, 'vm', GiB, GiB));
  const first = await b.updates('', 10);
  await b.start('vm', { paused: false });
  await b.pause('vm');
  await b.unpause('vm');
  const u = await b.updates(first.token, 1000);
  assert.deepEqual(u.updates.filter((x) => x.kind === 'vm'), [{ kind: 'vm', id: 'vm' }]);
  const domid = (await b.stat('vm')).domid;
  await b.close();
  const again = new SimulatorBackend({ machine, stateDir: dir });
  const s = await again.stat('vm');
  assert.equal(s.powerState, 'Running');
  assert.equal(s.domid, domid);
  await again.shutdown('vm');
  await again.close();
  await rm(dir, { recursive: true, force: true });
});
