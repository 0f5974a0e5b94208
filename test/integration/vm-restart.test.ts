// Restart safety of VMs: kill -9 of xapi while VMs run, in the middle of a start, and amid many
// starts and shutdowns. After the restart the database agrees with the domain manager: running
// VMs still run, every acknowledged power state stands, half-done operations are resolved one
// way or the other, and no current_operations are left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { jsonCall, login } from './client.js';
import { waitUntil } from '../wait.js';
import { vmRecord } from '../vm-record.js';

const GiB = 1024 ** 3;

async function makeVm(url: string, s: string, name: string, memory = GiB): Promise<string> {
  return (await jsonCall(url, 'VM.create', [s, vmRecord(name, { memory })])) as string;
}

test('kill -9 while VMs run and during a start: the database agrees with the domain manager', { timeout: 120_000 }, async () => {
  // Building a domain takes 5 s: the window in which the second start is seen under way.
  const first = await startXapi({ args: ['--sim-boot-ms', '5000'] });
  const s = await login(first.url, PASSWORD);
  const running = await makeVm(first.url, s, 'running');
  await jsonCall(first.url, 'VM.start', [s, running, false, false]);
  const domid = ((await jsonCall(first.url, 'VM.get_record', [s, running])) as { domid: number }).domid;
  const starting = await makeVm(first.url, s, 'starting');
  const task = (await jsonCall(first.url, 'Async.VM.start', [s, starting, false, false])) as string;
  // The start is under way: current_operations holds it. The
  // call that sees the mark answers after the group commit, so the mark is on disk for the kill.
  const mid = await waitUntil('the start to be marked', async () => {
    const r = (await jsonCall(first.url, 'VM.get_record', [s, starting])) as {
      current_operations: Record<string, string>;
      power_state: string;
    };
    return Object.keys(r.current_operations).length > 0 ? r : undefined;
  });
  assert.deepEqual(Object.values(mid.current_operations), ['start']);
  first.kill('SIGKILL');
  await first.exited;

  const second = await startXapi({ stateDir: first.stateDir, address: first.address, args: ['--sim-boot-ms', '0'] });
  try {
    const s2 = await login(second.url, PASSWORD);
    const r = (await jsonCall(second.url, 'VM.get_record', [s2, running])) as {
      power_state: string;
      domid: number;
      current_operations: object;
    };
    assert.equal(r.power_state, 'Running');
    assert.equal(r.domid, domid);
    assert.deepEqual(r.current_operations, {});
    const st = (await jsonCall(second.url, 'VM.get_record', [s2, starting])) as {
      power_state: string;
      current_operations: object;
      allowed_operations: string[];
    };
    assert.deepEqual(st.current_operations, {});
    assert.ok(['Running', 'Halted'].includes(st.power_state), st.power_state);
    // whichever it is, the VM can be driven on from there
    if (st.power_state === 'Halted') await jsonCall(second.url, 'VM.start', [s2, starting, false, false]);
    await jsonCall(second.url, 'VM.clean_shutdown', [s2, starting]);
    const t = (await jsonCall(second.url, 'task.get_record', [s2, task])) as { status: string };
    assert.equal(t.status, 'cancelled');
    await jsonCall(second.url, 'VM.hard_shutdown', [s2, running]);
  } finally {
    await stopXapi(second);
    await rm(first.stateDir, { recursive: true, force: true });
  }
});

test('kill -9 amid many starts and shutdowns: every acknowledged power state survives', { timeout: 120_000 }, async () => {
  const first = await startXapi({ args: ['--sim-boot-ms', '0', '--sim-shutdown-ms', '0'] });
  const s = await login(first.url, PASSWORD);
  const vms = await Promise.all(Array.from({ length: 24 }, (_, i) => makeVm(first.url, s, `churn-${i}`, 64 * 1024 ** 2)));
  // The last power state each VM's client was told of; a VM with a call out when the process
  // dies may have gone either way. Once enough calls are done, half the VMs stop (a quarter
  // once running, a quarter once halted), so their state is known, while the others go on
  // until the kill.
  const told = new Map<string, { power: 'Running' | 'Halted'; domid?: number }>();
  const out = new Set<string>();
  let acks = 0;
  let holding = false;
  let killed = false;
  let enough!: () => void;
  const reached = new Promise<void>((resolve) => (enough = resolve));
  const acked = (vm: string, state: { power: 'Running' | 'Halted'; domid?: number }) => {
    out.delete(vm);
    told.set(vm, state);
    if (++acks >= 3 * vms.length) enough();
  };
  const churn = async (vm: string, stopAt?: 'Running' | 'Halted') => {
    try {
      while (!(holding && stopAt !== undefined && told.get(vm)?.power === stopAt)) {
        out.add(vm);
        if (told.get(vm)?.power !== 'Running') {
          await jsonCall(first.url, 'VM.start', [s, vm, false, false]);
          acked(vm, { power: 'Running', domid: (await jsonCall(first.url, 'VM.get_domid', [s, vm])) as number });
        } else {
          await jsonCall(first.url, 'VM.hard_shutdown', [s, vm]);
          acked(vm, { power: 'Halted' });
        }
      }
    } catch (e) {
      if (!killed) throw e;
    }
  };
  const stopping = vms.filter((_, i) => i % 2 === 0).map((vm, i) => churn(vm, i % 2 ? 'Running' : 'Halted'));
  const going = vms.filter((_, i) => i % 2 === 1).map((vm) => churn(vm));
  await Promise.race([reached, ...going]);
  holding = true;
  await Promise.all(stopping);
  killed = true;
  first.kill('SIGKILL');
  const known = new Map([...told].filter(([vm]) => !out.has(vm)));
  await first.exited;
  await Promise.all(going);
  assert.ok(known.size >= vms.length / 2);
  assert.ok([...known.values()].some((k) => k.power === 'Running') && [...known.values()].some((k) => k.power === 'Halted'));

  const second = await startXapi({ stateDir: first.stateDir, address: first.address, args: ['--sim-boot-ms', '0'] });
  try {
    const s2 = await login(second.url, PASSWORD);
    for (const vm of vms) {
      const r = (await jsonCall(second.url, 'VM.get_record', [s2, vm])) as {
        power_state: string;
        domid: number;
        current_operations: object;
      };
      assert.deepEqual(r.current_operations, {}, vm);
      const was = known.get(vm);
      if (was) {
        assert.equal(r.power_state, was.power, `${vm} was acknowledged ${was.power}`);
        if (was.domid !== undefined) assert.equal(r.domid, was.domid, `${vm} keeps its domain`);
      } else assert.ok(['Running', 'Halted'].includes(r.power_state), r.power_state);
      // whichever way it went, the VM can be driven on from there
      if (r.power_state === 'Running') await jsonCall(second.url, 'VM.hard_shutdown', [s2, vm]);
      else await jsonCall(second.url, 'VM.start', [s2, vm, false, false]);
    }
  } finally {
    await stopXapi(second);
    await rm(first.stateDir, { recursive: true, force: true });
  }
});
