// The guest consoles in process: the text screen (writing, scrolling, echo, row versions), the
// RFB server on an in-memory stream (3.8 with the tests' client, 3.3's handshake, a 16-bit
// big-endian pixel format, an incremental request held until a row changes and answered with
// that row alone, an unknown message ending the connection), and the simulator's screens
// following a domain (boot log, login prompt, a reboot's new boot, the console closing at
// shutdown).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { test } from 'node:test';
import { SimulatorBackend } from '../../src/xenopsd/backends/simulator.js';
import { CELL_HEIGHT, PRINTABLE, glyph } from '../../src/xenopsd/console/font.js';
import { HEIGHT, WIDTH, pixel, serveRfb } from '../../src/xenopsd/console/rfb.js';
import { COLS, GuestScreen, GuestShell, ROWS } from '../../src/xenopsd/console/screen.js';
import type { VmConfig } from '../../src/xenopsd/interface.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { Reader, RfbClient } from '../rfb-client.js';

/** Two ends of an in-memory connection. */
function pair(): [server: Duplex, client: Duplex] {
  const up = new PassThrough();
  const down = new PassThrough();
  return [Duplex.from({ readable: up, writable: down }), Duplex.from({ readable: down, writable: up })];
}

test('the font: every printable character has its own glyph', () => {
  const seen = new Set(PRINTABLE.split('').map((ch) => glyph(ch).join(',')));
  assert.equal(seen.size, PRINTABLE.length);
  assert.deepEqual(glyph('\u00e9'), glyph('?'));
});

test('the screen: lines, wrapping, scrolling, echo without the password, row versions', () => {
  const s = new GuestScreen();
  s.say('first', 'second');
  assert.deepEqual([s.text(0), s.text(1), s.row, s.col], ['first', 'second', 2, 0]);
  const v = [...s.versions];
  s.write('x');
  assert.equal(s.versions[0], v[0], 'an untouched row keeps its version');
  assert.notEqual(s.versions[2], v[2]);
  s.write('\b');
  assert.equal(s.text(2), '');
  s.write('y'.repeat(COLS + 3));
  assert.deepEqual([s.text(2).length, s.text(3), s.row], [COLS, 'yyy', 3]);
  for (let i = 0; i < ROWS; i++) s.say(`line ${i}`);
  assert.equal(s.text(ROWS - 2), `line ${ROWS - 1}`);
  assert.equal(s.text(ROWS - 1), '');

  const shell = new GuestShell(new GuestScreen(), 'My VM!');
  shell.boot({ domid: 7, memoryBytes: 256 * 1024 * 1024, vcpus: 2, disks: ['xvda'], nics: 1, hvm: false });
  shell.up();
  const screen = shell.screen;
  const last = () => screen.text(screen.row);
  assert.equal(last(), 'my-vm login: ');
  screen.type('root\r');
  assert.equal(last(), 'Password: ');
  screen.type('hunter2\r');
  assert.ok(!screen.snapshot().join('\n').includes('hunter2'));
  assert.equal(last(), '[root@my-vm ~]# ');
  screen.type('ls\x7fs -l\r');
  assert.ok(screen.snapshot().includes('-bash: ls: command not found'));
});

test('RFB 3.8: handshake, the whole screen, then only the rows that change, held until they do', async () => {
  const screen = new GuestScreen();
  screen.say('hello console');
  const [server, client] = pair();
  serveRfb(server, screen, 'vm one');
  const rfb = new RfbClient(client);
  await rfb.handshake();
  assert.deepEqual([rfb.width, rfb.height, rfb.name], [WIDTH, HEIGHT, 'vm one']);
  assert.equal(await rfb.update(false), 1, 'one rectangle: the whole screen');
  assert.equal(rfb.text()[0], 'hello console');

  // nothing changed: the incremental request waits; the next write answers it with its rows
  const answered = rfb.update(true);
  screen.write('abc');
  assert.equal(await answered, 1);
  assert.deepEqual(rfb.lastRects, [[0, CELL_HEIGHT, WIDTH, CELL_HEIGHT]], 'the changed row alone');
  assert.equal(rfb.text()[1], 'abc');
  client.destroy();
});

test('RFB 3.3, a 16-bit big-endian pixel format, and an unknown message ending the connection', async () => {
  const screen = new GuestScreen();
  const [server, client] = pair();
  serveRfb(server, screen, 'old');
  const r = new Reader(client);
  assert.equal((await r.read(12)).toString(), 'RFB 003.008\n');
  client.write('RFB 003.003\n');
  assert.equal((await r.read(4)).readUInt32BE(0), 1, '3.3: the server names the security type');
  client.write(Buffer.from([0]));
  const init = await r.read(24);
  assert.deepEqual([init.readUInt16BE(0), init.readUInt16BE(2), init[4], init[7]], [WIDTH, HEIGHT, 32, 1]);
  await r.read(init.readUInt32BE(20));

  const pf = Buffer.alloc(20);
  pf.writeUInt8(0, 0);
  Buffer.from([16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0]).copy(pf, 4);
  const req = Buffer.alloc(10);
  req.writeUInt8(3, 0);
  req.writeUInt16BE(WIDTH, 6);
  req.writeUInt16BE(CELL_HEIGHT, 8);
  client.write(Buffer.concat([pf, req]));
  const head = await r.read(16);
  assert.deepEqual([head[0], head.readUInt16BE(2), head.readUInt16BE(8), head.readUInt16BE(10)], [0, 1, WIDTH, CELL_HEIGHT]);
  const pixels = await r.read(WIDTH * CELL_HEIGHT * 2);
  const format = {
    bitsPerPixel: 16,
    depth: 16,
    bigEndian: true,
    trueColour: true,
    redMax: 31,
    greenMax: 63,
    blueMax: 31,
    redShift: 11,
    greenShift: 5,
    blueShift: 0,
  };
  assert.deepEqual(pixels.subarray(0, 2), pixel(format, [0x10, 0x18, 0x20]), "the background in the client's format");

  const closed = new Promise((resolve) => server.once('close', resolve));
  client.write(Buffer.from([99]));
  await closed;
});

test("the simulator: a domain's screen boots, prompts, reboots, and its consoles close when it goes", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-console-'));
  const b = new SimulatorBackend({
    machine: simulatedMachine({ seed: 's', memoryMiB: 4096 }),
    stateDir: dir,
    bootTimeMs: 5,
    agentDelayMs: 5,
    shutdownTimeMs: 5,
  });
  const config: VmConfig = {
    id: 'vm-1',
    name: 'Text One',
    domainType: 'pv',
    memoryStaticMax: 256 * 1024 * 1024,
    memoryDynamicMax: 256 * 1024 * 1024,
    memoryDynamicMin: 256 * 1024 * 1024,
    vcpuMax: 2,
    vcpus: 1,
    platform: {},
    vbds: [],
    vifs: [],
  };
  try {
    await b.add(config);
    const [server0] = pair();
    assert.throws(() => b.attachConsole('vm-1', 'vt100', server0), /Bad_power_state/);
    await b.start('vm-1', { paused: false });
    const [server, client] = pair();
    b.attachConsole('vm-1', 'vt100', server);
    const text = new Reader(client);
    await text.until('text-one login: ');
    client.write('me\r');
    await text.until('me\r\nPassword: ');

    await b.reboot('vm-1');
    await text.until('reboot: Restarting system');
    const [server2, client2] = pair();
    b.attachConsole('vm-1', 'vt100', server2);
    const again = new Reader(client2);
    const shown = await again.until('text-one login: ');
    assert.match(shown, /Linux version 6\.1\.0-simulated \(domain 2\)/, 'the new domain booted on a cleared screen');
    assert.doesNotMatch(shown, /Password/);

    const ended = new Promise((resolve) => client2.once('end', resolve));
    client2.resume();
    await b.shutdown('vm-1');
    await ended;
  } finally {
    await b.close();
    await rm(dir, { recursive: true, force: true });
  }
});
