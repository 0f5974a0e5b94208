// event.* (xapi's xapi_event.ml). event.from reads the database's generations, so it never
// misses a change: each call returns, per object, one coalesced add/mod/del since the token.
// The legacy register/next pair is served from the same change log, with EVENTS_LOST when the
// log no longer reaches back to a registration's position.
import { setTimeout as sleep } from 'node:timers/promises';
import { XapiError } from '../rpc/errors.js';
import { WriteRefused } from '../db/interface.js';
import type { Call, HostContext, Registry } from '../api/context.js';
import { newStruct, type Rpc, type RpcStruct } from '../rpc/rpc.js';
import type { ChangeSet } from '../db/interface.js';
import type { AnyDb } from '../db/interface.js';

/** xapi's event_from_delay (schema constants): how far apart event.from answers a busy watcher. */
export const EVENT_FROM_DELAY_MS = 50;
const MAX_TIMEOUT_S = 86400;

/**
 * How event.from spaces its answers: `delayMs` apart per session, waited with `sleep`
 * (injectable so tests can hold a batching window open and watch what it gathers).
 */
export interface EventBatching {
  delayMs: number;
  sleep(ms: number): Promise<void>;
}

interface Subscription {
  all: boolean;
  classes: Set<string>;
  objects: Set<string>; // "<class>/<ref>"
}

function parseSubscriptions(entries: string[]): Subscription {
  const sub: Subscription = { all: false, classes: new Set(), objects: new Set() };
  for (const e of entries) {
    if (e === '*') sub.all = true;
    const slash = e.indexOf('/');
    if (slash < 0) sub.classes.add(e.toLowerCase());
    else sub.objects.add(`${e.slice(0, slash).toLowerCase()}/${e.slice(slash + 1)}`);
  }
  return sub;
}

function matcher(host: HostContext, sub: Subscription): (cls: string, ref: string) => boolean {
  return (cls, ref) =>
    host.schema.byLower.get(cls)?.genEvents === true && (sub.all || sub.classes.has(cls) || sub.objects.has(`${cls}/${ref}`));
}

/** What can wake this watcher (null = anything): its classes, its objects, and the end of its session. */
function wakeKeys(sub: Subscription, session: string): Set<string> | null {
  if (sub.all) return null;
  return new Set([...sub.classes, ...sub.objects, `deleted/${session}`]);
}

const pad = (n: number) => String(n).padStart(20, '0');
export const formatToken = (gen: number) => `${pad(gen)},${pad(0)}`;

function parseToken(token: string): number {
  if (token === '') return -1;
  const m = /^(\d+),(\d+)$/.exec(token);
  if (!m) throw new XapiError('EVENT_FROM_TOKEN_PARSE_FAILURE', [token]);
  return Number(m[1]);
}

/** Event structs in xapi's order: adds, then mods, then dels. `id` is the change's generation. */
function eventRecords(host: HostContext, changes: ChangeSet, timestamp: string, id?: number): Rpc[] {
  const out: Rpc[] = [];
  const push = (op: string, cls: string, ref: string, gen: number, row?: Record<string, unknown>) => {
    const ev = newStruct();
    ev.id = String(id ?? gen);
    ev.timestamp = timestamp;
    ev.class = cls.toLowerCase();
    ev.operation = op;
    ev.ref = ref;
    if (row) ev.snapshot = host.marshal.recordToRpc(cls, row);
    out.push(ev);
  };
  for (const a of changes.adds) push('add', a.cls, a.ref, a.gen, a.row);
  for (const m of changes.mods) push('mod', m.cls, m.ref, m.gen, m.row);
  for (const d of changes.dels) push('del', d.cls, d.ref, d.gen);
  return out;
}

export class EventService {
  /** session -> legacy registration */
  private readonly registrations = new Map<string, { entries: string[]; position: number }>();
  /**
   * session -> when event.from last handed it events (host clock). Only entries younger than
   * the batching delay matter; older ones are swept out as the map grows.
   */
  private readonly lastAnswer = new Map<string, number>();

  constructor(
    private readonly host: HostContext,
    private readonly db: AnyDb,
    private readonly batching: EventBatching = { delayMs: EVENT_FROM_DELAY_MS, sleep: (ms) => sleep(ms) },
  ) {}

  /**
   * xapi sleeps its batching delay before every event.from and again after every wake-up, so a
   * single change reaches an idle watcher ~50 ms late. Here the delay spaces a session's answers
   * instead: a watcher that was handed events less than the delay ago waits out the rest of it
   * (so a watcher in a tight loop still gets changes in batches, at most one answer per delay),
   * and one that has heard nothing for that long is answered at once.
   */
  async from(call: Call, classes: string[], token: string, timeoutS: number): Promise<RpcStruct> {
    const since = parseToken(token);
    const sub = parseSubscriptions(classes);
    const wanted = matcher(this.host, sub);
    const timeout = Number.isFinite(timeoutS) && timeoutS >= 0 && timeoutS <= MAX_TIMEOUT_S ? timeoutS : MAX_TIMEOUT_S;
    const deadline = this.host.now() + timeout * 1000;
    const session = call.session!.ref;
    // xapi has no delay before a task-only watcher's call (event_from_task_delay)
    const taskOnly = !sub.all && [...sub.classes].every((c) => c === 'task') && sub.objects.size === 0;
    if (since >= 0 && !taskOnly) await this.batchWindow(session);
    for (;;) {
      // Only what is on disk is handed out: a watcher never sees a change a crash then undoes.
      // (This also gathers the rest of the writes of the call that woke us: they share a flush.)
      // A flush that fails rolls its rows back, so memory is again what is stored: the scan
      // still hands out only stored changes, and the watcher, which wrote nothing, goes on.
      await this.db.commit().catch((e: unknown) => {
        if (!(e instanceof WriteRefused)) throw e;
      });
      await this.assertSessionAlive(call);
      const scannedAt = this.db.generation();
      const changes = this.db.changesSince(since, wanted);
      const remaining = deadline - this.host.now();
      const found = changes.adds.length + changes.mods.length + changes.dels.length > 0;
      if (found || remaining <= 0) {
        const result = newStruct();
        result.events = eventRecords(this.host, changes, '0.0');
        result.valid_ref_counts = await this.validRefCounts();
        result.token = formatToken(Math.max(scannedAt, since, 0));
        if (found) this.answered(session);
        return result;
      }
      await this.db.waitForChange(wakeKeys(sub, session), Math.min(remaining, 60_000));
      await this.batchWindow(session);
    }
  }

  /** Waits out what is left of the session's batching window, if anything. */
  private async batchWindow(session: string): Promise<void> {
    const last = this.lastAnswer.get(session);
    if (last === undefined) return;
    const wait = last + this.batching.delayMs - this.host.now();
    if (wait > 0) await this.batching.sleep(wait);
  }

  private answered(session: string): void {
    const now = this.host.now();
    this.lastAnswer.delete(session); // re-inserted last: the map stays in answer order
    this.lastAnswer.set(session, now);
    if (this.lastAnswer.size > 1024) {
      for (const [s, at] of this.lastAnswer) {
        if (at + this.batching.delayMs > now) break;
        this.lastAnswer.delete(s);
      }
    }
  }

  private async validRefCounts(): Promise<RpcStruct> {
    const out = newStruct();
    for (const c of this.host.schema.dbClasses()) out[c.lower] = BigInt(await this.db.count(c.name));
    return out;
  }

  private async assertSessionAlive(call: Call): Promise<void> {
    if (!(await this.db.tryGet('session', call.session!.ref))) throw new XapiError('SESSION_INVALID', [call.session!.ref]);
  }

  register(call: Call, classes: string[]): void {
    const reg = this.registrations.get(call.session!.ref);
    if (reg) reg.entries.push(...classes);
    else this.registrations.set(call.session!.ref, { entries: [...classes], position: this.db.generation() });
  }

  unregister(call: Call, classes: string[]): void {
    const reg = this.registrations.get(call.session!.ref);
    if (!reg) return;
    reg.entries = reg.entries.filter((e) => !classes.includes(e));
  }

  async next(call: Call): Promise<Rpc[]> {
    const session = call.session!.ref;
    for (;;) {
      const reg = this.registrations.get(session);
      if (!reg) throw new XapiError('SESSION_NOT_REGISTERED', [session]);
      await this.assertSessionAlive(call);
      if (reg.position < this.db.retainedSince()) {
        this.registrations.delete(session);
        throw new XapiError('EVENTS_LOST', []);
      }
      const sub = parseSubscriptions(reg.entries);
      const scannedAt = this.db.generation();
      const changes = this.db.changesSince(reg.position, matcher(this.host, sub));
      if (changes.adds.length + changes.mods.length + changes.dels.length > 0) {
        reg.position = scannedAt;
        const now = `${Math.floor(this.host.now() / 1000)}.`;
        return eventRecords(this.host, changes, now, scannedAt);
      }
      reg.position = scannedAt;
      await this.db.waitForChange(wakeKeys(sub, session), 60_000);
      await sleep(EVENT_FROM_DELAY_MS);
    }
  }

  currentId(): number {
    return this.db.generation();
  }

  forgetSession(session: string): void {
    this.registrations.delete(session);
  }

  async inject(cls: string, ref: string): Promise<string> {
    const def = this.host.schema.classes.get(cls) ?? this.host.schema.byLower.get(cls.toLowerCase());
    if (!def?.inDb || !(await this.db.tryGet(def.name, ref))) throw new XapiError('HANDLE_INVALID', [cls, ref]);
    const gen = await this.db.touch(def.name, ref);
    return formatToken(gen - 1);
  }
}

export function register(r: Registry, events: EventService): void {
  r.implement('event.from', (call, [classes, token, timeout]) => events.from(call, classes, token, timeout))
    .implement('event.register', (call, [classes]) => events.register(call, classes))
    .implement('event.unregister', (call, [classes]) => events.unregister(call, classes))
    .implement('event.next', (call) => events.next(call))
    .implement('event.get_current_id', () => events.currentId())
    .implement('event.inject', (_call, [cls, ref]) => events.inject(cls, ref));
}
