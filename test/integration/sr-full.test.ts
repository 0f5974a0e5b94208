// A disk import that runs out of space, on a real host with a `file` SR on a small tmpfs (see
// small-disk.ts): the upload starts while there is room, the filesystem fills up under it, and
// the import must fail with SR_FULL [requested; maximum] (not INTERNAL_ERROR), remove the VDI it
// made and its file, and leave the SR usable once space is back.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login } from './client.js';
import { SmallDisks } from './small-disk.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
const IMAGE = 16 * MiB;

let disks: SmallDisks;
let x: XapiProcess;
let session: string;
let sr: string;
let srDir: string;

before(async () => {
  disks = await SmallDisks.create({ sr: 24 * MiB });
  x = await startXapi({ wrap: disks.enter() });
  session = await login(x.url, PASSWORD);
  const [host] = (await jsonCall(x.url, 'host.get_all', [session])) as string[];
  sr = (await jsonCall(x.url, 'SR.create', [
    session,
    host,
    { location: disks.path('sr') },
    0,
    'small',
    '',
    'file',
    'user',
    false,
    {},
  ])) as string;
  srDir = join(disks.outside('sr'), (await jsonCall(x.url, 'SR.get_uuid', [session, sr])) as string);
});

after(async () => {
  if (x) await stopXapi(x);
  await disks?.close();
});

const vhds = () => readdirSync(srDir).filter((f) => f.endsWith('.vhd'));

const until = (what: string, cond: () => boolean | Promise<boolean>) => waitUntil(what, cond, { intervalMs: 20 });

/** Starts a raw upload that makes a new VDI; returns the task and a way to send the rest. */
async function startImport(size: number) {
  let received = '';
  const socket = connect(x.httpPort, x.address);
  socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
  socket.on('error', () => undefined); // the server may close while we still send
  await new Promise((r) => socket.once('connect', r));
  socket.write(
    `PUT /import_raw_vdi?session_id=${session}&sr_id=${sr}&format=raw HTTP/1.1\r\nHost: ${x.address}\r\nContent-Length: ${size}\r\n\r\n`,
  );
  await until('the task id', () => /\r\ntask-id: \S+\r\n/i.test(received));
  const task = /\r\ntask-id: (\S+)\r\n/i.exec(received)![1]!;
  return { socket, task };
}

async function outcome(task: string): Promise<{ status: string; error: string[]; result: string }> {
  let status = '';
  await until('the task to finish', async () => {
    status = (await jsonCall(x.url, 'task.get_status', [session, task])) as string;
    return status !== 'pending';
  });
  return {
    status,
    error: (await jsonCall(x.url, 'task.get_error_info', [session, task])) as string[],
    result: (await jsonCall(x.url, 'task.get_result', [session, task])) as string,
  };
}

test('an import that runs out of space fails with SR_FULL and removes the VDI and the file it made', { timeout: 120_000 }, async () => {
  const image = randomBytes(IMAGE); // nothing in it is skipped as zeros
  const { socket, task } = await startImport(IMAGE);
  socket.write(image.subarray(0, 4 * MiB));
  await until('the new VHD to hold data', () => vhds().some((f) => statSync(join(srDir, f)).blocks * 512 >= 2 * MiB));
  disks.fill('sr');
  socket.write(image.subarray(4 * MiB));

  const failed = await outcome(task);
  assert.equal(failed.status, 'failure');
  assert.equal(failed.error[0], 'SR_FULL', `not SR_FULL: ${JSON.stringify(failed.error)}`);
  assert.equal(failed.error[1], String(IMAGE));
  assert.match(failed.error[2] ?? '', /^\d+$/);
  assert.ok(Number(failed.error[2]) < IMAGE, `maximum ${failed.error[2]} is not below what was asked`);
  // the VDI it made is gone, and so is its file (the SR's GC unlinks the hidden node)
  const left = (await jsonCall(x.url, 'SR.get_VDIs', [session, sr])) as string[];
  assert.deepEqual(left, []);
  await until('the partial file to go', () => vhds().length === 0);

  // with space back, the same import works
  await disks.free('sr');
  const again = await startImport(IMAGE);
  again.socket.write(image); // (no half-close: node aborts a request whose client half-closes before the reply)
  const done = await outcome(again.task);
  assert.equal(done.status, 'success', JSON.stringify(done.error));
  assert.deepEqual((await jsonCall(x.url, 'SR.get_VDIs', [session, sr])) as string[], [/<value>(.*)<\/value>/.exec(done.result)![1]]);
});
