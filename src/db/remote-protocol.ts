// The remote database protocol: how a pool member reaches the coordinator's database. It is the
// project's own (xapi's /remote_db_access speaks an XML encoding of its own DB calls); what it
// carries is the Db interface of interface.ts, so a member runs the same message code as the
// coordinator.
//
//   POST /remote_db_access  (HTTPS to the coordinator, keep-alive)
//   cookie: pool_secret=<the pool secret>          missing: 401, wrong: 403
//   content-type: application/json
//   {"id": "<uuid>", "op": "<operation>", "args": [...]}
//
// Operations are the interface's asynchronous methods, with their arguments in order: the reads
// get, tryGet, refByUuid, all, find, count and the writes create, update, mapAdd, mapRemove,
// setAdd, setRemove, destroy, touch. The reply (HTTP 200, JSON) is one of
//
//   {"ok": true, "result": <the method's result; absent for undefined>}
//   {"ok": false, "code": "<XenAPI error code>", "params": [...], "refused": true?}
//
// A failure is the XapiError the coordinator's database raised (HANDLE_INVALID,
// MAP_DUPLICATE_KEY, DB_UNIQUENESS_CONSTRAINT_VIOLATION...), re-raised on the member as the same
// class: `refused` marks a WriteRefused (the coordinator's store refused the write: OUT_OF_SPACE).
// Anything else the coordinator threw comes back as INTERNAL_ERROR [message]. A member asked to
// serve the protocol answers HOST_IS_SLAVE [its coordinator's address].
//
// Several operations may travel in one request, a batch (a member sends together the calls its
// code made at the same moment):
//
//   {"id": "<uuid>", "batch": [{"op": "<operation>", "args": [...]}, ...]}
//   reply: {"ok": true, "result": [<one reply as above per operation, in order>]}
//
// The coordinator runs them in order, each on its own (one failing does not stop the others), and
// a batch holding writes is answered once they are all durable (one group commit). A member puts
// reads and writes in separate batches, so a read never waits for a commit.
//
// A write is acknowledged only once it is durable on the coordinator (its reply waits for the
// group commit that holds it), so an acknowledged write survives kill -9 of the coordinator.
//
// `id` is unique per request, kept when the request is resent. The coordinator remembers the
// replies to recent writes (and batches holding writes) by id, so a write resent after its
// connection broke (the write may have been applied, its reply lost) is answered with the first
// reply, not applied twice; it stores each such reply with the writes it answers, so this holds
// across a restart of the coordinator too. Reads are not remembered: running one again is
// harmless.
//
// Status codes other than 200: 400 a request that is not the protocol, 401/403 the secret, 413 a
// body over REMOTE_DB_REQUEST_LIMIT; the member raises these to its caller at once. 5xx and
// broken connections mean "try again": the member resends the same request (same id).
import { XapiError } from '../rpc/errors.js';
import { WriteRefused } from './interface.js';

export const REMOTE_DB_PATH = '/remote_db_access';

export const READ_OPS = ['get', 'tryGet', 'refByUuid', 'all', 'find', 'count'] as const;
export const WRITE_OPS = ['create', 'update', 'mapAdd', 'mapRemove', 'setAdd', 'setRemove', 'destroy', 'touch'] as const;
export type ReadOp = (typeof READ_OPS)[number];
export type WriteOp = (typeof WRITE_OPS)[number];
export type RemoteOp = ReadOp | WriteOp;

export const isWriteOp = (op: string): op is WriteOp => (WRITE_OPS as readonly string[]).includes(op);
export const isRemoteOp = (op: string): op is RemoteOp => isWriteOp(op) || (READ_OPS as readonly string[]).includes(op);

/**
 * The biggest request body, in bytes. xapi bounds its remote DB requests by the RPC limit
 * (300 KiB). A request here carries what one call writes, and one call's body may be 300 KiB;
 * JSON escaping can grow a string up to six times (a control character becomes \u00XX), so the
 * bound is 2 MiB: whatever a client's largest call writes fits. Larger requests fail at once on
 * the member (never sent, never retried).
 */
export const REMOTE_DB_REQUEST_LIMIT = 2 * 1024 * 1024;

export interface RemoteRequest {
  id: string;
  op: RemoteOp;
  args: unknown[];
}

/** The most operations one batch may hold. */
export const REMOTE_DB_BATCH_LIMIT = 256;

export interface RemoteBatch {
  id: string;
  batch: { op: RemoteOp; args: unknown[] }[];
}

export type RemoteReply = { ok: true; result?: unknown } | { ok: false; code: string; params: string[]; refused?: true };

/** A thrown value as a failure reply. */
export function failureReply(e: unknown): RemoteReply {
  if (e instanceof XapiError)
    return e instanceof WriteRefused
      ? { ok: false, code: e.code, params: e.params, refused: true }
      : { ok: false, code: e.code, params: e.params };
  return { ok: false, code: 'INTERNAL_ERROR', params: [e instanceof Error ? e.message : String(e)] };
}

/** A failure reply as the error the coordinator raised. */
export function replyError(r: { code: string; params: string[]; refused?: true }): XapiError {
  return r.refused ? new WriteRefused(r.code, r.params) : new XapiError(r.code, r.params);
}
