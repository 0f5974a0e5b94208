// A coordinator making sure it is the only one (xapi.ml check_no_other_masters, pool.md §5.5),
// made strict: xapi serves while it checks, and an old coordinator that was only paused never
// checks again. Here:
//  - a coordinator of a pool (more than one host in its database) starts serving only the
//    emergency calls (HOST_STILL_BOOTING) and asks every other host `pool.is_slave`; one that
//    says no claims to be coordinator: this host becomes its member and restarts. Only when no
//    other host claims it does this host serve the API;
//  - when two hosts check at once, the one that became coordinator by a transition waits for the
//    other (which yields to it); a host that was coordinator before, or that re-checks after a
//    stall, yields to any claimant;
//  - a stall watch: the coordinator's event loop ticks every STALL_TICK_MS; when a tick comes more
//    than STALL_LIMIT_MS late (the process was stopped, SIGSTOP, or starved), or a call arrives
//    while the last tick is that old, the check runs again and the API calls wait for it: they
//    run once no rival was found, or get HOST_IS_SLAVE once this host has become a member.
//    (Refusing them instead made a coordinator merely starved of CPU, on a loaded machine, fail
//    calls now and then with HOST_STILL_BOOTING.)
// Why this closes the window: a rival asks this host `pool.is_slave` and waits ASK_TIMEOUT_MS for
// the answer before it goes on alone. If this host's loop turned at least every STALL_LIMIT_MS
// throughout that wait, it answered (and the rival yielded); if it did not, the stall watch
// holds every call from the moment the loop turns again until a new check has found the rival.
// So STALL_LIMIT_MS plus the time to answer must stay well under ASK_TIMEOUT_MS.
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { HostContext } from '../api/context.js';
import { newRef } from '../api/implicit.js';
import { formatDateTime } from '../schema/types.js';
import { becomeMemberOf, clearJustBecameCoordinator, emergencyCall } from '../xapi/pool-transition.js';
import { updatePoolAllowedOperations } from '../xapi/pool-operations.js';

/** How long a rival's `pool.is_slave` (and `host.is_in_emergency_mode`) may take to answer. */
export const ASK_TIMEOUT_MS = 10_000;
/** Between two rounds while waiting for a rival that is itself still checking. */
export const RECHECK_MS = 1_000;
export const STALL_TICK_MS = 500;
export const STALL_LIMIT_MS = 3_000;

export const CHECKING = { code: 'HOST_STILL_BOOTING', params: [] as string[] };

/**
 * Asks every other host of the database whether it is coordinator. Returns 'alone' when none
 * claims it, or 'demoted' when this host became a claimant's member (its restart is under way).
 */
export async function checkNoOtherMasters(host: HostContext, opts: { yieldToAny: boolean }): Promise<'alone' | 'demoted'> {
  for (;;) {
    const others = (await host.db.all('host')).filter(([ref]) => ref !== host.hostRef);
    const answers = await Promise.all(others.map(([ref, h]) => claim(host, ref, h.address)));
    let waiting = false;
    for (const [i, answer] of answers.entries()) {
      if (answer === 'member' || answer === 'unreachable') continue;
      const address = others[i]![1].address;
      if (answer === 'serving' || opts.yieldToAny) {
        host.log.error({ coordinator: address, serving: answer === 'serving' }, 'another host is coordinator: becoming its member');
        await becomeMemberOf(host, address, `another coordinator found at ${address}`);
        return 'demoted';
      }
      waiting = true;
      host.log.warn({ rival: address }, 'another host starts as coordinator too: waiting for it to yield');
    }
    if (!waiting) return 'alone';
    await sleep(RECHECK_MS);
  }
}

/** What another host says it is: a member, a coordinator serving, one still checking, or silent. */
async function claim(host: HostContext, ref: string, address: string): Promise<'member' | 'serving' | 'starting' | 'unreachable'> {
  let isSlave: unknown;
  try {
    isSlave = await emergencyCall(host, address, 'pool.is_slave', [ref], ASK_TIMEOUT_MS);
  } catch (e) {
    // As xapi: a host that cannot be asked is no rival (it is checked if it comes back).
    host.log.warn({ err: e, host: ref, address }, 'no-other-coordinator check: the host does not answer');
    return 'unreachable';
  }
  if (isSlave === true) return 'member';
  try {
    return (await emergencyCall(host, address, 'host.is_in_emergency_mode', [], ASK_TIMEOUT_MS)) === true ? 'starting' : 'serving';
  } catch {
    return 'serving'; // it claimed to be coordinator: on doubt, it is one
  }
}

/** Watches the event loop's ticks; `stalled()` says whether the last one is too old. */
export function startStallWatch(
  onStall: (lateMs: number) => void,
  onTick?: () => void,
): { stalled(): boolean; lateMs(): number; stop(): void } {
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    const late = now - last;
    last = now;
    onTick?.();
    if (late > STALL_LIMIT_MS) onStall(late);
  }, STALL_TICK_MS);
  timer.unref();
  return {
    stalled: () => performance.now() - last > STALL_LIMIT_MS,
    lateMs: () => performance.now() - last,
    stop: () => clearInterval(timer),
  };
}

export interface CoordinatorGuard {
  /** Whether the event loop was just stalled and the check has not run again since. */
  stalled(): boolean;
  /** The check after a stall, while it runs (started here if a call finds the loop stalled). */
  recheckInProgress(): Promise<void> | undefined;
  /** Settles when the start-up check is over ('alone': serving; 'demoted': restarting). */
  readonly started: Promise<'alone' | 'demoted'>;
  stop(): void;
}

/**
 * The coordinator's start after its database is in order: the check (when the pool has other
 * hosts), the POOL_MASTER_TRANSITION alert after a transition, the pool's leftover operation
 * marks cleared, then the API served and the stall watch kept.
 */
export function guardCoordinator(host: HostContext, justBecame: boolean, onServing: () => void): CoordinatorGuard {
  let rechecking: Promise<void> | undefined;
  let stopped = false;
  let serving = false;
  // Only a pool can have a rival: a host alone is never held for being slow.
  let poolSize = 1;
  const recheck = (lateMs: number) => {
    if (rechecking || stopped || !serving || poolSize < 2) return;
    host.log.warn({ lateMs }, 'this coordinator was stalled: checking that no other host took over');
    const before = host.emergency;
    host.emergency = CHECKING;
    rechecking = checkNoOtherMasters(host, { yieldToAny: true })
      .then((r) => {
        if (r === 'alone' && host.emergency === CHECKING) host.emergency = before;
      })
      .catch((e: unknown) => host.log.error({ err: e }, 'the no-other-coordinator check failed'))
      .finally(() => {
        rechecking = undefined;
      });
  };
  const watch = startStallWatch(recheck, () => {
    host.db.count('host').then(
      (n) => {
        poolSize = n;
      },
      () => undefined,
    );
  });
  const started = (async () => {
    if ((await host.db.count('host')) > 1) {
      const r = await checkNoOtherMasters(host, { yieldToAny: !justBecame });
      if (r === 'demoted') return r;
    }
    if (justBecame) {
      await host.db.create('message', newRef(), {
        uuid: randomUUID(),
        name: 'POOL_MASTER_TRANSITION',
        priority: 4,
        cls: 'Host',
        obj_uuid: (await host.db.get('host', host.hostRef)).uuid,
        timestamp: formatDateTime(new Date(host.now())),
        body: '',
      });
      await clearJustBecameCoordinator(host);
    }
    // Operation marks of the pool are the old coordinator's (a backup carries them along).
    const pool = await host.db.get('pool', host.poolRef);
    if (Object.keys(pool.current_operations).length > 0) {
      await host.db.update('pool', host.poolRef, { current_operations: {} });
      await updatePoolAllowedOperations(host.db, host.poolRef);
    }
    await host.db.commit();
    if (host.emergency === CHECKING) host.emergency = undefined;
    poolSize = await host.db.count('host');
    serving = true;
    onServing();
    return 'alone' as const;
  })();
  started.catch((e: unknown) => host.log.error({ err: e }, 'coordinator start-up check failed'));
  const stalled = () => serving && !rechecking && poolSize > 1 && watch.stalled();
  return {
    stalled,
    recheckInProgress: () => {
      if (stalled()) recheck(watch.lateMs());
      return rechecking;
    },
    started,
    stop() {
      stopped = true;
      watch.stop();
    },
  };
}
