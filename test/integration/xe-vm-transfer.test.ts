// vm-export and vm-import through the real `xe` against a real `xapi serve`: the XVA relayed by
// the client over its own HTTP connection (GET /export, PUT /import), compressed or not, the
// metadata-only export, the imported VM's uuid printed, its disk holding the same bytes, and the
// refusals as cli_operations.ml prints them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { jsonCall, login, waitTask } from './client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { vmRecord } from '../vm-record.js';
import { type XeResult, xe } from './xe-harness.js';

let host: XapiProcess;
let dir: string;
/** The XVA the first test exported: a VM with a 2 MiB disk of random bytes. */
let exportedXva = '';

before(async () => {
  host = await startXapi();
  dir = await mkdtemp(join(tmpdir(), 'xe-vm-transfer-'));
});
after(async () => {
  if (host) await stopXapi(host);
  if (dir) await rm(dir, { recursive: true, force: true });
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function ok(r: XeResult): string {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  assert.equal(r.stderr, '');
  return r.stdout;
}

/** A halted VM without disks, made through the API (xe has no vm-create): its uuid. */
async function newVm(name: string): Promise<string> {
  const session = await login(host.url, PASSWORD);
  const ref = await jsonCall(host.url, 'VM.create', [session, vmRecord(name, { memory: 128 * 2 ** 20 })]);
  return String(await jsonCall(host.url, 'VM.get_uuid', [session, ref]));
}

async function newUuid(...args: string[]): Promise<string> {
  const out = ok(await xe(host, ...args)).trim();
  assert.match(out, UUID, out);
  return out;
}

/** The uuid of the VDI behind the VM's only disk. */
async function diskOf(vm: string): Promise<string> {
  const vbd = ok(await xe(host, 'vbd-list', `vm-uuid=${vm}`, 'type=Disk', '--minimal')).trim();
  return ok(await xe(host, 'vbd-param-get', `uuid=${vbd}`, 'param-name=vdi-uuid')).trim();
}

test('vm-export then vm-import: the new VM printed, its disk holding the same bytes; gzip; metadata', async () => {
  const sr = ok(await xe(host, 'sr-list', 'name-label=Local storage', '--minimal')).trim();
  const vm = await newVm('exported');
  const vdi = await newUuid('vdi-create', `sr-uuid=${sr}`, 'name-label=exported-disk', 'virtual-size=2MiB');
  await newUuid('vbd-create', `vm-uuid=${vm}`, `vdi-uuid=${vdi}`, 'device=0', 'bootable=true');
  const data = randomBytes(2 * 2 ** 20);
  const raw = join(dir, 'disk.raw');
  await writeFile(raw, data);
  ok(await xe(host, 'vdi-import', `uuid=${vdi}`, `filename=${raw}`, 'format=raw'));

  const xva = join(dir, 'vm.xva');
  assert.equal(ok(await xe(host, 'vm-export', `vm=${vm}`, `filename=${xva}`)), 'Export succeeded\n');
  exportedXva = xva;
  const archive = await readFile(xva);
  assert.equal(archive.subarray(0, 7).toString('latin1'), 'ova.xml'); // a tar whose first member is ova.xml

  const imported = await newUuid('vm-import', `filename=${xva}`, `sr-uuid=${sr}`);
  assert.notEqual(imported, vm);
  assert.equal(ok(await xe(host, 'vm-param-get', `uuid=${imported}`, 'param-name=name-label')), 'exported\n');
  const copy = await diskOf(imported);
  assert.notEqual(copy, vdi);
  const back = join(dir, 'back.raw');
  ok(await xe(host, 'vdi-export', `uuid=${copy}`, `filename=${back}`, 'format=raw'));
  assert.ok((await readFile(back)).equals(data));

  // compress=true: gzip, which the import reads as well.
  const gz = join(dir, 'vm.xva.gz');
  assert.equal(ok(await xe(host, 'vm-export', `uuid=${vm}`, `filename=${gz}`, 'compress=true')), 'Export succeeded\n');
  assert.deepEqual([...(await readFile(gz)).subarray(0, 2)], [0x1f, 0x8b]);
  const fromGz = await newUuid('vm-import', `filename=${gz}`);
  assert.equal(ok(await xe(host, 'vm-param-get', `uuid=${fromGz}`, 'param-name=name-label')), 'exported\n');

  // metadata=true: the records only (GET /export_metadata).
  const meta = join(dir, 'vm.meta');
  assert.equal(ok(await xe(host, 'vm-export', `uuid=${vm}`, `filename=${meta}`, 'metadata=true')), 'Export succeeded\n');
  const metaBytes = await readFile(meta);
  assert.equal(metaBytes.subarray(0, 7).toString('latin1'), 'ova.xml');
  assert.ok(metaBytes.length < archive.length);
});

test('vm-export and vm-import refusals, as xe prints them', async () => {
  const vm = await newVm('refused');
  const xva = join(dir, 'refused.xva');
  ok(await xe(host, 'vm-export', `uuid=${vm}`, `filename=${xva}`));
  const again = await xe(host, 'vm-export', `uuid=${vm}`, `filename=${xva}`);
  assert.deepEqual([again.code, again.stdout, again.stderr], [1, '', `Operation failed. Error: Sys_error("${xva}: File exists")\n`]);
  const none = await xe(host, 'vm-export', 'vm=no-such-vm', `filename=${join(dir, 'none.xva')}`);
  assert.deepEqual([none.code, none.stdout, none.stderr], [1, '', 'Error: No matching VMs found\n']);

  const both = await xe(host, 'vm-import', `filename=${xva}`, 'url=http://127.0.0.1/x.xva');
  assert.deepEqual(
    [both.code, both.stdout, both.stderr],
    [1, '', "Invalid arguments. The 'url' and 'filename' parameters should not both be specified.\n"],
  );
  const dry = await xe(host, 'vm-import', `filename=${xva}`, 'dry-run=true');
  assert.deepEqual([dry.code, dry.stdout, dry.stderr], [1, '', 'Only metadata import function support dry-run\n']);
  const missing = await xe(host, 'vm-import', `filename=${join(dir, 'absent.xva')}`);
  assert.deepEqual([missing.code, missing.stderr], [1, `Operation failed. Error: file '${join(dir, 'absent.xva')}' does not exist\n`]);
  const badSr = await xe(host, 'vm-import', `filename=${xva}`, 'sr-uuid=00000000-0000-0000-0000-000000000000');
  assert.deepEqual(
    [badSr.code, badSr.stdout, badSr.stderr],
    [1, '', 'The uuid you supplied was invalid.\ntype: SR\nuuid: 00000000-0000-0000-0000-000000000000\n'],
  );

  // Not an XVA: the import's task fails (IMPORT_ERROR), and its error is the command's.
  const junk = join(dir, 'junk.xva');
  await writeFile(junk, randomBytes(4096));
  const bad = await xe(host, 'vm-import', `filename=${junk}`);
  assert.deepEqual(
    [bad.code, bad.stdout, bad.stderr],
    [1, '', 'The VM could not be imported.\nmsg: the input is neither a tar archive nor gzip or zstd compressed\n'],
  );
});

test("an XVA import moves its task's progress, as event.from shows it between 0 and 1", { timeout: 120_000 }, async () => {
  assert.ok(exportedXva, 'the first test exported an XVA');
  const xva = await readFile(exportedXva);
  const session = await login(host.url, PASSWORD);
  const task = String(await jsonCall(host.url, 'task.create', [session, 'VM import', '']));
  // All but the archive's last 64 KiB (inside its second and last 1 MiB chunk) goes at once; the
  // rest only once an event has shown the task's progress part-way (the import reports each
  // chunk as it starts), so what is seen does not depend on the machine's speed.
  const upload = request(`${host.url}/import?session_id=${session}&task_id=${task}`, {
    method: 'PUT',
    headers: { 'content-length': xva.length },
  });
  const replied = new Promise<number>((resolve, reject) => {
    upload.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    upload.on('error', reject);
  });
  upload.write(xva.subarray(0, xva.length - 65536));
  const seen: number[] = [];
  let token = '';
  while (!seen.some((p) => p > 0 && p < 1)) {
    const batch = (await jsonCall(host.url, 'event.from', [session, [`task/${task}`], token, 30])) as {
      token: string;
      events: { snapshot?: { progress: number } }[];
    };
    token = batch.token;
    for (const e of batch.events) if (e.snapshot) seen.push(e.snapshot.progress);
  }
  upload.end(xva.subarray(xva.length - 65536));
  assert.equal(await replied, 200);
  const done = await waitTask(host.url, session, task);
  assert.deepEqual([done.status, done.progress], ['success', 1]);
  assert.ok(
    seen.every((p, i) => i === 0 || p >= seen[i - 1]!),
    JSON.stringify(seen),
  );
});
