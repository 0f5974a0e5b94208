// Xen Orchestra's own connector (npm `xen-api`) against a real `xapi serve` process, over each
// transport: it logs in, fetches every class it finds in system.listMethods, follows changes
// through its event.from loop, makes sync and Async calls, and gets errors with their params.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall } from './client.js';
import { waitForEmitted, type Emitter } from '../wait.js';

interface XoObject {
  $type: string;
  $ref: string;
  [field: string]: unknown;
}

let x: XapiProcess;
before(async () => {
  x = await startXapi();
});
after(async () => {
  await stopXapi(x);
});

/** Until `check` holds in the connector's cache, re-checked as its event loop updates it. */
const inCache = <T>(xapi: { objects: Emitter }, check: () => T, what: string) =>
  waitForEmitted(what, xapi.objects, ['add', 'update', 'remove'], check);

for (const [transport, secure] of [
  ['auto', false],
  ['json-rpc', true],
  ['xml-rpc', false],
  ['xml-rpc', true],
] as const) {
  test(`xen-api connector over ${transport} (${secure ? 'https' : 'http'})`, { timeout: 60_000 }, async () => {
    const xapi = new Xapi({
      url: secure ? x.httpsUrl : x.url,
      auth: { user: 'root', password: PASSWORD },
      allowUnauthorized: true,
      transport,
      eventPollDelay: 500,
    });
    try {
      await xapi.connect();
      assert.equal(xapi.status, 'connected');
      await xapi.objectsFetched;

      const byType = (t: string) => Object.values((xapi.objects.indexes.type[t] ?? {}) as Record<string, XoObject>);
      const [pool] = byType('pool');
      const [host] = byType('host');
      assert.ok(pool && host, 'pool and host arrived');
      assert.equal(pool.master, host.$ref);
      // int64: a string over XML-RPC, a number over JSON-RPC, as xapi sends them
      assert.equal(host.API_version_major, transport === 'xml-rpc' ? '2' : 2);
      assert.equal(host.API_version_minor, transport === 'xml-rpc' ? '23' : 23);
      const dom0 = byType('VM').find((v) => v.is_control_domain === true);
      assert.ok(dom0, 'control domain arrived');
      assert.equal(dom0.power_state, 'Running');
      assert.equal(byType('host_cpu').length, 4);
      assert.ok(byType('PIF').some((p) => p.management === true));

      // sync call
      assert.equal(await xapi.call('VM.get_name_label', dom0.$ref), dom0.name_label);

      // Async call: the connector waits for the task through its event loop and parses task.result
      const label = `xo-${transport}-${secure}`;
      const ref = (await xapi.callAsync('network.create', {
        name_label: label,
        name_description: '',
        MTU: 1500,
        other_config: {},
      })) as string;
      assert.match(ref, /^OpaqueRef:/);
      const net = await inCache(xapi, () => xapi.getObjectByRef(ref, undefined) as XoObject | undefined, 'the new network');
      assert.equal(net.name_label, label);

      // changes arrive through event.from
      await xapi.call('network.set_name_label', ref, `${label}-renamed`);
      await inCache(xapi, () => (xapi.getObjectByRef(ref) as XoObject).name_label === `${label}-renamed`, 'mod event');
      await xapi.call('network.destroy', ref);
      await inCache(xapi, () => xapi.getObjectByRef(ref, undefined) === undefined, 'del event');

      // What Xen Orchestra calls routinely: the server clock (for its stats), the licence state,
      // plugins. Over XML-RPC the connector turns the datetime into a Date; JSON-RPC gives xapi's text.
      const before = Math.floor(Date.now() / 1000) * 1000;
      const time = (await xapi.call('host.get_servertime', host.$ref)) as Date | string;
      const stamp = time instanceof Date ? time : new Date(`${time.slice(0, 4)}-${time.slice(4, 6)}-${time.slice(6)}`);
      if (transport === 'xml-rpc') assert.ok(time instanceof Date, 'a dateTime.iso8601 value');
      else assert.match(time as string, /^\d{8}T\d{2}:\d{2}:\d{2}Z$/);
      assert.ok(stamp.getTime() >= before && stamp.getTime() <= Date.now(), `the server's clock: ${String(time)}`);
      assert.deepEqual(await xapi.call('pool.get_license_state', pool.$ref), { edition: 'xcp-ng', expiry: 'never' });
      await assert.rejects(
        xapi.call('host.call_plugin', host.$ref, 'updater.py', 'check_update', {}),
        (e: { code: string; params: string[] }) => {
          assert.equal(e.code, 'XENAPI_MISSING_PLUGIN');
          assert.deepEqual(e.params, ['updater.py']);
          return true;
        },
      );

      // errors, sync and through a task
      await assert.rejects(xapi.call('VM.get_record', 'OpaqueRef:nope'), (e: { code: string; params: string[] }) => {
        assert.equal(e.code, 'HANDLE_INVALID');
        assert.deepEqual(e.params, ['VM', 'OpaqueRef:nope']);
        return true;
      });
      await assert.rejects(xapi.callAsync('network.destroy', 'OpaqueRef:nope'), (e: { code: string; params: string[] }) => {
        assert.equal(e.code, 'HANDLE_INVALID');
        assert.deepEqual(e.params, ['network', 'OpaqueRef:nope']);
        return true;
      });
    } finally {
      await xapi.disconnect();
    }
  });
}

test('the connector logs in again after its session is destroyed', { timeout: 60_000 }, async () => {
  const xapi = new Xapi({ url: x.url, auth: { user: 'root', password: PASSWORD }, eventPollDelay: 500 });
  try {
    await xapi.connect();
    await xapi.objectsFetched;
    const old = xapi.sessionId as string;
    await jsonCall(x.url, 'session.logout', [old]);
    const pools = (await xapi.call('pool.get_all')) as string[];
    assert.equal(pools.length, 1);
    assert.notEqual(xapi.sessionId, old);
  } finally {
    await xapi.disconnect();
  }
});
