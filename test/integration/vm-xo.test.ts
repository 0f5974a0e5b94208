// A VM's whole life through Xen Orchestra's connector, every state change observed through its
// event loop: template -> clone -> provision -> start -> pause -> unpause -> suspend -> resume ->
// reboot -> shutdown -> destroy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { waitForEmitted } from '../wait.js';

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
    // The VM's power states as the connector's events bring them, each change once.
    const seen: string[] = [];
    let last: unknown;
    let vmRef = '';
    xapi.objects.on('update', (objs: Record<string, XoObject>) => {
      for (const o of Object.values(objs)) {
        if (o.$ref === vmRef && o.power_state !== last) {
          last = o.power_state;
          seen.push(last as string);
        }
      }
    });
    const templates = Object.values(xapi.objects.indexes.type.VM as Record<string, XoObject>).filter((v) => v.is_a_template === true);
    assert.ok(templates.length >= 10, `only ${templates.length} templates`);
    const other = templates.find((t) => t.name_label === 'Other install media');
    assert.ok(other, 'the "Other install media" template exists');

    vmRef = (await xapi.callAsync('VM.clone', other.$ref, 'my-vm')) as string;
    await xapi.call('VM.provision', vmRef);
    const net = Object.values(xapi.objects.indexes.type.network as Record<string, XoObject>).find((n) => n.bridge === 'xenbr0')!;
    await xapi.call('VIF.create', {
      device: '0',
      network: net.$ref,
      VM: vmRef,
      MAC: '',
      MTU: 1500,
      other_config: {},
      qos_algorithm_type: '',
      qos_algorithm_params: {},
    });
    // Re-checked each time the connector's event loop updates its cache.
    const inCache = <T>(what: string, check: () => T) => waitForEmitted(what, xapi.objects, ['add', 'update', 'remove'], check);
    // The operation over and its outcome in the cache.
    const waitState = (state: string) =>
      inCache(`the VM ${state} and idle in the connector's cache`, () => {
        const o = xapi.getObjectByRef(vmRef, undefined) as XoObject | undefined;
        return o?.power_state === state && Object.keys(o.current_operations as object).length === 0 ? o : undefined;
      });
    await waitState('Halted');
    let before = 'Halted';
    for (const [method, args, state] of [
      ['VM.start', [false, false], 'Running'],
      ['VM.pause', [], 'Paused'],
      ['VM.unpause', [], 'Running'],
      ['VM.suspend', [], 'Suspended'],
      ['VM.resume', [false, false], 'Running'],
      ['VM.clean_reboot', [], 'Running'],
      ['VM.clean_shutdown', [], 'Halted'],
    ] as const) {
      // Counted from the state just waited for: an update from before (the clone's provisioning,
      // the VIF, or one the cache had before vmRef was known) may still arrive, carrying that
      // same state, and is no change.
      seen.length = 0;
      last = before;
      await xapi.callAsync(method, vmRef, ...args);
      await waitState(state);
      // Each operation shows only where it ends: the Paused a domain passes through while it is
      // built, saved or restored never reaches the events (xapi leaves the VM alone meanwhile).
      assert.ok(
        seen.every((s) => s === state),
        `${method}: states seen ${seen.join(' -> ')}`,
      );
      if (state !== before) assert.ok(seen.length > 0, `${method}: ${state} arrived through an event`);
      before = state;
      // an HVM guest suspends and shuts down cleanly only once its agent has told its features
      if (method === 'VM.start') {
        await inCache(
          'the guest agent reported',
          () => (xapi.getObjectByRef(vmRef) as XoObject).guest_metrics !== 'OpaqueRef:NULL' || undefined,
        );
      }
    }
    await xapi.callAsync('VM.destroy', vmRef);
    await inCache("the VM gone from the connector's cache", () => xapi.getObjectByRef(vmRef, undefined) === undefined);
  } finally {
    await xapi.disconnect();
    await stopXapi(x);
  }
});
