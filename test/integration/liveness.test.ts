// Host liveness in a pool of real processes (pool.md §4): heartbeats keep members live, a
// silent member (SIGSTOP) is taken for dead after the dead interval and live again when it
// speaks, a member that stops cleanly is dead at once and live again at its pool.hello;
// host.declare_dead, host.destroy and VM.power_state_reset with xapi's errors; a member whose
// coordinator is killed keeps its VM and comes back to the restarted coordinator by itself; a
// member whose coordinator refuses its pool secret restarts and reports HOST_UNKNOWN_TO_MASTER.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, xapiFailure } from './client.js';
import { loginWhenServing, runningVmOn, startPool, type TestPool } from './pool-harness.js';
import { waitUntil } from '../wait.js';

/** Short liveness timings for every host: heartbeats and liveness checks five times a second. */
const FAST = { XAPI_HEARTBEAT_INTERVAL_MS: '200', XAPI_DB_GC_INTERVAL_MS: '200' };

async function live(pool: TestPool, host: string): Promise<boolean> {
  const metrics = await jsonCall(pool.coordinator.url, 'host.get_metrics', [pool.session, host]);
  return (await jsonCall(pool.coordinator.url, 'host_metrics.get_live', [pool.session, metrics])) === true;
}

/** A VM started on host `index` of the pool, through its coordinator. */
async function runningVm(pool: TestPool, index: number, name: string): Promise<string> {
  const vm = await runningVmOn(pool.coordinator, pool.session, pool.hosts[index]!, name, 256 * 1024 * 1024);
  assert.equal(await jsonCall(pool.coordinator.url, 'VM.get_resident_on', [pool.session, vm]), pool.refs[index]);
  return vm;
}

/** SIGSTOP `m` until the coordinator takes it for dead, then SIGCONT. */
async function silenceUntilDead(pool: TestPool, m: XapiProcess, ref: string): Promise<void> {
  m.kill('SIGSTOP');
  try {
    await waitUntil('the stopped member not live', async () => !(await live(pool, ref)));
  } finally {
    m.kill('SIGCONT');
  }
}

describe('liveness with the default dead interval (10 min)', () => {
  let pool: TestPool;
  before(async () => {
    pool = await startPool(3, { env: FAST });
  });
  after(async () => {
    await pool?.stop();
  });

  it('refuses to declare dead a live member, or the coordinator itself: HOST_IS_LIVE', async () => {
    const { coordinator: c, session: s, refs } = pool;
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'host.declare_dead', [s, refs[1]])), ['HOST_IS_LIVE', refs[1]]);
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'host.declare_dead', [s, refs[0]])), ['HOST_IS_LIVE', refs[0]]);
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'host.destroy', [s, refs[1]])), ['HOST_IS_LIVE', refs[1]]);
  });

  it('VM.power_state_reset: CANNOT_RESET_CONTROL_DOMAIN, DOMAIN_EXISTS here, HOST_IS_LIVE for a live member', async () => {
    const { coordinator: c, session: s, refs } = pool;
    const dom0 = (await jsonCall(c.url, 'host.get_control_domain', [s, refs[1]])) as string;
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'VM.power_state_reset', [s, dom0])), ['CANNOT_RESET_CONTROL_DOMAIN', dom0]);
    const here = await runningVm(pool, 0, 'on-coordinator');
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'VM.power_state_reset', [s, here])), ['DOMAIN_EXISTS', here]);
    const there = await runningVm(pool, 1, 'on-member');
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'VM.power_state_reset', [s, there])), ['HOST_IS_LIVE', refs[1]]);
    assert.equal(await jsonCall(c.url, 'VM.get_power_state', [s, there]), 'Running');
    await jsonCall(c.url, 'VM.hard_shutdown', [s, here]);
  });

  it('a member stopped cleanly is dead at once, and live again at its pool.hello', async () => {
    const m = pool.hosts[1]!;
    await stopXapi(m, true);
    // With a 10-minute dead interval only the member's last heartbeat can have done this.
    assert.equal(await live(pool, pool.refs[1]!), false);
    const again = await startXapi({ stateDir: m.stateDir, address: m.address, httpPort: m.httpPort, httpsPort: m.httpsPort, env: FAST });
    pool.hosts[1] = again;
    await waitUntil('the restarted member live again', () => live(pool, pool.refs[1]!));
  });

  it('declare_dead on a dead member halts its VMs and disables it; destroy then removes it', async () => {
    const { coordinator: c, session: s, refs } = pool;
    const vm = await runningVm(pool, 2, 'on-doomed-member');
    const dom0 = (await jsonCall(c.url, 'host.get_control_domain', [s, refs[2]])) as string;
    const metrics = (await jsonCall(c.url, 'host.get_metrics', [s, refs[2]])) as string;
    const pifs = (await jsonCall(c.url, 'host.get_PIFs', [s, refs[2]])) as string[];
    const pbds = (await jsonCall(c.url, 'host.get_PBDs', [s, refs[2]])) as string[];
    await stopXapi(pool.hosts[2]!, true);
    assert.equal(await live(pool, refs[2]!), false);

    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'host.destroy', [s, refs[2]])), ['HOST_HAS_RESIDENT_VMS', refs[2]]);
    await jsonCall(c.url, 'host.declare_dead', [s, refs[2]]);
    assert.equal(await jsonCall(c.url, 'VM.get_power_state', [s, vm]), 'Halted');
    assert.equal(await jsonCall(c.url, 'VM.get_resident_on', [s, vm]), 'OpaqueRef:NULL');
    assert.equal(await jsonCall(c.url, 'host.get_enabled', [s, refs[2]]), false);
    // The control domain is not reset.
    assert.equal(await jsonCall(c.url, 'VM.get_power_state', [s, dom0]), 'Running');

    await jsonCall(c.url, 'host.destroy', [s, refs[2]]);
    const gone = async (cls: string, ref: string) => (await xapiFailure(jsonCall(c.url, `${cls}.get_record`, [s, ref])))[0];
    assert.equal(await gone('host', refs[2]!), 'HANDLE_INVALID');
    assert.equal(await gone('VM', dom0), 'HANDLE_INVALID');
    assert.equal(await gone('host_metrics', metrics), 'HANDLE_INVALID');
    for (const pif of pifs) assert.equal(await gone('PIF', pif), 'HANDLE_INVALID');
    for (const pbd of pbds) assert.equal(await gone('PBD', pbd), 'HANDLE_INVALID');
    // The VM itself stays, Halted.
    assert.equal(await jsonCall(c.url, 'VM.get_power_state', [s, vm]), 'Halted');
  });
});

describe('liveness with a short dead interval (3 s)', () => {
  let pool: TestPool;
  before(async () => {
    pool = await startPool(2, { env: FAST, args: ['--host-assumed-dead-interval', '3'] });
  });
  after(async () => {
    await pool?.stop();
  });

  it('a member stopped with SIGSTOP goes not live after the interval, and live again after SIGCONT', async () => {
    await silenceUntilDead(pool, pool.members[0]!, pool.refs[1]!);
    await waitUntil('the member live again', () => live(pool, pool.refs[1]!));
  });

  it('a member keeps its VM while its coordinator is killed, and is back with it after the coordinator restarts', async () => {
    const { refs } = pool;
    const m = pool.members[0]!;
    const vm = await runningVm(pool, 1, 'survivor');
    const c = pool.coordinator;
    const said = m.output().length;
    c.kill('SIGKILL');
    await c.exited;

    const c2 = await startXapi({
      stateDir: c.stateDir,
      address: c.address,
      httpPort: c.httpPort,
      httpsPort: c.httpsPort,
      env: FAST,
      args: ['--host-assumed-dead-interval', '3'],
    });
    pool.hosts[0] = c2;
    pool.coordinator = c2;
    pool.session = await loginWhenServing(c2.url);
    assert.equal(await live(pool, refs[1]!), true);
    // The member answers when asked (pool.is_slave), so its VM cannot be reset.
    assert.deepEqual(await xapiFailure(jsonCall(c2.url, 'VM.power_state_reset', [pool.session, vm])), ['HOST_IS_LIVE', refs[1]]);
    assert.equal(await jsonCall(c2.url, 'VM.get_power_state', [pool.session, vm]), 'Running');
    assert.equal(await jsonCall(c2.url, 'VM.get_resident_on', [pool.session, vm]), refs[1]);
    // Its heartbeats reach the new coordinator process: silenced past the interval it is taken
    // for dead, and live again as soon as it speaks.
    await silenceUntilDead(pool, m, refs[1]!);
    await waitUntil('the member live again on the restarted coordinator', () => live(pool, refs[1]!));
    // The member never restarted: same process, and it said nothing about restarting.
    assert.equal(m.proc.exitCode, null);
    assert.doesNotMatch(m.output().slice(said), /restarting/);
    // Its database calls reach the new coordinator process: a VM it shuts down is Halted there.
    const secret = (await readFile(join(c2.stateDir, 'ptoken'), 'utf8')).trim();
    const poolSession = await jsonCall(c2.url, 'session.slave_login', [refs[1], secret]);
    await jsonCall(m.url, 'VM.hard_shutdown', [poolSession, vm]);
    assert.equal(await jsonCall(c2.url, 'VM.get_power_state', [pool.session, vm]), 'Halted');
  });

  it('a member whose coordinator refuses its pool secret restarts itself, then says HOST_UNKNOWN_TO_MASTER', async () => {
    const m = pool.members[0]!;
    const c = pool.coordinator;
    const uuid = (await jsonCall(c.url, 'host.get_uuid', [pool.session, pool.refs[1]])) as string;
    const said = m.output().length;
    // The coordinator comes back with another pool secret (one the member never got).
    await stopXapi(c, true);
    await writeFile(join(c.stateDir, 'ptoken'), [randomUUID(), randomUUID(), randomUUID()].join('/'));
    const c2 = await startXapi({
      stateDir: c.stateDir,
      address: c.address,
      httpPort: c.httpPort,
      httpsPort: c.httpsPort,
      env: FAST,
      args: ['--host-assumed-dead-interval', '3'],
    });
    pool.hosts[0] = c2;
    pool.coordinator = c2;
    pool.session = await loginWhenServing(c2.url);
    // Its heartbeat refused, the member restarts (xapi exits with its restart code) and asks to
    // be taken back with pool.hello, which the coordinator refuses too.
    await waitUntil('the member restarted', () =>
      /restarting: the coordinator does not know this host\n[\s\S]*host ready/.test(m.output().slice(said)),
    );
    assert.equal(m.proc.exitCode, null);
    const answer = await waitUntil('the member in emergency mode', async () => {
      const f = await xapiFailure(jsonCall(m.url, 'session.login_with_password', ['root', PASSWORD]));
      return f[0] === 'HOST_UNKNOWN_TO_MASTER' ? f : undefined;
    });
    assert.deepEqual(answer, ['HOST_UNKNOWN_TO_MASTER', uuid]);
  });
});
