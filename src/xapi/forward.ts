// Running a call on the host that must do the work (xapi's message_forwarding.ml do_op_on): the
// coordinator has made its checks, taken its marks and chosen the host; the work runs here if
// that host is this one, else the same message is called on that host over HTTPS with a pool
// session minted for the call and destroyed after it (the client's session is never passed on),
// under the caller's task (header `task-id`), which the member uses rather than making its own.
// The member runs it with its local implementation and takes no locks (isForwardedHere).
import { XapiError } from '../rpc/errors.js';
import { XapiClient } from '../rpc/client.js';
import type { Rpc } from '../rpc/rpc.js';
import type { Call, HostContext } from '../api/context.js';
import { createSession } from './session.js';
import { NULL_REF } from '../schema/types.js';

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
  return callOn(host, hostRef, target.address, wire, args, await forwardTask(call, hostRef));
}

/**
 * xapi's set_forwarding_on_task: the call's task (if it is a row of the database) is marked
 * forwarded to the host, which writes its progress there; the coordinator still completes it.
 */
async function forwardTask(call: Call, hostRef: string): Promise<string | undefined> {
  if (!call.task.startsWith('OpaqueRef:') || !(await call.db.tryGet('task', call.task))) return undefined;
  await call.db.update('task', call.task, { forwarded: true, forwarded_to: hostRef, resident_on: hostRef });
  return call.task;
}

/**
 * Calls `wire` on another host of the pool under a pool session minted for the call; `task`,
 * the coordinator's task the host runs it under (header task-id).
 */
export async function callOn(host: HostContext, hostRef: string, address: string, wire: string, args: Rpc[], task?: string): Promise<Rpc> {
  // Not waited to be durable: the host reads it from this database's memory, and it lives only
  // for this call (a flush that failed meanwhile fails the caller's call anyway).
  const session = await createSession(host, { pool: true, userName: host.hostRef, originator: 'forwarded' });
  try {
    return await peer(host, address).call(wire, [session, ...args], task ? { 'task-id': task } : {});
  } catch (e) {
    if (e instanceof XapiError) throw e;
    host.log.warn({ err: e, host: hostRef, wire }, 'forwarded call failed');
    throw new XapiError('CANNOT_CONTACT_HOST', [hostRef]);
  } finally {
    await host.db.destroy('session', session).catch(() => undefined);
  }
}

/**
 * forward_vbd_op / forward_vif_op: a device operation runs on the host its VM is resident on
 * (whatever its power state says), here if the VM is on none. A forwarded call runs here.
 */
export async function runOnVmHost(call: Call, vmRef: string, wire: string, args: Rpc[], local: () => Promise<void>): Promise<void> {
  if (isForwardedHere(call)) return local();
  const resident = (await call.db.get('VM', vmRef)).resident_on;
  if (resident === NULL_REF) return local();
  await runOn(call, resident, wire, args, local);
}

/**
 * The host that runs an SR's storage operations (message_forwarding.ml choose_pbds_for_sr, with
 * plugged PBDs only): an SR with several PBDs is worked on by the coordinator, whose PBD must be
 * plugged; one with a single PBD by that PBD's host, if plugged; SR_HAS_NO_PBDS [sr] otherwise.
 */
export async function srMaster(call: Call, srRef: string): Promise<string> {
  const sr = await call.db.get('SR', srRef);
  const pbds = [];
  for (const ref of sr.PBDs) {
    const pbd = await call.db.tryGet('PBD', ref);
    if (pbd?.currently_attached === true) pbds.push(pbd);
  }
  const candidates = sr.PBDs.length > 1 ? pbds.filter((p) => p.host === call.host.hostRef) : pbds;
  const chosen = candidates[0];
  if (!chosen) throw new XapiError('SR_HAS_NO_PBDS', [srRef]);
  return chosen.host;
}

/** A storage operation on the SR's master (forward_sr_op); a forwarded call runs here. */
export async function runOnSrMaster<T>(call: Call, srRef: string, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T> {
  if (isForwardedHere(call)) return local();
  return (await runOn(call, await srMaster(call, srRef), wire, args, local)) as T;
}

/** Whether `hostRef` has a plugged PBD for each SR (assert_can_see_specified_SRs). */
export async function seesSrs(call: Call, hostRef: string, srs: string[]): Promise<boolean> {
  for (const sr of srs) {
    const pbds = await call.db.find('PBD', { SR: sr, host: hostRef });
    if (!pbds.some(([, p]) => p.currently_attached === true)) return false;
  }
  return true;
}

/**
 * Where an HTTP transfer touching these SRs' disks is served (importexport.ml: each host reads
 * and writes the disks of the SRs plugged on it): undefined for this host, else the address of
 * a live host that sees them all, picked at random, for a 302. With no such host the transfer
 * runs here and fails with this host's own error.
 */
export async function transferHost(call: Call, srs: string[]): Promise<string | undefined> {
  if (await seesSrs(call, call.host.hostRef, srs)) return undefined;
  const able: string[] = [];
  for (const [ref, host] of await call.db.all('host')) {
    if (ref === call.host.hostRef) continue;
    const metrics = await call.db.tryGet('host_metrics', host.metrics);
    if (metrics?.live === true && (await seesSrs(call, ref, srs))) able.push(host.address);
  }
  return able[Math.floor(Math.random() * able.length)];
}
