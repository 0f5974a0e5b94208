// VM settings as xapi changes them (message_forwarding.ml, xapi_vm.ml): making and unmaking
// templates, the memory and VCPU setters with their errors and parameters, power_state_reset,
// and no state a domain passes through during an operation leaking into events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newStruct, type RpcStruct } from '../../src/rpc/rpc.js';
import { GiB, MiB, vmHost, waitFor } from './vm-host.js';

const VCPU_RULE = 'VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max';

test('VM.set_is_a_template: the make_into_template operation, refused for a running VM', async () => {
  const t = await vmHost();
  try {
    const vm = await t.makeVm('tpl');
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual(await t.err('VM.set_is_a_template', t.s, vm, true), ['VM_BAD_POWER_STATE', vm, 'halted', 'running']);
    assert.equal((await t.vmRec(vm)).is_a_template, false);
    await t.ok('VM.hard_shutdown', t.s, vm);

    await t.host.db.update('VM', vm, { ha_always_run: true });
    const metrics = (await t.vmRec(vm)).metrics as string;
    await t.ok('VM.set_is_a_template', t.s, vm, true);
    let r = await t.vmRec(vm);
    assert.equal(r.is_a_template, true);
    assert.equal(r.ha_always_run, false);
    // a template has no metrics
    assert.equal(r.metrics, 'OpaqueRef:NULL');
    assert.deepEqual(await t.err('VM_metrics.get_record', t.s, metrics), ['HANDLE_INVALID', 'VM_metrics', metrics]);
    assert.deepEqual(r.current_operations, newStruct());
    // what a template may do, recomputed as the operation ended
    assert.deepEqual(r.allowed_operations, [
      'destroy',
      'metadata_export',
      'export',
      'changing_NVRAM',
      'changing_shadow_memory',
      'changing_static_range',
      'changing_dynamic_range',
      'migrate_send',
      'provision',
      'copy',
      'clone',
    ]);
    assert.deepEqual(await t.err('VM.start', t.s, vm, false, false), ['VM_IS_TEMPLATE', vm, 'start']);
    assert.deepEqual(await t.err('VM.set_is_a_template', t.s, vm, true), ['VM_IS_TEMPLATE', vm, 'make_into_template']);

    // back to a VM: it can start again
    await t.ok('VM.set_is_a_template', t.s, vm, false);
    r = await t.vmRec(vm);
    assert.equal(r.is_a_template, false);
    assert.ok((r.allowed_operations as string[]).includes('start'));
    await t.ok('VM.start', t.s, vm, false, false);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('VM.set_memory keeps static_min: a value below it is refused and changes nothing', async () => {
  const t = await vmHost();
  try {
    const vm = await t.makeVm('mem', GiB);
    assert.deepEqual(await t.err('VM.set_memory', t.s, vm, BigInt(512 * MiB)), ['MEMORY_CONSTRAINT_VIOLATION_ORDER']);
    assert.equal((await t.vmRec(vm)).memory_static_min, BigInt(GiB));
    await t.ok('VM.set_memory', t.s, vm, BigInt(2 * GiB));
    const r = await t.vmRec(vm);
    assert.deepEqual(
      [r.memory_static_min, r.memory_dynamic_min, r.memory_dynamic_max, r.memory_static_max, r.memory_target],
      [GiB, 2 * GiB, 2 * GiB, 2 * GiB, 2 * GiB].map(BigInt),
    );
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual(await t.err('VM.set_memory', t.s, vm, BigInt(GiB)), ['VM_BAD_POWER_STATE', vm, 'halted', 'running']);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('the single-bound memory setters are the range setters, with their power states and checks', async () => {
  const t = await vmHost();
  try {
    const range = {
      memory_static_min: BigInt(GiB),
      memory_dynamic_min: BigInt(GiB),
      memory_dynamic_max: BigInt(2 * GiB),
      memory_static_max: BigInt(2 * GiB),
    };
    const vm = await t.makeVm('bounds', 2 * GiB, range);
    // static bounds: changing_static_range, for a halted VM
    assert.deepEqual(await t.err('VM.set_memory_static_min', t.s, vm, BigInt((3 * GiB) / 2)), ['MEMORY_CONSTRAINT_VIOLATION_ORDER']);
    await t.ok('VM.set_memory_static_max', t.s, vm, BigInt(4 * GiB));
    await t.ok('VM.set_memory_static_min', t.s, vm, BigInt(512 * MiB));
    let r = await t.vmRec(vm);
    assert.deepEqual([r.memory_static_min, r.memory_static_max], [BigInt(512 * MiB), BigInt(4 * GiB)]);
    // dynamic bounds: changing_dynamic_range, halted or running; memory_target follows dynamic_min
    await t.ok('VM.set_memory_dynamic_max', t.s, vm, BigInt(3 * GiB));
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual(await t.err('VM.set_memory_static_max', t.s, vm, BigInt(8 * GiB)), ['VM_BAD_POWER_STATE', vm, 'halted', 'running']);
    await t.ok('VM.set_memory_dynamic_min', t.s, vm, BigInt(768 * MiB));
    r = await t.vmRec(vm);
    assert.deepEqual([r.memory_dynamic_min, r.memory_dynamic_max], [BigInt(768 * MiB), BigInt(3 * GiB)]);
    assert.deepEqual(await t.err('VM.set_memory_dynamic_max', t.s, vm, BigInt(5 * GiB)), ['MEMORY_CONSTRAINT_VIOLATION_ORDER']);
    // raising dynamic_min of a running VM beyond the host: needed and free in KiB, as xapi reports
    const free = Number(await t.ok('host.compute_free_memory', t.s, t.host.hostRef));
    const wanted = 768 * MiB + free + 16 * MiB;
    const e = await t.err('VM.set_memory_dynamic_range', t.s, vm, BigInt(wanted), BigInt(wanted));
    assert.deepEqual(e, ['HOST_NOT_ENOUGH_FREE_MEMORY', String(Math.trunc((wanted - 768 * MiB) / 1024)), String(Math.trunc(free / 1024))]);
    r = await t.vmRec(vm);
    assert.deepEqual([r.memory_dynamic_min, r.memory_dynamic_max], [BigInt(768 * MiB), BigInt(3 * GiB)]);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test("VCPU setters: xapi's INVALID_VALUE, VCPUs_max only when halted, VCPUs_at_startup any time, not on dom0", async () => {
  const t = await vmHost();
  try {
    const vm = await t.makeVm('cpus');
    assert.deepEqual(await t.err('VM.set_VCPUs_max', t.s, vm, 1n), ['INVALID_VALUE', VCPU_RULE, '1']);
    assert.deepEqual(await t.err('VM.set_VCPUs_max', t.s, vm, 0n), ['INVALID_VALUE', VCPU_RULE, '0']);
    assert.deepEqual(await t.err('VM.set_VCPUs_at_startup', t.s, vm, 0n), ['INVALID_VALUE', VCPU_RULE, '0']);
    assert.deepEqual(await t.err('VM.set_VCPUs_at_startup', t.s, vm, 3n), ['INVALID_VALUE', VCPU_RULE, '3']);
    await t.ok('VM.set_VCPUs_max', t.s, vm, 4n);
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual(await t.err('VM.set_VCPUs_max', t.s, vm, 3n), ['VM_BAD_POWER_STATE', vm, 'halted', 'running']);
    await t.ok('VM.set_VCPUs_at_startup', t.s, vm, 3n);
    assert.equal((await t.vmRec(vm)).VCPUs_at_startup, 3n);
    await t.ok('VM.hard_shutdown', t.s, vm);
    assert.deepEqual(await t.err('VM.set_VCPUs_at_startup', t.s, t.dom0, 1n), [
      'OPERATION_NOT_ALLOWED',
      'set_VCPUs_at_startup is not allowed on dom0',
    ]);
    assert.deepEqual(await t.err('VM.set_VCPUs_max', t.s, t.dom0, 1n), ['OPERATION_NOT_ALLOWED', 'This operation is not allowed on dom0']);
  } finally {
    await t.close();
  }
});

test('VM.power_state_reset: DOMAIN_EXISTS names the VM only; a suspended VM is reset to Halted', async () => {
  const t = await vmHost();
  try {
    assert.deepEqual(await t.err('VM.power_state_reset', t.s, t.dom0), ['CANNOT_RESET_CONTROL_DOMAIN', t.dom0]);
    const vm = await t.makeVm('reset');
    await t.ok('VM.start', t.s, vm, false, false);
    assert.deepEqual(await t.err('VM.power_state_reset', t.s, vm), ['DOMAIN_EXISTS', vm]);
    await t.waitAgent(vm);
    await t.ok('VM.suspend', t.s, vm);
    await t.ok('VM.power_state_reset', t.s, vm);
    const r = await t.vmRec(vm);
    assert.equal(r.power_state, 'Halted');
    assert.equal(r.resident_on, 'OpaqueRef:NULL');
    assert.equal(r.domid, -1n);
    assert.ok((r.allowed_operations as string[]).includes('start'));
  } finally {
    await t.close();
  }
});

test('an event.from watcher never sees the Paused a domain passes through during start, suspend and resume', async () => {
  // slow enough builds that a leaked Paused would sit in the database for many polls
  const t = await vmHost({ bootTimeMs: 300, agentDelayMs: 50 });
  try {
    const vm = await t.makeVm('watched');
    let token = ((await t.ok('event.from', t.s, ['vm'], '', 0)) as RpcStruct).token as string;
    const seen: string[] = [];
    let stop = false;
    const watcher = (async () => {
      while (!stop) {
        const batch = (await t.ok('event.from', t.s, [`vm/${vm}`], token, 0.2)) as RpcStruct;
        token = batch.token as string;
        for (const e of batch.events as RpcStruct[]) {
          const state = (e.snapshot as RpcStruct | undefined)?.power_state as string | undefined;
          if (state && seen[seen.length - 1] !== state) seen.push(state);
        }
      }
    })();
    await t.ok('VM.start', t.s, vm, false, false);
    await t.waitAgent(vm);
    await t.ok('VM.suspend', t.s, vm);
    await t.ok('VM.resume', t.s, vm, false, false);
    await waitFor(async () => seen[seen.length - 1] === 'Running', 'the watcher seeing the resumed VM');
    stop = true;
    await watcher;
    assert.ok(!seen.includes('Paused'), `seen: ${seen.join(' ')}`);
    // (the start's own writes before the domain runs may show the VM still Halted)
    assert.deepEqual(
      seen.filter((state) => state !== 'Halted'),
      ['Running', 'Suspended', 'Running'],
    );
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});
