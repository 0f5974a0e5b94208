// Changing the pool's coordinator (pool.md §5; xapi's xapi_pool_transition.ml and the proposal
// half of xapi_ha.ml). Everything here talks to the other hosts with emergency-mode sessions (a
// local login with the pool secret), never through the database: the database is what is
// changing hands, and its coordinator may be gone. The two-phase commit takes its peers and its
// mode as arguments so that HA (a later issue) can drive it with manual=false.
//
// Beyond xapi: a host that has agreed to hand its coordinator role over stops serving the API
// (only emergency calls) until the handover ends, and `pool.is_slave` answers by the role a host
// has written for its next start, not the one it started with. Together with the start-up check
// (src/host/coordinator-check.ts) this keeps two hosts from accepting logins as coordinator at
// the same moment; see docs/architecture.md "Coordinator transitions".
import { lookup } from 'node:dns/promises';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isArmed } from './ha.js';
import { XapiError } from '../rpc/errors.js';
import { ConnectionFailed, XapiClient } from '../rpc/client.js';
import type { Rpc } from '../rpc/rpc.js';
import type { Call, HostContext, HostRole, Registry } from '../api/context.js';
import { fetchBackup } from '../db/backup.js';
import { formatDateTime } from '../schema/types.js';
import { writeFileAtomic } from '../util/files.js';
import { faultPoint } from '../util/fault-point.js';
import { callOn, isForwardedHere, runOn } from './forward.js';
import { poolOperationErrors, updatePoolAllowedOperations } from './pool-operations.js';

/** A proposal for another coordinator holds for this long (xapi: ten minutes). */
export const PROPOSAL_LIFETIME_MS = 10 * 60_000;
/**
 * How long a coordinator that agreed to hand over refuses API calls while waiting for the commit
 * (or the abort); after it, it forgets the proposal (a late commit is refused) and serves again.
 */
export const HANDOVER_TIMEOUT_MS = 60_000;
/** A peer that has not answered an emergency call within this long is taken as unreachable. */
export const PEER_CALL_TIMEOUT_MS = 30_000;
/**
 * The longest an old coordinator that has committed puts off its restart for the reply to the
 * designate_new_master call it forwarded (the new coordinator answers once every peer has
 * committed, or failed to: a frozen new coordinator must not keep the old one up for ever).
 */
export const DESIGNATE_REPLY_WAIT_MS = HANDOVER_TIMEOUT_MS;

interface Proposal {
  address: string;
  at: number;
  /** Set when this host is the coordinator and the proposal names another host. */
  handoverTimer?: NodeJS.Timeout;
  /** The emergency state the handover set (cleared only if still the one in force). */
  handoverState?: { code: string; params: string[] };
}

const proposals = new WeakMap<HostContext, Proposal>();
/** The designate_new_master call this coordinator is running (forwarded to the new host). */
const designating = new WeakMap<HostContext, Promise<unknown>>();
/** The role each host has written for its next start (absent: the role it started with). */
const nextRoles = new WeakMap<HostContext, HostRole>();

/** The role this host will have at its next start: what `pool.is_slave` answers by. */
export function nextRole(host: HostContext): HostRole {
  return nextRoles.get(host) ?? host.role;
}

const sameRole = (a: HostRole, b: HostRole) => a.kind === b.kind && (a.kind !== 'slave' || (b.kind === 'slave' && a.master === b.master));

/** xapi's local.db key this_node_just_became_master, as a file in the state directory. */
const becameFlag = (host: HostContext) => join(host.config.stateDir, 'became-coordinator');

/** Whether this host became coordinator by a transition and has not yet started as one. */
export async function justBecameCoordinator(host: HostContext): Promise<boolean> {
  return stat(becameFlag(host)).then(
    () => true,
    () => false,
  );
}

export async function clearJustBecameCoordinator(host: HostContext): Promise<void> {
  await rm(becameFlag(host), { force: true });
}

/** Writes the role for the next start (xapi's set_role), remembering a change to coordinator. */
async function setRole(host: HostContext, role: HostRole): Promise<void> {
  if (role.kind === 'master' && host.role.kind !== 'master') await writeFileAtomic(becameFlag(host), '', 0o600);
  await host.writeRole(role);
  nextRoles.set(host, role);
}

/** Becomes the coordinator at the next start (which follows at once), from this host's database copy. */
export async function becomeMaster(host: HostContext, reason: string): Promise<void> {
  await setRole(host, { kind: 'master' });
  await host.changeRole({ kind: 'master' }, reason);
}

/**
 * Becomes a member of the coordinator at `address` (xapi's become_another_masters_slave): a no-op
 * if that is already this host's role. From now on the host serves only emergency calls; the
 * others get HOST_IS_SLAVE [address], which a client follows to the new coordinator.
 */
export async function becomeMemberOf(host: HostContext, address: string, reason: string): Promise<void> {
  const role: HostRole = { kind: 'slave', master: address };
  if (sameRole(nextRole(host), role)) {
    host.log.info({ coordinator: address }, 'already a member of that coordinator: nothing to do');
    return;
  }
  host.emergency = { code: 'HOST_IS_SLAVE', params: [address] };
  await setRole(host, role);
  // The old coordinator, committing, is still running the designate_new_master call that started
  // all this: its client is owed the reply, which comes once the new coordinator has committed
  // every other host (xapi's ten-second fuse leaves the time for it). Restarting now would cut
  // that call's connection however the designation ends. The role is written already, and the
  // API refused from here on, so waiting changes nothing else.
  const call = designating.get(host);
  if (call) {
    host.log.info({ coordinator: address }, 'committed: restarting once the designate_new_master call has its reply');
    void settledWithin(call, DESIGNATE_REPLY_WAIT_MS)
      .then(() => host.changeRole(role, reason))
      .catch((err: unknown) => host.log.error({ err }, 'restarting as a member failed'));
    return;
  }
  await host.changeRole(role, reason);
}

/** Resolves once `p` settles, or after `ms`, whichever is first. */
function settledWithin(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return Promise.race([p.then(noop, noop), expired]).finally(() => clearTimeout(timer));
}

const noop = () => undefined;

/**
 * Calls `wire` on the host at `address` under an emergency-mode session (session.slave_local_login
 * with the pool secret), as xapi's call_emergency_mode_functions: it works whatever that host's
 * database is doing. The login, the call and the logout share one deadline: a socket's idle timer
 * alone lets a silent (stopped) host hold the caller for several periods, since each call after a
 * failed one opens a new connection and a TLS handshake waiting for its answer is given the idle
 * period twice over by node. A call that missed the deadline fails with ConnectionFailed.
 */
export async function emergencyCall(
  host: HostContext,
  address: string,
  wire: string,
  args: Rpc[] = [],
  timeoutMs = PEER_CALL_TIMEOUT_MS,
): Promise<Rpc> {
  const client = new XapiClient(`https://${address}:${host.config.httpsPort}`, { idleTimeoutMs: timeoutMs });
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<typeof EXPIRED>((resolve) => {
    timer = setTimeout(() => resolve(EXPIRED), timeoutMs);
  });
  const bounded = async (p: Promise<Rpc>): Promise<Rpc> => {
    const r = await Promise.race([p, expired]);
    if (r === EXPIRED) throw new ConnectionFailed(client.url, new Error(`no answer within ${timeoutMs} ms`));
    return r;
  };
  try {
    const session = await bounded(client.call('session.slave_local_login', [host.poolSecrets()[0]!]));
    try {
      return await bounded(client.call(wire, [session, ...args]));
    } finally {
      await bounded(client.call('session.local_logout', [session])).catch(() => undefined);
    }
  } finally {
    clearTimeout(timer);
    client.close(); // a call still waiting fails now, rather than holding its socket
  }
}

const EXPIRED = Symbol('expired');

const abortError = (reason: string) => new XapiError('HA_ABORT_NEW_MASTER', [reason]);

/** Ends this coordinator's handover (abort, expiry): it serves the API again. */
function endHandover(host: HostContext, p: Proposal): void {
  if (p.handoverTimer) clearTimeout(p.handoverTimer);
  p.handoverTimer = undefined;
  if (p.handoverState && host.emergency === p.handoverState) host.emergency = undefined;
  p.handoverState = undefined;
}

/**
 * host.propose_new_master(address, manual): this host agrees to commit to `address` later. A
 * different proposal younger than ten minutes is refused (HA_ABORT_NEW_MASTER); the same one is
 * refreshed. The coordinator, agreeing to another host, stops serving the API from now on (so
 * that every write it acknowledged is in the copy the new coordinator takes next).
 */
export function proposeNewMaster(host: HostContext, address: string, _manual: boolean): void {
  const now = host.now();
  const current = proposals.get(host);
  if (current && current.address !== address) {
    const ageS = (now - current.at) / 1000;
    if (now - current.at <= PROPOSAL_LIFETIME_MS) {
      throw abortError(
        `Already agreed to commit host address '${current.address}' at ${new Date(current.at).toISOString()} ('${ageS}' secs ago)`,
      );
    }
    endHandover(host, current);
  }
  const proposal: Proposal = current?.address === address ? current : { address, at: now };
  proposal.at = now;
  proposals.set(host, proposal);
  if (host.role.kind === 'master' && nextRole(host).kind === 'master' && address !== host.config.address && !proposal.handoverTimer) {
    proposal.handoverState = { code: 'HOST_STILL_BOOTING', params: [] };
    host.emergency = proposal.handoverState;
    proposal.handoverTimer = setTimeout(() => {
      if (proposals.get(host) !== proposal) return;
      proposals.delete(host);
      endHandover(host, proposal);
      host.log.warn({ proposed: address }, 'no commit came for the proposed coordinator: serving again');
    }, HANDOVER_TIMEOUT_MS);
    proposal.handoverTimer.unref();
    faultPoint('designate.old-agreed');
  }
}

/** host.abort_new_master(address): forgets the proposal (whatever it named, as xapi does). */
export function abortNewMaster(host: HostContext, address: string): void {
  const p = proposals.get(host);
  if (!p) host.log.warn({ address }, 'abort_new_master without a proposal');
  else endHandover(host, p);
  proposals.delete(host);
}

/**
 * host.commit_new_master(address): only after a proposal for the same address; then this host
 * becomes the coordinator (it is `address`) or that coordinator's member.
 */
export async function commitNewMaster(host: HostContext, address: string): Promise<void> {
  const p = proposals.get(host);
  if (!p) throw abortError(`Received commit_new_master(${address}) but never received a proposal`);
  if (p.address !== address) throw abortError(`Received commit_new_master(${address}) but previously received proposal for ${p.address}`);
  // Committed: the handover's refusals stay until the restart (becomeMemberOf replaces them).
  if (p.handoverTimer) clearTimeout(p.handoverTimer);
  p.handoverTimer = undefined;
  if (address === host.config.address) await becomeMaster(host, 'committed as the new coordinator');
  else {
    await becomeMemberOf(host, address, `committed to the new coordinator ${address}`);
    faultPoint('designate.peer-committed');
  }
}

export interface TwoPhaseCommit {
  /** true for pool.designate_new_master; false when HA elects (no other coordinator to wait for). */
  manual: boolean;
  /** The other hosts' addresses, the current coordinator first. */
  peers: string[];
  /** This host's address: the new coordinator. */
  myAddress: string;
  /** Runs between the phases, once every host has agreed (the final copy of the database). */
  beforeCommit?: () => Promise<void>;
}

/**
 * xapi's attempt_two_phase_commit_of_new_master, run on the new coordinator. Phase 1 proposes
 * it to every peer and then to itself; any refusal aborts everyone who agreed and is raised.
 * Phase 2 writes `broken` (a half-done commit must not leave this host a coordinator), tells
 * every peer to commit, and only if all did writes `master` and restarts as coordinator
 * (automatic mode: unless it is one already); else it restarts broken (HOST_BROKEN).
 */
export async function twoPhaseCommit(host: HostContext, o: TwoPhaseCommit): Promise<{ failed: string[] }> {
  host.log.info({ manual: o.manual, peers: o.peers, me: o.myAddress }, 'two-phase commit of a new coordinator');
  const agreed: string[] = [];
  try {
    for (const address of [...o.peers, o.myAddress]) {
      await emergencyCall(host, address, 'host.propose_new_master', [o.myAddress, o.manual]);
      agreed.push(address);
    }
    faultPoint('designate.all-agreed');
    await o.beforeCommit?.();
  } catch (e) {
    host.log.warn({ err: e }, 'the proposal failed: aborting');
    for (const address of agreed) {
      await emergencyCall(host, address, 'host.abort_new_master', [o.myAddress]).catch((err: unknown) =>
        host.log.warn({ err, address }, 'telling a host to abort failed'),
      );
    }
    throw e;
  }
  const wasMaster = host.role.kind === 'master';
  await setRole(host, { kind: 'broken' });
  faultPoint('designate.broken-written');
  const failed: string[] = [];
  for (const address of o.peers) {
    try {
      await emergencyCall(host, address, 'host.commit_new_master', [o.myAddress]);
    } catch (e) {
      host.log.error({ err: e, address }, 'a host did not commit to the new coordinator');
      failed.push(address);
    }
  }
  faultPoint('designate.peers-committed');
  // This host's own proposal is settled by the outcome below.
  const own = proposals.get(host);
  if (own) endHandover(host, own);
  proposals.delete(host);
  if (failed.length > 0) {
    host.log.error({ failed }, 'some hosts did not commit: restarting broken');
    host.emergency = { code: 'HOST_BROKEN', params: [] };
    await host.changeRole({ kind: 'broken' }, 'the new coordinator could not commit every host');
    return { failed };
  }
  if (!o.manual && wasMaster) {
    await setRole(host, { kind: 'master' });
    await clearJustBecameCoordinator(host);
    return { failed };
  }
  // Every other host now answers pool.is_slave with true (src/xapi/pool.ts), so this host's
  // start-up check will not mistake the old coordinator, still restarting, for a rival.
  await setRole(host, { kind: 'master' });
  host.emergency = { code: 'HOST_STILL_BOOTING', params: [] };
  await host.changeRole({ kind: 'master' }, 'committed as the new coordinator');
  return { failed };
}

/** pool.emergency_transition_to_master: refused while HA is armed on this host (never, without HA). */
export async function emergencyTransitionToMaster(call: Call): Promise<void> {
  await assertHaNotArmed(call.host);
  await becomeMaster(call.host, 'pool.emergency_transition_to_master');
}

/** pool.emergency_reset_master(master_address): become that coordinator's member. */
export async function emergencyResetMaster(call: Call, masterAddress: string): Promise<void> {
  await assertHaNotArmed(call.host);
  let address: string;
  try {
    address = (await lookup(masterAddress, { family: 4 })).address;
  } catch {
    throw new XapiError('INTERNAL_ERROR', [`Cannot resolve ${masterAddress}`]);
  }
  await becomeMemberOf(call.host, address, `pool.emergency_reset_master ${address}`);
}

/** xapi's local flag ha_armed (set by ha_join_liveset): no manual transition while HA holds the host. */
async function assertHaNotArmed(host: HostContext): Promise<void> {
  if (await isArmed(host)) throw new XapiError('HA_IS_ENABLED', []);
}

/**
 * pool.recover_slaves, on the coordinator: every other host of its database is told to follow it
 * (pool.emergency_reset_master), whatever its liveness; the hosts that did are returned.
 */
export async function recoverSlaves(call: Call): Promise<string[]> {
  const host = call.host;
  const me = await call.db.get('host', host.hostRef);
  const recovered: string[] = [];
  for (const [ref, h] of await call.db.all('host')) {
    if (ref === host.hostRef) continue;
    try {
      await emergencyCall(host, h.address, 'pool.emergency_reset_master', [me.address]);
      recovered.push(ref);
    } catch (e) {
      host.log.warn({ err: e, host: ref }, 'recover_slaves: the host did not follow');
    }
  }
  return recovered;
}

/** Runs `f` under a pool operation mark (xapi's with_pool_operation), refused as the pool's allowed operations say. */
async function withPoolOperation<T>(call: Call, op: 'designate_new_master', f: () => Promise<T>): Promise<T> {
  const db = call.db;
  const ref = call.host.poolRef;
  const pool = await db.get('pool', ref);
  const refusal = (await poolOperationErrors(db, ref, pool)).get(op);
  if (refusal) throw refusal;
  await db.update('pool', ref, { current_operations: { ...pool.current_operations, [call.task]: op } });
  await updatePoolAllowedOperations(db, ref);
  try {
    return await f();
  } finally {
    const now = await db.tryGet('pool', ref);
    if (now && call.task in now.current_operations) {
      const { [call.task]: _, ...rest } = now.current_operations;
      await db.update('pool', ref, { current_operations: rest });
      await updatePoolAllowedOperations(db, ref);
    }
  }
}

/**
 * pool.designate_new_master(host). On the coordinator: under the pool operation, forwarded to the
 * new coordinator, which runs the rest (nothing if it is the coordinator already).
 */
async function designateNewMaster(call: Call, hostRef: string): Promise<void> {
  const host = call.host;
  if (host.role.kind === 'master' && !isForwardedHere(call)) {
    await call.db.get('host', hostRef); // HANDLE_INVALID before anything else
    const running = withPoolOperation(call, 'designate_new_master', () =>
      runOn(call, hostRef, 'pool.designate_new_master', [hostRef], () => designateHere(call)),
    );
    designating.set(host, running);
    try {
      await running;
    } finally {
      if (designating.get(host) === running) designating.delete(host);
    }
    return;
  }
  await designateHere(call);
}

/**
 * The new coordinator's part (xapi_pool.ml designate_new_master): HA_IS_ENABLED, a fresh backup
 * on every host (pool.sync_database on the coordinator), then the two-phase commit over every
 * host's address, the coordinator's first. Between the phases, once the old coordinator has
 * stopped serving the API, this host takes its final copy of the database: the one it starts
 * from as coordinator, holding every write the old one acknowledged.
 */
async function designateHere(call: Call): Promise<void> {
  const host = call.host;
  if (host.role.kind !== 'slave') return;
  const db = call.db;
  const pool = await db.get('pool', host.poolRef);
  if (pool.ha_enabled) throw new XapiError('HA_IS_ENABLED', []);
  await db.update('pool', host.poolRef, { last_update_sync: formatDateTime(new Date(0)) });
  const coordinator = await db.get('host', pool.master);
  await callOn(host, pool.master, coordinator.address, 'pool.sync_database', []);
  const me = (await db.get('host', host.hostRef)).address;
  const addresses = (await db.all('host')).map(([, h]) => h.address).filter((a) => a !== me && a !== coordinator.address);
  const coordinatorAddress = host.role.master;
  await twoPhaseCommit(host, {
    manual: true,
    peers: [coordinator.address, ...addresses],
    myAddress: me,
    beforeCommit: async () => {
      await fetchBackup({
        address: coordinatorAddress,
        port: host.config.httpsPort,
        poolSecret: host.poolSecrets()[0]!,
        stateDir: host.config.stateDir,
      });
    },
  });
}

export function register(r: Registry): void {
  r.implement('host.propose_new_master', (call, [address, manual]) => proposeNewMaster(call.host, address, manual))
    .implement('host.abort_new_master', (call, [address]) => abortNewMaster(call.host, address))
    .implement('host.commit_new_master', (call, [address]) => commitNewMaster(call.host, address))
    .implement('host.is_in_emergency_mode', (call) => call.host.emergency !== undefined)
    .implement('pool.designate_new_master', (call, [hostRef]) => designateNewMaster(call, hostRef))
    .implement('pool.emergency_transition_to_master', (call) => emergencyTransitionToMaster(call))
    .implement('pool.emergency_reset_master', (call, [address]) => emergencyResetMaster(call, address))
    .implement('pool.recover_slaves', (call) => recoverSlaves(call));
}
