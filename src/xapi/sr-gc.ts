// The per-SR garbage collector's scheduling on xapi's side: kicked after deletions (debounced),
// one run at a time per SR, only here (this host is the master of the SRs it plugs), each run
// followed by a scan so the records show the new tree. The GC itself (src/storage/gc.ts) asks
// before every step which VDIs are in use now; the answer comes from here.
import type { Row } from '../db/interface.js';
import type { Storage } from './storage.js';

const GC_DELAY_MS = 200;

export class SrGc {
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly running = new Map<string, Promise<void>>();
  /** VDIs open for writing on the data path (import, copy target), by ref: how many handles. */
  private readonly writers = new Map<string, number>();
  private closed = false;

  constructor(private readonly storage: Storage) {}

  private get host() {
    return this.storage.host;
  }

  /** A VDI is open for writing until `release` (the GC leaves its chain alone meanwhile). */
  claimWriter(vdiRef: string): () => void {
    this.writers.set(vdiRef, (this.writers.get(vdiRef) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.writers.get(vdiRef) ?? 1) - 1;
      if (n > 0) this.writers.set(vdiRef, n);
      else this.writers.delete(vdiRef);
    };
  }

  /**
   * The locations of an SR's VDIs that something uses right now, which the GC must not
   * re-parent or replace: attached to a domain, written on the data path, under an operation of
   * their own (copy, set_on_boot, resize...) or of a VM of theirs (a start attaching them, a
   * clone or export reading them), or reset at each boot (merging a run's writes into the
   * parent would make them persist). The GC asks under the SR lock before every step.
   */
  async inUse(srRef: string): Promise<Set<string>> {
    const db = this.host.db;
    const used = new Set<string>();
    const sr = await db.tryGet('SR', srRef);
    for (const ref of sr?.VDIs ?? []) {
      const vdi = await db.tryGet('VDI', ref);
      if (!vdi) continue;
      const busy =
        vdi.on_boot === 'reset' || Object.keys(vdi.current_operations).length > 0 || this.writers.has(ref) || (await this.usedByVm(vdi));
      if (busy) used.add(vdi.location);
    }
    return used;
  }

  private async usedByVm(vdi: Row<'VDI'>): Promise<boolean> {
    for (const vbdRef of vdi.VBDs) {
      const vbd = await this.host.db.tryGet('VBD', vbdRef);
      if (!vbd) continue;
      if (vbd.currently_attached === true) return true;
      const vm = await this.host.db.tryGet('VM', vbd.VM);
      if (vm && Object.keys(vm.current_operations).length > 0) return true;
    }
    return false;
  }

  /** Kicks the SR's garbage collector soon (debounced); it runs only here, on the SR master. */
  kick(srRef: string): void {
    if (this.closed) return;
    clearTimeout(this.timers.get(srRef));
    const t = setTimeout(() => {
      this.timers.delete(srRef);
      void this.run(srRef).catch((e) => this.host.log.warn({ err: e, sr: srRef }, 'SR garbage collection failed'));
    }, GC_DELAY_MS);
    t.unref();
    this.timers.set(srRef, t);
  }

  /** Runs a kicked GC now instead of after its delay, and waits until the SR's GC runs are done. */
  /** Drops a pass planned for an SR this host no longer knows (SR.forget); one running ends on its own. */
  drop(srRef: string): void {
    clearTimeout(this.timers.get(srRef));
    this.timers.delete(srRef);
  }

  async settle(srRef: string): Promise<void> {
    const pending = this.timers.get(srRef);
    if (pending) {
      clearTimeout(pending);
      this.timers.delete(srRef);
      await this.run(srRef);
    }
    await this.running.get(srRef);
  }

  /** One GC run of an SR (serialised per SR); then a scan so records show the new tree. */
  async run(srRef: string): Promise<void> {
    const prev = this.running.get(srRef) ?? Promise.resolve();
    const run = prev.then(async () => {
      if (this.closed) return;
      const sr = await this.host.db.tryGet('SR', srRef);
      if (!sr) return;
      const { driver, ctx } = await this.storage.context(srRef).catch(() => ({ driver: undefined, ctx: undefined }));
      if (!driver?.gc || !ctx) return;
      // Asked afresh at every step: a VM may start, or a copy begin, while the GC runs.
      const { changed } = await driver.gc(ctx, { inUse: () => this.inUse(srRef) });
      if (changed) {
        await this.storage.scan(srRef);
        await this.host.db.commit();
      }
    });
    this.running.set(
      srRef,
      run.catch(() => undefined),
    );
    return run;
  }

  /** No more runs: pending kicks are dropped, and the runs under way are waited for. */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers.values()) clearTimeout(t);
    await Promise.all(this.running.values());
  }
}
