// The simulator backend on its own, in a temporary state directory: the VM life cycle with a
// guest inside, memory from a finite host, real sparse suspend images checked on resume, faults,
// devices, coalesced updates, and domains that outlive the backend object (restart safety).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ipv4ForMac, SimulatorBackend, type SimulatorOptions } from '../../src/xenopsd/backends/simulator.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { DomainError, type VmConfig } from '../../src/xenopsd/interface.js';
import { countCalls, waitUntil } from '../wait.js';
import { SmallDisks } from '../integration/small-disk.js';
import { SimStateStore } from '../../src/xenopsd/backends/sim-state.js';

const MiB = 1024 ** 2;
const GiB = 1024 * MiB;

function config(dir: string, id: string, min: number, max: number, extra: Partial<VmConfig> = {}): VmConfig {
  return {
    id,
    name: id,
    domainType: 'hvm',
    memoryStaticMax: max,
    memoryDynamicMax: max,
    memoryDynamicMin: min,
    vcpuMax: 2,
    vcpus: 1,
    suspendImage: join(dir, 'suspend', `${id}.img`),
    platform: {},
    vbds: [
      { id: `${id}-disk`, position: '0', mode: 'RW', type: 'Disk', backend: join(dir, `${id}.vhd`), unpluggable: true },
      { id: `${id}-cd`, position: '3', mode: 'RO', type: 'CD', backend: undefined, unpluggable: true },
    ],
    vifs: [{ id: `${id}-vif`, position: 0, mac: '02:00:00:00:00:01', mtu: 1500, bridge: 'xenbr0' }],
    ...extra,
  };
}

const FAST = { bootTimeMs: 5, agentDelayMs: 5, shutdownTimeMs: 5, maxWaitMs: 100 };

function backend(dir: string, memoryMiB = 8192, extra: Partial<SimulatorOptions> = {}) {
  return new SimulatorBackend({ machine: simulatedMachine({ seed: 's', memoryMiB }), stateDir: dir, ...FAST, ...extra });
}

async function withBackend(
  fn: (b: SimulatorBackend, dir: string) => Promise<void>,
  memoryMiB = 8192,
  extra: Partial<SimulatorOptions> = {},
) {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-sim-'));
  const b = backend(dir, memoryMiB, extra);
  try {
    await fn(b, dir);
  } finally {
    await b.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const is = (kind: DomainError['kind']) => (e: unknown) => e instanceof DomainError && e.kind === kind;

test('life cycle: start, guest agent, pause, unpause, suspend (sparse image), resume, reboot, clean shutdown', () =>
  withBackend(async (b, dir) => {
    await b.add(config(dir, 'vm1', 512 * MiB, 512 * MiB, { name: 'Debian Bookworm 12' }));
    let s = await b.stat('vm1');
    assert.equal(s.powerState, 'Halted');
    assert.equal(s.domid, -1);

    await b.start('vm1', { paused: false });
    s = await b.stat('vm1');
    assert.equal(s.powerState, 'Running');
    assert.equal(s.domid, 1, 'domids start at 1 (dom0 is 0)');
    assert.equal(s.memoryTarget, 512 * MiB);
    assert.equal(s.memoryActual, 512 * MiB);
    assert.equal(s.vcpus, 1);
    assert.ok(s.lastStartTime > 0);
    assert.deepEqual(s.consoles, [{ protocol: 'rfb', port: 5901 }]);
    assert.equal((await b.deviceState('vm1', 'vm1-disk')).plugged, true);
    assert.equal((await b.deviceState('vm1', 'vm1-cd')).plugged, true, 'an empty CD drive is still a drive');
    assert.equal((await b.deviceState('vm1', 'vm1-vif')).plugged, true);

    // the OS comes up and its agent reports
    await waitUntil('the guest agent', async () => (await b.stat('vm1')).guestAgent !== undefined);
    const ga = (await b.stat('vm1')).guestAgent!;
    assert.equal(ga.osVersion.distro, 'debian');
    assert.equal(ga.osVersion.name, 'Debian GNU/Linux 12');
    assert.ok(ga.pvDriversVersion.major);
    const ip = ipv4ForMac('02:00:00:00:00:01');
    assert.match(ip, /^10\.\d+\.\d+\.\d+$/);
    assert.equal(ga.networks['0/ip'], ip);
    assert.equal(ga.networks['0/ipv4/0'], ip);
    for (const f of ['feature-shutdown', 'feature-reboot', 'feature-suspend', 'feature-balloon', 'feature-vcpu-hotplug'])
      assert.equal(ga.other[f], '1', f);

    await b.pause('vm1');
    assert.equal((await b.stat('vm1')).powerState, 'Paused');
    await b.unpause('vm1');
    assert.equal((await b.stat('vm1')).powerState, 'Running');

    await b.suspend('vm1');
    s = await b.stat('vm1');
    assert.equal(s.powerState, 'Suspended');
    assert.equal(s.domid, -1);
    assert.equal(s.lastShutdownReason, 'suspend');
    const img = await stat(join(dir, 'suspend', 'vm1.img'));
    assert.equal(img.size, 512 * MiB, "the image's logical size is the guest's memory");
    assert.ok(img.blocks * 512 < img.size / 64, `the image is sparse (${img.blocks * 512} bytes allocated)`);
    assert.equal((await b.hostMemory()).free, (await b.hostMemory()).total - 1024 * MiB, 'a suspended VM holds no host memory');

    await b.resume('vm1', { paused: false });
    s = await b.stat('vm1');
    assert.equal(s.powerState, 'Running');
    assert.equal(s.memoryActual, 512 * MiB, 'resumed with the same memory');
    const resumedDomid = s.domid;
    assert.ok(resumedDomid > 1);

    await b.reboot('vm1', 5000);
    s = await b.stat('vm1');
    assert.equal(s.powerState, 'Running');
    assert.ok(s.domid > resumedDomid, 'a reboot is a new domain');

    await waitUntil('the guest agent after the reboot', async () => (await b.stat('vm1')).guestAgent !== undefined);
    await b.shutdown('vm1', 5000);
    s = await b.stat('vm1');
    assert.equal(s.powerState, 'Halted');
    assert.equal(s.lastShutdownReason, 'halt');
    assert.equal(s.guestAgent, undefined);
    assert.equal((await b.deviceState('vm1', 'vm1-disk')).plugged, false);
    assert.equal((await b.hostMemory()).free, 7168 * MiB, 'all memory is back (dom0 keeps 1 GiB of 8)');

    // power-state errors carry (found, expected)
    await assert.rejects(b.pause('vm1'), (e: DomainError) => e.kind === 'Bad_power_state' && e.args[0] === 'Halted');
    await b.start('vm1', { paused: true });
    assert.equal((await b.stat('vm1')).powerState, 'Paused');
    await assert.rejects(b.start('vm1', { paused: false }), is('Bad_power_state'));
    await assert.rejects(b.remove('vm1'), is('Bad_power_state'));
    await b.shutdown('vm1');
    await b.remove('vm1');
    await assert.rejects(b.stat('vm1'), is('Does_not_exist'));
  }));

test('memory is finite: ballooning squeezes guests, then Cannot_free_this_much_memory', () =>
  withBackend(async (b, dir) => {
    // 4 GiB host: dom0 keeps 512 MiB
    await b.add(config(dir, 'a', GiB, 3 * GiB));
    await b.start('a', { paused: false });
    assert.equal((await b.stat('a')).memoryTarget, 3 * GiB, 'plentiful: at dynamic_max');
    await waitUntil("a's balloon driver", async () => (await b.stat('a')).guestAgent !== undefined);
    await b.add(config(dir, 'b', GiB, 3 * GiB));
    await b.start('b', { paused: false });
    await waitUntil("b's balloon driver", async () => (await b.stat('b')).guestAgent !== undefined);
    const [ta, tb] = [(await b.stat('a')).memoryTarget, (await b.stat('b')).memoryTarget];
    assert.ok(ta < 3 * GiB && ta > GiB, `a was squeezed: ${ta}`);
    assert.ok(Math.abs(ta - tb) <= 4096, `the same fraction: ${ta} ${tb}`);
    assert.ok((await b.hostMemory()).free >= 9 * MiB, 'the slush fund stays free');
    // a third that cannot fit even with everyone at dynamic_min
    await b.add(config(dir, 'c', 2 * GiB, 2 * GiB));
    await assert.rejects(b.start('c', { paused: false }), (e: DomainError) => {
      assert.equal(e.kind, 'Cannot_free_this_much_memory');
      assert.ok(Number(e.args[0]) > 2 * GiB && Number(e.args[1]) < Number(e.args[0]), e.message);
      return true;
    });
    assert.equal((await b.stat('c')).powerState, 'Halted');
    // raising a running VM's dynamic_min beyond what is left is refused; lowering rebalances
    await assert.rejects(b.setMemoryDynamicRange('a', 3 * GiB, 3 * GiB), is('Cannot_free_this_much_memory'));
    await b.setMemoryDynamicRange('a', GiB, GiB);
    assert.equal((await b.stat('a')).memoryTarget, GiB);
    assert.ok((await b.stat('b')).memoryTarget > tb + 512 * MiB, 'b grows into what a gave up');
    // destroying a domain gives its memory back
    await b.setMemoryDynamicRange('a', GiB, 3 * GiB);
    await b.shutdown('b');
    assert.equal((await b.stat('a')).memoryTarget, 3 * GiB);
  }, 4096));

test('faults: crash, guest-initiated halt and reboot, refused and ignored shutdowns, slow boot, refused unplug', () =>
  withBackend(async (b, dir) => {
    await b.add(config(dir, 'f', 256 * MiB, 256 * MiB));
    const up = async () => {
      await b.start('f', { paused: false });
      await waitUntil('the guest agent', async () => (await b.stat('f')).guestAgent !== undefined);
    };
    const freeWhenHalted = (await b.hostMemory()).free;
    await up();
    assert.ok((await b.hostMemory()).free < freeWhenHalted - 256 * MiB, 'the domain holds its memory and overhead');
    b.inject('f', 'crash');
    const s = await b.stat('f');
    assert.equal(s.powerState, 'Halted');
    assert.equal(s.lastShutdownReason, 'crash');
    assert.equal((await b.hostMemory()).free, freeWhenHalted, 'a crashed domain releases its memory');

    await up();
    b.inject('f', 'guest-shutdown');
    await waitUntil('the guest to halt itself', async () => (await b.stat('f')).powerState === 'Halted');
    assert.equal((await b.stat('f')).lastShutdownReason, 'halt');

    await up();
    b.inject('f', 'guest-reboot');
    await waitUntil('the guest to reboot itself', async () => (await b.stat('f')).powerState === 'Halted');
    assert.equal((await b.stat('f')).lastShutdownReason, 'reboot', 'xapi applies actions_after_reboot');

    // acknowledges but never halts: Failed_to_shutdown(id, timeout in seconds), still running
    await up();
    b.inject('f', 'refuse-shutdown');
    await assert.rejects(
      b.shutdown('f', 60_000),
      (e: DomainError) => e.kind === 'Failed_to_shutdown' && e.args[0] === 'f' && e.args[1] === '60',
    );
    assert.equal((await b.stat('f')).powerState, 'Running');
    await assert.rejects(b.reboot('f', 60_000), is('Failed_to_shutdown'));
    await assert.rejects(b.suspend('f'), is('Failed_to_suspend'));
    assert.equal((await b.stat('f')).powerState, 'Running');
    b.clearFaults('f');
    b.inject('f', 'ignore-shutdown');
    await assert.rejects(b.shutdown('f', 60_000), is('Failed_to_acknowledge_shutdown_request'));
    b.clearFaults('f');
    // a paused guest cannot acknowledge either
    await b.pause('f');
    await assert.rejects(b.shutdown('f', 60_000), is('Failed_to_acknowledge_shutdown_request'));
    await b.unpause('f');
    await b.shutdown('f', 60_000);
    assert.equal((await b.stat('f')).powerState, 'Halted');

    // a slow build, pre-empted by a hard shutdown: the start is cancelled, the VM Halted
    b.inject('f', { slowBootMs: 60_000 });
    const starting = b.start('f', { paused: false });
    await waitUntil('the domain to be created', async () => (await b.stat('f')).domid !== -1);
    assert.equal((await b.stat('f')).powerState, 'Paused', 'a domain being built is paused');
    await b.shutdown('f');
    await assert.rejects(starting, is('Cancelled'));
    assert.equal((await b.stat('f')).powerState, 'Halted');
    b.clearFaults('f');

    // a guest refusing to let go of a device: only a forced unplug works
    await up();
    b.inject('f', 'refuse-unplug');
    await assert.rejects(b.vbdUnplug('f', 'f-disk', false), (e: DomainError) => e.kind === 'Device_detach_rejected' && e.args[0] === 'VBD');
    await b.vbdUnplug('f', 'f-disk', true);
    assert.equal((await b.deviceState('f', 'f-disk')).plugged, false);
    await b.shutdown('f');
  }));

test('devices: plug/unplug/insert/eject with xenopsd errors; the guest reports new interfaces', () =>
  withBackend(async (b, dir) => {
    const c = config(dir, 'd', 256 * MiB, 256 * MiB);
    await b.add(c);
    await assert.rejects(b.vbdPlug('d', c.vbds[0]!), is('Bad_power_state'), 'no hotplug into a halted VM');
    await b.start('d', { paused: false });
    await waitUntil('the guest agent', async () => (await b.stat('d')).guestAgent !== undefined);
    await assert.rejects(b.vbdPlug('d', c.vbds[0]!), is('Device_is_connected'));
    await b.vbdUnplug('d', 'd-disk', false);
    await assert.rejects(b.vbdUnplug('d', 'd-disk', false), is('Device_not_connected'));
    await b.vbdPlug('d', c.vbds[0]!);
    // a new disk without a position gets the lowest free one (0 and 3 are taken)
    await b.vbdPlug('d', { id: 'd-data', mode: 'RW', type: 'Disk', backend: join(dir, 'data.vhd'), unpluggable: true });
    assert.equal((await b.deviceState('d', 'd-data')).position, '1');
    await assert.rejects(
      b.vbdPlug('d', { id: 'd-clash', position: '0', mode: 'RW', type: 'Disk', backend: 'x', unpluggable: true }),
      is('Already_exists'),
    );
    // removable media
    await assert.rejects(b.vbdEject('d', 'd-cd'), is('Media_not_present'));
    await b.vbdInsert('d', 'd-cd', join(dir, 'debian.iso'));
    assert.equal((await b.deviceState('d', 'd-cd')).backend, join(dir, 'debian.iso'));
    await assert.rejects(b.vbdInsert('d', 'd-cd', 'other.iso'), is('Media_present'));
    await b.vbdEject('d', 'd-cd');
    assert.equal((await b.deviceState('d', 'd-cd')).backend, undefined);
    await assert.rejects(b.vbdEject('d', 'd-disk'), is('Media_not_ejectable'));
    await assert.rejects(b.vbdInsert('d', 'nope', 'x.iso'), is('Does_not_exist'));
    // a second NIC: the guest configures it and reports its address
    await b.vifPlug('d', { id: 'd-vif2', position: 1, mac: '02:00:00:00:00:02', mtu: 1500, bridge: 'xenbr1' });
    assert.equal((await b.stat('d')).guestAgent!.networks['1/ip'], ipv4ForMac('02:00:00:00:00:02'));
    await assert.rejects(
      b.vifPlug('d', { id: 'd-vif3', position: 1, mac: '02:00:00:00:00:03', mtu: 1500, bridge: 'xenbr1' }),
      is('Already_exists'),
    );
    await b.vifUnplug('d', 'd-vif2', false);
    assert.equal((await b.stat('d')).guestAgent!.networks['1/ip'], undefined);
    await assert.rejects(b.vifUnplug('d', 'd-vif2', false), is('Device_not_connected'));
    // vCPU hotplug within VCPUs_max
    await b.setVcpus('d', 2);
    assert.equal((await b.stat('d')).vcpus, 2);
    await assert.rejects(b.setVcpus('d', 3), is('Invalid_vcpus'));
    await b.shutdown('d');
  }));

test('updates: delivered by token, coalesced per object, waking a waiting caller', () =>
  withBackend(async (b, dir) => {
    await b.add(config(dir, 'u', 256 * MiB, 256 * MiB));
    const first = await b.updates('', 10);
    // start + pause + unpause: many changes, one entry for the VM
    await b.start('u', { paused: false });
    await b.pause('u');
    await b.unpause('u');
    const u = await b.updates(first.token, 1000);
    assert.deepEqual(
      u.updates.filter((x) => x.kind === 'vm'),
      [{ kind: 'vm', id: 'u' }],
    );
    assert.ok(
      u.updates.some((x) => x.kind === 'vbd' && x.id === 'u-disk'),
      'device updates too',
    );
    assert.ok(u.updates.some((x) => x.kind === 'vif' && x.id === 'u-vif'));
    // nothing new: the caller waits; a change wakes it
    await waitUntil('the guest agent', async () => (await b.stat('u')).guestAgent !== undefined);
    const settled = await b.updates(u.token, 10);
    const waiting = b.updates(settled.token, 10_000);
    await b.pause('u');
    const woken = await waiting;
    assert.deepEqual(woken.updates, [{ kind: 'vm', id: 'u' }]);
    // a token from before is still good: nothing is lost, just coalesced
    const again = await b.updates(first.token, 10);
    assert.equal(again.updates.filter((x) => x.kind === 'vm').length, 1);
    // a timeout with nothing new returns no updates and the same position
    const idle = await b.updates(woken.token, 20);
    assert.deepEqual(idle.updates, []);
    await b.shutdown('u');
  }));

test('restart safety: a new backend on the same state directory still runs the domains', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-sim-'));
  try {
    const b = backend(dir, 4096);
    await b.add(config(dir, 'r', GiB, 3 * GiB));
    await b.add(config(dir, 'h', 256 * MiB, 256 * MiB));
    await b.add(config(dir, 'p', 256 * MiB, 256 * MiB));
    await b.start('r', { paused: false });
    await waitUntil('the guest agent', async () => (await b.stat('r')).guestAgent !== undefined);
    await b.start('p', { paused: true });
    const before = await b.stat('r');
    const memBefore = await b.hostMemory();
    // the process dies: no clean close, only what is on disk survives
    await b.close();

    const b2 = backend(dir, 4096);
    try {
      const s = await b2.stat('r');
      assert.equal(s.powerState, 'Running');
      assert.equal(s.domid, before.domid);
      assert.equal(s.memoryTarget, before.memoryTarget);
      assert.deepEqual(s.guestAgent, before.guestAgent);
      assert.equal((await b2.stat('p')).powerState, 'Paused');
      assert.equal((await b2.stat('h')).powerState, 'Halted');
      assert.deepEqual(await b2.hostMemory(), memBefore, 'memory accounting is rebuilt');
      assert.equal((await b2.list()).length, 3);
      // a fresh client (token "") learns about every VM
      const all = await b2.updates('', 10);
      assert.deepEqual(new Set(all.updates.filter((x) => x.kind === 'vm').map((x) => x.id)), new Set(['r', 'h', 'p']));
      // new domids never reuse old ones
      await b2.start('h', { paused: false });
      assert.ok((await b2.stat('h')).domid > Math.max(before.domid, (await b2.stat('p')).domid));
      // the domains are fully operable
      await b2.unpause('p');
      await b2.shutdown('r', 5000);
      assert.equal((await b2.stat('r')).powerState, 'Halted');
    } finally {
      await b2.close();
    }
    // a domain caught half-built by the crash is not trusted: torn down at the next start-up
    const b3 = backend(dir, 4096, { bootTimeMs: 60_000 });
    const starting = b3.start('r', { paused: false }).catch((e: unknown) => e);
    await waitUntil('the domain to be created', async () => (await b3.stat('r')).domid !== -1);
    const halfBuilt = (await b3.stat('r')).domid;
    await b3.close();
    assert.ok(is('Cancelled')(await starting));
    const b4 = backend(dir, 4096);
    try {
      assert.equal((await b4.stat('r')).powerState, 'Halted');
      assert.equal((await b4.stat('h')).powerState, 'Running');
      // the torn-down domain's id is not handed out again either
      await b4.start('r', { paused: true });
      assert.ok((await b4.stat('r')).domid > halfBuilt);
    } finally {
      await b4.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('kill -9 model: a copy of the state directory taken as an operation returns has what it reported', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-sim-'));
  const copies: string[] = [];
  /** The state directory as it is at this instant: what a process killed now leaves behind. */
  const crashCopy = () => {
    const copy = `${dir}-crash${copies.length}`;
    cpSync(dir, copy, { recursive: true });
    copies.push(copy);
    return copy;
  };
  /** What a backend started on `copy` finds, beside what the running one reports. */
  const compare = async (copy: string, what: string) => {
    const seen = async (x: SimulatorBackend) => (await x.list()).map((s) => `${s.id} ${s.powerState} ${s.domid}`).sort();
    const after = backend(copy, 4096);
    try {
      assert.deepEqual(await seen(after), await seen(b), what);
    } finally {
      await after.close();
    }
  };
  const b = backend(dir, 4096);
  try {
    for (const id of ['a', 'b', 'c', 'd']) await b.add(config(dir, id, 256 * MiB, 256 * MiB));
    const steps: [string, () => Promise<unknown>][] = [
      ['start a', () => b.start('a', { paused: false })],
      ['start b paused', () => b.start('b', { paused: true })],
      ['start c', () => b.start('c', { paused: false })],
      ['hard shutdown a', () => b.shutdown('a')],
      ['unpause b', () => b.unpause('b')],
      ['clean shutdown c', () => b.shutdown('c', 5000)],
      ['hard reboot b', () => b.reboot('b')],
      ['remove d', () => b.remove('d')],
    ];
    for (const [what, step] of steps) {
      await step();
      await compare(crashCopy(), what);
    }
    // A build xapi has heard of (stat shows its domain) but that has not finished: torn down.
    b.inject('a', { slowBootMs: 60_000 });
    const starting = b.start('a', { paused: false }).catch((e: unknown) => e);
    await waitUntil('the domain to be created', async () => (await b.stat('a')).domid !== -1);
    const after = backend(crashCopy(), 4096);
    try {
      assert.equal((await after.stat('a')).powerState, 'Halted');
      assert.equal((await after.stat('b')).powerState, 'Running');
    } finally {
      await after.close();
    }
    await b.shutdown('a');
    assert.ok(is('Cancelled')(await starting));
  } finally {
    await b.close();
    for (const d of [dir, ...copies]) await rm(d, { recursive: true, force: true });
  }
});

test('a damaged suspend image is refused and the VM stays Suspended', () =>
  withBackend(async (b, dir) => {
    await b.add(config(dir, 'vm1', 16 * MiB, 16 * MiB));
    await b.add(config(dir, 'vm2', 16 * MiB, 16 * MiB));
    const path = join(dir, 'suspend', 'vm1.img');
    await b.start('vm1', { paused: false });
    await b.suspend('vm1');
    const good = await readFile(path);

    // one byte of one sampled memory page changed
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([good[16 * MiB - 100]! ^ 0xff]), 0, 1, 16 * MiB - 100);
    await fh.close();
    await assert.rejects(
      b.resume('vm1', { paused: false }),
      (e: DomainError) => e.kind === 'Internal_error' && /checksum/.test(e.args[0]!),
    );
    assert.equal((await b.stat('vm1')).powerState, 'Suspended');

    // truncated
    await writeFile(path, good.subarray(0, 8 * MiB));
    await assert.rejects(
      b.resume('vm1', { paused: false }),
      (e: DomainError) => e.kind === 'Internal_error' && /truncated/.test(e.args[0]!),
    );
    await writeFile(path, 'short');
    await assert.rejects(b.resume('vm1', { paused: false }), is('Internal_error'));

    // a corrupt header
    const bad = Buffer.from(good);
    bad.write('{"magic": garbage', 0);
    await writeFile(path, bad);
    await assert.rejects(b.resume('vm1', { paused: false }), is('Internal_error'));

    // another VM's image
    await b.start('vm2', { paused: false });
    await b.suspend('vm2');
    await writeFile(path, await readFile(join(dir, 'suspend', 'vm2.img')));
    await assert.rejects(b.resume('vm1', { paused: false }), is('Internal_error'));

    // the intact image resumes
    await writeFile(path, good);
    await b.resume('vm1', { paused: false });
    assert.equal((await b.stat('vm1')).powerState, 'Running');
    // a missing image
    await b.suspend('vm1');
    await rm(path);
    await assert.rejects(b.resume('vm1', { paused: false }), is('Internal_error'));
    await b.shutdown('vm1');
    assert.equal((await b.stat('vm1')).powerState, 'Halted');
  }));

test('guests without an agent never report and never balloon, but still halt on request', () =>
  withBackend(
    async (b, dir) => {
      await b.add(config(dir, 'a', GiB, 3 * GiB));
      await b.start('a', { paused: false });
      await b.add(config(dir, 'b', GiB, 3 * GiB));
      // a keeps all it was given (no balloon driver to squeeze), so b gets only what is left
      await b.start('b', { paused: false });
      assert.equal((await b.stat('a')).memoryTarget, 3 * GiB);
      assert.ok((await b.stat('b')).memoryTarget < 3 * GiB);
      // A guest that acknowledges a shutdown request but never halts has its OS up (only a
      // running OS answers control/shutdown), and stays so: past the moment an agent would report.
      b.inject('a', 'refuse-shutdown');
      await assert.rejects(b.shutdown('a', 5000), is('Failed_to_shutdown'));
      assert.equal((await b.stat('a')).powerState, 'Running');
      assert.equal((await b.stat('a')).guestAgent, undefined);
      b.clearFaults('a');
      await b.shutdown('a', 5000);
      assert.equal((await b.stat('a')).powerState, 'Halted');
      await b.shutdown('b');
    },
    5120,
    { guestAgent: false },
  ));

test('a full state disk: guest timers crash nothing, operations return only once their state is stored, later saves are read back', async () => {
  const disks = await SmallDisks.create({ state: 4 * MiB }); // a real ENOSPC (small-disk.ts)
  const dir = disks.outside('state');
  const copies: string[] = [];
  /** The state directory as it is at this instant: what a process killed now leaves behind. */
  const crashCopy = () => {
    const copy = join(tmpdir(), `xapi-sim-full-${process.pid}-${copies.length}`);
    copies.push(copy);
    cpSync(dir, copy, { recursive: true });
    return copy;
  };
  const powerIn = async (copy: string, id: string) => {
    const x = backend(copy);
    try {
      return (await x.stat(id)).powerState;
    } finally {
      await x.close();
    }
  };
  const saving: boolean[] = [];
  const saves = countCalls(SimStateStore.prototype, 'save');
  // Each journal line holds a VM's whole state: with this, more than a page, so no append fits
  // in what the journal's last page has left (one may be written in part, and is cut off).
  const big = { xenstoreData: { 'vm-data/pad': 'x'.repeat(8192) } };
  let b = backend(dir, 8192, { saveRetryMs: 5, onSaving: (works) => saving.push(works) });
  try {
    for (const id of ['guest', 'op1', 'op2']) {
      await b.add(config(dir, id, 256 * MiB, 256 * MiB, big));
      await b.start(id, { paused: false });
    }
    await waitUntil('the guest agent', async () => (await b.stat('guest')).guestAgent);
    disks.fill('state');

    // a guest-side timer changes what nobody asked about: its save fails in the background
    // (an uncaught throw from the timer would fail this test)
    b.inject('guest', 'guest-shutdown');
    assert.deepEqual(saving, [false]);

    // operations on the full disk (a hard shutdown, which reaches its save at once, and a queued
    // pause) wait for their state to be stored, across failed tries
    let settled = 0;
    const outcome: Record<string, string> = {};
    const shutdown = b.shutdown('op1').then(() => {
      outcome.op1 = crashCopy();
    });
    const pause = b.pause('op2').then(() => {
      outcome.op2 = crashCopy();
    });
    void Promise.allSettled([shutdown, pause]).then(() => settled++);
    await saves.calls(saves.count + 3);
    assert.equal(settled, 0, 'nothing returned while its state could not be saved');

    await disks.free('state');
    await Promise.all([shutdown, pause]);
    assert.deepEqual(saving, [false, true]);
    // what a kill -9 leaves as each returned has what it reported
    assert.equal(await powerIn(outcome.op1!, 'op1'), 'Halted');
    assert.equal(await powerIn(outcome.op2!, 'op2'), 'Paused');

    // lines saved after the failed ones are read back by the next process
    await b.unpause('op2');
    await waitUntil('the guest to halt itself', async () => (await b.stat('guest')).powerState === 'Halted');
    await b.close();
    b = backend(dir);
    assert.equal((await b.stat('op1')).powerState, 'Halted');
    assert.equal((await b.stat('op2')).powerState, 'Running');
    assert.equal((await b.stat('guest')).powerState, 'Halted');
    assert.equal((await b.stat('op2')).xenstoreData?.['vm-data/pad']?.length, 8192);
  } finally {
    saves.restore();
    await b.close();
    await disks.close();
    for (const c of copies) await rm(c, { recursive: true, force: true });
  }
});
