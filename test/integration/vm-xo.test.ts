// A VM's whole life through Xen Orchestra's connector, every state change observed through its
// event loop: template -> clone -> provision -> start -> pause -> unpause -> suspend -> resume ->
// reboot -> shutdown -> destroy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi, stopXapi } from './harness.js';

interface XoObject {
  $ref: string;
  [field: string]: unknown;
}

test('template to destroy through xen-api, states seen through events', { timeout: 120_000 }, async () => {
  const x = await startXapi({ args: ['--sim-boot-ms', '100'] });
  const xapi = new Xapi({ url: x.url, auth: { user: 'root', password: PASSWORD }, eventPollDelay: 500 });
  try {
    await xapi.connect();
    await xapi.objectsFetched;
    const seen: string[] = [];
    let vmRef = '';
    xapi.objects.on('update', (objs: Record<string, XoObject>) => {
      for (const o of Object.values(objs)) {
        if (o.$ref === vmRef && seen[seen.length - 1] !== o.power_state) seen.push(o.power_state as string);
      }
    });
    const templates = Object.values(xapi.objects.indexes.type.VM as Record<string, XoObject>).filter((v) => v.is_a_template === true);
    assert.ok(templates.length >= 10, `only ${templates.length} templates`);
    const other = templates.find((t) => t.name_label === 'Other install media');
    assert.ok(other, 'the "Other install media" template exists');

    vmRef = (await xapi.callAsync('VM.clone', other.$ref, 'my-vm')) as string;
    await xapi.call('VM.provision', vmRef);
    const net = Object.values(xapi.objects.indexes.type.network as Record<string, XoObject>).find((n) => n.bridge === 'xenbr0')!;
    await xapi.call('VIF.create', { device: '0', network: net.$ref, VM: vmRef, MAC: '', MTU: 1500, other_config: {}, qos_algorithm_type: '', qos_algorithm_params: {} });
    // Events come as soon as they are durable (no fixed batching delay), so the cache may show the
    // new power state while the operation is still marked: wait for both.
    const waitState = async (state: string) => {
      for (let i = 0; i < 500; i++) {
        const o = xapi.getObjectByRef(vmRef, undefined) as XoObject | undefined;
        if (o?.power_state === state && Object.keys(o.current_operations as object).length === 0) return o;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.fail(`VM never reached ${state} with no operation in the connector's cache`);
    };
    await waitState('Halted');
    // the transitions from here on (updates of the new VM may have been seen before)
    seen.length = 0;
    seen.push('Halted');
    for (const [method, args, state] of [
      ['VM.start', [false, false], 'Running'],
      ['VM.pause', [], 'Paused'],
      ['VM.unpause', [], 'Running'],
      ['VM.suspend', [], 'Suspended'],
      ['VM.resume', [false, false], 'Running'],
      ['VM.clean_reboot', [], 'Running'],
      ['VM.clean_shutdown', [], 'Halted'],
    ] as const) {
      await xapi.callAsync(method, vmRef, ...args);
      const o = await waitState(state);
      assert.deepEqual(o.current_operations, {});
    }
    // The domain is paused while its memory is saved and restored (xenopsd's VM_save/VM_restore);
    // an event may catch that Paused on either side of Suspended.
    const settled = seen.filter((s, i) => !(s === 'Paused' && (seen[i + 1] === 'Suspended' || seen[i - 1] === 'Suspended')));
    assert.deepEqual(settled.filter((s, i) => s !== settled[i - 1]), ['Halted', 'Running', 'Paused', 'Running', 'Suspended', 'Running', 'Halted']);
    await xapi.callAsync('VM.destroy', vmRef);
    for (let i = 0; i < 200 && xapi.getObjectByRef(vmRef, undefined); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(xapi.getObjectByRef(vmRef, undefined), undefined);
  } finally {
    await xapi.disconnect();
    await stopXapi(x);
  }
});
