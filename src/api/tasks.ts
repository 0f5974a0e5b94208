// Task lifecycle (xapi's taskHelper.ml and the task part of db_gc): tasks are rows in the task
// table, created pending, completed with the result as an XML-RPC fragment (on every wire, as
// xapi does) or failed with error_info, cancelled on request, and garbage-collected.
import { randomUUID } from 'node:crypto';
import { XapiError, errorDescription } from '../rpc/errors.js';
import type { HostContext, SessionInfo } from './context.js';
import { newRef } from './implicit.js';
import type { Db } from '../db/interface.js';
import type { task_record } from '../schema/generated.js';
import { EPOCH, NULL_REF, formatDateTime, parseDateTime, type Type } from '../schema/types.js';
import { untilStored } from '../db/until-stored.js';

export const COMPLETED_TASK_TIMEOUT_S = 3900;
export const PENDING_TASK_TIMEOUT_S = 86400;
export const MAX_TASKS = 200;

/**
 * TaskHelper.is_cancelling: task.cancel records a `cancel` in the task's current_operations;
 * the work polls for it. A call without a task in the database cannot be cancelled.
 */
export async function isCancelling(db: Db, task: string): Promise<boolean> {
  const row = await db.tryGet('task', task);
  return row !== undefined && Object.values(row.current_operations).includes('cancel');
}

/** TaskHelper.set_cancellable / set_not_cancellable: advertises (or not) `cancel` on the task. */
export async function setCancellable(db: Db, task: string, on: boolean): Promise<void> {
  const row = await db.tryGet('task', task);
  if (row?.status !== 'pending') return;
  const want = on ? ['cancel' as const] : [];
  if (row.allowed_operations.length !== want.length) await db.update('task', task, { allowed_operations: want });
}

/**
 * TaskHelper.cancel: a pending task ends as cancelled now, with no error_info (what xapi does
 * when an operation gives up waiting for a busy object because its task was cancelled).
 */
export async function markCancelled(host: HostContext, task: string): Promise<void> {
  const row = await host.db.tryGet('task', task);
  if (row?.status !== 'pending') return;
  await host.db.update('task', task, {
    progress: 1,
    finished: formatDateTime(new Date(host.now())),
    status: 'cancelled',
    allowed_operations: [],
  });
}
export type TaskOutcome = { ok: true; resultXml: string } | { ok: false; error: unknown };

export class TaskManager {
  /** pending task -> progress seen at the previous GC pass */
  private readonly lastProgress = new Map<string, number>();

  constructor(private readonly host: HostContext) {}

  private now(): string {
    return formatDateTime(new Date(this.host.now()));
  }

  async create(
    session: SessionInfo | undefined,
    label: string,
    cancellable: boolean,
    description = '',
    subtaskOf = NULL_REF,
  ): Promise<string> {
    const ref = newRef();
    await this.host.db.create('task', ref, {
      uuid: randomUUID(),
      name_label: label,
      name_description: description,
      allowed_operations: cancellable ? ['cancel'] : [],
      current_operations: {},
      created: this.now(),
      finished: EPOCH,
      status: 'pending',
      resident_on: this.host.hostRef,
      progress: 0,
      type: '<none/>',
      result: '',
      error_info: [],
      other_config: {},
      subtask_of: subtaskOf,
      backtrace: '()',
      session: session?.ref ?? NULL_REF,
    });
    return ref;
  }

  /** Runs `fn` as the task's work and records its outcome; never throws. */
  async run(task: string, fn: () => Promise<unknown> | unknown, resultType: Type): Promise<void> {
    const epoch = this.host.db.epoch();
    let outcome: TaskOutcome;
    try {
      const result = await fn();
      outcome = { ok: true, resultXml: this.host.marshal.xml(resultType, result) };
    } catch (e) {
      if (!(e instanceof XapiError)) this.host.log.error({ err: e, task }, 'task failed with an internal error');
      outcome = { ok: false, error: e };
    }
    await this.finish(task, epoch, outcome);
  }

  /**
   * Records the outcome of work that began at database `epoch`, and makes it durable. A success
   * is recorded only if the work's writes are all stored: if a flush failed meanwhile (some may
   * have been undone) the task fails with that error instead. An outcome that cannot be stored
   * now (the disk is full) is retried in the background until it can; this never throws.
   */
  async finish(task: string, epoch: number, outcome: TaskOutcome): Promise<void> {
    let error = outcome.ok ? undefined : outcome.error;
    if (outcome.ok) {
      try {
        // a flush failed during the work: fail without ever showing success
        if (this.host.db.epoch() !== epoch) await this.host.db.commit(epoch);
        await this.succeed(task, outcome.resultXml);
        // the work's writes and the success share this flush: if it fails, both are undone
        await this.host.db.commit(epoch);
        return;
      } catch (e) {
        error = e;
      }
    }
    await untilStored(this.host.db, () => this.fail(task, error)).catch((e) =>
      this.host.log.error({ err: e, task }, 'the outcome of a task could not be recorded'),
    );
  }

  async succeed(task: string, resultXml: string): Promise<void> {
    await this.complete(task, { status: 'success', result: resultXml });
  }

  async fail(task: string, e: unknown): Promise<void> {
    const desc = errorDescription(e);
    await this.complete(task, { status: desc[0] === 'TASK_CANCELLED' ? 'cancelled' : 'failure', error_info: desc });
  }

  /** Completes a pending task; one already completed (or cancelled meanwhile) keeps its outcome, as in xapi. */
  private async complete(task: string, changes: Partial<task_record>): Promise<void> {
    const row = await this.host.db.tryGet('task', task);
    if (row?.status !== 'pending') return; // destroyed or completed meanwhile
    await this.host.db.update('task', task, {
      ...changes,
      progress: 1,
      finished: this.now(),
      allowed_operations: [],
      current_operations: {},
    });
  }

  async setProgress(task: string, p: number): Promise<void> {
    if (await this.host.db.tryGet('task', task)) await this.host.db.update('task', task, { progress: p });
  }

  /**
   * xapi's Task.cancel: the request is recorded as the task's only current operation, whatever
   * the task's state (xapi refuses nothing here but other users' tasks); the work notices it
   * at its next check.
   */
  async requestCancel(task: string, byTask: string): Promise<void> {
    await this.host.db.get('task', task);
    await this.host.db.update('task', task, { current_operations: { [byTask]: 'cancel' } });
  }

  /** TaskHelper.exn_if_cancelling. */
  async checkCancelled(task: string): Promise<void> {
    if (await isCancelling(this.host.db, task)) throw new XapiError('TASK_CANCELLED', [task]);
  }

  /**
   * At start-up: nothing from a previous run is still running, so the pending tasks it left are
   * over; they are cancelled and returned.
   */
  async cancelLeftovers(): Promise<Set<string>> {
    const cancelled = new Set<string>();
    for (const [ref, row] of await this.host.db.find('task', { status: 'pending' })) {
      if (row.resident_on === this.host.hostRef || row.resident_on === NULL_REF) {
        await this.complete(ref, { status: 'cancelled', error_info: ['TASK_CANCELLED', ref] });
        cancelled.add(ref);
      }
    }
    return cancelled;
  }

  /** One pass of xapi's timeout_tasks. */
  async gc(): Promise<void> {
    const now = this.host.now();
    const age = (dt: string) => (now - (parseDateTime(dt)?.getTime() ?? 0)) / 1000;
    const completed: [string, number][] = [];
    let young = 0;
    for (const [ref, row] of await this.host.db.all('task')) {
      const pending = row.status === 'pending' || row.status === 'cancelling';
      const destroyAsked = Object.values(row.current_operations).includes('destroy');
      if (!pending && (destroyAsked || age(row.finished) > COMPLETED_TASK_TIMEOUT_S)) {
        await this.forget(ref);
      } else if (pending && age(row.created) > PENDING_TASK_TIMEOUT_S && this.lastProgress.get(ref) === row.progress) {
        await this.forget(ref);
      } else {
        young++;
        if (pending) this.lastProgress.set(ref, row.progress);
        else completed.push([ref, parseDateTime(row.finished)?.getTime() ?? 0]);
      }
    }
    if (young > MAX_TASKS) {
      completed.sort((a, b) => a[1] - b[1]);
      for (const [ref] of completed.slice(0, young - MAX_TASKS)) await this.forget(ref);
    }
  }

  async forget(task: string): Promise<void> {
    this.lastProgress.delete(task);
    if (await this.host.db.tryGet('task', task)) await this.host.db.destroy('task', task);
  }

  /** forget() for a sync call's own task: if the database refuses the write, the task GC removes it later. */
  async forgetQuietly(task: string): Promise<void> {
    await this.forget(task).catch(() => undefined);
  }
}
