// Request bodies that stall, against one real host started with short bounds: an RPC body must
// arrive whole within --rpc-body-timeout-ms (it is read before any authentication), an upload
// may take as long as it likes but may not go quiet for --upload-idle-timeout-ms. Every case
// checks that the host keeps serving others meanwhile and afterwards.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login, waitTask } from './client.js';

const RPC_BODY_TIMEOUT_MS = 1000;
const UPLOAD_IDLE_TIMEOUT_MS = 1500;
const MiB = 1024 * 1024;

let x: XapiProcess;
let session: string;
let hostRef: string;
let sr: string;

before(async () => {
  x = await startXapi({
    args: ['--rpc-body-timeout-ms', String(RPC_BODY_TIMEOUT_MS), '--upload-idle-timeout-ms', String(UPLOAD_IDLE_TIMEOUT_MS)],
  });
  session = await login(x.url, PASSWORD);
  hostRef = ((await jsonCall(x.url, 'host.get_all', [session])) as string[])[0]!;
  const [pool] = (await jsonCall(x.url, 'pool.get_all', [session])) as string[];
  sr = (await jsonCall(x.url, 'pool.get_default_SR', [session, pool])) as string;
});

after(async () => {
  if (x) await stopXapi(x);
});

async function assertServing(): Promise<void> {
  assert.equal(x.proc.exitCode, null, `xapi exited:\n${x.output().slice(-3000)}`);
  assert.deepEqual(await jsonCall(x.url, 'host.get_all', [session]), [hostRef]);
}

/** A raw connection: what came back, and whether the server closed it. */
function open(): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    let received = '';
    const socket = connect(x.httpPort, x.address);
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.on('error', () => undefined);
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.once('connect', () => resolve({ socket, received: () => received, closed }));
    socket.once('error', reject);
  });
}

const rpcHead = (length: number) =>
  `POST /jsonrpc HTTP/1.1\r\nHost: ${x.address}\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n`;

test('an RPC body that stalls is answered 408 and closed, without a session, and others are served meanwhile', {
  timeout: 30_000,
}, async () => {
  const stalled = await Promise.all(Array.from({ length: 5 }, () => open()));
  for (const c of stalled) c.socket.write(rpcHead(1000) + '{"jsonrpc":"2.0",');
  // the held connections do not keep others waiting
  await assertServing();
  await Promise.all(stalled.map((c) => c.closed));
  for (const c of stalled) {
    assert.match(c.received(), /^HTTP\/1\.1 408 Request Timeout\r\n/);
    assert.match(c.received(), /HTTP 408 request timeout/);
  }
  await assertServing();
});

test('an RPC body trickling in is bounded in total time, not only in idleness', { timeout: 30_000 }, async () => {
  const c = await open();
  c.socket.write(rpcHead(1000));
  // one byte every 200 ms: never quiet for long, but 1000 bytes would take 200 s
  const timer = setInterval(() => c.socket.writable && c.socket.write(' '), 200);
  try {
    await c.closed;
  } finally {
    clearInterval(timer);
  }
  assert.match(c.received(), /^HTTP\/1\.1 408 /);
  await assertServing();
});

/** PUT /import_raw_vdi on a raw socket: the head, then whatever `send` writes. */
async function upload(vdi: string, size: number, send: (s: Socket) => Promise<void>) {
  const c = await open();
  c.socket.write(
    `PUT /import_raw_vdi?session_id=${session}&vdi=${vdi}&format=raw HTTP/1.1\r\nHost: ${x.address}\r\nContent-Length: ${size}\r\n\r\n`,
  );
  await send(c.socket);
  await c.closed;
  const task = /\r\ntask-id: (\S+)\r\n/i.exec(c.received())?.[1];
  assert.ok(task, `no task-id in the answer: ${c.received().slice(0, 500)}`);
  // the outcome is on the task
  const done = await waitTask(x.url, session, task);
  return { status: done.status as string, error: done.error_info as string[] };
}

test('an upload that goes quiet is cut; one that keeps sending is not, however long it takes', { timeout: 60_000 }, async () => {
  const size = 4 * MiB;
  const vdi = (await jsonCall(x.url, 'VDI.create', [
    session,
    { name_label: 'stall', SR: sr, virtual_size: String(size), type: 'user', sharable: false, read_only: false, other_config: {} },
  ])) as string;
  const piece = Buffer.alloc(256 * 1024, 0x5a);

  // half the image, then nothing
  const stalled = await upload(vdi, size, async (s) => {
    for (let i = 0; i < 8; i++) s.write(piece);
  });
  assert.deepEqual(stalled, {
    status: 'failure',
    error: ['INTERNAL_ERROR', `the request body sent nothing for ${UPLOAD_IDLE_TIMEOUT_MS / 1000} s`],
  });
  await assertServing();

  // 16 pieces, one every 400 ms: longer in total than both bounds, never quiet for long
  const steady = await upload(vdi, size, async (s) => {
    for (let i = 0; i < 16; i++) {
      s.write(piece);
      await new Promise((r) => setTimeout(r, 400));
    }
  });
  assert.deepEqual(steady, { status: 'success', error: [] });
  await assertServing();
});
