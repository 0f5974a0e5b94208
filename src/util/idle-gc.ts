// One full garbage collection when a process goes quiet after a busy spell. V8 collects its old
// generation when that grows, and a host that falls idle stops growing it: the garbage of its
// last spell (a pool member's joining, a database backup downloaded and checked, closed
// connections) then stays resident for good. Measured on a member of a 64-host pool after its
// join: 87 MiB of RSS, 70 MiB after one full collection (V8's heap 17 -> 12 MiB, 12 MiB of dead
// Buffers, and the malloc heap under them trimmed).
//
// Every CHECK_MS the collector looks at the CPU time the process used meanwhile and at its RSS:
// quiet (under QUIET_CPU_SHARE of the interval) and grown by more than GROWTH_BYTES since the
// reading after its last collection, it collects once. A busy process is left to V8; an idle one
// is collected again only once it has grown again. The collection needs node's --expose-gc
// (src/cli/host-process.ts gives it to hosts); without it the collector does nothing.

export const CHECK_MS = 10_000;
/** Under this share of the interval in CPU time, the process is quiet. */
export const QUIET_CPU_SHARE = 0.05;
export const GROWTH_BYTES = 1024 * 1024;

export interface IdleCollectorOptions {
  /** The full collection (default: node's `gc`, present with --expose-gc). */
  gc?: () => void;
  /** CPU time used so far, in microseconds (default: process.cpuUsage(), user + system). */
  cpuMicros?: () => number;
  /** Resident set size in bytes (default: process.memoryUsage.rss()). */
  rss?: () => number;
  checkMs?: number;
}

export class IdleCollector {
  /** Full collections made so far. */
  collections = 0;
  private readonly gc: (() => void) | undefined;
  private readonly cpuMicros: () => number;
  private readonly rss: () => number;
  private readonly checkMs: number;
  private lastCpu: number;
  /** The RSS the growth is counted from: the reading just after the last collection, or any lower quiet reading since. */
  private baseline = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(o: IdleCollectorOptions = {}) {
    this.gc = o.gc ?? (globalThis as { gc?: () => void }).gc;
    this.cpuMicros =
      o.cpuMicros ??
      (() => {
        const u = process.cpuUsage();
        return u.user + u.system;
      });
    this.rss = o.rss ?? (() => process.memoryUsage.rss());
    this.checkMs = o.checkMs ?? CHECK_MS;
    this.lastCpu = this.cpuMicros();
  }

  /** Whether a collection is possible at all (node runs with --expose-gc). */
  get enabled(): boolean {
    return this.gc !== undefined;
  }

  start(): this {
    if (!this.enabled || this.timer) return this;
    this.timer = setInterval(() => this.check(), this.checkMs);
    this.timer.unref();
    return this;
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One look (the timer's); collects if the process is quiet and has grown. */
  check(): void {
    const cpu = this.cpuMicros();
    const used = cpu - this.lastCpu;
    this.lastCpu = cpu;
    if (!this.gc || used > QUIET_CPU_SHARE * this.checkMs * 1000) return;
    const rss = this.rss();
    if (rss < this.baseline) this.baseline = rss;
    if (rss - this.baseline <= GROWTH_BYTES) return;
    this.gc();
    this.collections++;
    // Read at once: garbage made from now on is growth. V8 gives some freed pages back in the
    // background, a little later: a lower quiet reading then lowers the floor.
    this.baseline = this.rss();
    // The collection's own CPU time does not make the next interval look busy.
    this.lastCpu = this.cpuMicros();
  }
}
