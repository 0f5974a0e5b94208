// When the simulator's state is saved (sim-state.ts holds how): changes are marked as they
// happen and written together, one journal append for all the VMs changed since the last save,
// before anything about them leaves the backend. While the disk is full, saving is retried and
// those waiting for it wait on.
import { DomainError } from '../interface.js';
import type { SimStateStore } from './sim-state.js';

export interface SaverOptions {
  /** While saves fail, how often one is tried again. */
  retryMs: number;
  /** Told when saving starts failing (a full disk: `cause`) and when it works again. */
  onSaving?: (works: boolean, cause?: unknown) => void;
}

/** What is saved: each VM's record as it is now (undefined: removed), and the last domain id. */
export interface SavedSource<T> {
  record(id: string): T | undefined;
  lastDomid(): number;
}

export class SimSaver<T> {
  /** VMs whose saved state is behind (see save()). */
  private readonly unsaved = new Set<string>();
  private scheduled = false;
  /** Whether the last try at saving failed; then `retry` is the timer of the next one. */
  private failing = false;
  private retry: NodeJS.Timeout | undefined;
  /** Those waiting for the unsaved state to be stored (save()). */
  private readonly waiters = new Set<{ resolve: () => void; reject: (e: DomainError) => void }>();
  private closed = false;

  constructor(
    private readonly store: SimStateStore<T>,
    private readonly source: SavedSource<T>,
    private readonly opts: SaverOptions,
  ) {}

  /** Marks a VM's saved state as behind; the next save() writes it. */
  mark(id: string): void {
    if (this.closed) return; // a closed backend changes nothing on disk
    this.unsaved.add(id);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.trySave()); // for changes nobody asks about (a guest halting itself)
    }
  }

  /**
   * Writes every VM whose state changed since the last save, in one journal append
   * (sim-state.ts). Awaited before anything leaves the backend: at the end of every operation
   * and before stat, list and updates answer. So whatever xapi has heard of (and may have
   * committed to its database) is on disk first and a kill -9 finds it; a change nobody has
   * heard of yet may be lost, which to xapi is as if it never happened (a build it never saw
   * start is simply not there).
   *
   * If the state cannot be written (the disk is full), the caller waits, and the save is
   * retried every retryMs until it is stored. An operation whose save fails has already
   * happened to the domain (built, destroyed...), so failing it would tell xapi something
   * untrue, and undoing it is not possible in general; so it returns only once its state is
   * stored. Its VM's queue waits with it, and so do stat and updates: xapi hears of nothing
   * while the disk is full, then of everything once space is back. (Real xenopsd keeps its
   * state on a tmpfs of its own, which a full state disk does not reach.) close() ends the
   * wait with Cancelled.
   */
  async save(): Promise<void> {
    if (this.trySave()) return;
    // closed: what its last try could not save is lost with the process; not to be reported
    if (this.closed) throw new DomainError('Cancelled', ['backend closed']);
    await new Promise<void>((resolve, reject) => this.waiters.add({ resolve, reject }));
  }

  /** One try at save(), without waiting: false if it failed (a retry is then scheduled). */
  trySave(): boolean {
    this.scheduled = false;
    if (this.closed) return this.unsaved.size === 0; // a closed backend changes nothing on disk
    if (this.retry) return false; // failing: the next try is the timer's
    const changed = new Map<string, T | undefined>();
    for (const id of this.unsaved) changed.set(id, this.source.record(id));
    try {
      this.store.save(this.source.lastDomid(), changed);
    } catch (e) {
      // Nothing is stored (sim-state.ts): the same VMs, still unsaved, are written by a later try.
      if (!this.failing) this.opts.onSaving?.(false, e);
      this.failing = true;
      this.retry = setTimeout(() => this.retrySave(), this.opts.retryMs).unref();
      return false;
    }
    this.unsaved.clear();
    if (this.failing) {
      this.failing = false;
      this.opts.onSaving?.(true);
    }
    return true;
  }

  private retrySave(): void {
    this.retry = undefined;
    if (!this.trySave()) return;
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const w of waiters) w.resolve();
  }

  /**
   * A last try at saving (what it cannot save, nobody has been told of), then the store is
   * closed and whoever still waits for a save fails with `cancel`.
   */
  close(cancel: DomainError): void {
    if (this.closed) return;
    clearTimeout(this.retry);
    this.retry = undefined;
    this.trySave();
    this.closed = true;
    this.store.close();
    for (const w of this.waiters) w.reject(cancel);
    this.waiters.clear();
  }
}
