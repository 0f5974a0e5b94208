// A pool of real `xapi serve` processes for the integration tests: N hosts on their own 127.x
// addresses sharing one pair of ports (a host finds another by address alone, as in a real
// pool), the first the coordinator and the others joined to it with pool.join, as an operator
// would. Waits on conditions only: each member back as a member, enabled and live.
import { createServer } from 'node:net';
import { freePort, loopbackAddress, PASSWORD, startXapi, stopHosts, type StartOptions, type XapiProcess } from './harness.js';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jsonCall, login, RpcFailure } from './client.js';
import { vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

export interface TestPool {
  hosts: XapiProcess[];
  coordinator: XapiProcess;
  members: XapiProcess[];
  /** A session on the coordinator (root). */
  session: string;
  /** The host refs, in the order of `hosts`. */
  refs: string[];
  stop(keepState?: boolean): Promise<void>;
}

/** Ports free on every one of the addresses. */
async function commonPorts(addresses: string[]): Promise<[number, number]> {
  for (;;) {
    const http = await freePort(addresses[0]!);
    const https = await freePort(addresses[0]!);
    if (http === https) continue;
    let free = true;
    for (const a of addresses.slice(1)) {
      try {
        await listenOnce(a, http);
        await listenOnce(a, https);
      } catch {
        free = false;
      }
    }
    if (free) return [http, https];
  }
}

async function listenOnce(address: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, address, () => s.close(() => resolve()));
  });
}

/** Options for every host; `hostArgs[i]`, extra `xapi serve` flags for host i only. */
type PoolOptions = Omit<StartOptions, 'address' | 'httpPort' | 'httpsPort'> & { hostArgs?: string[][] };

/** Starts standalone hosts with the pool's ports (not joined). */
export async function startHosts(n: number, o: PoolOptions = {}): Promise<XapiProcess[]> {
  const addresses = Array.from({ length: n }, () => loopbackAddress());
  const [httpPort, httpsPort] = await commonPorts(addresses);
  const { hostArgs, ...common } = o;
  const started = await Promise.allSettled(
    addresses.map((address, i) =>
      startXapi({ ...common, args: [...(common.args ?? []), ...(hostArgs?.[i] ?? [])], address, httpPort, httpsPort }),
    ),
  );
  const failed = started.find((r) => r.status === 'rejected');
  if (!failed) return started.map((r) => (r as PromiseFulfilledResult<XapiProcess>).value);
  // One host did not start: the others are stopped, or they would outlive the test (and hold
  // its process open).
  await stopHosts(started.map((r) => (r.status === 'fulfilled' ? r.value : undefined)));
  throw failed.reason;
}

/**
 * How many times the member keeping its state in `stateDir` has logged that it serves as a member
 * (its storage plugged, half copies swept, its domains resynchronised). A member restarted after
 * kill -9 is still enabled and live in the coordinator's records from before, and answers
 * HOST_IS_SLAVE as soon as it listens: only this line says its start-up is over.
 */
export async function timesServing(stateDir: string): Promise<number> {
  const log = await readFile(join(stateDir, 'xapi.log'), 'utf8').catch(() => '');
  return log.split('member of the pool: serving').length - 1;
}

/** Makes `member` join the pool of `coordinator` and waits until it is back as an enabled, live member. */
export async function joinPool(coordinator: XapiProcess, member: XapiProcess): Promise<void> {
  const s = await login(member.url, PASSWORD);
  await jsonCall(member.url, 'pool.join', [s, coordinator.address, 'root', PASSWORD]);
  const cs = await login(coordinator.url, PASSWORD);
  await waitUntil(`${member.address} enabled and live in the pool of ${coordinator.address}`, async () => {
    const hosts = (await jsonCall(coordinator.url, 'host.get_all_records', [cs])) as Record<string, Record<string, unknown>>;
    const mine = Object.values(hosts).find((h) => h.address === member.address);
    if (!mine?.enabled) return false;
    return (await jsonCall(coordinator.url, 'host_metrics.get_live', [cs, mine.metrics])) === true;
  });
}

export async function startPool(n: number, o: PoolOptions = {}): Promise<TestPool> {
  const hosts = await startHosts(n, o);
  const [coordinator, ...members] = hosts as [XapiProcess, ...XapiProcess[]];
  try {
    for (const m of members) await joinPool(coordinator, m);
  } catch (e) {
    await stopHosts(hosts);
    throw e;
  }
  const session = await login(coordinator.url, PASSWORD);
  const refs: string[] = [];
  for (const h of hosts) {
    const all = (await jsonCall(coordinator.url, 'host.get_all_records', [session])) as Record<string, Record<string, unknown>>;
    refs.push(Object.entries(all).find(([, r]) => r.address === h.address)![0]);
  }
  return {
    hosts,
    coordinator,
    members,
    session,
    refs,
    stop: async (keepState = false) => {
      await stopHosts(hosts, keepState);
    },
  };
}

/**
 * A session on a coordinator that has just (re)started: a coordinator of a pool serves only
 * emergency calls (HOST_STILL_BOOTING) until it has made sure no other host is coordinator.
 */
export async function loginWhenServing(url: string): Promise<string> {
  return waitUntil(`${url} serving logins`, async () => {
    try {
      return await login(url, PASSWORD);
    } catch (e) {
      if (e instanceof RpcFailure && e.error[0] === 'HOST_STILL_BOOTING') return undefined;
      throw e;
    }
  });
}

/** The ref of the host at `x`'s address, as the coordinator `c` knows it. */
export async function hostRef(c: XapiProcess, session: string, x: XapiProcess): Promise<string> {
  const hosts = (await jsonCall(c.url, 'host.get_all_records', [session])) as Record<string, { address: string }>;
  const found = Object.entries(hosts).find(([, h]) => h.address === x.address);
  if (!found) throw new Error(`no host at ${x.address}`);
  return found[0];
}

/**
 * A diskless VM created through the coordinator `c` and started on `target`; on a member, under
 * a pool session on the member itself, as the coordinator's forwarding does.
 */
export async function runningVmOn(
  c: XapiProcess,
  session: string,
  target: XapiProcess,
  name: string,
  memory = 128 * 1024 * 1024,
): Promise<string> {
  const vm = (await jsonCall(c.url, 'VM.create', [session, vmRecord(name, { memory })])) as string;
  const ref = await hostRef(c, session, target);
  let s = session;
  if (target !== c) {
    const secret = (await readFile(join(c.stateDir, 'ptoken'), 'utf8')).trim();
    s = (await jsonCall(c.url, 'session.slave_login', [ref, secret])) as string;
  }
  await jsonCall(target.url, 'VM.start_on', [s, vm, ref, false, false]);
  return vm;
}

/** The "Local storage" SR (type ext) of `host`, through `call` (a session-bound API call). */
export async function localSrOf(call: Call, host: string): Promise<string> {
  const pbds = (await call('PBD.get_all_records')) as Record<string, { host: string; SR: string }>;
  for (const pbd of Object.values(pbds)) {
    if (pbd.host === host && (await call('SR.get_type', pbd.SR)) === 'ext') return pbd.SR;
  }
  throw new Error(`no local SR on ${host}`);
}

/** A session-bound API call, as the tests write them. */
type Call = (method: string, ...params: unknown[]) => Promise<unknown>;

/**
 * A shared SR through `call`, created from `host`: the simulator's "nfs", a new directory under
 * the temporary directory (`dir`, for the test to remove), which every host of the pool plugs.
 */
export async function createSharedSr(call: Call, host: string, dirPrefix: string): Promise<{ sr: string; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), dirPrefix));
  const sr = (await call('SR.create', host, { server: '127.0.0.1', serverpath: dir }, 0, 'shared', '', 'nfs', 'user', true, {})) as string;
  return { sr, dir };
}

/** A network on which each of the pool's `hostCount` hosts has a PIF. */
export async function poolWideNetwork(call: Call, hostCount: number): Promise<string> {
  const nets = (await call('network.get_all_records')) as Record<string, { PIFs: string[] }>;
  for (const [ref, n] of Object.entries(nets)) {
    const hosts = new Set<string>();
    for (const pif of n.PIFs) hosts.add((await call('PIF.get_host', pif)) as string);
    if (hosts.size === hostCount) return ref;
  }
  throw new Error(`no network with a PIF on each of ${hostCount} hosts`);
}
