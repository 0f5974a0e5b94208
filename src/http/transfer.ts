// What the HTTP data handlers (import/export of disks and VMs) share, as xapi's xapi_http.ml
// with_context and assert_credentials_ok: the session from the `session_id` query parameter or
// cookie, or HTTP Basic credentials (a session for this request only); the RBAC permission
// "http/<action>"; the task — the caller's `task_id`, or a new one — named in the `task-id`
// response header, which carries the result or the error. No credentials, or bad ones: 401 (and
// the caller's task fails with SESSION_AUTHENTICATION_FAILED); no permission: 403.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Call, HostContext, SessionInfo } from '../api/context.js';
import type { Dispatcher } from '../api/dispatch.js';
import { XapiError } from '../rpc/errors.js';
import { checkPermission } from '../api/rbac.js';
import { checkSession } from '../api/session-check.js';
import type { DbClassName } from '../schema/generated.js';
import type { Type } from '../schema/types.js';
import type { Handler } from './handlers.js';
import { sendHttpError } from './server.js';

/** The roles of xapi's data handlers (datamodel http_actions: _R_VM_ADMIN, vm-admin and above). */
export const VM_ADMIN = ['pool-admin', 'pool-operator', 'vm-power-admin', 'vm-admin'];

/**
 * Answers an upload before reading it, as xapi does (http_200_ok ~keep_alive:false): no length,
 * the connection closes when the work is done (`res.end()`). A complete response, e.g. with
 * Content-Length: 0, would make an HTTP client (Node's included) stop sending the body.
 */
export function acceptUpload(res: ServerResponse, task: string): void {
  res.useChunkedEncodingByDefault = false;
  res.shouldKeepAlive = false;
  res.writeHead(200, { connection: 'close', 'cache-control': 'no-cache, no-store', 'task-id': task });
  res.flushHeaders();
}

/**
 * Streams a download into the response; resolves when all of it went out. A client going away
 * stops the stream (no more disk reads) and fails the transfer with VDI_IO_ERROR.
 */
export function sendStream(res: ServerResponse, stream: Readable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    stream.on('error', reject);
    res.on('close', () => {
      if (res.writableFinished) return resolve();
      stream.unpipe(res);
      stream.destroy();
      reject(new XapiError('VDI_IO_ERROR', ['Device I/O errors']));
    });
    stream.pipe(res);
  });
}

export interface Transfer {
  call: Call;
  url: URL;
  req: IncomingMessage;
  res: ServerResponse;
  /** A query parameter (xapi reads them from the query string only). */
  param(name: string): string | undefined;
  /** A `ref` or `uuid` query value as a ref of `cls` (xapi accepts either for vdi/base). */
  resolve(cls: DbClassName, value: string | undefined): Promise<string | undefined>;
}

/**
 * The result a transfer reports on its task; or, for a transfer another host of the pool must
 * serve, that host's address: the client is sent there and that host completes the task.
 */
export type TransferResult = { type: Type; value: unknown } | { redirect: string } | undefined;

/**
 * 302 to the same path and query on another host (importexport.ml return_302_redirect):
 * cookies do not follow a redirect, so the session and the task go into the query.
 */
function redirect(res: ServerResponse, url: URL, address: string, httpsPort: number, session: string, task: string): void {
  const target = new URL(`https://${address}:${httpsPort}${url.pathname}`);
  for (const [k, v] of url.searchParams) target.searchParams.append(k, v);
  target.searchParams.set('session_id', session);
  target.searchParams.set('task_id', task);
  res.writeHead(302, { location: target.toString(), connection: 'close', 'content-length': 0 });
  res.end();
}

/** Maps a failure to the HTTP status sent when the response has not started yet. */
export function statusOf(e: unknown): number {
  // A handler may name the status xapi answers with for its failure (e.g. 404 for an unknown format).
  const given = (e as { httpStatus?: unknown } | undefined)?.httpStatus;
  if (typeof given === 'number') return given;
  if (!(e instanceof XapiError)) return 500;
  if (e.code === 'HANDLE_INVALID' || e.code === 'UUID_INVALID') return 404;
  if (e.code.startsWith('IMPORT_ERROR') || ['VDI_TOO_LARGE', 'SR_FULL', 'SR_OPERATION_NOT_SUPPORTED'].includes(e.code)) return 400;
  return 500;
}

/**
 * For the host-to-host services (/services/xenops, /services/SM): whether the request carries a
 * session of the pool (`session_id` in the query or a cookie), as xapi's are authenticated.
 * Without one it is answered 401 here and false is returned.
 */
export async function poolSessionOr401(host: HostContext, req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
  const given = url.searchParams.get('session_id') ?? cookie(req, 'session_id');
  try {
    if (given === undefined) throw new Error('no session');
    await checkSession(host, given, { anyPoolSession: true });
    return true;
  } catch {
    req.resume();
    sendHttpError(res, 401);
    return false;
  }
}

/** A request cookie's value, decoded; undefined when the request has none of that name. */
export function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return undefined;
}

export async function authenticate(
  d: Dispatcher,
  req: IncomingMessage,
  url: URL,
): Promise<{ session: SessionInfo; logout?: () => Promise<void> } | undefined> {
  const given = url.searchParams.get('session_id') ?? cookie(req, 'session_id');
  if (given) {
    try {
      return { session: await checkSession(d.host, given, { anyPoolSession: true }) };
    } catch {
      return undefined;
    }
  }
  const auth = req.headers.authorization;
  if (auth?.startsWith('Basic ')) {
    const text = Buffer.from(auth.slice(6), 'base64').toString('utf8');
    const colon = text.indexOf(':');
    const o = await d.dispatch('session.login_with_password', [text.slice(0, colon), text.slice(colon + 1), '', 'HTTP Basic auth']);
    if (!o.ok) return undefined;
    const ref = o.value as string;
    return { session: await checkSession(d.host, ref), logout: async () => void (await d.dispatch('session.logout', [ref])) };
  }
  return undefined;
}

/**
 * A data handler: authenticates, checks "http/<action>", makes or adopts the task, runs `fn`,
 * and records its outcome on the task. `fn` writes the response itself; if it throws before
 * the response started, an HTTP error page goes out (else the connection is cut).
 */
export function transferHandler(
  d: Dispatcher,
  action: string,
  label: string,
  roles: string[],
  fn: (t: Transfer) => Promise<TransferResult>,
): Handler {
  return async (req, res, url) => {
    const host = d.host;
    const taskParam = url.searchParams.get('task_id') ?? undefined;
    const auth: { session: SessionInfo; logout?: () => Promise<void> } | undefined = await authenticate(d, req, url);
    if (!auth) {
      if (taskParam && (await host.db.tryGet('task', taskParam)))
        await d.tasks.fail(taskParam, new XapiError('SESSION_AUTHENTICATION_FAILED', []));
      req.resume();
      sendHttpError(res, 401, '', { 'www-authenticate': `Basic realm="${action}"` });
      return;
    }
    try {
      try {
        checkPermission(host, auth.session, `http/${action}`, roles);
      } catch (e) {
        if (taskParam && (await host.db.tryGet('task', taskParam))) await d.tasks.fail(taskParam, e);
        req.resume();
        sendHttpError(res, 403);
        return;
      }
      const epoch = host.db.epoch();
      let task = taskParam && (await host.db.tryGet('task', taskParam)) ? taskParam : undefined;
      task ??= await d.tasks.create(auth.session, label, true);
      await host.db.commit();
      res.setHeader('task-id', task);
      const call = d.taskCall(auth.session, task);
      const transfer: Transfer = {
        call,
        url,
        req,
        res,
        param: (name) => url.searchParams.get(name) ?? undefined,
        resolve: async (cls, value) => {
          if (!value) return undefined;
          if (await host.db.tryGet(cls, value)) return value;
          const byUuid = await host.db.refByUuid(cls, value);
          if (byUuid) return byUuid;
          throw new XapiError('HANDLE_INVALID', [cls, value]);
        },
      };
      try {
        const result = await fn(transfer);
        if (result && 'redirect' in result) {
          req.resume();
          redirect(res, url, result.redirect, host.config.httpsPort, auth.session.ref, task);
          // the session goes on to the other host: one made from Basic credentials stays open
          auth.logout = undefined;
          return;
        }
        await d.tasks.finish(task, epoch, { ok: true, resultXml: result ? host.marshal.xml(result.type, result.value) : '' });
      } catch (e) {
        if (!(e instanceof XapiError)) host.log.warn({ err: e, action, task }, 'HTTP transfer failed');
        req.resume();
        if (!res.headersSent) sendHttpError(res, statusOf(e), e instanceof Error ? e.message : String(e));
        else res.destroy();
        await d.tasks.finish(task, epoch, { ok: false, error: e });
      }
    } finally {
      await auth.logout?.().catch(() => undefined);
    }
  };
}
