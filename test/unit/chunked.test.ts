// xapi's chunked raw upload format: {offset u64 LE, length u32 LE, data}*, then a zero header.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { importChunked } from '../../src/storage/chunked.js';
import { ImportError } from '../../src/storage/vhd/index.js';

const chunk = (offset: number, data: Buffer) => {
  const h = Buffer.alloc(12);
  h.writeBigUInt64LE(BigInt(offset), 0);
  h.writeUInt32LE(data.length, 8);
  return Buffer.concat([h, data]);
};
const END = Buffer.alloc(12);

function target(size: number) {
  const disk = Buffer.alloc(size);
  return { disk, size, write: async (o: number, d: Buffer) => void d.copy(disk, o) };
}

test('chunks land at their offsets, however the stream is split', async () => {
  const t = target(1 << 20);
  const body = Buffer.concat([chunk(4096, Buffer.alloc(100, 1)), chunk(0, Buffer.alloc(10, 2)), chunk(65536, Buffer.alloc(3000, 3)), END]);
  // one byte at a time: headers and data split across reads
  const written = await importChunked(Readable.from([...body].map((b) => Buffer.from([b]))), t);
  assert.equal(written, 3110);
  assert.ok(t.disk.subarray(0, 10).equals(Buffer.alloc(10, 2)));
  assert.ok(t.disk.subarray(4096, 4196).equals(Buffer.alloc(100, 1)));
  assert.ok(t.disk.subarray(65536, 68536).equals(Buffer.alloc(3000, 3)));
  assert.equal(
    t.disk.subarray(10, 4096).every((b) => b === 0),
    true,
  );
});

test('a missing end marker, a cut chunk or a chunk beyond the disk are refused', async () => {
  const code = async (body: Buffer, size = 1 << 20) => {
    try {
      await importChunked(Readable.from([body]), target(size));
      return 'ok';
    } catch (e) {
      assert.ok(e instanceof ImportError);
      return e.code;
    }
  };
  assert.equal(await code(chunk(0, Buffer.alloc(10))), 'TRUNCATED');
  assert.equal(await code(chunk(0, Buffer.alloc(10)).subarray(0, 15)), 'TRUNCATED');
  assert.equal(await code(Buffer.concat([chunk(1 << 20, Buffer.alloc(1)), END])), 'TOO_LARGE');
  assert.equal(await code(END), 'ok');
});
