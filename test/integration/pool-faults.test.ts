// Fault tests with real processes (issue 10 item 8): hosts of a pool killed (SIGKILL) or frozen
// (SIGSTOP) at chosen points of pool.join, pool.designate_new_master and a database backup, then
// the pool's invariants checked, and checked again after the documented recovery:
//  - at most one host accepts logins as coordinator (every host is asked);
//  - every write acknowledged before the fault is there after recovery;
//  - no VM runs on two hosts: the coordinator's resident_on agrees with the domains each host's
//    simulator holds (its own state on disk);
//  - nothing is left in current_operations (VM, host, pool, SR);
//  - the pool works: a write through the coordinator, a VM started and stopped.
// The points are src/util/fault-point.ts's (XAPI_TEST_FAULT_POINT): the process stops or dies
// there itself, so the fault lands at the same step on every run.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loopbackAddress, PASSWORD, startXapi, stopHosts, stopXapi, type StartOptions, type XapiProcess } from './harness.js';
import { jsonCall, login } from './client.js';
import { hostRef, joinPool, runningVmOn, startHosts } from './pool-harness.js';
import { vmRecord } from '../vm-record.js';
import { ROLE_CHANGE_FUSE_MS } from '../../src/host/host.js';
import { CLOSE_GRACE_MS } from '../../src/http/server.js';
import { waitUntil } from '../wait.js';

type Records = Record<string, Record<string, unknown>>;

/** Short heartbeats, so a restarted member is live again quickly. */
const FAST = { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200' };

/**
 * What a login on `x` gives: 'SESSION', an error code with its parameters, or 'NO ANSWER' (none
 * within `timeoutMs`: a stopped host never answers).
 */
async function loginOutcome(x: XapiProcess, timeoutMs = 3_000): Promise<string> {
  try {
    const res = await fetch(`${x.url}/jsonrpc`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', method: 'session.login_with_password', params: ['root', PASSWORD], id: 1 }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const body = (await res.json()) as { result?: string; error?: { message: string; data?: string[] } };
    if (body.error) return [body.error.message, ...(body.error.data ?? [])].join(' ');
    await jsonCall(x.url, 'session.logout', [body.result]).catch(() => undefined);
    return 'SESSION';
  } catch {
    return 'NO ANSWER';
  }
}

/**
 * Asks every host for a login: at most one may grant it, and only `expected` (if given). With
 * `expected`, every host given runs (none is stopped): a slow answer on a loaded machine is
 * waited for rather than taken for silence.
 */
async function assertOneCoordinator(hosts: XapiProcess[], expected?: XapiProcess): Promise<void> {
  const timeoutMs = expected ? 30_000 : 3_000;
  const answers = await Promise.all(hosts.map(async (h) => [h.address, await loginOutcome(h, timeoutMs)] as const));
  const serving = answers.filter(([, a]) => a === 'SESSION').map(([address]) => address);
  assert.ok(serving.length <= 1, `two coordinators: ${JSON.stringify(answers)}`);
  if (expected) assert.deepEqual(serving, [expected.address], JSON.stringify(answers));
}

/** A session on `x` once it serves as coordinator (it may still be restarting or checking). */
function coordinatorSession(x: XapiProcess): Promise<string> {
  return waitUntil(`${x.address} serving as coordinator`, () => login(x.url, PASSWORD).catch(() => ''), {
    timeoutMs: 90_000,
    intervalMs: 100,
  });
}

/** Waits until `member` is an enabled, live member of `c`, answering HOST_IS_SLAVE [c]. */
async function waitMember(c: XapiProcess, session: string, member: XapiProcess): Promise<void> {
  await waitUntil(
    `${member.address} a member of ${c.address}`,
    async () => {
      if ((await loginOutcome(member)) !== `HOST_IS_SLAVE ${c.address}`) return false;
      const hosts = (await jsonCall(c.url, 'host.get_all_records', [session])) as Records;
      const row = Object.values(hosts).find((h) => h.address === member.address);
      if (!row?.enabled) return false;
      return (await jsonCall(c.url, 'host_metrics.get_live', [session, row.metrics])) === true;
    },
    { timeoutMs: 90_000, intervalMs: 200 },
  );
}

/** The host at `x`'s address again, from its state directory (no fault point armed). */
function restart(x: XapiProcess, o: Omit<StartOptions, 'address' | 'httpPort' | 'httpsPort' | 'stateDir'> = {}): Promise<XapiProcess> {
  return startXapi({ env: FAST, ...o, stateDir: x.stateDir, address: x.address, httpPort: x.httpPort, httpsPort: x.httpsPort });
}

/** A host beside `peer` (same ports), its own address, with a fault point armed. */
function startBeside(peer: XapiProcess, point?: string): Promise<XapiProcess> {
  return startXapi({
    address: loopbackAddress(),
    httpPort: peer.httpPort,
    httpsPort: peer.httpsPort,
    env: { ...FAST, XAPI_TEST_FAULT_POINT: point },
  });
}

/** Resolves when `x` printed that it reached its fault point. */
function reachedPoint(x: XapiProcess, point: string): Promise<void> {
  return waitUntil(`${x.address} at fault point ${point}`, () => x.output().includes(`fault point ${point} reached`), {
    timeoutMs: 60_000,
  }).then(() => undefined);
}

/** Waits until `x` has restarted itself as broken (a two-phase commit it could not finish). */
async function restartedBroken(x: XapiProcess): Promise<void> {
  await waitUntil(`${x.address} restarted broken`, () => x.output().includes('host ready (broken)'), { timeoutMs: 90_000 });
  assert.equal(await loginOutcome(x), 'HOST_BROKEN');
}

async function killedAt(x: XapiProcess, point: string): Promise<void> {
  assert.equal(await x.exited, 'SIGKILL', x.output().slice(-3000));
  assert.ok(x.output().includes(`fault point ${point} reached`), `${x.address} died elsewhere than ${point}`);
}

/** Whether `p` rejects. */
const fails = (p: Promise<unknown>) =>
  p.then(
    () => false,
    () => true,
  );

async function poolRef(url: string, session: string): Promise<string> {
  return ((await jsonCall(url, 'pool.get_all', [session])) as string[])[0]!;
}

/** The VMs (by uuid) that have a domain in the simulator of the host whose state is in `stateDir`. */
function domainsOf(stateDir: string): Set<string> {
  const dir = join(stateDir, 'xenopsd');
  const vms = new Map<string, { domain?: unknown } | null>();
  let snapshot: { vms: Record<string, { domain?: unknown }> } = { vms: {} };
  try {
    snapshot = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as typeof snapshot;
  } catch {
    // no snapshot yet: the journal holds everything
  }
  for (const [id, v] of Object.entries(snapshot.vms)) vms.set(id, v);
  let journal = '';
  try {
    journal = readFileSync(join(dir, 'journal'), 'utf8');
  } catch {
    // no journal
  }
  for (const line of journal.split('\n')) {
    let entry: { vms: Record<string, { domain?: unknown } | null> };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue; // the empty tail, or a line cut short
    }
    for (const [id, v] of Object.entries(entry.vms)) vms.set(id, v);
  }
  return new Set([...vms].filter(([, v]) => v?.domain).map(([id]) => id));
}

/** A write acknowledged by the coordinator, and how to read it back. */
interface Acked {
  what: string;
  read: [method: string, ref: string];
  value: unknown;
}

async function acknowledge(c: XapiProcess, session: string, what: string): Promise<Acked[]> {
  const p = await poolRef(c.url, session);
  await jsonCall(c.url, 'pool.set_name_description', [session, p, what]);
  const vm = (await jsonCall(c.url, 'VM.create', [session, vmRecord(what, { memory: 64 * 1024 * 1024 })])) as string;
  return [
    { what: `pool description ${what}`, read: ['pool.get_name_description', p], value: what },
    { what: `VM ${what}`, read: ['VM.get_name_label', vm], value: what },
  ];
}

/**
 * The invariants, checked on the pool whose coordinator is `c` and whose hosts are `hosts`
 * (all running): one coordinator, `c`; the acknowledged writes there; each running VM's domain
 * on its resident host and on no other; no operation marks; and the pool usable.
 */
async function checkPool(c: XapiProcess, hosts: XapiProcess[], acked: Acked[]): Promise<void> {
  await assertOneCoordinator(hosts, c);
  const s = await login(c.url, PASSWORD);
  for (const a of acked) assert.deepEqual(await jsonCall(c.url, a.read[0], [s, a.read[1]]), a.value, a.what);

  // No VM on two hosts, and the coordinator's view matching each host's own.
  const vms = (await jsonCall(c.url, 'VM.get_all_records', [s])) as Records;
  const byUuid = new Map(Object.values(vms).map((v) => [v.uuid as string, v]));
  const seenOn = new Map<string, string>();
  for (const h of hosts) {
    const ref = await hostRef(c, s, h);
    for (const uuid of domainsOf(h.stateDir)) {
      const vm = byUuid.get(uuid);
      if (!vm || vm.is_control_domain) continue;
      assert.equal(seenOn.get(uuid), undefined, `VM ${uuid} has a domain on ${seenOn.get(uuid)} and on ${h.address}`);
      seenOn.set(uuid, h.address);
      assert.equal(vm.power_state, 'Running', `VM ${vm.name_label} has a domain on ${h.address}`);
      assert.equal(vm.resident_on, ref, `VM ${vm.name_label} runs on ${h.address}`);
    }
  }
  for (const v of Object.values(vms)) {
    if (v.is_control_domain || v.power_state !== 'Running') continue;
    assert.ok(seenOn.has(v.uuid as string), `VM ${v.name_label} is Running in the database but has no domain anywhere`);
  }

  // Nothing stuck in current_operations.
  for (const cls of ['VM', 'host', 'pool', 'SR']) {
    const all = (await jsonCall(c.url, `${cls}.get_all_records`, [s])) as Records;
    for (const [ref, r] of Object.entries(all)) {
      assert.deepEqual(r.current_operations, {}, `${cls} ${ref} (${String(r.name_label)}) still has operations marked`);
    }
  }

  // Usable: a write read back, a VM started on the coordinator and shut down.
  const p = await poolRef(c.url, s);
  await jsonCall(c.url, 'pool.set_name_label', [s, p, 'usable']);
  assert.equal(await jsonCall(c.url, 'pool.get_name_label', [s, p]), 'usable');
  const vm = await runningVmOn(c, s, c, 'after-recovery');
  await jsonCall(c.url, 'VM.hard_shutdown', [s, vm]);
  await jsonCall(c.url, 'VM.destroy', [s, vm]);
}

/**
 * Restarts the pool's coordinator (hosts[0]) armed with a fault point and returns it once the
 * two others are its members again, with a session on it and the second host's ref.
 */
async function armCoordinator(hosts: XapiProcess[], point: string): Promise<{ armed: XapiProcess; sa: string; bRef: string }> {
  const [a, b, c] = hosts as [XapiProcess, XapiProcess, XapiProcess];
  await stopXapi(a, true);
  const armed = await restart(a, { env: { ...FAST, XAPI_TEST_FAULT_POINT: point } });
  hosts[0] = armed;
  const sa = await coordinatorSession(armed);
  await waitMember(armed, sa, b);
  await waitMember(armed, sa, c);
  return { armed, sa, bRef: await hostRef(armed, sa, b) };
}

describe('mid-join faults', { timeout: 600_000 }, () => {
  for (const point of ['join.before-merge', 'join.after-merge', 'join.after-role']) {
    it(`the joiner killed at ${point}: the pool is intact, the joiner restarted joins (again)`, { timeout: 180_000 }, async () => {
      const [c] = await startHosts(1, { env: FAST });
      let j: XapiProcess | undefined;
      let j2: XapiProcess | undefined;
      try {
        const s = await login(c!.url, PASSWORD);
        const acked = await acknowledge(c!, s, 'before-the-join');
        await runningVmOn(c!, s, c!, 'on-the-coordinator');
        j = await startBeside(c!, point);
        const js = await login(j.url, PASSWORD);
        await jsonCall(j.url, 'pool.join', [js, c!.address, 'root', PASSWORD]).catch(() => undefined);
        await killedAt(j, point);
        await checkPool(c!, [c!], acked);

        j2 = await restart(j);
        if (point === 'join.after-role') {
          // The role was written: it comes back as a member by itself.
          await waitMember(c!, s, j2);
        } else {
          // Still standalone: the operator joins it again.
          await joinPool(c!, j2);
        }
        const vm = await runningVmOn(c!, s, j2, 'on-the-joiner');
        acked.push({ what: 'VM started on the joiner', read: ['VM.get_resident_on', vm], value: await hostRef(c!, s, j2) });
        await checkPool(c!, [c!, j2], acked);
      } finally {
        await stopHosts([c, j, j2]);
      }
    });
  }

  it('the joiner killed between its role and its secret: never a rival to the coordinator, restarted or not', {
    timeout: 240_000,
  }, async () => {
    const [c] = await startHosts(1, { env: FAST });
    let j: XapiProcess | undefined;
    let j2: XapiProcess | undefined;
    let c2: XapiProcess | undefined;
    try {
      const s = await login(c!.url, PASSWORD);
      const acked = await acknowledge(c!, s, 'before-the-join');
      j = await startBeside(c!, 'join.role-written');
      const js = await login(j.url, PASSWORD);
      await jsonCall(j.url, 'pool.join', [js, c!.address, 'root', PASSWORD]).catch(() => undefined);
      await killedAt(j, 'join.role-written');
      // Restarted, it is a member that the coordinator does not take back (it lacks the secret).
      j2 = await restart(j);
      await assertOneCoordinator([c!, j2], c);
      // The coordinator restarting asks it pool.is_slave: it must stay the coordinator.
      await stopXapi(c!, true);
      c2 = await restart(c!);
      const s2 = await coordinatorSession(c2);
      await assertOneCoordinator([c2, j2], c2);
      await checkPool(c2, [c2], acked);
      // The documented way out for the joiner: become standalone again, then join.
      const local = (await jsonCall(j2.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
      await jsonCall(j2.url, 'pool.emergency_transition_to_master', [local]);
      await coordinatorSession(j2);
      await joinPool(c2, j2);
      await waitMember(c2, s2, j2);
      await checkPool(c2, [c2, j2], acked);
    } finally {
      await stopHosts([c, j, j2, c2]);
    }
  });

  for (const point of ['remote-db.received', 'remote-db.write-committed']) {
    it(`the coordinator killed at ${point} while the joiner merges: restarted, the join completes`, { timeout: 180_000 }, async () => {
      const [c] = await startHosts(1, { env: { ...FAST, XAPI_TEST_FAULT_POINT: point } });
      let j: XapiProcess | undefined;
      let c2: XapiProcess | undefined;
      try {
        const s = await login(c!.url, PASSWORD);
        const acked = await acknowledge(c!, s, 'before-the-join');
        j = await startBeside(c!);
        const js = await login(j.url, PASSWORD);
        // The joiner's database calls wait for the coordinator: the join goes on after its restart.
        const joining = jsonCall(j.url, 'pool.join', [js, c!.address, 'root', PASSWORD]);
        joining.catch(() => undefined);
        await killedAt(c!, point);
        c2 = await restart(c!);
        await joining;
        const s2 = await coordinatorSession(c2);
        await waitMember(c2, s2, j);
        await checkPool(c2, [c2, j], acked);
      } finally {
        await stopHosts([c, j, c2]);
      }
    });
  }
});

/** A pool of three with a VM on the coordinator and one on each member, and acknowledged writes. */
async function designatePool(memberPoint?: { index: number; point: string }) {
  const [a] = await startHosts(1, { env: FAST });
  const hosts: XapiProcess[] = [a!];
  try {
    for (const i of [1, 2]) {
      const h = await startBeside(a!, memberPoint?.index === i ? memberPoint.point : undefined);
      hosts.push(h);
      await joinPool(a!, h);
    }
    const s = await login(a!.url, PASSWORD);
    const acked = await acknowledge(a!, s, 'before-designate');
    for (const h of hosts) await runningVmOn(a!, s, h, `on-${h.address}`);
    return { hosts: hosts as [XapiProcess, XapiProcess, XapiProcess], s, acked };
  } catch (e) {
    // Not left running: they would keep the test file from ever ending.
    await stopHosts(hosts);
    throw e;
  }
}

describe('mid-designate faults', { timeout: 900_000 }, () => {
  it('the new coordinator killed once every host agreed: the old one serves again, the restarted host is its member', {
    timeout: 240_000,
  }, async () => {
    const { hosts, s, acked } = await designatePool({ index: 1, point: 'designate.all-agreed' });
    const [a, b, c] = hosts;
    let b2: XapiProcess | undefined;
    try {
      const bRef = await hostRef(a, s, b);
      const designate = jsonCall(a.url, 'pool.designate_new_master', [s, bRef]);
      designate.catch(() => undefined);
      await killedAt(b, 'designate.all-agreed');
      assert.ok(await fails(designate), 'designate_new_master failed');
      await assertOneCoordinator([a, c]);
      // The old coordinator gave up waiting for the commit and serves again (HANDOVER_TIMEOUT_MS).
      const sa = await coordinatorSession(a);
      b2 = await restart(b);
      await waitMember(a, sa, b2);
      await waitMember(a, sa, c);
      await checkPool(a, [a, b2, c], acked);
    } finally {
      await stopHosts([...hosts, b2]);
    }
  });

  it('the new coordinator killed after writing broken, before any commit: emergency_reset_master brings it back', {
    timeout: 240_000,
  }, async () => {
    const { hosts, s, acked } = await designatePool({ index: 1, point: 'designate.broken-written' });
    const [a, b, c] = hosts;
    let b2: XapiProcess | undefined;
    try {
      const bRef = await hostRef(a, s, b);
      const designate = jsonCall(a.url, 'pool.designate_new_master', [s, bRef]);
      designate.catch(() => undefined);
      await killedAt(b, 'designate.broken-written');
      await assertOneCoordinator([a, c]);
      const sa = await coordinatorSession(a);
      b2 = await restart(b);
      // Broken: only emergency calls. It is told whom to follow.
      assert.equal(await loginOutcome(b2), 'HOST_BROKEN');
      const local = (await jsonCall(b2.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
      await jsonCall(b2.url, 'pool.emergency_reset_master', [local, a.address]);
      await waitMember(a, sa, b2);
      await waitMember(a, sa, c);
      await checkPool(a, [a, b2, c], acked);
    } finally {
      await stopHosts([...hosts, b2]);
    }
  });

  it('the new coordinator killed after every peer committed: restarted broken, emergency_transition_to_master finishes the move', {
    timeout: 240_000,
  }, async () => {
    const { hosts, s, acked } = await designatePool({ index: 1, point: 'designate.peers-committed' });
    const [a, b, c] = hosts;
    let b2: XapiProcess | undefined;
    try {
      const bRef = await hostRef(a, s, b);
      const designate = jsonCall(a.url, 'pool.designate_new_master', [s, bRef]);
      designate.catch(() => undefined);
      await killedAt(b, 'designate.peers-committed');
      await assertOneCoordinator([a, c]);
      b2 = await restart(b);
      await assertOneCoordinator([a, b2, c]);
      assert.equal(await loginOutcome(b2), 'HOST_BROKEN');
      const local = (await jsonCall(b2.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
      await jsonCall(b2.url, 'pool.emergency_transition_to_master', [local]);
      const sb = await coordinatorSession(b2);
      // a and c committed to b: they come back as its members by themselves.
      await waitMember(b2, sb, a);
      await waitMember(b2, sb, c);
      await checkPool(b2, [a, b2, c], acked);
    } finally {
      await stopHosts([...hosts, b2]);
    }
  });

  it('the new coordinator slow to finish its commits (stopped after them): the old one waits to restart, and the designate call gets its reply', {
    timeout: 240_000,
  }, async () => {
    const { hosts, s, acked } = await designatePool({ index: 1, point: 'designate.peers-committed:SIGSTOP' });
    const [a, b, c] = hosts;
    try {
      const bRef = await hostRef(a, s, b);
      const designate = jsonCall(a.url, 'pool.designate_new_master', [s, bRef]);
      designate.catch(() => undefined);
      await reachedPoint(b, 'designate.peers-committed');
      // Every peer has committed; the new coordinator's reply is late (as after many peers on a
      // loaded machine). The fault lasts longer than the old coordinator's fuse and its close's
      // grace together: restarting then, it used to cut the designate call's connection.
      await new Promise((resolve) => setTimeout(resolve, ROLE_CHANGE_FUSE_MS + CLOSE_GRACE_MS + 1_000));
      b.kill('SIGCONT');
      await designate; // answered, not cut
      const sb = await coordinatorSession(b);
      await waitMember(b, sb, a);
      await waitMember(b, sb, c);
      await checkPool(b, [a, b, c], acked);
    } finally {
      await stopHosts(hosts);
    }
  });

  it('the old coordinator killed right after agreeing: designate fails, the restarted coordinator serves', {
    timeout: 240_000,
  }, async () => {
    const { hosts, acked } = await designatePool();
    const [a, b, c] = hosts;
    let a2: XapiProcess | undefined;
    try {
      const { armed, sa, bRef } = await armCoordinator(hosts, 'designate.old-agreed');
      const designate = jsonCall(armed.url, 'pool.designate_new_master', [sa, bRef]);
      designate.catch(() => undefined);
      await killedAt(armed, 'designate.old-agreed');
      assert.ok(await fails(designate), 'designate_new_master failed');
      await assertOneCoordinator([b, c]);
      a2 = await restart(a);
      const sa2 = await coordinatorSession(a2);
      await waitMember(a2, sa2, b);
      await waitMember(a2, sa2, c);
      await checkPool(a2, [a2, b, c], acked);
    } finally {
      await stopHosts([...hosts, a2]);
    }
  });

  it('the old coordinator killed after committing: the new one, its commit unanswered, restarts broken; emergency_transition_to_master on it', {
    timeout: 240_000,
  }, async () => {
    const { hosts, acked } = await designatePool();
    const [a, b, c] = hosts;
    let a2: XapiProcess | undefined;
    try {
      const { armed, sa, bRef } = await armCoordinator(hosts, 'designate.peer-committed');
      await jsonCall(armed.url, 'pool.designate_new_master', [sa, bRef]).catch(() => undefined);
      await killedAt(armed, 'designate.peer-committed');
      // The old coordinator's commit got no answer: the new one cannot know it happened.
      await restartedBroken(b);
      await assertOneCoordinator([b, c]);
      const local = (await jsonCall(b.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
      await jsonCall(b.url, 'pool.emergency_transition_to_master', [local]);
      const sb = await coordinatorSession(b);
      await waitMember(b, sb, c);
      a2 = await restart(a);
      await waitMember(b, sb, a2);
      await checkPool(b, [a2, b, c], acked);
    } finally {
      await stopHosts([...hosts, a2]);
    }
  });

  it('the old coordinator stopped (SIGSTOP) right after agreeing: nobody serves meanwhile; resumed, the designation completes', {
    timeout: 240_000,
  }, async () => {
    const { hosts, acked } = await designatePool();
    const [, b, c] = hosts;
    try {
      const { armed, sa, bRef } = await armCoordinator(hosts, 'designate.old-agreed:SIGSTOP');
      const designate = jsonCall(armed.url, 'pool.designate_new_master', [sa, bRef]);
      designate.catch(() => undefined);
      await reachedPoint(armed, 'designate.old-agreed');
      await assertOneCoordinator([armed, b, c]);
      armed.kill('SIGCONT');
      await designate;
      const sb = await coordinatorSession(b);
      await waitMember(b, sb, c);
      await waitMember(b, sb, armed);
      await checkPool(b, [armed, b, c], acked);
    } finally {
      await stopHosts(hosts);
    }
  });

  it('the old coordinator stopped (SIGSTOP) after committing: the new one restarts broken and, transitioned, serves; resumed, the old one is its member', {
    timeout: 300_000,
  }, async () => {
    const { hosts, acked } = await designatePool();
    const [, b, c] = hosts;
    const watch = watchCoordinators(hosts);
    try {
      const { armed, sa, bRef } = await armCoordinator(hosts, 'designate.peer-committed:SIGSTOP');
      watch.start();
      const designate = jsonCall(armed.url, 'pool.designate_new_master', [sa, bRef]);
      designate.catch(() => undefined);
      await reachedPoint(armed, 'designate.peer-committed');
      // Its commit unanswered (PEER_CALL_TIMEOUT_MS), the new coordinator cannot know whether the
      // old one committed: it restarts broken, however silent the old one stays meanwhile.
      await restartedBroken(b);
      const local = (await jsonCall(b.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
      await jsonCall(b.url, 'pool.emergency_transition_to_master', [local]);
      const sb = await coordinatorSession(b);
      await waitMember(b, sb, c);
      // Writes the new coordinator acknowledges (its pool description replaces the earlier one).
      const later = await acknowledge(b, sb, 'while-the-old-one-is-stopped');
      const all = [...acked.filter((a) => !a.what.startsWith('pool description')), ...later];
      // Resumed, the old coordinator finishes its commit: it restarts as the new one's member.
      armed.kill('SIGCONT');
      await waitMember(b, sb, armed);
      await checkPool(b, [armed, b, c], all);
      await watch.stop();
      assert.deepEqual(watch.violations(), [], 'two hosts accepted logins as coordinator at once');
    } finally {
      await watch.stop();
      await stopHosts(hosts);
    }
  });
});

/**
 * Asks every host for a login, round after round (a tenth of a second apart), from start() to
 * stop(): the rounds in which more than one host granted it. The hosts are read at each round
 * (a restarted one replaces its entry in `hosts`).
 */
function watchCoordinators(hosts: XapiProcess[]) {
  let running = false;
  let loop: Promise<void> | undefined;
  const bad: string[] = [];
  return {
    start() {
      running = true;
      loop = (async () => {
        while (running) {
          const answers = await Promise.all(hosts.map(async (h) => [h.address, await loginOutcome(h)] as const));
          if (answers.filter(([, a]) => a === 'SESSION').length > 1) bad.push(JSON.stringify(answers));
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      })();
    },
    stop() {
      running = false;
      return loop;
    },
    violations: () => bad,
  };
}

/** Whether the file at `path` is an SQLite database that passes quick_check, with the store's meta table. */
function validDatabase(path: string): boolean {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    if (db.pragma('quick_check', { simple: true }) !== 'ok') return false;
    const g = db.prepare("SELECT value FROM meta WHERE key = 'generation'").get() as { value: string } | undefined;
    return g !== undefined;
  } finally {
    db.close();
  }
}

describe('faults during a backup push', { timeout: 600_000 }, () => {
  for (const point of ['backup.downloaded', 'backup.written', 'backup.folded']) {
    it(`the member killed at ${point}: its xapi.db stays a valid database; restarted, it is a member again`, {
      timeout: 180_000,
    }, async () => {
      const [c] = await startHosts(1, { env: FAST });
      let m: XapiProcess | undefined;
      let m2: XapiProcess | undefined;
      try {
        // The member's first backup is at its start as a member; the second, the push below.
        m = await startBeside(c!, `${point}@2`);
        await joinPool(c!, m);
        const s = await login(c!.url, PASSWORD);
        const acked = await acknowledge(c!, s, 'before-the-backup');
        await runningVmOn(c!, s, m, 'on-the-member');
        await jsonCall(c!.url, 'pool.sync_database', [s]).catch(() => undefined);
        await killedAt(m, point);
        assert.ok(validDatabase(join(m.stateDir, 'xapi.db')));
        await assertOneCoordinator([c!], c);
        m2 = await restart(m);
        await waitMember(c!, s, m2);
        await checkPool(c!, [c!, m2], acked);
      } finally {
        await stopHosts([c, m, m2]);
      }
    });
  }

  it("the coordinator killed while serving the dump: the member's xapi.db stays valid, and its emergency transition starts from it", {
    timeout: 180_000,
  }, async () => {
    // Dumps served: the member's start (1), the backup asked for below (2), the push (3).
    const [c] = await startHosts(1, { env: { ...FAST, XAPI_TEST_FAULT_POINT: 'backup.serving@3' } });
    let m: XapiProcess | undefined;
    let c2: XapiProcess | undefined;
    try {
      m = await startBeside(c!);
      await joinPool(c!, m);
      const s = await login(c!.url, PASSWORD);
      const acked = await acknowledge(c!, s, 'before-the-backup');
      const mRef = await hostRef(c!, s, m);
      const vm = await runningVmOn(c!, s, m, 'on-the-member');
      await jsonCall(c!.url, 'host.request_backup', [s, mRef, 0, true]);
      await jsonCall(c!.url, 'pool.sync_database', [s]).catch(() => undefined);
      await killedAt(c!, 'backup.serving');
      assert.ok(validDatabase(join(m.stateDir, 'xapi.db')));
      await assertOneCoordinator([m]);
      // The documented recovery with the coordinator gone: the member takes over from its backup.
      const local = (await jsonCall(m.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
      await jsonCall(m.url, 'pool.emergency_transition_to_master', [local]);
      const sm = await coordinatorSession(m);
      assert.equal(await jsonCall(m.url, 'VM.get_resident_on', [sm, vm]), mRef);
      // The old coordinator, restarted, follows the new one.
      c2 = await restart(c!);
      await waitMember(m, sm, c2);
      await checkPool(m, [m, c2], acked);
    } finally {
      await stopHosts([c, m, c2]);
    }
  });
});
