// XVA format layer: round trips through writeXva -> readXva, judged also by Python's tarfile,
// xml.etree and xmlrpc.client as independent readers, plus the import error paths.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open as fsOpen, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import * as tarStream from 'tar-stream';
import {
  XVA_CHUNK_SIZE,
  XvaImportError,
  buildOvaXml,
  parseOvaXml,
  readXva,
  writeMetadataTar,
  writeXva,
  xxhashHex,
  sha1Hex,
  type XvaDisk,
  type XvaDiskTarget,
  type XvaHeader,
  type XvaObject,
} from '../../src/storage/xva/index.js';
import { RpcDateTime, newStruct, type Rpc } from '../../src/rpc/rpc.js';

const MiB = 1024 * 1024;
let dir = '';

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'xva-test-'));
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const header: XvaHeader = {
  hostname: 'host1',
  date: '2026-11-25',
  product_version: '8.4.0',
  product_brand: 'XCP-ng',
  build_number: 'release/yangtze/master/58',
  xapi_major: 25,
  xapi_minor: 6,
  export_vsn: 2,
};

function struct(o: Record<string, Rpc>): Rpc {
  return Object.assign(newStruct(), o);
}

const objects: XvaObject[] = [
  {
    class: 'VM',
    id: 'Ref:0',
    snapshot: struct({
      uuid: 'c0ffee00-0000-0000-0000-000000000001',
      name_label: 'a <tricky> & "quoted" name',
      memory_static_max: 1073741824n,
      is_a_template: false,
      VBDs: ['Ref:3', 'Ref:4'],
      other_config: struct({ k: 'v' }),
      snapshot_time: new RpcDateTime('19700101T00:00:00Z'),
    }),
  },
  { class: 'VDI', id: 'Ref:10', snapshot: struct({ virtual_size: '5255225' }) },
  { class: 'VDI', id: 'Ref:2', snapshot: struct({ virtual_size: '2621440' }) },
];

function memDisk(id: string, data: Buffer, reads?: number[]): XvaDisk {
  return {
    id,
    size: data.length,
    async read(offset, length) {
      reads?.push(offset);
      return Buffer.from(data.subarray(offset, offset + length));
    },
  };
}

function memTarget(size: number): XvaDiskTarget & { data: Buffer; writes: number } {
  const t = {
    size,
    data: Buffer.alloc(size),
    writes: 0,
    async write(offset: number, d: Buffer) {
      assert.ok(offset + d.length <= size, 'write within the disk');
      d.copy(t.data, offset);
      t.writes++;
    },
  };
  return t;
}

async function collect(r: AsyncIterable<Buffer | Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** Disk A (Ref:10): random chunk 0, zero chunks 1-2, random 3, zero 4, random partial 5. */
function diskA(): Buffer {
  const b = Buffer.alloc(5 * MiB + 12345);
  randomBytes(MiB).copy(b, 0);
  randomBytes(MiB).copy(b, 3 * MiB);
  randomBytes(12345).copy(b, 5 * MiB);
  return b;
}

/** Disk B (Ref:2): 2.5 MiB, zero chunk 1 in the middle, last chunk partial and all zero. */
function diskB(): Buffer {
  const b = Buffer.alloc(2 * MiB + MiB / 2);
  randomBytes(MiB).copy(b, 0);
  return b;
}

// "Ref:10" sorts before "Ref:2": xapi orders disks by their name as strings.
const EXPECTED_NAMES = [
  'ova.xml',
  ...['00000000', '00000003', '00000005'].flatMap((n) => [`Ref:10/${n}`, `Ref:10/${n}.xxhash`]),
  ...['00000000', '00000002'].flatMap((n) => [`Ref:2/${n}`, `Ref:2/${n}.xxhash`]),
];

async function importBuffer(archive: Buffer, sizes: Record<string, number>, force = false) {
  const targets = new Map<string, ReturnType<typeof memTarget>>();
  let metaSeen: { header: XvaHeader; objects: XvaObject[] } | undefined;
  await readXva(Readable.from([archive]), {
    force,
    async onMetadata(meta) {
      assert.equal(metaSeen, undefined, 'onMetadata is called once');
      metaSeen = meta;
      for (const [id, size] of Object.entries(sizes)) targets.set(id, memTarget(size));
      return targets;
    },
  });
  return { targets, meta: metaSeen! };
}

async function rejectsWith(p: Promise<unknown>, code: string, params?: string[]): Promise<XvaImportError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof XvaImportError, `expected XvaImportError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (params) assert.deepEqual(e.params, params);
    return e;
  }
  assert.fail(`expected ${code}`);
}

const py = (script: string, ...args: string[]): string => execFileSync('python3', ['-c', script, ...args], { encoding: 'utf8' });

let cached: { a: Buffer; b: Buffer; archive: Buffer } | undefined;
async function sample() {
  if (!cached) {
    const a = diskA();
    const b = diskB();
    const archive = await collect(writeXva({ header, objects, disks: [memDisk('Ref:2', b), memDisk('Ref:10', a)], mtime: 1700000000 }));
    cached = { a, b, archive };
  }
  return cached;
}

test('xxhash is XXH64 with seed 0, uppercase, 16 digits; sha1 lowercase', async () => {
  assert.equal(await xxhashHex(Buffer.alloc(0)), 'EF46DB3751D8E999');
  assert.equal(await xxhashHex(Buffer.from('a')), 'D24EC4F1A98C6E5B');
  assert.equal(sha1Hex(Buffer.from('abc')), 'a9993e364706816aba3e25717850c26c9cd0d89d');
});

test('round trip of two disks through writeXva -> readXva', async () => {
  const { a, b, archive } = await sample();
  const progress: number[] = [];
  const targets = new Map([
    ['Ref:10', memTarget(a.length)],
    ['Ref:2', memTarget(b.length)],
  ]);
  await readXva(Readable.from([archive]), {
    onMetadata: async (meta) => {
      assert.deepEqual(meta.header, header);
      assert.equal(meta.objects.length, 3);
      // rpclib writes ints untagged, so they come back as strings (as in xapi, whose typed
      // unmarshalling then accepts either).
      const vm = meta.objects[0]!.snapshot as Record<string, Rpc>;
      assert.equal(vm['memory_static_max'], '1073741824');
      assert.deepEqual(meta.objects.slice(1), objects.slice(1));
      assert.deepEqual({ ...vm, memory_static_max: 1073741824n }, { ...(objects[0]!.snapshot as object) });
      return targets;
    },
    onProgress: (f) => progress.push(f),
  });
  assert.ok(targets.get('Ref:10')!.data.equals(a));
  assert.ok(targets.get('Ref:2')!.data.equals(b));
  // All-zero chunks are not written to the (fresh, sparse) targets.
  assert.equal(targets.get('Ref:10')!.writes, 3);
  assert.equal(targets.get('Ref:2')!.writes, 1);
  assert.equal(progress.at(-1), 1);
  for (let i = 1; i < progress.length; i++) assert.ok(progress[i]! >= progress[i - 1]!);
});

test('export progress goes from 0 to 1 over the disk bytes', async () => {
  const seen: number[] = [];
  await collect(writeXva({ header, objects, disks: [memDisk('Ref:1', Buffer.alloc(3 * MiB))], onProgress: (f) => seen.push(f) }));
  assert.deepEqual(seen.slice(0, 3), [1 / 3, 2 / 3, 1]);
  assert.equal(seen.at(-1), 1);
});

test("Python's tarfile reads the archive: names, order, sizes, checksums", async () => {
  const { a, b, archive } = await sample();
  const file = path.join(dir, 'sample.xva');
  writeFileSync(file, archive);
  const out = py(
    `import tarfile, sys, json
t = tarfile.open(sys.argv[1])
print(json.dumps([[m.name, m.size, m.isfile(), t.extractfile(m).read().decode('latin1') if m.name.endswith('.xxhash') else None] for m in t.getmembers()]))`,
    file,
  );
  const members = JSON.parse(out) as [string, number, boolean, string | null][];
  assert.deepEqual(
    members.map((m) => m[0]),
    EXPECTED_NAMES,
  );
  assert.ok(
    members.every((m) => m[2]),
    'all members are regular files (no directory entries)',
  );
  const sizes = Object.fromEntries(members.map((m) => [m[0], m[1]]));
  assert.equal(sizes['Ref:10/00000000'], MiB);
  assert.equal(sizes['Ref:10/00000005'], 12345);
  assert.equal(sizes['Ref:2/00000002'], MiB / 2);
  assert.equal(sizes['Ref:10/00000000.xxhash'], 16);
  const sums = Object.fromEntries(members.filter((m) => m[3] !== null).map((m) => [m[0], m[3]]));
  assert.equal(sums['Ref:10/00000003.xxhash'], await xxhashHex(a.subarray(3 * MiB, 4 * MiB)));
  assert.equal(sums['Ref:2/00000002.xxhash'], await xxhashHex(b.subarray(2 * MiB)));
  assert.match(sums['Ref:2/00000000.xxhash']!, /^[0-9A-F]{16}$/);
});

test("ova.xml is a bare XML-RPC value that Python's xml.etree and xmlrpc.client read", async () => {
  const { archive } = await sample();
  const xml = buildOvaXml(header, objects);
  assert.ok(xml.startsWith('<value><struct><member><name>version</name>'), 'no XML declaration, bare <value>');
  // The member in the archive is exactly this document.
  assert.equal(archive.subarray(512, 512 + Buffer.byteLength(xml)).toString('utf8'), xml);
  const file = path.join(dir, 'ova.xml');
  writeFileSync(file, xml);
  const out = py(
    `import sys, json, xml.etree.ElementTree as ET, xmlrpc.client
doc = open(sys.argv[1]).read()
root = ET.fromstring(doc)
assert root.tag == 'value'
(v,), _ = xmlrpc.client.loads('<methodResponse><params><param>' + doc + '</param></params></methodResponse>')
print(json.dumps({'version': v['version'], 'ids': [o['id'] for o in v['objects']], 'classes': [o['class'] for o in v['objects']], 'name': v['objects'][0]['snapshot']['name_label'], 'vbds': v['objects'][0]['snapshot']['VBDs']}))`,
    file,
  );
  const r = JSON.parse(out);
  // rpclib writes ints untagged, so generic XML-RPC readers see strings.
  assert.deepEqual(r.version, {
    hostname: 'host1',
    date: '2026-11-25',
    product_version: '8.4.0',
    product_brand: 'XCP-ng',
    build_number: 'release/yangtze/master/58',
    xapi_major: '25',
    xapi_minor: '6',
    export_vsn: '2',
  });
  assert.deepEqual(r.ids, ['Ref:0', 'Ref:10', 'Ref:2']);
  assert.deepEqual(r.classes, ['VM', 'VDI', 'VDI']);
  assert.equal(r.name, 'a <tricky> & "quoted" name');
  assert.deepEqual(r.vbds, ['Ref:3', 'Ref:4']);
  // And back.
  const back = parseOvaXml(xml);
  assert.deepEqual(back.header, header);
  assert.deepEqual(
    back.objects.map((o) => o.id),
    ['Ref:0', 'Ref:10', 'Ref:2'],
  );
  assert.equal(buildOvaXml(back.header, back.objects), xml, 'parse then build gives the same document');
  // With an XML declaration and typed ints (other writers), missing export_vsn -> 0.
  const other = parseOvaXml(
    '<?xml version="1.0"?>\n<value><struct><member><name>version</name><value><struct>' +
      ['hostname', 'date', 'product_version', 'product_brand', 'build_number']
        .map((k) => `<member><name>${k}</name><value>x</value></member>`)
        .join('') +
      '<member><name>xapi_major</name><value><int>1</int></value></member><member><name>xapi_minor</name><value><i4>2</i4></value></member>' +
      '</struct></value></member><member><name>objects</name><value><array><data/></array></value></member></struct></value>',
  );
  assert.equal(other.header.xapi_major, 1);
  assert.equal(other.header.xapi_minor, 2);
  assert.equal(other.header.export_vsn, 0);
});

test('writeMetadataTar holds only ova.xml', async () => {
  const file = path.join(dir, 'meta.tar');
  writeFileSync(file, await collect(writeMetadataTar(header, objects)));
  const out = py(
    `import tarfile, sys\nt = tarfile.open(sys.argv[1])\nprint([m.name for m in t.getmembers()], t.extractfile('ova.xml').read().decode() == sys.argv[2])`,
    file,
    buildOvaXml(header, objects),
  );
  assert.equal(out.trim(), "['ova.xml'] True");
  // And it imports as an archive with no disks.
  const { meta } = await importBuffer(await collect(writeMetadataTar(header, objects)), {});
  assert.equal(buildOvaXml(meta.header, meta.objects), buildOvaXml(header, objects));
});

/** Offset of the data of a member in an uncompressed archive. */
function memberDataOffset(archive: Buffer, name: string): number {
  let off = 0;
  while (off + 512 <= archive.length) {
    const n = archive.toString('utf8', off, off + 100).replace(/\0.*$/s, '');
    if (n === '') break;
    const size = parseInt(archive.toString('ascii', off + 124, off + 135), 8);
    if (n === name) return off + 512;
    off += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error(`no member ${name}`);
}

test('a corrupted chunk fails the checksum check; force=true imports anyway', async () => {
  const { a, b, archive } = await sample();
  const bad = Buffer.from(archive);
  const at = memberDataOffset(bad, 'Ref:10/00000003') + 100;
  bad[at]! ^= 0xff;
  const e = await rejectsWith(importBuffer(bad, { 'Ref:10': a.length, 'Ref:2': b.length }), 'IMPORT_ERROR');
  assert.match(
    e.params[0]!,
    /^INTERNAL_ERROR: \[ Stream_vdi\.Invalid_checksum\("Block Ref:10\/00000003 checksum failed: original = [0-9A-F]{16}; recomputed = [0-9A-F]{16}"\) \]$/,
  );
  const { targets } = await importBuffer(bad, { 'Ref:10': a.length, 'Ref:2': b.length }, true);
  const got = targets.get('Ref:10')!.data;
  assert.notEqual(got[3 * MiB + 100], a[3 * MiB + 100]);
  got[3 * MiB + 100]! ^= 0xff;
  assert.ok(got.equals(a));
  assert.ok(targets.get('Ref:2')!.data.equals(b));
});

test('a truncated stream -> IMPORT_ERROR_PREMATURE_EOF', async () => {
  const { a, b, archive } = await sample();
  for (const cut of [100, 700, memberDataOffset(archive, 'Ref:10/00000003') + 5000, archive.length - 1024 - 100]) {
    await rejectsWith(importBuffer(archive.subarray(0, cut), { 'Ref:10': a.length, 'Ref:2': b.length }), 'IMPORT_ERROR_PREMATURE_EOF', []);
  }
  // Gzip cut short, too.
  const gz = zlib.gzipSync(archive);
  await rejectsWith(
    importBuffer(gz.subarray(0, gz.length >> 1), { 'Ref:10': a.length, 'Ref:2': b.length }),
    'IMPORT_ERROR_PREMATURE_EOF',
    [],
  );
});

async function packTar(entries: [string, Buffer | string][]): Promise<Buffer> {
  const pack = tarStream.pack();
  for (const [name, data] of entries) pack.entry({ name }, data);
  pack.finalize();
  return collect(pack as unknown as AsyncIterable<Buffer>);
}

test('first member other than ova.xml -> IMPORT_ERROR_UNEXPECTED_FILE', async () => {
  const tar = await packTar([
    ['foo.txt', 'hello'],
    ['ova.xml', buildOvaXml(header, objects)],
  ]);
  await rejectsWith(importBuffer(tar, {}), 'IMPORT_ERROR_UNEXPECTED_FILE', ['ova.xml', 'foo.txt']);
  // Not a tar and not compressed.
  await rejectsWith(importBuffer(Buffer.alloc(4096, 'x'), {}), 'IMPORT_ERROR');
  // Malformed metadata.
  await rejectsWith(importBuffer(await packTar([['ova.xml', '<value><struct></struct></value>']]), {}), 'IMPORT_ERROR', [
    "Failed to find key 'version' in header",
  ]);
});

test('gzip round trip (and zstd only where Node.js has it)', async () => {
  const { a, b } = await sample();
  const gz = await collect(writeXva({ header, objects, disks: [memDisk('Ref:2', b), memDisk('Ref:10', a)], compression: 'gzip' }));
  assert.deepEqual([...gz.subarray(0, 2)], [0x1f, 0x8b]);
  const { targets } = await importBuffer(gz, { 'Ref:10': a.length, 'Ref:2': b.length });
  assert.ok(targets.get('Ref:10')!.data.equals(a));
  assert.ok(targets.get('Ref:2')!.data.equals(b));
  const hasZstd = typeof (zlib as unknown as Record<string, unknown>)['createZstdCompress'] === 'function';
  const zstdFrame = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(600)]);
  if (!hasZstd) {
    await rejectsWith(importBuffer(zstdFrame, {}), 'IMPORT_ERROR', ['zstd compression is not supported']);
    assert.throws(() => writeXva({ header, objects, disks: [], compression: 'zstd' }), /zstd/);
  } else {
    const zs = await collect(writeXva({ header, objects, disks: [memDisk('Ref:2', b), memDisk('Ref:10', a)], compression: 'zstd' }));
    const r = await importBuffer(zs, { 'Ref:10': a.length, 'Ref:2': b.length });
    assert.ok(r.targets.get('Ref:10')!.data.equals(a));
  }
});

test('older archives: .checksum (SHA-1) members, directory entries, checksum table', async () => {
  const disk = Buffer.alloc(3 * MiB + 1000);
  randomBytes(MiB).copy(disk, 0);
  randomBytes(1000).copy(disk, 3 * MiB);
  const c0 = disk.subarray(0, MiB);
  const c3 = disk.subarray(3 * MiB);
  const entries = (vsn: number): [string, Buffer | string][] => [
    ['ova.xml', buildOvaXml({ ...header, export_vsn: vsn }, objects)],
    ['Ref:7/00000000', c0],
    ['Ref:7/00000000.checksum', sha1Hex(c0)],
    ['Ref:7/00000003', c3],
    ['Ref:7/00000003.checksum', sha1Hex(c3)],
  ];
  const { targets } = await importBuffer(await packTar(entries(2)), { 'Ref:7': disk.length });
  assert.ok(targets.get('Ref:7')!.data.equals(disk));

  // A directory member (which xapi never writes) is tolerated.
  const withDir = tarStream.pack();
  const e = entries(2);
  withDir.entry({ name: e[0]![0] }, e[0]![1]);
  withDir.entry({ name: 'Ref:7/', type: 'directory' });
  for (const [n, d] of e.slice(1)) withDir.entry({ name: n }, d);
  withDir.finalize();
  const r2 = await importBuffer(await collect(withDir as unknown as AsyncIterable<Buffer>), { 'Ref:7': disk.length });
  assert.ok(r2.targets.get('Ref:7')!.data.equals(disk));

  // export_vsn 1: a checksum table member follows the disks (pre-Miami layout).
  const table = (sums: Record<string, string>) =>
    '<value><struct>' +
    Object.entries(sums)
      .map(([k, v]) => `<member><name>${k}</name><value>${v}</value></member>`)
      .join('') +
    '</struct></value>';
  const good = { 'Ref:7/00000000': sha1Hex(c0), 'Ref:7/00000003': sha1Hex(c3) };
  const r3 = await importBuffer(await packTar([...entries(1), ['checksums.xml', table(good)]]), { 'Ref:7': disk.length });
  assert.ok(r3.targets.get('Ref:7')!.data.equals(disk));
  const wrong = { ...good, 'Ref:7/00000003': sha1Hex(Buffer.from('nope')) };
  await rejectsWith(
    importBuffer(await packTar([...entries(1), ['checksums.xml', table(wrong)]]), { 'Ref:7': disk.length }),
    'IMPORT_ERROR_SOME_CHECKSUMS_FAILED',
    [],
  );
  await importBuffer(await packTar([...entries(1), ['checksums.xml', table(wrong)]]), { 'Ref:7': disk.length }, true);

  // Uppercase SHA-1 does not match: xapi compares the text exactly.
  const upper = entries(2).map(([n, d]): [string, Buffer | string] => [n, n.endsWith('.checksum') ? String(d).toUpperCase() : d]);
  await rejectsWith(importBuffer(await packTar(upper), { 'Ref:7': disk.length }), 'IMPORT_ERROR');
});

test('chunk names must increase; a chunk of another disk is refused', async () => {
  const c = randomBytes(MiB);
  const sum = await xxhashHex(c);
  const base: [string, Buffer | string][] = [['ova.xml', buildOvaXml(header, objects)]];
  const dup = await packTar([
    ...base,
    ['Ref:1/00000000', c],
    ['Ref:1/00000000.xxhash', sum],
    ['Ref:1/00000000', c],
    ['Ref:1/00000000.xxhash', sum],
  ]);
  const e1 = await rejectsWith(importBuffer(dup, { 'Ref:1': 3 * MiB }), 'IMPORT_ERROR');
  assert.match(e1.params[0]!, /Invalid XVA file/);
  const other = await packTar([...base, ['Ref:2/00000000', c], ['Ref:2/00000000.xxhash', sum]]);
  const e2 = await rejectsWith(importBuffer(other, { 'Ref:1': MiB }), 'IMPORT_ERROR');
  assert.match(e2.params[0]!, /expected VDI chunk prefixed Ref:1; got Ref:2\/00000000/);
  // A disk whose data is missing altogether: end of archive while expecting chunks.
  await rejectsWith(importBuffer(await packTar(base), { 'Ref:1': MiB }), 'IMPORT_ERROR_PREMATURE_EOF');
});

test("xapi's keep-alive chunks (empty, numbered in sequence) do not shift the data", async () => {
  // On a slow link xapi's exporter writes an empty chunk under the next number and carries on
  // with the same offset under the number after: the importer must place data by counting.
  const c0 = randomBytes(MiB);
  const c1 = randomBytes(MiB);
  const c2 = randomBytes(1000);
  const x = async (b: Buffer) => xxhashHex(b);
  const tar = await packTar([
    ['ova.xml', buildOvaXml(header, objects)],
    ['Ref:1/00000000', c0],
    ['Ref:1/00000000.xxhash', await x(c0)],
    ['Ref:1/00000001', Buffer.alloc(0)],
    ['Ref:1/00000001.xxhash', await x(Buffer.alloc(0))],
    ['Ref:1/00000002', c1],
    ['Ref:1/00000002.xxhash', await x(c1)],
    ['Ref:1/00000003', c2],
    ['Ref:1/00000003.xxhash', await x(c2)],
  ]);
  const { targets } = await importBuffer(tar, { 'Ref:1': 2 * MiB + 1000 });
  assert.ok(targets.get('Ref:1')!.data.equals(Buffer.concat([c0, c1, c2])));
});

test('small and chunk-aligned disks; an input that breaks off -> IMPORT_ERROR_PREMATURE_EOF', async () => {
  const small = randomBytes(4000);
  const aligned = Buffer.alloc(3 * MiB); // all zeros: only the first and last chunks are stored
  const archive = await collect(
    writeXva({ header, objects, disks: [memDisk('Ref:1', small), memDisk('Ref:2', aligned), memDisk('Ref:3', Buffer.alloc(0))] }),
  );
  const file = path.join(dir, 'small.xva');
  writeFileSync(file, archive);
  const names = py(`import tarfile, sys\nprint(' '.join(m.name for m in tarfile.open(sys.argv[1])))`, file).trim().split(' ');
  assert.deepEqual(names, [
    'ova.xml',
    'Ref:1/00000000',
    'Ref:1/00000000.xxhash',
    'Ref:2/00000000',
    'Ref:2/00000000.xxhash',
    'Ref:2/00000002',
    'Ref:2/00000002.xxhash',
  ]);
  const { targets } = await importBuffer(archive, { 'Ref:1': small.length, 'Ref:2': aligned.length, 'Ref:3': 0 });
  assert.ok(targets.get('Ref:1')!.data.equals(small));
  assert.ok(targets.get('Ref:2')!.data.equals(aligned));

  const broken = new Readable({ read() {} });
  broken.push(archive.subarray(0, 3000));
  setImmediate(() => broken.destroy());
  await rejectsWith(
    readXva(broken, { onMetadata: async () => new Map([['Ref:1', memTarget(small.length)]]) }),
    'IMPORT_ERROR_PREMATURE_EOF',
  );
});

test('allocated() hint: holes are not read, first and last chunks always written', async () => {
  const data = Buffer.alloc(10 * MiB);
  randomBytes(MiB + 10).copy(data, 4 * MiB);
  const reads: number[] = [];
  const disk = memDisk('Ref:5', data, reads);
  disk.allocated = async function* () {
    yield { offset: 4 * MiB, length: MiB + 10 };
    yield { offset: 20 * MiB, length: MiB }; // past the end: ignored
  };
  const archive = await collect(writeXva({ header, objects, disks: [disk] }));
  assert.deepEqual(
    reads.map((r) => r / MiB),
    [0, 4, 5, 9],
  );
  const { targets } = await importBuffer(archive, { 'Ref:5': data.length });
  assert.ok(targets.get('Ref:5')!.data.equals(data));
});

test('abort signal stops the export', async () => {
  const ac = new AbortController();
  const stream = writeXva({ header, objects, disks: [memDisk('Ref:1', Buffer.alloc(64 * MiB))], signal: ac.signal });
  let n = 0;
  await assert.rejects(
    (async () => {
      for await (const c of stream) {
        n += (c as Buffer).length;
        if (n > 2 * MiB) ac.abort();
      }
    })(),
  );
  assert.ok(n < 16 * MiB);
});

test('4 GiB sparse disk round trip with bounded memory', async () => {
  const size = 4 * 1024 * MiB;
  // The source is synthetic (zeros plus a few random regions) rather than a sparse file: reading
  // 4 GiB of file holes costs seconds of page-cache work that says nothing about the format layer.
  // No allocated() hint, so the writer reads and zero-checks all 4096 chunks (the worst case).
  const regions = [0, 7 * MiB + 123, 2048 * MiB - 5, size - 300 * 1024];
  const blobs = regions.map(() => randomBytes(300 * 1024));
  const buf = Buffer.allocUnsafe(XVA_CHUNK_SIZE); // reused, as the XvaDisk contract allows
  let reads = 0;
  const disk: XvaDisk = {
    id: 'Ref:1',
    size,
    async read(offset, length) {
      reads++;
      // Every 64th chunk is full of data (64 MiB in all), so buffering data would show too.
      const idx = offset / XVA_CHUNK_SIZE;
      const b = buf.subarray(0, length).fill(idx % 64 === 32 ? (idx & 0xff) | 1 : 0);
      regions.forEach((r, i) => {
        const blob = blobs[i]!;
        const from = Math.max(r, offset);
        const to = Math.min(r + blob.length, offset + length);
        if (from < to) blob.copy(b, from - offset, from - r, to - r);
      });
      return b;
    },
  };
  const dst = path.join(dir, 'dst.img');
  const fout: FileHandle = await fsOpen(dst, 'w+');
  await fout.truncate(size);
  try {
    global.gc?.();
    const m0 = process.memoryUsage();
    const base = m0.rss;
    let peak = base;
    let peakBuffers = m0.arrayBuffers;
    const sample = () => {
      const m = process.memoryUsage();
      peak = Math.max(peak, m.rss);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers);
    };
    const timer = setInterval(sample, 10);
    let written = 0;
    try {
      await readXva(writeXva({ header, objects, disks: [disk] }), {
        async onMetadata() {
          return new Map([
            [
              'Ref:1',
              {
                size,
                async write(offset: number, data: Buffer) {
                  written += data.length;
                  await fout.write(data, 0, data.length, offset);
                },
              },
            ],
          ]);
        },
      });
    } finally {
      clearInterval(timer);
    }
    sample();
    assert.equal(reads, 4096);
    const grew = (peak - base) / MiB;
    const buffers = (peakBuffers - m0.arrayBuffers) / MiB;
    if (process.env['XVA_TEST_VERBOSE']) console.log(`RSS growth ${grew.toFixed(1)} MiB, Buffer growth ${buffers.toFixed(1)} MiB`);
    assert.ok(grew < 150, `RSS grew by ${grew.toFixed(1)} MiB`);
    assert.ok(buffers < 150, `Buffers grew by ${buffers.toFixed(1)} MiB`);
    // Only chunks holding data were written: 64 data chunks, each region touching at most 2 more.
    assert.ok(written <= 72 * MiB, `wrote ${written} bytes`);
    for (let idx = 32; idx < 4096; idx += 64 * 9) {
      const b = Buffer.alloc(MiB);
      await fout.read(b, 0, MiB, idx * MiB);
      const expect = Buffer.alloc(MiB, (idx & 0xff) | 1);
      for (let i = 0; i < regions.length; i++) {
        const r = regions[i]!;
        const from = Math.max(r, idx * MiB);
        const to = Math.min(r + blobs[i]!.length, (idx + 1) * MiB);
        if (from < to) blobs[i]!.copy(expect, from - idx * MiB, from - r, to - r);
      }
      assert.ok(b.equals(expect), `data chunk ${idx}`);
    }
    for (let i = 0; i < regions.length; i++) {
      const b = Buffer.alloc(blobs[i]!.length);
      await fout.read(b, 0, b.length, regions[i]!);
      assert.ok(b.equals(blobs[i]!), `region ${i}`);
    }
    const hole = Buffer.alloc(MiB);
    await fout.read(hole, 0, MiB, 3000 * MiB);
    assert.ok(hole.equals(Buffer.alloc(MiB)));
    assert.equal((await fout.stat()).size, size);
  } finally {
    await fout.close();
  }
});

test('SHA-1 and xxhash helpers agree with node:crypto / known vectors', () => {
  assert.equal(sha1Hex(Buffer.alloc(0)), createHash('sha1').digest('hex'));
  assert.equal(XVA_CHUNK_SIZE, MiB);
});
