// A pool member's database: the Db/AnyDb interface answered by the coordinator, over HTTPS, with
// the protocol of remote-protocol.ts. The same object serves both faces, as LocalDb does
// (typed(remote) is the Db).
//
// While the coordinator cannot be reached (connection refused or reset, no answer within the
// attempt timeout, a 5xx), a call waits and sends the same request again, for ever, as xapi's
// member does: 2 s, doubling up to 256 s between attempts. wake() cuts every wait short (the
// coordinator has just contacted this member, so it is back). The request keeps its id across
// attempts, so a write whose reply was lost is not applied twice: the coordinator keeps the
// replies to recent writes by id, stored with the writes themselves, so across its own restart
// too (remote-serve.ts). Should it no longer hold an id (100,000 newer writes pushed it out), the
// resent request runs again: a create then finds its own row (refs are random: no one else made
// it), a destroy finds the row gone, an add_to_map finds its own key: after a resend, those
// refusals are the first attempt's success (see sentBefore).
//
// Calls made at the same moment share a request (a batch, remote-protocol.ts): the calls of one
// turn of the event loop go out together, reads apart from writes so that a read never waits for
// the coordinator's commit, and at most maxInFlight requests of each kind are under way at once
// (the calls made meanwhile wait and leave together when one is answered). A busy member thus
// sends few large requests rather than many small ones, each a TLS record, an HTTP exchange and,
// for writes, a commit on the coordinator.
//
// What a member cannot answer: the change log (generation, retainedSince, changesSince) and the
// wake-ups on changes (waitForChange) live in the coordinator's memory, and the only readers of
// them are event.from/event.next (and the bridge-name cache of network.create), which a member
// does not serve: they throw a plain Error saying so rather than answering something wrong.
// Durability needs no round trip: every write is acknowledged only once the coordinator has made
// it durable, so an acknowledged write cannot be undone by a later failed flush. epoch() is
// therefore always 0, and commit() only waits for this member's writes still in flight (failing,
// like LocalDb's, if one of them was refused by the coordinator's store).
import https from 'node:https';
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import { IDLE_SOCKET_MS } from '../rpc/client.js';
import type { Schema } from '../schema/schema.js';
import { type AnyDb, type AnyRow, type ChangeSet, WriteRefused } from './interface.js';
import {
  REMOTE_DB_BATCH_LIMIT,
  REMOTE_DB_PATH,
  REMOTE_DB_REQUEST_LIMIT,
  type RemoteOp,
  type RemoteReply,
  replyError,
  isWriteOp,
} from './remote-protocol.js';

/** xapi's master_connection back-off: 2 s, doubling, at most 256 s. */
export const RETRY_INITIAL_MS = 2_000;
export const RETRY_MAX_MS = 256_000;
/** An attempt with no reply after this long is abandoned and retried (xapi's watchdog: 120 s). */
export const ATTEMPT_TIMEOUT_MS = 120_000;
/** Requests of each kind (reads, writes) under way at once; further calls wait to share the next. */
export const MAX_IN_FLIGHT = 4;

export interface RemoteDbOptions {
  /** The coordinator's address and HTTPS port. */
  address: string;
  port: number;
  /** The pool secret, read at each attempt (it may be rotated). */
  poolSecret: () => string;
  retry?: { initialMs?: number; maxMs?: number };
  attemptTimeoutMs?: number;
  /** Told of each failed attempt before the wait that follows it. */
  onRetry?: (cause: unknown, delayMs: number) => void;
  /** Requests of each kind under way at once (MAX_IN_FLIGHT by default). */
  maxInFlight?: number;
}

/** A call waiting for its request: the operation as sent, and its caller's promise. */
interface Queued {
  op: RemoteOp;
  args: unknown[];
  json: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** The calls of one kind waiting to be sent, and how many requests of that kind are under way. */
interface Lane {
  queue: Queued[];
  inFlight: number;
  scheduled: boolean;
}

/** The coordinator refused the request for good (secret, bound, protocol): raised, never retried. */
export class RemoteDbRefused extends XapiError {
  constructor(message: string) {
    super('INTERNAL_ERROR', [message]);
  }
}

/** The coordinator could not be reached this time; the request is sent again. */
class Unreachable extends Error {}

const notServed = (what: string) =>
  new Error(
    `${what} is not available on a pool member: the database's change log is kept by the coordinator (event.from and event.next are served there)`,
  );

export class RemoteDb implements AnyDb {
  private readonly agent: https.Agent;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly attemptTimeoutMs: number;
  /** Wake-up functions of the calls waiting before their next attempt. */
  private readonly sleepers = new Set<() => void>();
  /** This member's writes not answered yet (commit() waits for them). */
  private readonly writes = new Set<Promise<unknown>>();
  private readonly lanes = { read: newLane(), write: newLane() };
  private readonly maxInFlight: number;
  private closed = false;

  constructor(
    readonly schema: Schema,
    private readonly opts: RemoteDbOptions,
  ) {
    this.initialMs = opts.retry?.initialMs ?? RETRY_INITIAL_MS;
    this.maxMs = opts.retry?.maxMs ?? RETRY_MAX_MS;
    this.attemptTimeoutMs = opts.attemptTimeoutMs ?? ATTEMPT_TIMEOUT_MS;
    this.maxInFlight = opts.maxInFlight ?? MAX_IN_FLIGHT;
    // Host-to-host TLS is not verified (xapi's default with TLS verification off).
    // Connections unused for IDLE_SOCKET_MS are closed (an idle member holds none open).
    this.agent = new https.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, rejectUnauthorized: false, maxSockets: 16 });
  }

  /** The coordinator is back: every call waiting to retry tries again now. */
  wake(): void {
    const woken = [...this.sleepers];
    this.sleepers.clear();
    for (const w of woken) w();
  }

  /** Ends the connections; calls waiting to retry or to be sent fail. */
  close(): void {
    this.closed = true;
    for (const lane of Object.values(this.lanes)) {
      for (const q of lane.queue.splice(0)) q.reject(closedError());
    }
    this.wake();
    this.agent.destroy();
  }

  // ---- the interface --------------------------------------------------------------------------

  async get(cls: string, ref: string): Promise<AnyRow> {
    return Object.freeze((await this.call('get', [cls, ref])) as AnyRow);
  }

  async tryGet(cls: string, ref: string): Promise<AnyRow | undefined> {
    const row = (await this.call('tryGet', [cls, ref])) as AnyRow | undefined;
    return row === undefined ? undefined : Object.freeze(row);
  }

  async refByUuid(cls: string, uuid: string): Promise<string | undefined> {
    return (await this.call('refByUuid', [cls, uuid])) as string | undefined;
  }

  async all(cls: string): Promise<[string, AnyRow][]> {
    return frozenPairs(await this.call('all', [cls]));
  }

  async find(cls: string, match: Record<string, unknown>): Promise<[string, AnyRow][]> {
    return frozenPairs(await this.call('find', [cls, match]));
  }

  async count(cls: string): Promise<number> {
    return (await this.call('count', [cls])) as number;
  }

  async create(cls: string, ref: string, fields: Record<string, unknown>): Promise<void> {
    await this.call('create', [cls, ref, fields]);
  }

  async update(cls: string, ref: string, changes: Record<string, unknown>): Promise<void> {
    await this.call('update', [cls, ref, changes]);
  }

  async mapAdd(cls: string, ref: string, field: string, key: string, value: unknown): Promise<void> {
    await this.call('mapAdd', [cls, ref, field, key, value]);
  }

  async mapRemove(cls: string, ref: string, field: string, key: string): Promise<void> {
    await this.call('mapRemove', [cls, ref, field, key]);
  }

  async setAdd(cls: string, ref: string, field: string, value: unknown): Promise<void> {
    await this.call('setAdd', [cls, ref, field, value]);
  }

  async setRemove(cls: string, ref: string, field: string, value: unknown): Promise<void> {
    await this.call('setRemove', [cls, ref, field, value]);
  }

  async destroy(cls: string, ref: string): Promise<void> {
    await this.call('destroy', [cls, ref]);
  }

  async touch(cls: string, ref: string): Promise<number> {
    return (await this.call('touch', [cls, ref])) as number;
  }

  /** Waits for this member's writes in flight; each is durable on the coordinator once answered. */
  async commit(_since?: number): Promise<void> {
    if (this.writes.size === 0) return;
    for (const r of await Promise.allSettled([...this.writes])) {
      if (r.status === 'rejected' && r.reason instanceof WriteRefused) throw r.reason;
    }
  }

  /** Always 0: no acknowledged write of a member can be rolled back (see the top of the file). */
  epoch(): number {
    return 0;
  }

  generation(): number {
    throw notServed('generation()');
  }

  retainedSince(): number {
    throw notServed('retainedSince()');
  }

  changesSince(_since: number, _wanted: (lowerCls: string, ref: string) => boolean): ChangeSet {
    throw notServed('changesSince()');
  }

  waitForChange(_keys: Set<string> | null, _timeoutMs: number): Promise<void> {
    return Promise.reject(notServed('waitForChange()'));
  }

  // ---- the protocol ---------------------------------------------------------------------------

  private call(op: RemoteOp, args: unknown[]): Promise<unknown> {
    const p = this.enqueue(op, args);
    if (isWriteOp(op)) {
      this.writes.add(p);
      const done = () => this.writes.delete(p);
      p.then(done, done);
    }
    return p;
  }

  private enqueue(op: RemoteOp, args: unknown[]): Promise<unknown> {
    if (this.closed) return Promise.reject(closedError());
    const json = JSON.stringify({ op, args });
    // the bound holds for one operation's request; a batch never grows past it (see flush)
    if (Buffer.byteLength(json) + REQUEST_OVERHEAD > REMOTE_DB_REQUEST_LIMIT) {
      return Promise.reject(
        new RemoteDbRefused(
          `remote database request too large: ${op} on ${String(args[0])} is ${Buffer.byteLength(json) + REQUEST_OVERHEAD} bytes, the limit is ${REMOTE_DB_REQUEST_LIMIT}`,
        ),
      );
    }
    const lane = isWriteOp(op) ? this.lanes.write : this.lanes.read;
    return new Promise((resolve, reject) => {
      lane.queue.push({ op, args, json, resolve, reject });
      this.schedule(lane);
    });
  }

  /** Sends the lane's waiting calls at the end of this turn of the event loop, if a request may go. */
  private schedule(lane: Lane): void {
    if (lane.scheduled || lane.inFlight >= this.maxInFlight || lane.queue.length === 0) return;
    lane.scheduled = true;
    setImmediate(() => {
      lane.scheduled = false;
      this.flush(lane);
    });
  }

  /** Sends waiting calls, as many requests as the lane may have under way, each as full as the bounds allow. */
  private flush(lane: Lane): void {
    while (lane.queue.length > 0 && lane.inFlight < this.maxInFlight) {
      let bytes = REQUEST_OVERHEAD;
      let n = 0;
      while (n < lane.queue.length && n < REMOTE_DB_BATCH_LIMIT) {
        const size = Buffer.byteLength(lane.queue[n]!.json) + 1;
        if (n > 0 && bytes + size > REMOTE_DB_REQUEST_LIMIT) break;
        bytes += size;
        n++;
      }
      const calls = lane.queue.splice(0, n);
      lane.inFlight++;
      void this.sendBatch(calls).finally(() => {
        lane.inFlight--;
        this.schedule(lane);
      });
    }
  }

  /** One request for `calls` (a lone call as a plain request), each caller answered from its reply. */
  private async sendBatch(calls: Queued[]): Promise<void> {
    const id = randomUUID();
    const body =
      calls.length === 1
        ? Buffer.from(`{"id":${JSON.stringify(id)},${calls[0]!.json.slice(1)}`)
        : Buffer.from(`{"id":${JSON.stringify(id)},"batch":[${calls.map((c) => c.json).join(',')}]}`);
    let sent: { reply: RemoteReply; resent: boolean };
    try {
      sent = await this.send(body);
    } catch (e) {
      for (const c of calls) c.reject(e);
      return;
    }
    const { reply, resent } = sent;
    if (calls.length === 1) return this.settle(calls[0]!, reply, resent);
    const replies = reply.ok && Array.isArray(reply.result) ? (reply.result as RemoteReply[]) : undefined;
    if (!replies || replies.length !== calls.length) {
      const e = reply.ok ? new RemoteDbRefused('remote database reply to a batch does not answer each operation') : replyError(reply);
      for (const c of calls) c.reject(e);
      return;
    }
    for (const [i, c] of calls.entries()) void this.settle(c, replies[i]!, resent);
  }

  /** Answers one caller from its reply: a resent write refused for its own earlier effect succeeded. */
  private async settle(c: Queued, reply: RemoteReply, resent: boolean): Promise<void> {
    if (reply.ok) return c.resolve(reply.result);
    const error = replyError(reply);
    try {
      if (resent && isWriteOp(c.op) && (await this.sentBefore(c.op, c.args, error))) return c.resolve(undefined);
    } catch (e) {
      return c.reject(e);
    }
    c.reject(error);
  }

  /**
   * Sends `body` until the coordinator answers it (see the top of the file); `resent` says whether
   * it went more than once (a write's refusal may then be its own first attempt's effect).
   */
  private async send(body: Buffer): Promise<{ reply: RemoteReply; resent: boolean }> {
    let delay = this.initialMs;
    let resent = false;
    for (;;) {
      if (this.closed) throw closedError();
      try {
        return { reply: await this.attempt(body), resent };
      } catch (e) {
        if (!(e instanceof Unreachable)) throw e;
        resent = true;
        if (this.closed) continue; // cut by close(): fail now, not after a wait
        this.opts.onRetry?.(e, delay);
        const woken = await this.pause(delay);
        delay = woken ? this.initialMs : Math.min(delay * 2, this.maxMs);
      }
    }
  }

  /**
   * Whether a resent write's refusal only says that an earlier attempt of it was applied (its
   * reply lost with a coordinator that died, which forgot the request's id): the row it created
   * is there, the row it destroyed is gone, the key it added holds its value.
   */
  private async sentBefore(op: RemoteOp, args: unknown[], error: XapiError): Promise<boolean> {
    const [cls, ref] = args as [string, string];
    if (op === 'destroy') return error.code === 'HANDLE_INVALID';
    if (op === 'create') return (await this.enqueue('tryGet', [cls, ref])) !== undefined;
    if (op === 'mapAdd' && error.code === 'MAP_DUPLICATE_KEY') {
      const [, , field, key, value] = args as [string, string, string, string, unknown];
      const row = (await this.enqueue('tryGet', [cls, ref])) as AnyRow | undefined;
      const map = row?.[field] as Record<string, unknown> | undefined;
      return map !== undefined && JSON.stringify(map[key]) === JSON.stringify(value);
    }
    return false;
  }

  /** Resolves true if wake() (or close()) cut the pause short. */
  private pause(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (woken: boolean) => {
        clearTimeout(timer);
        this.sleepers.delete(wake);
        resolve(woken);
      };
      const wake = () => done(true);
      const timer = setTimeout(() => done(false), ms);
      this.sleepers.add(wake);
    });
  }

  /** One request and its reply; Unreachable for anything worth trying again. */
  private attempt(body: Buffer): Promise<RemoteReply> {
    return new Promise((resolve, reject) => {
      const req = https.request({
        host: this.opts.address,
        port: this.opts.port,
        method: 'POST',
        path: REMOTE_DB_PATH,
        agent: this.agent,
        headers: {
          'content-type': 'application/json',
          'content-length': body.length,
          cookie: `pool_secret=${this.opts.poolSecret()}`,
        },
      });
      const timer = setTimeout(
        () => req.destroy(new Unreachable(`no reply from the coordinator within ${this.attemptTimeoutMs} ms`)),
        this.attemptTimeoutMs,
      );
      const fail = (e: unknown) => {
        clearTimeout(timer);
        reject(e instanceof Unreachable ? e : new Unreachable(`coordinator unreachable: ${(e as Error).message}`, { cause: e }));
      };
      req.on('error', fail);
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', fail);
        res.on('close', () => {
          if (!res.complete) fail(new Error('reply cut short'));
        });
        res.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status >= 500) return reject(new Unreachable(`coordinator answered HTTP ${status}`));
          if (status !== 200) {
            const why = status === 401 || status === 403 ? 'the pool secret was refused' : text.replace(/<[^>]*>/g, ' ').trim();
            return reject(new RemoteDbRefused(`remote database access refused by the coordinator: HTTP ${status} (${why})`));
          }
          try {
            resolve(JSON.parse(text) as RemoteReply);
          } catch (e) {
            reject(new RemoteDbRefused(`remote database reply is not JSON: ${(e as Error).message}`));
          }
        });
      });
      req.end(body);
    });
  }
}

/** The bytes a request adds around its operations: the id, the keys, the brackets. */
const REQUEST_OVERHEAD = 80;

const newLane = (): Lane => ({ queue: [], inFlight: 0, scheduled: false });

const closedError = () => new RemoteDbRefused('the remote database was closed (the host is shutting down or restarting)');

function frozenPairs(v: unknown): [string, AnyRow][] {
  const pairs = v as [string, AnyRow][];
  for (const p of pairs) Object.freeze(p[1]);
  return pairs;
}
