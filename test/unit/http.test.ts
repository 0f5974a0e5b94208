import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HandlerTable, type Handler } from '../../src/http/handlers.js';
import { BodyAborted, BodyTooLarge, readBody } from '../../src/http/body.js';
import { ListenError, RPC_BODY_LIMIT, sendHttpError, startHttpServers, type HttpServers } from '../../src/http/server.js';
import { loadOrCreateCertificate } from '../../src/http/tls.js';
import { within } from '../wait.js';

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

test('handler table: longest raw-string prefix per method, as http_svr radix tree', () => {
  const named = (n: string): Handler => Object.assign(() => {}, { n });
  const t = new HandlerTable()
    .add('POST', '/', named('root'))
    .add('POST', '/RPC2', named('rpc2'))
    .add('POST', '/json', named('json'))
    .add('POST', '/jsonrpc', named('jsonrpc'))
    .add('GET', '/vm_rrd', named('vm_rrd'))
    .add('put', '/import', named('import'));
  const m = (method: string, path: string) => (t.match(method, path) as unknown as { n: string } | undefined)?.n;
  assert.equal(m('POST', '/'), 'root');
  assert.equal(m('POST', '/xmlrpc'), 'root');
  assert.equal(m('POST', '/foo/bar'), 'root');
  assert.equal(m('POST', '/RPC2'), 'rpc2');
  assert.equal(m('POST', '/RPC2x'), 'rpc2'); // raw prefix, not path segments
  assert.equal(m('POST', '/json'), 'json');
  assert.equal(m('POST', '/jsonx'), 'json');
  assert.equal(m('POST', '/jsonrpc'), 'jsonrpc');
  assert.equal(m('POST', '/jsonrpc/v2'), 'jsonrpc');
  assert.equal(m('POST', '/rpc2'), 'root'); // case-sensitive
  assert.equal(m('GET', '/vm_rrds'), 'vm_rrd'); // how xapi's legacy alias also resolves
  assert.equal(m('GET', '/'), undefined);
  assert.equal(m('PUT', '/import_raw_vdi'), 'import');
  assert.equal(m('post', '/RPC2'), 'rpc2');
  assert.equal(m('DELETE', '/'), undefined);
  assert.throws(() => t.add('POST', '/RPC2', named('again')), /duplicate/);
});

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  localPort?: number;
}

function request(
  port: number,
  opts: https.RequestOptions & { body?: Buffer | string; chunked?: boolean },
  mod: typeof http | typeof https = http,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = mod.request({ host: '127.0.0.1', port, ...opts }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode!,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
          localPort: req.socket?.localPort,
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.body !== undefined && opts.chunked) {
      // write in pieces without a content-length: node sends it chunked
      const b = Buffer.from(opts.body);
      for (let i = 0; i < b.length; i += 64 * 1024) req.write(b.subarray(i, i + 64 * 1024));
      req.end();
    } else req.end(opts.body);
  });
}

let servers: HttpServers;
let stateDir: string;
let cert: string;
let aborted: Promise<unknown>;
let signalAborted: (e: unknown) => void;
/** Called when /echo starts reading a body (a test waiting for the server to be mid-body). */
let echoReading: (() => void) | undefined;

before(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'xapi-http-test-'));
  const tls = await loadOrCreateCertificate(stateDir, 'testhost');
  cert = tls.cert;
  aborted = new Promise((r) => (signalAborted = r));
  const table = new HandlerTable()
    .add('POST', '/echo', async (req, res) => {
      let body: Buffer;
      try {
        const reading = readBody(req, RPC_BODY_LIMIT);
        echoReading?.();
        body = await reading;
      } catch (e) {
        if (e instanceof BodyTooLarge) return sendHttpError(res, 500, e.message);
        signalAborted(e);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
      res.end(body);
    })
    .add('GET', '/port', (req, res) => {
      res.end(String(req.socket.remotePort));
    })
    .add('GET', '/throw', () => {
      throw new Error('boom <b>');
    })
    .add('GET', '/reject', async () => {
      await Promise.reject(new TypeError('async boom'));
    });
  servers = await startHttpServers({ address: '127.0.0.1', httpPort: 0, httpsPort: 0, tls, table, log: quiet });
});

after(async () => {
  await servers.close(500);
  await rm(stateDir, { recursive: true, force: true });
});

test('keep-alive: two requests reuse one connection', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const a = await request(servers.httpPort, { path: '/port', agent });
  const b = await request(servers.httpPort, { path: '/port', agent });
  assert.equal(a.status, 200);
  assert.equal(a.body, b.body, 'same client port seen by the server');
  assert.equal(a.headers.connection, 'keep-alive');
  agent.destroy();
});

test('CORS preflight on /, /json, /jsonrpc (and by prefix any path)', async () => {
  for (const path of ['/', '/json', '/jsonrpc']) {
    const r = await request(servers.httpPort, { method: 'OPTIONS', path, headers: { 'access-control-request-headers': 'content-type' } });
    assert.equal(r.status, 200);
    assert.equal(r.body, '');
    assert.equal(r.headers['access-control-allow-origin'], '*');
    assert.equal(r.headers['access-control-allow-headers'], 'content-type, X-Requested-With');
    assert.equal(r.headers['access-control-allow-methods'], 'PUT');
  }
  const plain = await request(servers.httpPort, { method: 'OPTIONS', path: '/jsonrpc' });
  assert.equal(plain.headers['access-control-allow-headers'], 'X-Requested-With');
});

test('unknown path → 404 page, unknown method → 501, both close the connection', async () => {
  const r = await request(servers.httpPort, { method: 'PUT', path: '/nothing<x>' });
  assert.equal(r.status, 404);
  assert.match(r.body, /The requested URL \/nothing%3Cx%3E was not found on this server/);
  assert.equal(r.headers.connection, 'close');
  const m = await request(servers.httpPort, { method: 'DELETE', path: '/' });
  assert.equal(m.status, 501);
  assert.match(m.body, /<h1>HTTP 501 Method Not Implemented<\/h1><p>Unknown DELETE not supported/);
});

test('a handler that throws (sync or async) gives a 500 page and the server goes on', async () => {
  const r = await request(servers.httpPort, { path: '/throw' });
  assert.equal(r.status, 500);
  assert.equal(r.headers['content-type'], 'text/html');
  assert.equal(r.headers['cache-control'], 'no-cache, no-store');
  assert.match(r.body, /HTTP 500 internal server error.*Additional information <\/h1>Error: boom &lt;b&gt;/);
  assert.equal((await request(servers.httpPort, { path: '/reject' })).status, 500);
  assert.equal((await request(servers.httpPort, { path: '/port' })).status, 200);
});

test('body limit: 300 KiB passes, 301 KiB fails with 500 (declared or chunked), next connection is served', async () => {
  const ok = await request(servers.httpPort, { method: 'POST', path: '/echo', body: Buffer.alloc(RPC_BODY_LIMIT, 'a') });
  assert.equal(ok.status, 200);
  assert.equal(ok.body.length, RPC_BODY_LIMIT);
  const big = Buffer.alloc(301 * 1024, 'b');
  for (const chunked of [false, true]) {
    const r = await request(servers.httpPort, { method: 'POST', path: '/echo', body: big, chunked });
    assert.equal(r.status, 500, `chunked=${chunked}`);
    assert.match(r.body, /Http_svr\.Client_requested_size_over_limit/);
    assert.equal(r.headers.connection, 'close');
    const next = await request(servers.httpPort, { method: 'POST', path: '/echo', body: 'hello' });
    assert.equal(next.body, 'hello');
  }
});

test('a client closing mid-body does not crash the server', async () => {
  const sock = net.connect(servers.httpPort, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const reading = new Promise<void>((r) => (echoReading = r));
  sock.write('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789');
  await reading; // the handler is in the body
  echoReading = undefined;
  sock.destroy();
  assert.ok((await aborted) instanceof BodyAborted);
  assert.equal((await request(servers.httpPort, { path: '/port' })).status, 200);
});

test('HTTPS serves the same table with the generated certificate', async () => {
  const r = await request(servers.httpsPort, { path: '/port', ca: cert, agent: false }, https);
  assert.equal(r.status, 200);
  const cors = await request(servers.httpsPort, { method: 'OPTIONS', path: '/', ca: cert, agent: false }, https);
  assert.equal(cors.headers['access-control-allow-origin'], '*');
});

test('CONNECT goes through the table too (unknown path → 404)', async () => {
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: servers.httpPort, method: 'CONNECT', path: '/nothing' });
    req.on('connect', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode!);
    });
    req.on('response', (res) => resolve(res.statusCode!));
    req.on('error', reject);
    req.end();
  });
  assert.equal(status, 404);
});

test('certificate: created once (key+cert, mode 0600), then reused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-tls-test-'));
  try {
    const first = await loadOrCreateCertificate(dir, '10.0.0.5');
    const file = join(dir, 'xapi-ssl.pem');
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    const text = await readFile(file, 'utf8');
    assert.match(text, /^-----BEGIN PRIVATE KEY-----[\s\S]*-----END PRIVATE KEY-----\n\n-----BEGIN CERTIFICATE-----/);
    const second = await loadOrCreateCertificate(dir, 'ignored-now');
    const x1 = new X509Certificate(first.cert);
    const x2 = new X509Certificate(second.cert);
    assert.equal(x2.fingerprint256, x1.fingerprint256);
    assert.equal(second.key.trim(), first.key.trim());
    assert.match(x1.subjectAltName ?? '', /IP Address:10\.0\.0\.5/);
    assert.match(x1.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
    const years = (Date.parse(x1.validTo) - Date.parse(x1.validFrom)) / (365 * 86_400_000);
    assert.ok(years > 9.9 && years < 10.1, `valid ${years} years`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('ListenError names the flag for a port already in use, and nothing stays bound', async () => {
  const table = new HandlerTable();
  await assert.rejects(
    startHttpServers({
      address: '127.0.0.1',
      httpPort: servers.httpPort,
      httpsPort: 0,
      tls: await loadOrCreateCertificate(stateDir, 'x'),
      table,
      log: quiet,
    }),
    (e: unknown) => {
      assert.ok(e instanceof ListenError);
      assert.equal(e.code, 'EADDRINUSE');
      assert.equal(e.flag, '--http-port');
      assert.equal(e.port, servers.httpPort);
      assert.match(
        e.message,
        /^cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE: address already in use\); choose another port with --http-port$/,
      );
      return true;
    },
  );
  // https port in use: the http server that did bind must be released again
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const freePort = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  await assert.rejects(
    startHttpServers({
      address: '127.0.0.1',
      httpPort: freePort,
      httpsPort: servers.httpsPort,
      tls: await loadOrCreateCertificate(stateDir, 'x'),
      table,
      log: quiet,
    }),
    (e: unknown) => e instanceof ListenError && e.flag === '--https-port' && /--https-port/.test(e.message),
  );
  const again = net.createServer();
  await new Promise<void>((resolve, reject) => {
    again.once('error', reject);
    again.listen(freePort, '127.0.0.1', resolve);
  });
  await new Promise((r) => again.close(r));
});

test('close() ends idle keep-alive connections at once, without waiting out the grace period', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-close-test-'));
  try {
    const table = new HandlerTable().add('GET', '/', (_req, res) => {
      res.end('ok');
    });
    const s = await startHttpServers({
      address: '127.0.0.1',
      httpPort: 0,
      httpsPort: 0,
      tls: await loadOrCreateCertificate(dir, 'h'),
      table,
      log: quiet,
    });
    const agent = new http.Agent({ keepAlive: true });
    assert.equal((await request(s.httpPort, { path: '/', agent })).body, 'ok');
    // the connection stays open, idle, in the agent's pool
    const [idle] = Object.values(agent.freeSockets).flat();
    assert.ok(idle && !idle.destroyed, 'an idle keep-alive connection');
    const closed = new Promise<void>((resolve) => idle.once('close', () => resolve()));
    // A grace period no test run outlives: close() resolving at all means it did not wait for it.
    await within('close() with an idle keep-alive connection', s.close(24 * 3600_000));
    // and the server closed the connection (the client keeps it until agent.destroy() below)
    await within('the server to close the idle connection', closed);
    agent.destroy();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
