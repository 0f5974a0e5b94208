// Waiting in tests, for the unit and the integration tests alike: on the condition, never for a
// fixed time. A sleep long enough on an idle machine is too short on a loaded one (the tests run
// several files at once on two cores), and a test that passes "usually" is a bug.
//
// Prefer waiting on the event itself (a promise, an 'exit', a line of output, event.from).
// waitUntil is for conditions nothing announces (the state of another process, a cache a poller
// fills): it polls, and fails after a deadline saying what it waited for.

export interface WaitOptions {
  /** Give up after this long (default 30 s: far above any honest wait, below the test timeouts). */
  timeoutMs?: number;
  /** Between two probes (default 10 ms). */
  intervalMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;

type Truthy<T> = Exclude<T, false | 0 | '' | null | undefined>;

const pause = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Resolves with the first truthy value `probe` returns. Rejects after the deadline with
 * "timed out after N ms waiting for <what>" and the last value seen, or with the probe's own
 * error if it throws.
 */
export async function waitUntil<T>(what: string, probe: () => T | Promise<T>, opts: WaitOptions = {}): Promise<Truthy<T>> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v as Truthy<T>;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last seen: ${describe(v)})`);
    await pause(opts.intervalMs ?? 10);
  }
}

/** What waitForEmitted listens to (an EventEmitter, Xen Orchestra's object collection). */
export interface Emitter {
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  removeListener(event: string, listener: (...args: unknown[]) => void): unknown;
}

/**
 * Like waitUntil, but `probe` is checked now and again each time `source` emits one of
 * `events`, not on a timer: for state a library keeps and announces changes of (the xen-api
 * connector's object cache).
 */
export function waitForEmitted<T>(
  what: string,
  source: Emitter,
  events: string[],
  probe: () => T,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<Truthy<T>> {
  return new Promise((resolve, reject) => {
    let last: T | undefined;
    const done = (f: () => void) => {
      clearTimeout(timer);
      for (const e of events) source.removeListener(e, check);
      f();
    };
    const check = () => {
      try {
        last = probe();
        if (last) done(() => resolve(last as Truthy<T>));
      } catch (e) {
        done(() => reject(e));
      }
    };
    const timer = setTimeout(
      () => done(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last seen: ${describe(last)})`))),
      timeoutMs,
    );
    for (const e of events) source.on(e, check);
    check();
  });
}

/** `p`, or a rejection naming `what` if it has not settled within `timeoutMs`. */
export async function within<T>(what: string, p: Promise<T>, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Calls to `obj[method]`, counted as they happen: `calls(n)` resolves once the method has been
 * called n times in all. For waiting until code under test has reached a known point (a watcher
 * blocking, a lock being asked for) instead of sleeping and hoping it has. `settled` counts the
 * calls whose returned promise has settled (a wait that ended).
 */
export function countCalls<O extends object, K extends keyof O>(
  obj: O,
  method: K,
): { readonly count: number; readonly settled: number; calls(n: number): Promise<void>; restore(): void } {
  const original = obj[method] as unknown as (...a: unknown[]) => unknown;
  const ownBefore = Object.hasOwn(obj, method);
  let count = 0;
  let settled = 0;
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  (obj as Record<K, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
    count++;
    for (const w of waiters.filter((x) => x.n <= count)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
    const result = original.apply(this, args);
    if (result instanceof Promise) {
      const count = () => void settled++;
      result.then(count, count);
    }
    return result;
  };
  return {
    get count() {
      return count;
    },
    get settled() {
      return settled;
    },
    calls: (n) => (count >= n ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve }))),
    restore: () => {
      if (ownBefore) (obj as Record<K, unknown>)[method] = original;
      else delete (obj as Record<K, unknown>)[method];
    },
  };
}

function describe(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x)) ?? String(v);
  } catch {
    return String(v);
  }
}
