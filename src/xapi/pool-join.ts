// pool.join and pool.join_force on the joining host (xapi_pool.ml join_common): log in to the
// pool's coordinator, run the pre-join checks (pool-join-checks.ts), take the pool's secret,
// merge this host's objects into the pool's database (pool-join-merge.ts), then become a member:
// the new role and secret are written and the host restarts as a member of that pool. The call
// returns before the restart, as xapi's does.
import { XapiError } from '../rpc/errors.js';
import { BadResponse, ConnectionFailed, XapiClient } from '../rpc/client.js';
import type { Rpc } from '../rpc/rpc.js';
import type { Call } from '../api/context.js';
import { typed } from '../db/interface.js';
import { RemoteDb } from '../db/remote.js';
import { preJoinChecks } from './pool-join-checks.js';
import { applyJoinContribution, collectJoinContribution } from './pool-join-merge.js';
import { faultPoint } from '../util/fault-point.js';

/** The joiner's calls to the coordinator while joining fail fast rather than wait for it. */
const JOIN_DB_RETRY = { initialMs: 200, maxMs: 1_000 };

export async function join(call: Call, address: string, user: string, password: string, force: boolean): Promise<void> {
  const host = call.host;
  const client = new XapiClient(`https://${address}:${host.config.httpsPort}`);
  try {
    let session: Rpc;
    try {
      session = await client.call('session.login_with_password', [user, password, '', 'pool.join']);
    } catch (e) {
      if (e instanceof XapiError) throw e; // a wrong password, or the address of a member (HOST_IS_SLAVE)
      if (e instanceof ConnectionFailed) throw new XapiError('JOINING_HOST_CONNECTION_FAILED', []);
      if (e instanceof BadResponse) throw new XapiError('JOINING_HOST_SERVICE_FAILED', []);
      throw e;
    }
    let secret: string;
    try {
      await preJoinChecks(call.db, host.hostRef, { call: (method, params) => client.call(method, [session, ...(params as Rpc[])]) }, force);
      secret = String(await client.call('pool.initial_auth', [session]));
    } finally {
      await client.call('session.logout', [session]).catch(() => undefined);
    }
    faultPoint('join.before-merge');
    await mergeInto(call, address, secret);
    faultPoint('join.after-merge');
    await host.changeRole({ kind: 'slave', master: address }, `joined the pool of ${address}`, secret);
    faultPoint('join.after-role');
  } finally {
    client.close();
  }
}

/** This host's objects written into the coordinator's database, with the pool's secret. */
async function mergeInto(call: Call, address: string, secret: string): Promise<void> {
  const host = call.host;
  const contribution = await collectJoinContribution(call.db, host.hostRef);
  const pooled = new RemoteDb(host.schema, { address, port: host.config.httpsPort, poolSecret: () => secret, retry: JOIN_DB_RETRY });
  try {
    const result = await applyJoinContribution(typed(pooled), contribution);
    for (const f of result.failed) host.log.warn(f, 'pool.join: an object could not be merged');
    await pooled.commit();
  } finally {
    pooled.close();
  }
}
