// XapiClient against a small local HTTP server: results, XenAPI errors as XapiError with their
// parameters, no answer as ConnectionFailed, a non-RPC answer as BadResponse, and one kept-alive
// connection for successive calls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { BadResponse, ConnectionFailed, XapiClient } from '../../src/rpc/client.js';
import { XapiError } from '../../src/rpc/errors.js';
import { jsonRpcFailure, jsonRpcSuccess, parseJsonRpcCall } from '../../src/rpc/jsonrpc.js';

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test('results, XenAPI errors and the kept-alive connection', async () => {
  const sockets = new Set<unknown>();
  const server = createServer(async (req, res) => {
    sockets.add(req.socket);
    assert.equal(req.url, '/jsonrpc');
    const { call, version, id } = parseJsonRpcCall(await body(req));
    assert.equal(version, '2.0');
    const text =
      call.method === 'session.login_with_password'
        ? jsonRpcSuccess(version, id, 'OpaqueRef:s')
        : jsonRpcFailure(version, id, ['HOST_IS_SLAVE', '127.0.0.10']);
    res.end(text);
  });
  const client = new XapiClient(await listen(server));
  try {
    assert.equal(await client.call('session.login_with_password', ['root', 'pw']), 'OpaqueRef:s');
    await assert.rejects(client.call('pool.get_all', ['OpaqueRef:s']), (e: unknown) => {
      assert.ok(e instanceof XapiError);
      assert.deepEqual(e.description, ['HOST_IS_SLAVE', '127.0.0.10']);
      return true;
    });
    assert.equal(sockets.size, 1, 'both calls went over one connection');
  } finally {
    client.close();
    server.close();
  }
});

test('no server: ConnectionFailed; an answer that is not JSON-RPC: BadResponse', async () => {
  const gone = createServer();
  const goneUrl = await listen(gone);
  await new Promise((resolve) => gone.close(resolve));
  const refused = new XapiClient(goneUrl);
  await assert.rejects(refused.call('pool.get_all', []), (e: unknown) => e instanceof ConnectionFailed && e.url === goneUrl);

  const server = createServer((req, res) => {
    if (req.headers['x-case'] === 'status') res.writeHead(500).end('oops');
    else if (req.headers['x-case'] === 'cut') res.socket!.destroy();
    else res.end('not json');
  });
  const client = new XapiClient(await listen(server));
  try {
    await assert.rejects(
      client.call('a.b', [], { 'x-case': 'status' }),
      (e: unknown) => e instanceof BadResponse && /HTTP 500/.test(e.message),
    );
    await assert.rejects(client.call('a.b', [], { 'x-case': 'body' }), (e: unknown) => e instanceof BadResponse);
    await assert.rejects(client.call('a.b', [], { 'x-case': 'cut' }), (e: unknown) => e instanceof ConnectionFailed);
  } finally {
    client.close();
    server.close();
  }
});
