// How xapi waits for a busy object (helpers.ml retry_with_global_lock, Early_wakeup,
// Repeat_with_uniform_backoff): an operation is checked and marked on its object under one
// lock per host (xapi's global lock); when the check meets OTHER_OPERATION_IN_PROGRESS the
// caller sleeps a random 1 to 20 s and tries again, for up to two hours, woken early whenever
// any marked operation ends. Every other refusal is raised at once. The caller's task is
// cancellable meanwhile; a cancelled wait ends the task at once, as xapi's does.
import type { Call, HostContext } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { isCancelling, markCancelled, setCancellable } from '../api/tasks.js';
import { Mutex } from '../util/mutex.js';

/** Repeat_with_uniform_backoff's policies: each wait is uniform in [min, max]. */
export interface RetryPolicy {
  minDelayMs: number;
  maxDelayMs: number;
  /** No further wait once this much time was spent waiting. */
  maxTotalWaitMs: number;
}

export const STANDARD: RetryPolicy = { minDelayMs: 1_000, maxDelayMs: 20_000, maxTotalWaitMs: 2 * 3600_000 };
/** For operations that should give up soon when an object stays busy (xapi: VBD marking for a start). */
export const FAIL_QUICKLY: RetryPolicy = { minDelayMs: 2_000, maxDelayMs: 2_000, maxTotalWaitMs: 120_000 };
/** One wait at most (xapi's bound is the smallest float: the first wait passes it). */
export const FAIL_IMMEDIATELY: RetryPolicy = { minDelayMs: 0, maxDelayMs: 3_000, maxTotalWaitMs: Number.MIN_VALUE };

/** xapi's limit on callers sleeping in a retry at once (TOO_MANY_PENDING_TASKS beyond it). */
export const MAX_QUEUEING = 100;

/** One host's lock and sleepers. */
export class OperationGate {
  /** Checks and marks of current_operations, on any class, happen under this lock. */
  readonly lock = new Mutex();
  private readonly sleepers = new Set<() => void>();
  private queueing = 0;

  /** Sleeps up to `ms`, or until broadcast(). */
  sleep(ms: number): Promise<void> {
    if (this.queueing > MAX_QUEUEING) return Promise.reject(new XapiError('TOO_MANY_PENDING_TASKS', []));
    this.queueing++;
    return new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.sleepers.add(wake);
    }).finally(() => this.queueing--);
  }

  /** An operation ended (or a waiter was cancelled): every sleeper re-checks, as xapi wakes them all. */
  broadcast(): void {
    for (const wake of [...this.sleepers]) wake();
  }
}

/**
 * The process's gate. xapi's global lock is its process's, and a process here serves one host;
 * hosts built in one test process share it, which only serialises their checks.
 */
export const globalGate = new OperationGate();

/** The gate of the host a call runs on. */
export function gateOf(_host: HostContext): OperationGate {
  return globalGate;
}

/** with_global_lock: `fn` runs alone among the host's checks and marks. */
export function withGlobalLock<T>(host: HostContext, fn: () => Promise<T>): Promise<T> {
  return gateOf(host).lock.run(fn);
}

const otherOperation = (e: unknown): e is XapiError =>
  e instanceof XapiError && e.code === 'OTHER_OPERATION_IN_PROGRESS' && e.params.length > 0;

/**
 * retry_with_global_lock: runs `fn` (a check-and-mark) under the lock; on
 * OTHER_OPERATION_IN_PROGRESS sleeps per `policy` and tries again.
 */
export async function retryWithGlobalLock<T>(call: Call, fn: () => Promise<T>, policy: RetryPolicy = STANDARD): Promise<T> {
  const gate = gateOf(call.host);
  await setCancellable(call.db, call.task, true);
  let waited = 0;
  for (;;) {
    if (await isCancelling(call.db, call.task)) {
      await markCancelled(call.host, call.task);
      throw new XapiError('TASK_CANCELLED', [call.task]);
    }
    try {
      return await gate.lock.run(fn);
    } catch (e) {
      if (!otherOperation(e) || waited >= policy.maxTotalWaitMs) throw e;
      const ms = policy.minDelayMs + (policy.maxDelayMs - policy.minDelayMs) * Math.random();
      const start = Date.now();
      await gate.sleep(ms);
      waited += Date.now() - start;
    }
  }
}
