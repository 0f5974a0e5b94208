// A shared file SR (type nfs: a path every host of the pool sees) belongs to the pool that made
// it: its garbage collector runs on that pool's coordinator only, so a second pool must not plug
// it. Two real xapi processes, two pools, one directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { type RpcFailure, jsonCall, login } from './client.js';

test('a shared SR is refused to a second pool; the first pool keeps using it', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-shared-'));
  const a = await startXapi();
  const b = await startXapi();
  try {
    const sa = await login(a.url, PASSWORD);
    const sb = await login(b.url, PASSWORD);
    const [hostA] = (await jsonCall(a.url, 'host.get_all', [sa])) as string[];
    const [hostB] = (await jsonCall(b.url, 'host.get_all', [sb])) as string[];
    const dc = { server: '127.0.0.1', serverpath: dir };
    const sr = (await jsonCall(a.url, 'SR.create', [sa, hostA, dc, 0, 'shared', '', 'nfs', 'user', true, {}])) as string;
    const rec = (await jsonCall(a.url, 'SR.get_record', [sa, sr])) as Record<string, unknown>;
    assert.equal(rec.shared, true);
    const [pbdA] = rec.PBDs as string[];
    assert.equal(await jsonCall(a.url, 'PBD.get_currently_attached', [sa, pbdA]), true);
    const vdi = (await jsonCall(a.url, 'VDI.create', [
      sa,
      {
        name_label: 'on shared',
        name_description: '',
        SR: sr,
        virtual_size: 8 * 1024 * 1024,
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: {},
        xenstore_data: {},
        sm_config: {},
        tags: [],
      },
    ])) as string;

    // the second pool can see the SR (probe) but not plug it
    const probe = (await jsonCall(b.url, 'SR.probe', [sb, hostB, dc, 'nfs', {}])) as string;
    assert.ok(probe.includes(`<UUID>${rec.uuid as string}</UUID>`), probe);
    const srB = (await jsonCall(b.url, 'SR.introduce', [sb, rec.uuid, 'shared', '', 'nfs', 'user', true, {}])) as string;
    const pbdB = (await jsonCall(b.url, 'PBD.create', [sb, { host: hostB, SR: srB, device_config: dc, other_config: {} }])) as string;
    await assert.rejects(jsonCall(b.url, 'PBD.plug', [sb, pbdB]), (e: RpcFailure) => {
      assert.deepEqual(e.error, ['SR_NOT_SHARABLE', srB, hostB]);
      return true;
    });
    assert.equal(await jsonCall(b.url, 'PBD.get_currently_attached', [sb, pbdB]), false);
    assert.deepEqual(await jsonCall(b.url, 'SR.get_VDIs', [sb, srB]), []);

    // nothing changed for the owner
    await jsonCall(a.url, 'SR.scan', [sa, sr]);
    assert.deepEqual(await jsonCall(a.url, 'SR.get_VDIs', [sa, sr]), [vdi]);
    // a second PBD for the same host is refused
    await assert.rejects(
      jsonCall(a.url, 'PBD.create', [sa, { host: hostA, SR: sr, device_config: dc, other_config: {} }]),
      (e: RpcFailure) => e.error[0] === 'PBD_EXISTS',
    );
  } finally {
    await stopXapi(a);
    await stopXapi(b);
    await rm(dir, { recursive: true, force: true });
  }
});
