// The simulator's timers and waits (a guest's OS coming up, a guest halting, an operation
// waiting for the guest to answer), kept together so that closing the backend stops them all.
import type { DomainError } from '../interface.js';

export class SimTimers {
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Waits in progress, to be failed by close(). */
  private readonly sleepers = new Set<(e: DomainError) => void>();
  /** Waits re-checking their condition on every state change (kick()). */
  private readonly kicks = new Set<() => void>();
  private closed = false;

  /** Runs `fn` after `ms`, unless closed meanwhile. */
  after(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
  }

  /** The state changed: waits re-check their condition. */
  kick(): void {
    for (const k of [...this.kicks]) k();
  }

  /**
   * Waits until `pred` holds (re-checked on every kick()) or `ms` pass; true if it held.
   * A close() meanwhile makes the wait fail with close()'s error.
   */
  until(pred: () => boolean, ms: number): Promise<boolean> {
    if (pred()) return Promise.resolve(true);
    return new Promise((resolve, reject) => {
      const finish = (ok: boolean) => {
        clearTimeout(t);
        this.timers.delete(t);
        this.kicks.delete(kick);
        this.sleepers.delete(cancel);
        resolve(ok);
      };
      const kick = () => {
        if (pred()) finish(true);
      };
      const cancel = (e: DomainError) => {
        clearTimeout(t);
        this.timers.delete(t);
        this.kicks.delete(kick);
        reject(e);
      };
      const t = setTimeout(() => finish(pred()), Math.max(0, ms));
      this.timers.add(t);
      this.kicks.add(kick);
      this.sleepers.add(cancel);
    });
  }

  /** Stops every timer; waits in progress fail with `cancel`. */
  close(cancel: DomainError): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const s of [...this.sleepers]) s(cancel);
    this.sleepers.clear();
    this.kicks.clear();
  }
}
