// The coordinator's side of the remote database protocol (remote-protocol.ts): one request body
// in, one reply body out, against the coordinator's own database. The HTTP handler around it
// (secret, role, body bound) is src/host/pool-db.ts.
//
// Applied once, across restarts too: the reply to a request that wrote is stored (through the
// journal, the coordinator's LocalDb) in the same transaction as its writes, so a coordinator
// killed after making them durable and before its reply reached the member answers the resent
// request, once restarted, with that stored reply rather than running it again. The reply is
// recorded right after the request's operations ran, in the same turn of the event loop, so no
// flush can fall between them (flushes run on setImmediate).
import type { AnyDb } from './interface.js';
import type { StoredReply } from './store.js';
import { faultPoint } from '../util/fault-point.js';
import {
  type RemoteBatch,
  type RemoteReply,
  type RemoteRequest,
  REMOTE_DB_BATCH_LIMIT,
  failureReply,
  isRemoteOp,
  isWriteOp,
} from './remote-protocol.js';

/** The request is not the protocol (HTTP 400): a bug or a stranger, never retried. */
export class BadRemoteRequest extends Error {}

/**
 * How long and how many write replies are remembered by request id. A member resends after its
 * back-off (up to 256 s between attempts), so ten minutes covers a few attempts; the count bounds
 * the memory (a write's reply is a few dozen bytes).
 */
export const REPLY_TTL_MS = 10 * 60_000;
export const REPLY_LIMIT = 100_000;

const MAX_ARGS = 5;
const MAX_ID_LENGTH = 128;

/** Where replies to writes are kept durably, with the writes they answer (LocalDb). */
export interface ReplyJournal {
  /** Stores a reply in the same transaction as the writes made just before it. */
  recordReply(reply: StoredReply): void;
  /** The newest `limit` stored replies, oldest first. */
  storedReplies(limit: number): StoredReply[];
  /** Drops replies stored before `notBefore` and all but the newest `keep`. */
  pruneReplies(notBefore: number, keep: number): void;
}

/** How many replies are recorded between two prunes of the journal. */
const PRUNE_EVERY = 1000;

export interface RemoteDbServerOptions {
  replyTtlMs?: number;
  replyLimit?: number;
  now?: () => number;
  /** Keeps replies across restarts; without it they are remembered in memory only. */
  journal?: ReplyJournal;
}

export class RemoteDbServer {
  /** Write replies by request id, oldest first (a Map keeps insertion order). */
  private readonly recent = new Map<string, { op: string; at: number; reply: Promise<string> }>();
  private readonly ttlMs: number;
  private readonly limit: number;
  private readonly now: () => number;
  private readonly journal: ReplyJournal | undefined;
  private recordedSincePrune = 0;
  /** How many requests were answered from `recent` (for tests and logs). */
  resent = 0;

  constructor(
    private readonly db: AnyDb,
    opts: RemoteDbServerOptions = {},
  ) {
    this.ttlMs = opts.replyTtlMs ?? REPLY_TTL_MS;
    this.limit = opts.replyLimit ?? REPLY_LIMIT;
    this.now = opts.now ?? Date.now;
    this.journal = opts.journal;
    // The replies of the previous run. Their time starts again now: a member resends within its
    // back-off of the coordinator being back, however long it was down.
    const now = this.now();
    for (const r of this.journal?.storedReplies(this.limit) ?? []) {
      this.recent.set(r.id, { op: r.op, at: now, reply: Promise.resolve(r.reply) });
    }
  }

  /**
   * The reply body to one request body. A write is answered once it is durable (after the group
   * commit holding it); a write whose id was seen before gets the first one's reply, waiting for
   * it if it is still under way. Throws BadRemoteRequest for a body that is not a request.
   */
  serve(body: string | Buffer): Promise<string> {
    const req = parseRequest(body);
    const op = 'batch' in req ? 'batch' : req.op;
    const writes = 'batch' in req ? req.batch.some((r) => isWriteOp(r.op)) : isWriteOp(req.op);
    const run = () => ('batch' in req ? this.runBatch(req) : this.run(req));
    if (!writes) return run();
    const seen = this.recent.get(req.id);
    if (seen) {
      if (seen.op !== op) return Promise.reject(new BadRemoteRequest(`request id ${req.id} was used for another operation`));
      this.resent++;
      return seen.reply;
    }
    const reply = run();
    this.remember(req.id, op, reply);
    return reply;
  }

  /** Stores the reply to request `id`, before the commit of its writes, in their transaction. */
  private record(id: string, op: string, reply: string): void {
    if (!this.journal) return;
    const at = this.now();
    this.journal.recordReply({ id, op, at, reply });
    if (++this.recordedSincePrune >= PRUNE_EVERY) {
      this.recordedSincePrune = 0;
      this.journal.pruneReplies(at - this.ttlMs, this.limit);
    }
  }

  /** A batch: each operation in order, then one commit for all its writes. */
  private async runBatch(req: RemoteBatch): Promise<string> {
    const replies: RemoteReply[] = [];
    const written: number[] = [];
    for (const { op, args } of req.batch) {
      try {
        const f = this.db[op] as (...a: unknown[]) => Promise<unknown>;
        replies.push({ ok: true, result: await f.apply(this.db, args) });
        if (isWriteOp(op)) written.push(replies.length - 1);
      } catch (e) {
        replies.push(failureReply(e));
      }
    }
    if (written.length === 0) return JSON.stringify({ ok: true, result: replies });
    const reply = JSON.stringify({ ok: true, result: replies });
    this.record(req.id, 'batch', reply);
    try {
      await this.db.commit();
    } catch (e) {
      // Nothing of the batch was stored, its reply included: say so for each write.
      for (const i of written) replies[i] = failureReply(e);
      return JSON.stringify({ ok: true, result: replies });
    }
    faultPoint('remote-db.write-committed');
    return reply;
  }

  private async run(req: RemoteRequest): Promise<string> {
    let reply: RemoteReply;
    try {
      const f = this.db[req.op] as (...a: unknown[]) => Promise<unknown>;
      const result = await f.apply(this.db, req.args);
      reply = { ok: true, result };
      if (isWriteOp(req.op)) {
        const text = JSON.stringify(reply);
        this.record(req.id, req.op, text);
        await this.db.commit();
        faultPoint('remote-db.write-committed');
        return text;
      }
    } catch (e) {
      reply = failureReply(e);
    }
    return JSON.stringify(reply);
  }

  private remember(id: string, op: string, reply: Promise<string>): void {
    const now = this.now();
    this.recent.set(id, { op, at: now, reply });
    for (const [oldId, r] of this.recent) {
      if (this.recent.size <= this.limit && now - r.at < this.ttlMs) break;
      this.recent.delete(oldId);
    }
  }
}

function parseRequest(body: string | Buffer): RemoteRequest | RemoteBatch {
  let v: unknown;
  try {
    v = JSON.parse(typeof body === 'string' ? body : body.toString('utf8'));
  } catch (e) {
    throw new BadRemoteRequest(`request is not JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadRemoteRequest('request is not a JSON object');
  const { id, batch } = v as Record<string, unknown>;
  if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_LENGTH)
    throw new BadRemoteRequest('request id must be a string of 1 to 128 characters');
  if (batch === undefined) return { id, ...parseOperation(v) };
  if (!Array.isArray(batch) || batch.length === 0 || batch.length > REMOTE_DB_BATCH_LIMIT)
    throw new BadRemoteRequest(`batch must be an array of 1 to ${REMOTE_DB_BATCH_LIMIT} operations`);
  return { id, batch: batch.map(parseOperation) };
}

function parseOperation(v: unknown): { op: RemoteRequest['op']; args: unknown[] } {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadRemoteRequest('an operation is not a JSON object');
  const { op, args } = v as Record<string, unknown>;
  if (typeof op !== 'string' || !isRemoteOp(op)) throw new BadRemoteRequest(`unknown operation ${JSON.stringify(op)}`);
  if (!Array.isArray(args) || args.length > MAX_ARGS)
    throw new BadRemoteRequest(`args of ${op} must be an array of at most ${MAX_ARGS} values`);
  return { op, args };
}
