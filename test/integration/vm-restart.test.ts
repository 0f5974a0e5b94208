// Restart safety of VMs: kill -9 of xapi while VMs run and in the middle of a start. After the
// restart the database agrees with the domain manager: running VMs still run, the half-done
// start is resolved one way or the other, and no current_operations are left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { jsonCall, login } from './client.js';
import { waitUntil } from '../wait.js';

const GiB = 1024 ** 3;

async function makeVm(url: string, s: string, name: string): Promise<string> {
  return (await jsonCall(url, 'VM.create', [
    s,
    {
      name_label: name, name_description: '', user_version: 1, is_a_template: false, affinity: 'OpaqueRef:NULL',
      memory_static_max: GiB, memory_dynamic_max: GiB, memory_dynamic_min: GiB, memory_static_min: GiB,
      VCPUs_params: {}, VCPUs_max: 1, VCPUs_at_startup: 1,
      actions_after_shutdown: 'destroy', actions_after_reboot: 'restart', actions_after_crash: 'restart',
      PV_bootloader: '', PV_kernel: '', PV_ramdisk: '', PV_args: '', PV_bootloader_args: '', PV_legacy_args: '',
      HVM_boot_policy: 'BIOS order', HVM_boot_params: {}, platform: {}, PCI_bus: '', other_config: {}, recommendations: '',
    },
  ])) as string;
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
    const r = (await jsonCall(first.url, 'VM.get_record', [s, starting])) as { current_operations: Record<string, string>; power_state: string };
    return Object.keys(r.current_operations).length > 0 ? r : undefined;
  });
  assert.deepEqual(Object.values(mid.current_operations), ['start']);
  first.kill('SIGKILL');
  await first.exited;

  const second = await startXapi({ stateDir: first.stateDir, address: first.address, args: ['--sim-boot-ms', '0'] });
  try {
    const s2 = await login(second.url, PASSWORD);
    const r = (await jsonCall(second.url, 'VM.get_record', [s2, running])) as { power_state: string; domid: number; current_operations: object };
    assert.equal(r.power_state, 'Running');
    assert.equal(r.domid, domid);
    assert.deepEqual(r.current_operations, {});
    const st = (await jsonCall(second.url, 'VM.get_record', [s2, starting])) as { power_state: string; current_operations: object; allowed_operations: string[] };
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
