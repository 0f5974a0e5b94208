// RPC replies are written whole when small and a piece at a time when large (api-handlers.ts,
// reply): the bytes and the content-length are the same either way, over HTTP and HTTPS; a
// client leaving in the middle of a large reply costs the server nothing; pipelined requests are
// still answered in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { reply } from '../../src/http/api-handlers.js';
import { loadOrCreateCertificate } from '../../src/http/tls.js';

/** Reply pieces of every awkward kind: multi-byte text, surrogate pairs, pieces larger than a piece buffer. */
function largeReply(): string[] {
  const parts = ['{"result":['];
  for (let i = 0; i < 5000; i++) parts.push((i ? ',' : '') + JSON.stringify(`n${i} ñ 中文 \ud83d\ude00 "q" \\`));
  parts.push(',' + JSON.stringify('x'.repeat(200_000))); // longer than a piece
  parts.push(',' + JSON.stringify('é'.repeat(30_000))); // a piece's worth of characters, twice that in bytes
  parts.push(',' + JSON.stringify('y'.repeat(21_000))); // just fits an empty piece
  for (let i = 0; i < 100; i++) parts.push(',' + i);
  parts.push(']}');
  return parts;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

async function listen(server: http.Server | https.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

function close(server: http.Server | https.Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Answers every request with `parts` once its body is read; `settled` collects each reply's promise. */
function replying(parts: () => string[], settled: Promise<void>[] = []): Handler {
  return (req, res) => {
    req.resume();
    req.on('end', () => settled.push(reply(res, 'application/json', parts()) ?? Promise.resolve()));
  };
}

function fetch(port: number, mod: typeof http | typeof https = http): Promise<{ headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = mod.request({ host: '127.0.0.1', port, method: 'POST', rejectUnauthorized: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end('{}');
  });
}

test('a large reply arrives as its pieces joined, with their byte length, over HTTP and HTTPS; a small one too', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-reply-'));
  try {
    const { key, cert } = await loadOrCreateCertificate(dir, 'localhost');
    for (const parts of [largeReply(), ['{"result":', '"ñ"', '}']]) {
      const want = Buffer.from(parts.join(''));
      for (const [mod, server] of [
        [http, http.createServer(replying(() => parts))],
        [
          https,
          https.createServer(
            { key, cert },
            replying(() => parts),
          ),
        ],
      ] as const) {
        const port = await listen(server);
        try {
          const got = await fetch(port, mod);
          assert.equal(Number(got.headers['content-length']), want.length);
          assert.ok(got.body.equals(want), `${mod === http ? 'HTTP' : 'HTTPS'} body of ${want.length} bytes`);
        } finally {
          await close(server);
        }
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a client leaving in the middle of a large reply: the reply settles and the server goes on', async () => {
  // Larger than the loopback socket buffers take, so the server is still writing when the client goes.
  const huge = () => {
    const parts = ['['];
    for (let i = 0; i < 1000; i++) parts.push((i ? ',' : '') + JSON.stringify(`${i} ${'z'.repeat(20_000)}`));
    parts.push(']');
    return parts;
  };
  const settled: Promise<void>[] = [];
  const server = http.createServer(replying(huge, settled));
  const port = await listen(server);
  try {
    for (let i = 0; i < 3; i++) {
      const socket = net.connect(port, '127.0.0.1');
      socket.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}');
      // Leave after the first bytes of the reply, without reading the rest.
      await new Promise<void>((resolve) => socket.once('data', () => resolve()));
      socket.destroy();
    }
    await Promise.all(settled);
    const after = await fetch(port);
    assert.equal(Number(after.headers['content-length']), after.body.length);
    assert.ok(after.body.equals(Buffer.from(huge().join(''))));
  } finally {
    await close(server);
  }
});

test('pipelined requests: a large reply, then a small one, each whole and in order', async () => {
  const large = largeReply();
  const small = ['{"result":', '"second"', '}'];
  let n = 0;
  const server = http.createServer((req, res) => {
    const parts = n++ % 2 === 0 ? large : small;
    req.resume();
    req.on('end', () => void reply(res, 'application/json', parts));
  });
  const port = await listen(server);
  try {
    const socket = net.connect(port, '127.0.0.1');
    const request = 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}';
    socket.write(request + request + request + request);
    const received: Buffer[] = [];
    const bodies: Buffer[] = [];
    // Read until four whole responses have arrived (each framed by its content-length).
    await new Promise<void>((resolve, reject) => {
      socket.on('error', reject);
      socket.on('data', (d: Buffer) => {
        received.push(d);
        let all = Buffer.concat(received);
        for (;;) {
          const end = all.indexOf('\r\n\r\n');
          if (end < 0) break;
          const length = Number(/content-length: (\d+)/i.exec(all.subarray(0, end).toString())![1]);
          if (all.length < end + 4 + length) break;
          bodies.push(all.subarray(end + 4, end + 4 + length));
          all = all.subarray(end + 4 + length);
        }
        received.length = 0;
        if (all.length) received.push(all);
        if (bodies.length === 4) resolve();
      });
    });
    socket.destroy();
    const want = [large, small, large, small].map((p) => Buffer.from(p.join('')));
    for (const [i, b] of bodies.entries()) assert.ok(b.equals(want[i]!), `response ${i + 1}`);
  } finally {
    await close(server);
  }
});
