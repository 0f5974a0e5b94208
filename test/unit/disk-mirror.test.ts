// A leaf's mirror during a storage migration (src/storage/mirror.ts): what a domain's handle
// writes goes to the sink as the whole sectors it touched, read back from the leaf; a handle
// open when the mirror is asked for holds it back (a write under way would be missed); the
// receiving end's bitmap keeps mirrored sectors from the bulk copy.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { openDiskFile } from '../../src/storage/disk-file.js';
import { isMirrored, MirroredSectors, startMirror } from '../../src/storage/mirror.js';
import { createDynamic } from '../../src/storage/vhd/index.js';

const MiB = 1024 * 1024;

async function leaf(): Promise<{ path: string; done(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-mirror-'));
  const path = join(dir, 'leaf.vhd');
  await (await createDynamic(path, 8 * MiB)).close();
  return { path, done: () => rm(dir, { recursive: true, force: true }) };
}

test('a mirrored leaf sends each write as the sectors it touched, as they are after it', async () => {
  const l = await leaf();
  try {
    const sent: { offset: number; data: Buffer }[] = [];
    const mirror = await startMirror(l.path, { write: async (offset, data) => void sent.push({ offset, data: Buffer.from(data) }) });
    assert.equal(isMirrored(l.path), true);
    const disk = await openDiskFile(l.path, { readOnly: false });
    await disk.write(4096, Buffer.alloc(4096, 1));
    await disk.write(700, Buffer.from('unaligned')); // inside sector 1
    await disk.close();
    assert.equal(mirror.writes, 2);
    assert.equal(sent[0]!.offset, 4096);
    assert.equal(sent[0]!.data.length, 4096);
    assert.equal(sent[1]!.offset, 512);
    assert.equal(sent[1]!.data.length, 512);
    assert.equal(sent[1]!.data.subarray(700 - 512, 700 - 512 + 9).toString(), 'unaligned');
    mirror.stop();
    assert.equal(isMirrored(l.path), false);
    // not mirrored any more: nothing sent
    const again = await openDiskFile(l.path, { readOnly: false });
    await again.write(0, Buffer.alloc(512, 2));
    await again.close();
    assert.equal(sent.length, 2);
  } finally {
    await l.done();
  }
});

test('a mirror starts once no handle on the leaf is open; a failing sink fails the mirror, not the write', async () => {
  const l = await leaf();
  try {
    const open = await openDiskFile(l.path, { readOnly: false });
    let started = false;
    const starting = startMirror(l.path, {
      write: async () => {
        throw new Error('the other host is gone');
      },
    }).then((m) => {
      started = true;
      return m;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(started, false, 'waits for the open handle');
    await open.write(0, Buffer.alloc(512, 3)); // before the mirror: not sent
    await open.close();
    const mirror = await starting;
    const disk = await openDiskFile(l.path, { readOnly: false });
    await disk.write(0, Buffer.alloc(512, 4)); // the leaf has it whatever the sink does
    assert.equal((await disk.read(0, 1))[0], 4);
    await disk.close();
    assert.match(String(mirror.failed?.message), /gone/);
    mirror.stop();
  } finally {
    await l.done();
  }
});

test("the receiving end's bitmap: the bulk copy writes only what no mirrored write gave", () => {
  const m = new MirroredSectors(64 * 1024);
  assert.deepEqual(m.unmirrored(0, 4096), [{ offset: 0, length: 4096 }]);
  m.mark(1024, 512);
  m.mark(3072, 1024);
  assert.deepEqual(m.unmirrored(0, 4096), [
    { offset: 0, length: 1024 },
    { offset: 1536, length: 1536 },
  ]);
  assert.deepEqual(m.unmirrored(8192, 1000), [{ offset: 8192, length: 1000 }]);
});
