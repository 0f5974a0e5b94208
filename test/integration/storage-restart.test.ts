// kill -9 of xapi in the middle of a disk copy: after a restart the disks made before are all
// there with their data, the half-made copy is gone, nothing stays marked as in progress, and
// the SR takes new work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { jsonCall, login } from './client.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;

function put(url: string, path: string, body: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const u = new URL(path, url);
    const req = request(u, { method: 'PUT', headers: { 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function exportedHash(url: string, session: string, vdi: string): Promise<string> {
  const res = await fetch(`${url}/export_raw_vdi?session_id=${session}&vdi=${vdi}&format=raw`);
  assert.equal(res.status, 200);
  return createHash('sha256')
    .update(Buffer.from(await res.arrayBuffer()))
    .digest('hex');
}

// The limit is a deadline for a hung copy or restart, generous for a loaded machine.
test('kill -9 during VDI.copy: disks survive, the half-made copy goes, no operation stays marked', { timeout: 300_000 }, async () => {
  let x = await startXapi();
  try {
    let s = await login(x.url, PASSWORD);
    const [pool] = (await jsonCall(x.url, 'pool.get_all', [s])) as string[];
    const sr = (await jsonCall(x.url, 'pool.get_default_SR', [s, pool])) as string;
    const vdiRecord = (name: string, size: number) => ({
      name_label: name,
      name_description: '',
      SR: sr,
      virtual_size: size,
      type: 'user',
      sharable: false,
      read_only: false,
      other_config: {},
      xenstore_data: {},
      sm_config: {},
      tags: [],
    });
    const size = 192 * MiB;
    const src = (await jsonCall(x.url, 'VDI.create', [s, vdiRecord('source', size)])) as string;
    const data = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) data.writeUInt32LE(i ^ 0x5a5a5a5a, i);
    assert.equal(await put(x.url, `/import_raw_vdi?session_id=${s}&vdi=${src}`, data), 200);
    // (the PUT's answer ends after the import has finished and the VDI record has been updated)
    assert.ok(((await jsonCall(x.url, 'VDI.get_physical_utilisation', [s, src])) as number) >= size / 2, 'the import wrote its data');
    const before = await exportedHash(x.url, s, src);

    // a long copy, killed while it runs
    await jsonCall(x.url, 'Async.VDI.copy', [s, src, sr, 'OpaqueRef:NULL', 'OpaqueRef:NULL']);
    // Seen marked through a call whose answer waited for the group commit (every answer does,
    // when writes are pending): the mark is on disk when the process is killed.
    await waitUntil(
      'the copy to be seen in progress',
      async () => Object.keys((await jsonCall(x.url, 'VDI.get_current_operations', [s, src])) as object).length > 0,
    );
    x.kill('SIGKILL');
    await x.exited;

    x = await startXapi({ stateDir: x.stateDir });
    s = await login(x.url, PASSWORD);
    assert.deepEqual(await jsonCall(x.url, 'VDI.get_current_operations', [s, src]), {});
    assert.deepEqual(await jsonCall(x.url, 'SR.get_current_operations', [s, sr]), {});
    assert.ok(((await jsonCall(x.url, 'VDI.get_allowed_operations', [s, src])) as string[]).includes('copy'));
    assert.equal(await exportedHash(x.url, s, src), before, 'the source is intact');
    // the half-written copy (it carries the dead task in sm_config import_task) is gone
    assert.deepEqual(await jsonCall(x.url, 'VDI.get_by_name_label', [s, 'source']), [src]);
    // the SR takes new work at once
    const more = (await jsonCall(x.url, 'VDI.create', [s, vdiRecord('after', 4 * MiB)])) as string;
    assert.equal(await jsonCall(x.url, 'VDI.get_virtual_size', [s, more]), 4 * MiB);
    const copy = (await jsonCall(x.url, 'VDI.copy', [s, src, sr, 'OpaqueRef:NULL', 'OpaqueRef:NULL'])) as string;
    assert.equal(await exportedHash(x.url, s, copy), before);
  } finally {
    await stopXapi(x);
  }
});
