// The coordinator's database over HTTP, for the pool's members: POST /remote_db_access (the
// protocol of src/db/remote-protocol.ts) and GET /pool/xmldbdump (the backup image,
// src/db/backup.ts). Both need the pool secret (cookie `pool_secret=`, or for the dump also the
// query parameter, as xapi's HTTP handlers accept it). They live here, not in src/http, because
// they reach the database directly and the wire layer never sees it.
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { LocalDb } from '../db/database.js';
import { BACKUP_PATH, minimalImage } from '../db/backup.js';
import { typed } from '../db/interface.js';
import { rollingUpgradeInProgress } from '../xapi/rpu.js';
import { REMOTE_DB_PATH, REMOTE_DB_REQUEST_LIMIT } from '../db/remote-protocol.js';
import { BadRemoteRequest, RemoteDbServer } from '../db/remote-serve.js';
import { BodyAborted, BodyTimeout, BodyTooLarge, readBody } from '../http/body.js';
import type { Handler, HandlerTable } from '../http/handlers.js';
import { RPC_BODY_TIMEOUT_MS, sendHttpError } from '../http/server.js';
import { faultPoint } from '../util/fault-point.js';

export type PoolDbRole =
  /** This host is the coordinator: it serves its own database. */
  | { coordinator: true; db: LocalDb; server?: RemoteDbServer }
  /** This host is a member of the pool whose coordinator is at `coordinatorAddress`. */
  | { coordinator: false; coordinatorAddress: string };

export interface PoolDbHandlerOptions {
  role: PoolDbRole;
  /** The secrets accepted (several while one is being rotated). */
  poolSecrets: () => string[];
  bodyTimeoutMs?: number;
  log?: { warn(obj: object, msg?: string): void };
}

/** Registers POST /remote_db_access and GET /pool/xmldbdump; returns the protocol's server (coordinator) . */
export function registerPoolDbHandlers(table: HandlerTable, opts: PoolDbHandlerOptions): RemoteDbServer | undefined {
  // The coordinator's database keeps the replies to members' writes with the writes themselves.
  const server = opts.role.coordinator ? (opts.role.server ?? new RemoteDbServer(opts.role.db, { journal: opts.role.db })) : undefined;
  table.add('POST', REMOTE_DB_PATH, remoteDbAccessHandler(opts, server));
  table.add('GET', BACKUP_PATH, databaseDumpHandler(opts));
  return server;
}

/** The secret a request carries: its `pool_secret` cookie (or, if allowed, query parameter). */
function givenSecret(req: IncomingMessage, url: URL | undefined): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === 'pool_secret') return decodeURIComponent(part.slice(eq + 1).trim());
  }
  return url?.searchParams.get('pool_secret') ?? undefined;
}

const sameSecret = (a: string, b: string) => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

/** Answers 401 (no secret) or 403 (a wrong one) and returns false, or returns true. */
function checkSecret(req: IncomingMessage, res: ServerResponse, opts: PoolDbHandlerOptions, url?: URL): boolean {
  const given = givenSecret(req, url);
  if (given === undefined) {
    sendHttpError(res, 401);
    return false;
  }
  if (!opts.poolSecrets().some((s) => sameSecret(s, given))) {
    sendHttpError(res, 403);
    return false;
  }
  return true;
}

function sendJson(res: ServerResponse, body: string): void {
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-cache, no-store',
  });
  res.end(body);
}

export function remoteDbAccessHandler(opts: PoolDbHandlerOptions, server: RemoteDbServer | undefined): Handler {
  return async (req, res) => {
    if (!checkSecret(req, res, opts)) return;
    let body: Buffer;
    try {
      body = await readBody(req, REMOTE_DB_REQUEST_LIMIT, opts.bodyTimeoutMs ?? RPC_BODY_TIMEOUT_MS);
    } catch (e) {
      if (e instanceof BodyTooLarge) sendHttpError(res, 413, `a remote database request may be at most ${REMOTE_DB_REQUEST_LIMIT} bytes`);
      else if (e instanceof BodyTimeout) sendHttpError(res, 408);
      else if (!(e instanceof BodyAborted)) throw e;
      return;
    }
    const { role } = opts;
    if (!role.coordinator || !server) {
      // A member holds no database to serve: say who does, as a failure the caller re-raises.
      sendJson(res, JSON.stringify({ ok: false, code: 'HOST_IS_SLAVE', params: [role.coordinator ? '' : role.coordinatorAddress] }));
      return;
    }
    faultPoint('remote-db.received');
    let reply: string;
    try {
      reply = await server.serve(body);
    } catch (e) {
      if (!(e instanceof BadRemoteRequest)) throw e;
      opts.log?.warn({ err: e }, 'bad remote database request');
      sendHttpError(res, 400);
      return;
    }
    sendJson(res, reply);
  };
}

export function databaseDumpHandler(opts: PoolDbHandlerOptions): Handler {
  return async (req, res, url) => {
    if (!checkSecret(req, res, opts, url)) return;
    const { role } = opts;
    if (!role.coordinator) {
      sendHttpError(res, 503, `this host is a pool member: the pool's database is on its coordinator, ${role.coordinatorAddress}`);
      return;
    }
    // During a rolling upgrade the members keep the copies they have (their release's).
    const image = (await rollingUpgradeInProgress(typed(role.db))) ? minimalImage() : await role.db.backupImage();
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': image.length,
      'cache-control': 'no-cache, no-store',
    });
    // Half the image on its way, for a test that kills the coordinator while serving it.
    res.write(image.subarray(0, image.length >> 1), (err) => {
      if (err) return; // the member went away
      faultPoint('backup.serving');
      res.end(image.subarray(image.length >> 1));
    });
  };
}
