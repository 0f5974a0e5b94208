// The simulator's feed of updates (xenopsd's UPDATES.get): the latest change per object, in
// sequence order, handed out after a token and waited for when there is none.
import { randomBytes } from 'node:crypto';
import type { Update } from '../interface.js';

export class UpdateFeed {
  /** Tells this feed's tokens from another instance's (a previous process). */
  private readonly epoch = randomBytes(4).toString('hex');
  private seq = 0;
  /** One entry per object, in sequence order (a change re-inserts its object's entry). */
  private readonly changes = new Map<string, { seq: number; update: Update }>();
  private waiters = new Set<() => void>();
  private closed = false;

  /** Records a change of an object and wakes those waiting for one. */
  add(update: Update): void {
    const key = update.kind === 'vm' ? `vm/${update.id}` : `${update.kind}/${update.vm}/${update.id}`;
    this.changes.delete(key); // re-insert: the map stays in sequence order, one entry per object
    this.changes.set(key, { seq: ++this.seq, update });
    this.wake();
  }

  /** Where `token` left off: a token of another instance (or "") is before everything. */
  since(token: string): number {
    const [epoch, n] = token.split('/');
    return epoch === this.epoch ? Number(n) || 0 : 0;
  }

  /** Waits until something changed after `since`, `timeoutMs` passed or the feed closed. */
  async wait(since: number, timeoutMs: number): Promise<void> {
    if (this.pending(since).length > 0 || this.closed) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.waiters.delete(done);
        resolve();
      };
      const t = setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }

  /** The objects changed after `since` (each once) and the token that follows them. */
  after(since: number): { updates: Update[]; token: string } {
    return { updates: this.pending(since).map((c) => c.update), token: `${this.epoch}/${this.seq}` };
  }

  /** Ends every wait; later ones return at once. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  private pending(since: number): { seq: number; update: Update }[] {
    return [...this.changes.values()].filter((c) => c.seq > since);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const w of waiters) w();
  }
}
