// PUT /import_raw_vdi and GET /export_raw_vdi against one real `xapi serve` process:
//  1. through Xen Orchestra's connector (putResource/getResource with its own tasks): raw upload
//     and export, VHD export judged by qemu-img, VHD import of a qemu-made image, a delta export
//     against a snapshot applied to a copy of that snapshot, and an upload that makes its VDI;
//  2. through plain Node HTTP requests, the bad cases: credentials, unknown formats, path-like
//     VDI names, truncated and oversized VHDs, a connection cut in the middle of an upload;
//  3. a sparse 4 GiB export streams with the server's memory bounded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { request, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execFileSync } from 'node:child_process';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login, waitTask as waitTaskOn } from './client.js';
import { waitUntil, within } from '../wait.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const NULL_REF = 'OpaqueRef:NULL';

/** What these tests use of Xen Orchestra's connector (which ships no type declarations). */
interface XoConnector {
  connect(): Promise<void>;
  readonly objectsFetched: Promise<void>;
  disconnect(): Promise<void>;
  call(method: string, ...args: unknown[]): Promise<unknown>;
  /** A download: the HTTP response (undici's), with the task the connector made for it. */
  getResource(
    path: string,
    opts: { query: Record<string, string> },
  ): Promise<{ headers: IncomingHttpHeaders; body: Readable & { arrayBuffer(): Promise<ArrayBuffer> }; task: Promise<unknown> }>;
  /** An upload; resolves with the task's result. */
  putResource(body: Buffer | (Readable & { length: number }), path: string, opts: { query: Record<string, string> }): Promise<unknown>;
}

let x: XapiProcess;
let xapi: XoConnector;
let dir: string;
let session: string;
let sr: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vdi-transfer-'));
  x = await startXapi();
  xapi = new Xapi({ url: x.url, auth: { user: 'root', password: PASSWORD }, eventPollDelay: 100 });
  await xapi.connect();
  await xapi.objectsFetched;
  session = await login(x.url, PASSWORD);
  const [pool] = (await jsonCall(x.url, 'pool.get_all', [session])) as string[];
  sr = (await jsonCall(x.url, 'pool.get_default_SR', [session, pool])) as string;
});

after(async () => {
  await xapi?.disconnect();
  if (x) await stopXapi(x);
  if (dir) await rm(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function shaOf(stream: AsyncIterable<Buffer | Uint8Array>): Promise<{ hash: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  for await (const c of stream) {
    h.update(c);
    bytes += c.length;
  }
  return { hash: h.digest('hex'), bytes };
}

/** A zero image with random data in a few places (some unaligned, one at the very end). */
function pattern(size: number, seedBlocks: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(size);
  for (const [at, len] of seedBlocks) randomBytes(len).copy(b, at);
  return b;
}

function fileStream(path: string): Readable & { length: number } {
  return Object.assign(createReadStream(path), { length: statSync(path).size });
}

async function call(method: string, ...params: unknown[]): Promise<unknown> {
  return jsonCall(x.url, method, [session, ...params]);
}

async function createVdi(name: string, size = SIZE): Promise<string> {
  return (await xapi.call('VDI.create', {
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
  })) as string;
}

/** The VDI's content exported raw through the connector: sha256 and length. */
async function exportedSha(vdi: string): Promise<{ hash: string; bytes: number }> {
  const res = await xapi.getResource('/export_raw_vdi', { query: { vdi, format: 'raw' } });
  const r = await shaOf(res.body);
  await res.task;
  return r;
}

const waitTask = (task: string) => waitTaskOn(x.url, session, task);

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** A plain HTTP request; `body` is sent with its exact Content-Length unless headers say otherwise. */
function http(method: string, path: string, o: { headers?: Record<string, string>; body?: Buffer | Readable } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { connection: 'close', ...o.headers };
    if (Buffer.isBuffer(o.body) && headers['content-length'] === undefined) headers['content-length'] = String(o.body.length);
    if (o.body === undefined && method === 'PUT') headers['content-length'] ??= '0';
    const req = request({ host: x.address, port: x.httpPort, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (o.body instanceof Readable) o.body.pipe(req);
    else req.end(o.body);
  });
}

const importedVdis = async () =>
  Object.values((await call('VDI.get_all_records')) as Record<string, { name_label: string }>).filter(
    (v) => v.name_label === 'Imported VDI',
  ).length;

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { encoding: 'utf8' });

// ---------------------------------------------------------------------------------------------
// 1. Xen Orchestra's connector

let main = ''; // the 64 MiB VDI of part 1 and its current content
let mainContent: Buffer;
let vhdB = ''; // a qemu-made dynamic VHD (virtual size SIZE) and its raw content
let rawBContent: Buffer;

test('raw upload and raw/VHD export through xen-api', { timeout: 60_000 }, async () => {
  main = await createVdi('transfer main');
  mainContent = pattern(SIZE, [
    [0, 512],
    [5 * MiB + 123, MiB],
    [33 * MiB, 2 * MiB + 7],
    [SIZE - 4096, 4096],
  ]);
  const rawA = join(dir, 'a.raw');
  await writeFile(rawA, mainContent);
  const result = await xapi.putResource(fileStream(rawA), '/import_raw_vdi', { query: { vdi: main, format: 'raw' } });
  assert.equal(result, main, 'the task result is the VDI ref');

  assert.deepEqual(await exportedSha(main), { hash: sha(mainContent), bytes: SIZE });

  // Exported by uuid, as a VHD, judged by qemu-img.
  const uuid = (await xapi.call('VDI.get_uuid', main)) as string;
  const res = await xapi.getResource('/export_raw_vdi', { query: { vdi: uuid, format: 'vhd' } });
  assert.equal(res.headers['content-type'], 'application/vhd');
  assert.match(String(res.headers['content-disposition']), new RegExp(`filename="${uuid}\\.vhd"`));
  const vhd = Buffer.from(await res.body.arrayBuffer());
  await res.task;
  assert.equal(vhd.length, Number(res.headers['content-length']));
  assert.ok(vhd.length < 16 * MiB, `only allocated blocks are exported (${vhd.length} bytes)`);
  const vhdA = join(dir, 'a.vhd');
  await writeFile(vhdA, vhd);
  const info = JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', vhdA)) as { 'virtual-size': number };
  assert.equal(info['virtual-size'], SIZE);
  qemuImg('compare', '-f', 'vpc', vhdA, '-F', 'raw', rawA); // throws unless identical
});

test('import of a qemu-made dynamic VHD through xen-api', { timeout: 60_000 }, async () => {
  rawBContent = pattern(SIZE, [
    [MiB, 3 * MiB],
    [40 * MiB + 512, 1000],
    [SIZE - 512, 512],
  ]);
  const rawB = join(dir, 'b.raw');
  await writeFile(rawB, rawBContent);
  vhdB = join(dir, 'b.vhd');
  qemuImg('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', rawB, vhdB);
  const vdi = await createVdi('from qemu');
  const result = await xapi.putResource(fileStream(vhdB), '/import_raw_vdi', { query: { vdi, format: 'vhd' } });
  assert.equal(result, vdi);
  assert.deepEqual(await exportedSha(vdi), { hash: sha(rawBContent), bytes: SIZE });
});

test('delta export against a snapshot, applied to a copy of the snapshot', { timeout: 60_000 }, async () => {
  assert.ok(main, 'needs the first test');
  const snap = (await xapi.call('VDI.snapshot', main, {})) as string;
  const before = Buffer.from(mainContent);
  // A full image differing in a few blocks (a raw upload writes from offset 0).
  const after = Buffer.from(mainContent);
  randomBytes(4096).copy(after, 10 * MiB);
  randomBytes(MiB).copy(after, 50 * MiB + 77);
  after.fill(0, 5 * MiB + 123, 5 * MiB + 123 + 1000); // data turned back into zeros
  const rawC = join(dir, 'c.raw');
  await writeFile(rawC, after);
  assert.equal(await xapi.putResource(fileStream(rawC), '/import_raw_vdi', { query: { vdi: main } }), main);
  mainContent = after;
  assert.deepEqual(await exportedSha(main), { hash: sha(after), bytes: SIZE });
  assert.deepEqual(await exportedSha(snap), { hash: sha(before), bytes: SIZE }, 'the snapshot kept the old content');

  const res = await xapi.getResource('/export_raw_vdi', { query: { vdi: main, format: 'vhd', base: snap } });
  const delta = Buffer.from(await res.body.arrayBuffer());
  await res.task;
  assert.equal(delta.length, Number(res.headers['content-length']));
  // Only the blocks that changed (2 MiB each: 10, 50 and the one at 5 MiB+123), not the whole image.
  assert.ok(delta.length < 8 * MiB, `delta is ${delta.length} bytes`);
  const deltaFile = join(dir, 'delta.vhd');
  await writeFile(deltaFile, delta);
  // qemu reads the delta as a plain dynamic VHD: the changed blocks, zeros elsewhere.
  assert.equal((JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', deltaFile)) as { 'virtual-size': number })['virtual-size'], SIZE);

  const copy = (await xapi.call('VDI.copy', snap, sr, NULL_REF, NULL_REF)) as string;
  assert.notEqual(copy, snap);
  assert.deepEqual(await exportedSha(copy), { hash: sha(before), bytes: SIZE });
  assert.equal(await xapi.putResource(fileStream(deltaFile), '/import_raw_vdi', { query: { vdi: copy, format: 'vhd' } }), copy);
  assert.deepEqual(await exportedSha(copy), { hash: sha(after), bytes: SIZE }, 'copy of the snapshot + delta = the VDI');
});

test('raw upload to an SR makes a VDI sized by the upload', { timeout: 60_000 }, async () => {
  const size = 8 * MiB;
  const content = pattern(size, [
    [0, 4096],
    [3 * MiB, MiB],
  ]);
  const before = await importedVdis();
  // A stream: the connector first probes with an empty body, which must not make a VDI.
  const vdi = (await xapi.putResource(Object.assign(Readable.from([content]), { length: size }), '/import_raw_vdi', {
    query: { sr_id: sr },
  })) as string;
  assert.equal(await importedVdis(), before + 1, 'one VDI made, none for the probe');
  assert.match(vdi, /^OpaqueRef:/);
  assert.equal(Number(await xapi.call('VDI.get_virtual_size', vdi)), size);
  assert.equal(await xapi.call('VDI.get_name_label', vdi), 'Imported VDI');
  assert.equal(await xapi.call('VDI.get_SR', vdi), sr);
  assert.deepEqual(await exportedSha(vdi), { hash: sha(content), bytes: size });
  // A Buffer body (no probe), by SR uuid.
  const uuid = (await xapi.call('SR.get_uuid', sr)) as string;
  const vdi2 = (await xapi.putResource(content.subarray(0, 2 * MiB), '/import_raw_vdi', { query: { sr_uuid: uuid } })) as string;
  assert.equal(Number(await xapi.call('VDI.get_virtual_size', vdi2)), 2 * MiB);
  assert.deepEqual(await exportedSha(vdi2), { hash: sha(content.subarray(0, 2 * MiB)), bytes: 2 * MiB });
  await xapi.call('VDI.destroy', vdi2);
});

// ---------------------------------------------------------------------------------------------
// 2. Bad requests, plain HTTP

test("chunked upload: only the chunks sent are written (xapi's offset/length protocol)", { timeout: 30_000 }, async () => {
  const vdi = await createVdi('chunked', 8 * MiB);
  const chunk = (offset: number, data: Buffer) => {
    const h = Buffer.alloc(12);
    h.writeBigUInt64LE(BigInt(offset), 0);
    h.writeUInt32LE(data.length, 8);
    return Buffer.concat([h, data]);
  };
  const a = Buffer.alloc(4096, 0xaa);
  const b = Buffer.alloc(MiB, 0xbb);
  const body = Buffer.concat([chunk(512, a), chunk(5 * MiB, b), Buffer.alloc(12)]);
  const res = await http('PUT', `/import_raw_vdi?session_id=${session}&vdi=${vdi}&chunked=true`, { body });
  assert.equal(res.status, 200);
  const task = await waitTask(res.headers['task-id'] as string);
  assert.equal(task.status, 'success', JSON.stringify(task.error_info));
  const expected = Buffer.alloc(8 * MiB);
  a.copy(expected, 512);
  b.copy(expected, 5 * MiB);
  assert.equal((await exportedSha(vdi)).hash, sha(expected));
  // a chunked VHD is refused as xapi refuses it
  const vhd = await http('PUT', `/import_raw_vdi?session_id=${session}&vdi=${vdi}&chunked=true&format=vhd`, { body });
  assert.equal(vhd.status, 404);
  const failed = await waitTask(vhd.headers['task-id'] as string);
  assert.deepEqual(failed.error_info, ['INTERNAL_ERROR', 'Cannot handle chunked VHD']);
});

test("a transfer reports its progress on the caller's task", { timeout: 30_000 }, async () => {
  const task = (await call('task.create', 'slow export', '')) as string;
  const seen = new Set<number>();
  await new Promise<void>((resolve, reject) => {
    const req = request(
      { host: x.address, port: x.httpPort, path: `/export_raw_vdi?session_id=${session}&task_id=${task}&vdi=${main}&format=raw` },
      (res) => {
        assert.equal(res.statusCode, 200);
        assert.equal(res.headers['task-id'], task);
        // a slow reader (the export advances only as fast as it is read) until it has seen the
        // progress part-way: then it reads at full speed, so the test's length does not depend on
        // how fast a loaded machine answers a call per chunk
        res.on('data', () => {
          if ([...seen].some((p) => p > 0 && p < 1)) return;
          res.pause();
          void (call('task.get_progress', task) as Promise<number>).then((p) => {
            seen.add(p);
            res.resume();
          }, reject);
        });
        res.on('end', resolve);
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
  const done = await waitTask(task);
  assert.equal(done.status, 'success');
  assert.equal(done.progress, 1);
  assert.ok(
    [...seen].some((p) => p > 0 && p < 1),
    `progress between 0 and 1 was seen: ${[...seen].join(' ')}`,
  );
});

test('credentials: none, bad, HTTP Basic', { timeout: 30_000 }, async () => {
  assert.ok(main);
  for (const [method, path] of [
    ['PUT', `/import_raw_vdi?vdi=${main}`],
    ['GET', `/export_raw_vdi?vdi=${main}`],
  ] as const) {
    const r = await http(method, path);
    assert.equal(r.status, 401, `${method} ${path}`);
    assert.match(String(r.headers['www-authenticate']), /^Basic realm=/);
  }
  // A task made beforehand and named with a bad session fails with SESSION_AUTHENTICATION_FAILED.
  const task = (await call('task.create', 'upload', '')) as string;
  const r = await http('PUT', `/import_raw_vdi?session_id=OpaqueRef:00000000-0000-0000-0000-000000000000&task_id=${task}&vdi=${main}`, {
    body: randomBytes(4096),
  });
  assert.equal(r.status, 401);
  const rec = await waitTask(task);
  assert.equal(rec.status, 'failure');
  assert.equal((rec.error_info as string[])[0], 'SESSION_AUTHENTICATION_FAILED');
  assert.deepEqual(await exportedSha(main), { hash: sha(mainContent), bytes: SIZE }, 'nothing was written');
  // Wrong password in Basic auth: 401.
  const wrong = await http('GET', `/export_raw_vdi?vdi=${main}`, {
    headers: { authorization: `Basic ${Buffer.from('root:nope').toString('base64')}` },
  });
  assert.equal(wrong.status, 401);

  // HTTP Basic with root's password works.
  const basic = `Basic ${Buffer.from(`root:${PASSWORD}`).toString('base64')}`;
  const ok = await http('GET', `/export_raw_vdi?vdi=${main}&format=raw`, { headers: { authorization: basic } });
  assert.equal(ok.status, 200);
  assert.match(String(ok.headers['task-id']), /^OpaqueRef:/);
  assert.equal(ok.body.length, SIZE);
  assert.equal(sha(ok.body), sha(mainContent));
  // Session in a cookie.
  const viaCookie = await http('GET', `/export_raw_vdi?vdi=${main}&format=raw`, { headers: { cookie: `session_id=${session}` } });
  assert.equal(viaCookie.status, 200);
  assert.equal(sha(viaCookie.body), sha(mainContent));
});

test('unknown format, path-like VDI names', { timeout: 30_000 }, async () => {
  const task = (await call('task.create', 'qcow9', '')) as string;
  const r = await http('PUT', `/import_raw_vdi?session_id=${session}&task_id=${task}&vdi=${main}&format=qcow9`, {
    body: randomBytes(4096),
  });
  assert.equal(r.status, 404, 'as xapi');
  assert.equal(r.headers['task-id'], task);
  const rec = await waitTask(task);
  assert.equal(rec.status, 'failure');
  assert.deepEqual(rec.error_info, ['INTERNAL_ERROR', 'Unknown format qcow9']);
  const ex = await http('GET', `/export_raw_vdi?session_id=${session}&vdi=${main}&format=qcow9`);
  assert.equal(ex.status, 404);
  // A chunked body (no Content-Length) is refused, as xapi does; nothing is written.
  const t2 = (await call('task.create', 'chunked', '')) as string;
  const ch = await http('PUT', `/import_raw_vdi?session_id=${session}&task_id=${t2}&vdi=${main}`, {
    body: Readable.from([randomBytes(4096)]),
  });
  assert.equal(ch.status, 403, 'as xapi');
  const rec2 = await waitTask(t2);
  assert.equal(rec2.status, 'failure');
  assert.match((rec2.error_info as string[]).join(' '), /encoding/);
  assert.deepEqual(await exportedSha(main), { hash: sha(mainContent), bytes: SIZE });

  const passwd = statSync('/etc/passwd');
  const vdisBefore = ((await call('VDI.get_all')) as string[]).length;
  for (const name of ['../../etc/passwd', '/etc/passwd', `..%2F..%2F${encodeURIComponent(x.stateDir)}%2Fxapi.db`]) {
    const t = (await call('task.create', 'path', '')) as string;
    const put = await http('PUT', `/import_raw_vdi?session_id=${session}&task_id=${t}&vdi=${name}`, { body: Buffer.alloc(4096, 0x41) });
    assert.equal(put.status, 404, `PUT vdi=${name}`);
    assert.equal((await waitTask(t)).status, 'failure');
    const get = await http('GET', `/export_raw_vdi?session_id=${session}&vdi=${name}`);
    assert.equal(get.status, 404, `GET vdi=${name}`);
    assert.ok(!get.body.includes('root:'), 'no file content leaked');
    const base = await http('GET', `/export_raw_vdi?session_id=${session}&vdi=${main}&format=vhd&base=${name}`);
    assert.equal(base.status, 404, `GET base=${name}`);
  }
  const after = statSync('/etc/passwd');
  assert.equal(after.mtimeMs, passwd.mtimeMs);
  assert.equal(after.size, passwd.size);
  assert.equal(((await call('VDI.get_all')) as string[]).length, vdisBefore);
});

test('a truncated VHD fails its task and the server keeps serving', { timeout: 30_000 }, async () => {
  assert.ok(vhdB, 'needs the qemu VHD');
  const half = join(dir, 'half.vhd');
  await writeFile(half, await readFile(vhdB));
  await truncate(half, Math.floor(statSync(vhdB).size / 2));
  const vdi = await createVdi('truncated target');
  const task = (await call('task.create', 'truncated', '')) as string;
  const body = await readFile(half);
  const r = await http('PUT', `/import_raw_vdi?session_id=${session}&task_id=${task}&vdi=${vdi}&format=vhd`, { body });
  assert.equal(r.status, 200, 'the answer goes out before the data is read');
  const rec = await waitTask(task);
  assert.equal(rec.status, 'failure');
  assert.match((rec.error_info as string[])[0]!, /^(VDI_IO_ERROR|IMPORT_ERROR)/);
  // Still serving, data and API.
  assert.deepEqual(await exportedSha(main), { hash: sha(mainContent), bytes: SIZE });
  assert.ok(((await call('VDI.get_all')) as string[]).includes(vdi));
});

test('a VHD larger than its target fails with VDI_TOO_LARGE and changes nothing', { timeout: 30_000 }, async () => {
  const big = join(dir, 'big.raw');
  const bigContent = pattern(2 * SIZE, [
    [0, MiB],
    [SIZE + MiB, MiB],
  ]);
  await writeFile(big, bigContent);
  const bigVhd = join(dir, 'big.vhd');
  qemuImg('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', big, bigVhd);
  const task = (await call('task.create', 'too large', '')) as string;
  // The server may cut the connection while the body is still being sent.
  const r = await http('PUT', `/import_raw_vdi?session_id=${session}&task_id=${task}&vdi=${main}&format=vhd`, {
    body: createReadStream(bigVhd),
    headers: { 'content-length': String(statSync(bigVhd).size) },
  }).catch(() => ({ status: 0 }));
  assert.ok([0, 200, 400].includes(r.status), `status ${r.status}`);
  const rec = await waitTask(task);
  assert.equal(rec.status, 'failure');
  assert.equal((rec.error_info as string[])[0], 'VDI_TOO_LARGE');
  assert.deepEqual(await exportedSha(main), { hash: sha(mainContent), bytes: SIZE }, 'the target is unchanged');
});

test('a raw upload to an SR cut mid-body leaves no VDI behind', { timeout: 30_000 }, async () => {
  const before = await importedVdis();
  const task = (await call('task.create', 'cut', '')) as string;
  const req = request({
    host: x.address,
    port: x.httpPort,
    method: 'PUT',
    path: `/import_raw_vdi?session_id=${session}&task_id=${task}&sr_id=${sr}`,
    headers: { 'content-length': String(16 * MiB) },
  });
  req.on('error', () => undefined); // the cut below
  // The server answers 200 once it has made the VDI, before it reads the data (as xapi).
  const answered = new Promise<number>((resolve) =>
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode!);
    }),
  );
  req.write(randomBytes(4 * MiB));
  assert.equal(await answered, 200);
  // Once the server has taken some of the data, the connection is cut.
  await waitUntil('the import to make progress', async () => ((await call('task.get_progress', task)) as number) > 0);
  req.destroy();
  const rec = await waitTask(task);
  assert.equal(rec.status, 'failure');
  assert.equal((rec.error_info as string[])[0], 'VDI_IO_ERROR');
  assert.equal(await importedVdis(), before, 'the VDI the import made was destroyed');
  const records = Object.values((await call('VDI.get_all_records')) as Record<string, { name_label: string; virtual_size: number }>);
  assert.ok(!records.some((v) => v.name_label === 'Imported VDI' && Number(v.virtual_size) === 16 * MiB));
});

test('a client that goes away mid-export fails the task; the VDI exports again', { timeout: 30_000 }, async () => {
  const task = (await call('task.create', 'abort', '')) as string;
  await within(
    '4 MiB of the export',
    new Promise<void>((resolve) => {
      const req = request(
        { host: x.address, port: x.httpPort, path: `/export_raw_vdi?session_id=${session}&task_id=${task}&vdi=${main}` },
        (res) => {
          assert.equal(res.statusCode, 200);
          let got = 0;
          res.on('data', (c: Buffer) => {
            got += c.length;
            if (got >= 4 * MiB) {
              req.destroy();
              resolve();
            }
          });
        },
      );
      req.on('error', () => undefined);
      req.on('close', () => resolve());
      req.end();
    }),
  );
  const rec = await waitTask(task);
  assert.equal(rec.status, 'failure');
  assert.equal((rec.error_info as string[])[0], 'VDI_IO_ERROR');
  assert.deepEqual(await exportedSha(main), { hash: sha(mainContent), bytes: SIZE });
});

// ---------------------------------------------------------------------------------------------
// 3. Memory

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))!;
  return Number(m[1]) * 1024;
}

// 4 GiB cross the loopback (a raw export sends the holes as zeros): seconds on a quiet machine,
// over a minute with other test files' hosts busy on the same two cores. The limit is a deadline
// for a hung export, not a speed check.
test('a sparse 4 GiB VDI exports raw with bounded server memory', { timeout: 300_000 }, async (t) => {
  const size = 4096 * MiB;
  const vdi = await createVdi('sparse 4G', size);
  // A little data at the start (a raw upload may be shorter than the disk).
  const head = pattern(4 * MiB, [[0, 4 * MiB]]);
  assert.equal(await xapi.putResource(head, '/import_raw_vdi', { query: { vdi } }), vdi);
  const rssBefore = rssOf(x.pid);
  let peak = rssBefore;
  const sampler = setInterval(() => (peak = Math.max(peak, rssOf(x.pid))), 50);
  try {
    const r = await new Promise<{ bytes: number; hash: string }>((resolve, reject) => {
      const req = request(
        { host: x.address, port: x.httpPort, path: `/export_raw_vdi?session_id=${session}&vdi=${vdi}&format=raw` },
        (res) => {
          assert.equal(res.statusCode, 200);
          assert.equal(Number(res.headers['content-length']), size);
          const h = createHash('sha256');
          let bytes = 0;
          res.on('data', (c: Buffer) => {
            if (bytes < head.length) h.update(c.subarray(0, Math.min(c.length, head.length - bytes)));
            bytes += c.length;
          });
          res.on('end', () => resolve({ bytes, hash: h.digest('hex') }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end();
    });
    assert.equal(r.bytes, size);
    assert.equal(r.hash, sha(head));
  } finally {
    clearInterval(sampler);
  }
  peak = Math.max(peak, rssOf(x.pid));
  t.diagnostic(`xapi's RSS: ${(rssBefore / MiB).toFixed(0)} MiB before, peak ${(peak / MiB).toFixed(0)} MiB during the export`);
  assert.ok(peak - rssBefore < 200 * MiB, `xapi's RSS grew by ${((peak - rssBefore) / MiB).toFixed(0)} MiB`);
  await xapi.call('VDI.destroy', vdi);
});
