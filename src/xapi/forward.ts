// Running a call on the host that must do the work (xapi's message_forwarding.ml do_op_on): the
// coordinator has made its checks, taken its marks and chosen the host; the work runs here if
// that host is this one, else the same message is called on that host over HTTPS with a pool
// session minted for the call and destroyed after it (the client's session is never passed on).
// The member runs it with its local implementation and takes no locks (isForwardedHere).
import { XapiError } from '../rpc/errors.js';
import { XapiClient } from '../rpc/client.js';
import type { Rpc } from '../rpc/rpc.js';
import type { Call, HostContext } from '../api/context.js';
import { createSession } from './session.js';

const clients = new WeakMap<HostContext, Map<string, XapiClient>>();

/** The kept-alive client to another host of the pool: all hosts listen on the same ports. */
export function peer(host: HostContext, address: string): XapiClient {
  let byAddress = clients.get(host);
  if (!byAddress) {
    byAddress = new Map();
    clients.set(host, byAddress);
  }
  let client = byAddress.get(address);
  if (!client) {
    client = new XapiClient(`https://${address}:${host.config.httpsPort}`);
    byAddress.set(address, client);
  }
  return client;
}

/** Closes the kept-alive connections to the other hosts (when this host closes). */
export function closePeers(host: HostContext): void {
  for (const c of clients.get(host)?.values() ?? []) c.close();
  clients.delete(host);
}

/**
 * Whether this call is the member's half of a forwarded call: it runs here because the
 * coordinator chose this host, so the coordinator's checks, marks and choice are already made.
 */
export function isForwardedHere(call: Call): boolean {
  return call.host.role.kind !== 'master' && call.session?.row.pool === true;
}

/**
 * Runs `local` if `hostRef` is this host, else calls `wire(...args)` on that host. Only live
 * hosts are called (HOST_OFFLINE); a host that cannot be reached, or breaks the connection before
 * answering, gives CANNOT_CONTACT_HOST [host]; its XenAPI errors come back as they are.
 */
export async function runOn<T>(call: Call, hostRef: string, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T | Rpc> {
  const host = call.host;
  if (hostRef === host.hostRef) return local();
  const target = await call.db.get('host', hostRef);
  const metrics = await call.db.tryGet('host_metrics', target.metrics);
  if (!metrics?.live) throw new XapiError('HOST_OFFLINE', [hostRef]);
  return callOn(host, hostRef, target.address, wire, args);
}

/** Calls `wire` on another host of the pool under a pool session minted for the call. */
export async function callOn(host: HostContext, hostRef: string, address: string, wire: string, args: Rpc[]): Promise<Rpc> {
  const session = await createSession(host, { pool: true, userName: host.hostRef, originator: 'forwarded' });
  await host.db.commit();
  try {
    return await peer(host, address).call(wire, [session, ...args]);
  } catch (e) {
    if (e instanceof XapiError) throw e;
    host.log.warn({ err: e, host: hostRef, wire }, 'forwarded call failed');
    throw new XapiError('CANNOT_CONTACT_HOST', [hostRef]);
  } finally {
    await host.db.destroy('session', session).catch(() => undefined);
  }
}
