// The proposal half of the two-phase commit (xapi_ha.ml propose/commit/abort_new_master), on an
// in-memory host: the errors with their exact parameters, and the coordinator's handover.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { HostContext } from '../../src/api/context.js';
import { memoryHost } from '../../src/host/memory-host.js';
import { ConnectionFailed } from '../../src/rpc/client.js';
import {
  abortNewMaster,
  commitNewMaster,
  emergencyCall,
  nextRole,
  PROPOSAL_LIFETIME_MS,
  proposeNewMaster,
} from '../../src/xapi/pool-transition.js';
import type { XapiError } from '../../src/rpc/errors.js';
import { certificate } from './remote-db-fixture.js';

test('commit_new_master without a proposal, or for another address, gives HA_ABORT_NEW_MASTER', async () => {
  const { host, close } = await memoryHost();
  try {
    await assert.rejects(
      commitNewMaster(host, '10.0.0.2'),
      (e: XapiError) =>
        e.code === 'HA_ABORT_NEW_MASTER' && e.params[0] === 'Received commit_new_master(10.0.0.2) but never received a proposal',
    );
    proposeNewMaster(host, '10.0.0.2', true);
    await assert.rejects(
      commitNewMaster(host, '10.0.0.3'),
      (e: XapiError) =>
        e.code === 'HA_ABORT_NEW_MASTER' &&
        e.params[0] === 'Received commit_new_master(10.0.0.3) but previously received proposal for 10.0.0.2',
    );
    abortNewMaster(host, '10.0.0.2');
  } finally {
    await close();
  }
});

test('a second proposal for another host is refused for ten minutes; the same one is refreshed', async () => {
  let now = 1_000_000;
  const { host, close } = await memoryHost({ now: () => now });
  try {
    proposeNewMaster(host, '10.0.0.2', true);
    proposeNewMaster(host, '10.0.0.2', true);
    now += 60_000;
    assert.throws(
      () => proposeNewMaster(host, '10.0.0.3', true),
      (e: XapiError) =>
        e.code === 'HA_ABORT_NEW_MASTER' &&
        e.params.length === 1 &&
        e.params[0]!.startsWith("Already agreed to commit host address '10.0.0.2' at "),
    );
    now += PROPOSAL_LIFETIME_MS;
    proposeNewMaster(host, '10.0.0.3', true);
    abortNewMaster(host, '10.0.0.3');
    // Aborted: any proposal is taken again.
    proposeNewMaster(host, '10.0.0.4', false);
    abortNewMaster(host, '10.0.0.4');
  } finally {
    await close();
  }
});

test('the coordinator agreeing to hand over serves only emergency calls until the abort; a commit makes it a member', async () => {
  const { host, dispatcher, restartRequests, close } = await memoryHost();
  try {
    const login = await dispatcher.dispatch('session.login_with_password', ['root', 'secret']);
    assert.ok(login.ok);
    proposeNewMaster(host, '10.0.0.2', true);
    const refused = await dispatcher.dispatch('session.login_with_password', ['root', 'secret']);
    assert.deepEqual(refused.ok ? undefined : refused.error, ['HOST_STILL_BOOTING']);
    abortNewMaster(host, '10.0.0.2');
    assert.ok((await dispatcher.dispatch('session.login_with_password', ['root', 'secret'])).ok);

    proposeNewMaster(host, '10.0.0.2', true);
    await commitNewMaster(host, '10.0.0.2');
    assert.deepEqual(nextRole(host), { kind: 'slave', master: '10.0.0.2' });
    const after = await dispatcher.dispatch('session.login_with_password', ['root', 'secret']);
    assert.deepEqual(after.ok ? undefined : after.error, ['HOST_IS_SLAVE', '10.0.0.2']);
    // pool.is_slave answers by the role written for the next start.
    const local = await dispatcher.dispatch('session.slave_local_login', ['memory-pool-secret']);
    assert.ok(local.ok);
    const isSlave = await dispatcher.dispatch('pool.is_slave', [local.value as string, host.hostRef]);
    assert.ok(isSlave.ok && isSlave.value === true);
    assert.deepEqual(restartRequests, ['committed to the new coordinator 10.0.0.2 (slave)']);
  } finally {
    await close();
  }
});

test('an emergency call to a host that never finishes its answer fails at its deadline, however busy the connection', {
  timeout: 30_000,
}, async () => {
  // The peer logs in, then answers the call with a reply it never ends, a byte at a time: the
  // connection is never idle, so only the call's own deadline can end the wait.
  const server = createServer(await certificate(), (req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const { method, id } = JSON.parse(body) as { method: string; id: number };
      if (method === 'session.slave_local_login') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ jsonrpc: '2.0', result: 'OpaqueRef:session', id }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      const drip = setInterval(() => res.write(' '), 20);
      res.on('close', () => clearInterval(drip));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const host = { config: { httpsPort: port }, poolSecrets: () => ['secret'] } as unknown as HostContext;
  try {
    await assert.rejects(
      emergencyCall(host, '127.0.0.1', 'host.commit_new_master', ['127.0.0.2'], 300),
      (e: unknown) => e instanceof ConnectionFailed && /no answer within 300 ms/.test(e.message),
    );
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});
