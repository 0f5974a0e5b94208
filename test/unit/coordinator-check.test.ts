// The coordinator's stall watch (coordinator-check.ts) on an in-memory host of a two-host pool
// whose other host cannot be reached: after the event loop stalls past STALL_LIMIT_MS, calls
// wait for the check to run again and then run; they are not refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import { memoryHost } from '../../src/host/memory-host.js';
import { CHECKING, guardCoordinator, STALL_LIMIT_MS } from '../../src/host/coordinator-check.js';
import { newRef } from '../../src/api/implicit.js';

test('a coordinator stalled past the limit holds calls until it has checked again, then runs them', { timeout: 60_000 }, async () => {
  const { host, dispatcher, close } = await memoryHost();
  // A second host, at an address nothing answers on: no rival, but a pool worth checking.
  const self = await host.db.get('host', host.hostRef);
  await host.db.create('host', newRef(), { ...self, uuid: randomUUID(), address: '127.77.0.1', name_label: 'other' });
  await host.db.commit();
  const guard = guardCoordinator(host, false, () => undefined);
  host.recheckInProgress = () => guard.recheckInProgress();
  try {
    assert.equal(await guard.started, 'alone');
    assert.equal(host.recheckInProgress(), undefined, 'nothing held while the loop turns');

    // The event loop held past the limit, as a SIGSTOP or a starved process would.
    const end = performance.now() + STALL_LIMIT_MS + 500;
    while (performance.now() < end) {
      // busy
    }
    const held = host.recheckInProgress();
    assert.ok(held, 'the first call after the stall starts the check and waits for it');
    assert.deepEqual(host.emergency, CHECKING, 'a rival asking meanwhile hears that this host is still checking');
    const login = dispatcher.dispatch('session.login_with_password', ['root', 'secret']);
    await held;
    const reply = await login;
    assert.ok(reply.ok, JSON.stringify(reply));
    assert.equal(host.emergency, undefined);
    assert.equal(host.recheckInProgress(), undefined);
  } finally {
    guard.stop();
    await close();
  }
});
