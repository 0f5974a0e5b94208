// VM consoles with real processes: the console records a running VM gets; CONNECT /console
// answered with RFB 3.8 whose framebuffer shows the guest's text screen changing (the login
// prompt, a paused domain) and echoing keys; the vt100 console as text; the WebSocket form
// (GET /console, the `binary` subprotocol); the refusals (no or bad session: 401; no console
// named, a halted VM: 500; dom0's, which has no console server here: 404); and in a pool of
// two, the console asked of the host that does not run the VM, relayed from the one that does,
// and after a migration the console on the VM's new host.
import assert from 'node:assert/strict';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import * as tls from 'node:tls';
import { createWebSocketStream, WebSocket } from 'ws';
import { Reader, RfbClient } from '../rfb-client.js';
import { vmRecord } from '../vm-record.js';
import { jsonCall, login } from './client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { runningVmOn, startPool, type TestPool } from './pool-harness.js';

const MiB = 1024 * 1024;

/** CONNECT `path` over HTTPS: the status line's code, and the socket positioned after the head. */
async function connect(
  address: string,
  port: number,
  path: string,
): Promise<{ status: number; head: string; socket: Duplex; reader: Reader }> {
  const socket = tls.connect({ host: address, port, rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  socket.write(`CONNECT ${path} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
  const reader = new Reader(socket);
  const head = await reader.until('\r\n\r\n');
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)![1]), head, socket, reader };
}

/** An RFB client on a CONNECT'ed socket. */
async function rfbOver(address: string, port: number, path: string): Promise<{ rfb: RfbClient; socket: Duplex }> {
  const { head, socket, reader } = await connect(address, port, path);
  assert.match(head, /^HTTP\/1\.1 200 OK\r\n/, head);
  return { rfb: new RfbClient(socket, reader), socket };
}

async function startVm(url: string, session: string, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const vm = (await jsonCall(url, 'VM.create', [session, vmRecord(name, { memory: 128 * MiB }, extra)])) as string;
  await jsonCall(url, 'VM.start', [session, vm, false, false]);
  return vm;
}

async function consoles(url: string, session: string, vm: string): Promise<Record<string, { uuid: string; location: string }>> {
  const out: Record<string, { uuid: string; location: string }> = {};
  for (const c of (await jsonCall(url, 'VM.get_consoles', [session, vm])) as string[]) {
    const r = (await jsonCall(url, 'console.get_record', [session, c])) as { protocol: string; uuid: string; location: string };
    out[r.protocol] = r;
  }
  return out;
}

let x: XapiProcess;
let session: string;

before(async () => {
  x = await startXapi({ args: ['--sim-boot-ms', '20'] });
  session = await login(x.url, PASSWORD);
});
after(async () => {
  await stopXapi(x);
});

test('a running VM has an rfb console on its host; RFB 3.8 shows its screen change and echoes keys', async () => {
  const vm = await startVm(x.url, session, 'Console Guest');
  const uuid = (await jsonCall(x.url, 'VM.get_uuid', [session, vm])) as string;
  const cs = await consoles(x.url, session, vm);
  assert.deepEqual(Object.keys(cs), ['rfb'], 'an HVM guest has qemu VNC only');
  assert.equal(cs.rfb!.location, `https://${x.address}/console?uuid=${cs.rfb!.uuid}`);

  const { rfb, socket } = await rfbOver(x.address, x.httpsPort, `/console?uuid=${cs.rfb!.uuid}&session_id=${session}`);
  try {
    await rfb.handshake();
    assert.equal(rfb.name, 'Console Guest');
    assert.ok(rfb.width >= 640 && rfb.height >= 400, `${rfb.width}x${rfb.height}`);
    assert.ok((await rfb.update(false)) > 0, 'a full update has rectangles');
    let screen = await rfb.waitForText((s) => s.includes('console-guest login:'), 'the login prompt');
    assert.match(screen, /Linux version .*\(domain \d+\)/, 'the boot log');

    rfb.key('root');
    screen = await rfb.waitForText((s) => s.includes('console-guest login: root'), 'the typed user name');
    rfb.key('\r');
    await rfb.waitForText((s) => s.includes('Password:'), 'the password prompt');
    rfb.key('secret\r');
    screen = await rfb.waitForText((s) => s.includes('[root@console-guest ~]#'), 'a shell prompt');
    assert.doesNotMatch(screen, /secret/, 'a password is not echoed');
    rfb.key('uptime\r');
    await rfb.waitForText((s) => s.includes('-bash: uptime: command not found'), 'the shell answering');

    // what happens to the domain shows on its screen
    await jsonCall(x.url, 'VM.pause', [session, vm]);
    await rfb.waitForText((s) => s.includes('[ domain paused ]'), 'the pause');
    await jsonCall(x.url, 'VM.unpause', [session, vm]);
    await rfb.waitForText((s) => s.includes('[ domain unpaused ]'), 'the unpause');

    // the console by the VM's uuid is the same screen
    const second = await rfbOver(x.address, x.httpsPort, `/console?uuid=${uuid}&session_id=${session}`);
    try {
      await second.rfb.handshake();
      await second.rfb.update(false);
      assert.match(second.rfb.text().join('\n'), /domain unpaused/);
    } finally {
      second.socket.destroy();
    }

    // the console closes when the domain goes
    const closed = new Promise((r) => socket.once('close', r));
    await jsonCall(x.url, 'VM.hard_shutdown', [session, vm]);
    await closed;
  } finally {
    socket.destroy();
  }
});

test('a PV guest also has a vt100 console: its screen as text, keys echoed', async () => {
  const vm = await startVm(x.url, session, 'Text Guest', { domain_type: 'pv', HVM_boot_policy: '' });
  const cs = await consoles(x.url, session, vm);
  assert.deepEqual(Object.keys(cs).sort(), ['rfb', 'vt100']);
  const { status, socket, reader } = await connect(x.address, x.httpsPort, `/console?uuid=${cs.vt100!.uuid}&session_id=${session}`);
  try {
    assert.equal(status, 200);
    await reader.until('text-guest login: ');
    socket.write('root\r');
    await reader.until('root\r\nPassword: ');
  } finally {
    socket.destroy();
    await jsonCall(x.url, 'VM.hard_shutdown', [session, vm]);
  }
});

test('the WebSocket form: GET /console upgraded, the binary subprotocol, RFB in binary messages', async () => {
  const vm = await startVm(x.url, session, 'Web Guest');
  const uuid = (await jsonCall(x.url, 'VM.get_uuid', [session, vm])) as string;
  const ws = new WebSocket(`wss://${x.address}:${x.httpsPort}/console?uuid=${uuid}&session_id=${session}`, ['binary'], {
    rejectUnauthorized: false,
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  try {
    assert.equal(ws.protocol, 'binary');
    const rfb = new RfbClient(createWebSocketStream(ws));
    await rfb.handshake();
    await rfb.update(false);
    await rfb.waitForText((s) => s.includes('web-guest login:'), 'the login prompt');
    rfb.key('admin');
    await rfb.waitForText((s) => s.includes('web-guest login: admin'), 'the echo');
  } finally {
    ws.terminate();
    await jsonCall(x.url, 'VM.hard_shutdown', [session, vm]);
  }
});

test('no session, no console: 401; nothing named or a halted VM: 500; a GET without upgrade: 501', async () => {
  const vm = await startVm(x.url, session, 'Refused Guest');
  const uuid = (await jsonCall(x.url, 'VM.get_uuid', [session, vm])) as string;
  const status = async (path: string) => {
    const r = await connect(x.address, x.httpsPort, path);
    r.socket.destroy();
    return r.status;
  };
  assert.equal(await status(`/console?uuid=${uuid}`), 401);
  assert.equal(await status(`/console?uuid=${uuid}&session_id=OpaqueRef:nonsense`), 401);
  assert.equal(await status(`/console?session_id=${session}`), 500);
  assert.equal(await status(`/console?uuid=no-such-uuid&session_id=${session}`), 500);
  assert.equal(await status(`/console?ref=${vm}&session_id=${session}`), 200);

  const unexpected = await new Promise<number>((resolve, reject) => {
    const ws = new WebSocket(`wss://${x.address}:${x.httpsPort}/console?uuid=${uuid}`, ['binary'], { rejectUnauthorized: false });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('open', () => reject(new Error('opened without a session')));
    ws.once('error', () => undefined);
  });
  assert.equal(unexpected, 401);

  // dom0's consoles: located by their own ref (create_misc.ml); no console server here, so no address
  const dom0 = (await jsonCall(x.url, 'VM.get_all_records_where', [session, 'field "is_control_domain" = "true"'])) as Record<
    string,
    { consoles: string[] }
  >;
  const [dom0Console] = Object.values(dom0)[0]!.consoles;
  const location = (await jsonCall(x.url, 'console.get_location', [session, dom0Console])) as string;
  assert.equal(location, `https://${x.address}/console?ref=${dom0Console}`);
  assert.equal(await status(`/console?ref=${dom0Console}&session_id=${session}`), 404);

  const plain = await fetch(`${x.url}/console?uuid=${uuid}&session_id=${session}`);
  assert.equal(plain.status, 501);
  await plain.arrayBuffer();

  await jsonCall(x.url, 'VM.hard_shutdown', [session, vm]);
  assert.equal(await status(`/console?uuid=${uuid}&session_id=${session}`), 500);
});

test('a pool of two: the console asked of the host that does not run the VM comes from the one that does', async () => {
  let pool: TestPool | undefined;
  try {
    pool = await startPool(2, { args: ['--sim-boot-ms', '20'] });
    const [c, m] = [pool.coordinator, pool.members[0]!];
    const vm = await runningVmOn(c, pool.session, m, 'Member Guest');
    const cs = await consoles(c.url, pool.session, vm);
    assert.equal(cs.rfb!.location, `https://${m.address}/console?uuid=${cs.rfb!.uuid}`, 'the location names the resident host');

    const { rfb, socket } = await rfbOver(c.address, c.httpsPort, `/console?uuid=${cs.rfb!.uuid}&session_id=${pool.session}`);
    try {
      await rfb.handshake();
      await rfb.update(false);
      await rfb.waitForText((s) => s.includes('member-guest login:'), 'the login prompt, relayed');
      rfb.key('x');
      await rfb.waitForText((s) => s.includes('member-guest login: x'), 'the echo, relayed');
    } finally {
      socket.destroy();
    }

    const uuid = (await jsonCall(c.url, 'VM.get_uuid', [pool.session, vm])) as string;
    const ws = new WebSocket(`wss://${c.address}:${c.httpsPort}/console?uuid=${uuid}&session_id=${pool.session}`, ['binary'], {
      rejectUnauthorized: false,
    });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    try {
      const web = new RfbClient(createWebSocketStream(ws));
      await web.handshake();
      await web.update(false);
      await web.waitForText((s) => s.includes('member-guest login: x'), 'the same screen over the WebSocket, relayed');
    } finally {
      ws.terminate();
    }

    // the VM moves to the coordinator: the console there is made again with its address, the
    // old one closes, and the guest's screen carries on there
    const { rfb: old, socket: oldSocket } = await rfbOver(
      m.address,
      m.httpsPort,
      `/console?uuid=${cs.rfb!.uuid}&session_id=${pool.session}`,
    );
    await old.handshake();
    const closed = new Promise((r) => oldSocket.once('close', r));
    await jsonCall(c.url, 'VM.pool_migrate', [pool.session, vm, pool.refs[0], {}]);
    await closed;
    const moved = await consoles(c.url, pool.session, vm);
    assert.equal(moved.rfb!.location, `https://${c.address}/console?uuid=${moved.rfb!.uuid}`);
    const after = await rfbOver(c.address, c.httpsPort, `/console?uuid=${moved.rfb!.uuid}&session_id=${pool.session}`);
    try {
      await after.rfb.handshake();
      await after.rfb.update(false);
      await after.rfb.waitForText(
        (s) => /domain \d+: running/.test(s) && s.includes('member-guest login:'),
        'the guest running on its new host',
      );
    } finally {
      after.socket.destroy();
    }
  } finally {
    await pool?.stop();
  }
});
