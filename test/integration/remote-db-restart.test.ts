// A pool member's write applied once across a coordinator crash, with a real process: the
// coordinator is SIGKILLed at `remote-db.write-committed` (its write durable, its reply not yet
// sent), restarted from its state directory, and the request is sent again with its id, as a
// member's RemoteDb does. The restarted coordinator answers with the reply stored with the write
// (a single write, then a batch) instead of running it a second time: no duplicate, no refusal.
// The test speaks the protocol itself (remote-protocol.ts) so that the member's own fallback for
// a forgotten id (RemoteDb's sentBefore) cannot hide a second application.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login } from './client.js';

const POINT = 'remote-db.write-committed';

/** One POST /remote_db_access with the pool secret: the reply's JSON, or the failure of the connection. */
function remoteDb(x: XapiProcess, secret: string, body: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: x.address,
        port: x.httpsPort,
        method: 'POST',
        path: '/remote_db_access',
        headers: { 'content-type': 'application/json', cookie: `pool_secret=${secret}` },
        rejectUnauthorized: false,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch (e) {
            reject(e);
          }
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** The coordinator again from `x`'s state directory, on its address and ports. */
function restart(x: XapiProcess, point?: string): Promise<XapiProcess> {
  return startXapi({
    stateDir: x.stateDir,
    address: x.address,
    httpPort: x.httpPort,
    httpsPort: x.httpsPort,
    env: { XAPI_TEST_FAULT_POINT: point },
  });
}

/** Sends `body`; the coordinator must die at the fault point before it answers. */
async function sendAndLoseReply(x: XapiProcess, secret: string, body: string): Promise<void> {
  await assert.rejects(remoteDb(x, secret, body), 'the connection breaks: no reply');
  assert.equal(await x.exited, 'SIGKILL', x.output().slice(-2000));
  assert.ok(x.output().includes(`fault point ${POINT} reached`), 'killed between its commit and its reply');
}

async function networksNamed(x: XapiProcess, name: string): Promise<Record<string, Record<string, unknown>>[]> {
  const s = await login(x.url, PASSWORD);
  const refs = (await jsonCall(x.url, 'network.get_by_name_label', [s, name])) as string[];
  return Promise.all(
    refs.map(async (r) => (await jsonCall(x.url, 'network.get_record', [s, r])) as Record<string, Record<string, unknown>>),
  );
}

test('a write committed by a coordinator killed before its reply is applied once when resent after its restart', {
  timeout: 120_000,
}, async () => {
  let x = await startXapi({ env: { XAPI_TEST_FAULT_POINT: POINT } });
  try {
    const secret = (await readFile(join(x.stateDir, 'ptoken'), 'utf8')).trim();
    const network = `OpaqueRef:${randomUUID()}`;
    const create = JSON.stringify({
      id: randomUUID(),
      op: 'create',
      args: ['network', network, { uuid: randomUUID(), name_label: 'made once', bridge: 'xapi-once', other_config: {} }],
    });
    await sendAndLoseReply(x, secret, create);

    // Restarted (armed again, for the batch below): the resend gets the first attempt's reply.
    x = await restart(x, POINT);
    assert.deepEqual(await remoteDb(x, secret, create), { ok: true });
    assert.equal((await networksNamed(x, 'made once')).length, 1);

    // A batch of writes, its reply lost the same way: a second run would refuse the key and the ref.
    const second = `OpaqueRef:${randomUUID()}`;
    const batch = JSON.stringify({
      id: randomUUID(),
      batch: [
        { op: 'mapAdd', args: ['network', network, 'other_config', 'added', 'once'] },
        { op: 'create', args: ['network', second, { uuid: randomUUID(), name_label: 'batched once', bridge: 'xapi-once2' }] },
      ],
    });
    await sendAndLoseReply(x, secret, batch);
    x = await restart(x);
    assert.deepEqual(await remoteDb(x, secret, batch), { ok: true, result: [{ ok: true }, { ok: true }] });
    // and the single write from before the first crash is still answered from its stored reply
    assert.deepEqual(await remoteDb(x, secret, create), { ok: true });
    const [made] = await networksNamed(x, 'made once');
    assert.deepEqual(made!.other_config, { added: 'once' });
    assert.equal((await networksNamed(x, 'batched once')).length, 1);
  } finally {
    await stopXapi(x);
  }
});
