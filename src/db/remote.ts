// A pool member's database: the Db/AnyDb interface answered by the coordinator, over HTTPS, with
// the protocol of remote-protocol.ts. The same object serves both faces, as LocalDb does
// (typed(remote) is the Db).
//
// While the coordinator cannot be reached (connection refused or reset, no answer within the
// attempt timeout, a 5xx), a call waits and sends the same request again, for ever, as xapi's
// member does: 2 s, doubling up to 256 s between attempts. wake() cuts every wait short (the
// coordinator has just contacted this member, so it is back). The request keeps its id across
// attempts, so a write whose reply was lost is not applied twice. The coordinator remembers ids
// only in memory, though: if it was killed after making the write durable and before replying,
// the restarted coordinator applies the resent request again. A create then finds its own row
// (refs are random: no one else made it), a destroy finds the row gone, an add_to_map finds its
// own key: after a resend, those refusals are the first attempt's success (see sentBefore).
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
import type { Schema } from '../schema/schema.js';
import { type AnyDb, type AnyRow, type ChangeSet, WriteRefused } from './interface.js';
import { REMOTE_DB_PATH, REMOTE_DB_REQUEST_LIMIT, type RemoteOp, type RemoteReply, replyError, isWriteOp } from './remote-protocol.js';

/** xapi's master_connection back-off: 2 s, doubling, at most 256 s. */
export const RETRY_INITIAL_MS = 2_000;
export const RETRY_MAX_MS = 256_000;
/** An attempt with no reply after this long is abandoned and retried (xapi's watchdog: 120 s). */
export const ATTEMPT_TIMEOUT_MS = 120_000;

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
  private closed = false;

  constructor(
    readonly schema: Schema,
    private readonly opts: RemoteDbOptions,
  ) {
    this.initialMs = opts.retry?.initialMs ?? RETRY_INITIAL_MS;
    this.maxMs = opts.retry?.maxMs ?? RETRY_MAX_MS;
    this.attemptTimeoutMs = opts.attemptTimeoutMs ?? ATTEMPT_TIMEOUT_MS;
    // Host-to-host TLS is not verified (xapi's default with TLS verification off).
    this.agent = new https.Agent({ keepAlive: true, rejectUnauthorized: false, maxSockets: 16 });
  }

  /** The coordinator is back: every call waiting to retry tries again now. */
  wake(): void {
    const woken = [...this.sleepers];
    this.sleepers.clear();
    for (const w of woken) w();
  }

  /** Ends the connections; calls waiting to retry fail. */
  close(): void {
    this.closed = true;
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
    const p = this.send(op, args);
    if (isWriteOp(op)) {
      this.writes.add(p);
      const done = () => this.writes.delete(p);
      p.then(done, done);
    }
    return p;
  }

  private async send(op: RemoteOp, args: unknown[]): Promise<unknown> {
    const body = Buffer.from(JSON.stringify({ id: randomUUID(), op, args }));
    if (body.length > REMOTE_DB_REQUEST_LIMIT) {
      throw new RemoteDbRefused(
        `remote database request too large: ${op} on ${String(args[0])} is ${body.length} bytes, the limit is ${REMOTE_DB_REQUEST_LIMIT}`,
      );
    }
    let delay = this.initialMs;
    let resent = false;
    for (;;) {
      if (this.closed) throw new RemoteDbRefused('the remote database was closed (the host is shutting down or restarting)');
      let reply: RemoteReply;
      try {
        reply = await this.attempt(body);
      } catch (e) {
        if (!(e instanceof Unreachable)) throw e;
        resent = isWriteOp(op);
        if (this.closed) continue; // cut by close(): fail now, not after a wait
        this.opts.onRetry?.(e, delay);
        const woken = await this.pause(delay);
        delay = woken ? this.initialMs : Math.min(delay * 2, this.maxMs);
        continue;
      }
      if (reply.ok) return reply.result;
      const error = replyError(reply);
      if (resent && (await this.sentBefore(op, args, error))) return undefined;
      throw error;
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
    if (op === 'create') return (await this.send('tryGet', [cls, ref])) !== undefined;
    if (op === 'mapAdd' && error.code === 'MAP_DUPLICATE_KEY') {
      const [, , field, key, value] = args as [string, string, string, string, unknown];
      const row = (await this.send('tryGet', [cls, ref])) as AnyRow | undefined;
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

function frozenPairs(v: unknown): [string, AnyRow][] {
  const pairs = v as [string, AnyRow][];
  for (const p of pairs) Object.freeze(p[1]);
  return pairs;
}
