// A full state disk, on a real host whose state directory is a small tmpfs (see small-disk.ts):
// while the disk is full the host keeps answering, reads work, writes fail with OUT_OF_SPACE and
// leave nothing behind in memory; once space is freed, writes work again without a restart;
// every write acknowledged before, during and after survives kill -9; and SIGTERM stops the
// host promptly even while neither its database nor its log can be written.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { RpcFailure, jsonCall, login } from './client.js';
import { SmallDisks } from './small-disk.js';
import { waitUntil, within } from '../wait.js';
import { vmRecord } from '../vm-record.js';

const MiB = 1024 * 1024;

let disks: SmallDisks;
let stateDir: string;
let address: string;

before(async () => {
  disks = await SmallDisks.create({ state: 32 * MiB });
  stateDir = `${disks.path('state')}/xapi`;
});

after(async () => {
  await disks?.close();
});

const start = (addr?: string) => startXapi({ stateDir, address: addr, wrap: disks.enter() });

/** Acknowledged network labels, and what they were last set to. */
const acked = new Map<string, string>(); // ref -> name_label
const refused = new Set<string>(); // labels whose create failed

async function create(x: XapiProcess, session: string, label: string, padding = 0): Promise<string> {
  const ref = (await jsonCall(x.url, 'network.create', [
    session,
    { name_label: label, name_description: 'd'.repeat(padding), MTU: 1500, other_config: {} },
  ])) as string;
  acked.set(ref, label);
  return ref;
}

/** Writes big rows until one is refused; returns that refusal. */
async function writeUntilRefused(x: XapiProcess, session: string, tag: string): Promise<string[]> {
  for (let i = 0; i < 1000; i++) {
    const label = `${tag}-${i}`;
    try {
      await create(x, session, label, 64 * 1024);
    } catch (e) {
      if (!(e instanceof RpcFailure)) throw e;
      refused.add(label);
      return e.error;
    }
  }
  assert.fail('no write was refused on a full disk');
}

const labels = async (x: XapiProcess, session: string) =>
  new Map(
    Object.entries((await jsonCall(x.url, 'network.get_all_records', [session])) as Record<string, { name_label: string }>).map(
      ([ref, r]) => [ref, r.name_label],
    ),
  );

async function assertNothingLost(x: XapiProcess, session: string): Promise<void> {
  const now = await labels(x, session);
  for (const [ref, label] of acked) assert.equal(now.get(ref), label, `acknowledged ${label} (${ref}) was lost`);
  for (const label of now.values()) assert.ok(!refused.has(label), `refused ${label} is there`);
}

test('a full state disk: reads work, writes fail cleanly, recovery without restart, nothing acknowledged lost', {
  timeout: 180_000,
}, async () => {
  let x = await start();
  address = x.address;
  try {
    const session = await login(x.url, PASSWORD);
    const kept = await create(x, session, 'before');
    // a watcher waiting across the failure is not failed by it (it wrote nothing)
    const { token } = (await jsonCall(x.url, 'event.from', [session, ['pool'], '', 0])) as { token: string };
    const watching = jsonCall(x.url, 'event.from', [session, ['pool'], token, 120]);

    disks.fill('state');
    const error = await writeUntilRefused(x, session, 'full');
    assert.deepEqual(error, ['OUT_OF_SPACE', stateDir]);
    // More writes: each is refused with the same error and leaves nothing, or (a small one that
    // fits in what the refused ones had allocated, once the probe lets writes through) stored.
    let name = 'before';
    for (let i = 0; i < 20; i++) {
      try {
        await jsonCall(x.url, 'network.set_name_label', [session, kept, `renamed-${i}`]);
        name = `renamed-${i}`;
      } catch (e) {
        assert.deepEqual((e as RpcFailure).error, ['OUT_OF_SPACE', stateDir]);
      }
      acked.set(kept, name);
      try {
        await create(x, session, `small-${i}`);
      } catch (e) {
        assert.deepEqual((e as RpcFailure).error, ['OUT_OF_SPACE', stateDir]);
        refused.add(`small-${i}`);
      }
    }
    // reads work, and show only what is stored
    assert.equal(((await jsonCall(x.url, 'host.get_all', [session])) as string[]).length, 1);
    assert.equal(await jsonCall(x.url, 'network.get_name_label', [session, kept]), name);
    for (let i = 0; i < 50; i++) await jsonCall(x.url, 'network.get_all', [session]); // more log lines than its buffer holds
    await assertNothingLost(x, session);
    assert.equal(x.proc.exitCode, null);

    // space comes back: writes work again in the same process
    await disks.free('state');
    const deadline = Date.now() + 60_000;
    for (let i = 0; ; i++) {
      try {
        await create(x, session, `after-${i}`);
        break;
      } catch (e) {
        if (!(e instanceof RpcFailure) || e.error[0] !== 'OUT_OF_SPACE' || Date.now() > deadline) throw e;
        refused.add(`after-${i}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await jsonCall(x.url, 'network.set_name_label', [session, kept, 'renamed']);
    acked.set(kept, 'renamed');
    const [pool] = (await jsonCall(x.url, 'pool.get_all', [session])) as string[];
    await jsonCall(x.url, 'pool.add_to_other_config', [session, pool, 'after', 'recovery']);
    const seen = (await watching) as { events: { class: string; operation: string }[] };
    assert.deepEqual(
      seen.events.map((e) => `${e.class} ${e.operation}`),
      ['pool mod'],
    );
    for (let i = 0; i < 20; i++) await create(x, session, `more-${i}`, 1024);
    await assertNothingLost(x, session);

    // kill -9, restart: everything acknowledged is there
    x.kill('SIGKILL');
    await x.exited;
    x = await start(address);
    await assertNothingLost(x, await login(x.url, PASSWORD));
  } finally {
    await stopXapi(x, true);
  }
});

test('SIGTERM stops a host whose disk is full, promptly, losing nothing it acknowledged', { timeout: 180_000 }, async () => {
  let x = await start(address);
  try {
    const session = await login(x.url, PASSWORD);
    for (let i = 0; i < 5; i++) await create(x, session, `term-${i}`, 1024);
    disks.fill('state');
    await writeUntilRefused(x, session, 'term-full');
    for (let i = 0; i < 50; i++) await jsonCall(x.url, 'network.get_all', [session]); // the log cannot be written either
    x.kill('SIGTERM');
    const stopped = await within('xapi to stop on SIGTERM', x.exited).catch(() => 'still running');
    assert.equal(stopped, 0, `xapi did not stop on SIGTERM:\n${x.output().slice(-2000)}`);

    await disks.free('state');
    x = await start(address);
    await assertNothingLost(x, await login(x.url, PASSWORD));
  } finally {
    await stopXapi(x, true);
  }
});

const GiB = 1024 ** 3;

async function makeVm(x: XapiProcess, s: string, name: string): Promise<string> {
  return (await jsonCall(x.url, 'VM.create', [s, vmRecord(name, { memory: GiB })])) as string;
}

/** Polls until `cond` holds (a wait on a condition, bounded only to fail instead of hanging). */
const until = (what: string, cond: () => Promise<boolean>) => waitUntil(what, cond, { timeoutMs: 60_000, intervalMs: 100 });

// (The ordering of guest timers against the outage cannot be observed from outside; the
// in-process tests pin that: test/unit/full-disk.test.ts and the simulator's own test.)
test('running VMs on a full disk: the host stays up, and once space is back the database agrees with the domains', {
  timeout: 180_000,
}, async () => {
  const dir = `${disks.path('state')}/vms`;
  const startVms = () => startXapi({ stateDir: dir, address, wrap: disks.enter(), args: ['--sim-boot-ms', '1500'] });
  let x = await startVms();
  try {
    let s = await login(x.url, PASSWORD);
    const running = await makeVm(x, s, 'running');
    const booting = await makeVm(x, s, 'booting');
    await jsonCall(x.url, 'VM.start', [s, running, false, false]);
    const task = (await jsonCall(x.url, 'Async.VM.start', [s, booting, false, false])) as string;
    // the start is marked, and a read's reply waits for the mark to be stored: the domain is on its way
    await until('the start to be under way', async () =>
      Object.values((await jsonCall(x.url, 'VM.get_current_operations', [s, booting])) as Record<string, string>).includes('start'),
    );
    disks.fill('state');
    await writeUntilRefused(x, s, 'vms-full');
    assert.equal(x.proc.exitCode, null, `xapi died on a full disk:\n${x.output().slice(-2000)}`);

    await disks.free('state');
    // the domain manager went on meanwhile: the database catches up, and no mark is left behind
    await until('the start to finish', async () => (await jsonCall(x.url, 'task.get_status', [s, task])) !== 'pending');
    for (const vm of [running, booting]) {
      await until('the database to say Running', async () => (await jsonCall(x.url, 'VM.get_power_state', [s, vm])) === 'Running');
      await until(
        'no operation left on the VM',
        async () => Object.keys((await jsonCall(x.url, 'VM.get_current_operations', [s, vm])) as object).length === 0,
      );
    }
    x.kill('SIGKILL');
    await x.exited;
    x = await startVms();
    s = await login(x.url, PASSWORD);
    for (const vm of [running, booting]) {
      assert.equal(await jsonCall(x.url, 'VM.get_power_state', [s, vm]), 'Running');
      await jsonCall(x.url, 'VM.hard_shutdown', [s, vm]);
    }
  } finally {
    await stopXapi(x, true);
  }
});
