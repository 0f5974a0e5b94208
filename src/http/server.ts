// The HTTP (port 80) and HTTPS (port 443) servers. In xapi, HTTPS is stunnel in front of the
// plain server; here both are node servers sharing one request listener, so every handler is
// reachable both ways. Behaviour at the edges follows xapi's http_svr
// (ocaml/libs/http-lib/http_svr.ml): error pages, connection closing after an error, CORS
// preflight, 501 for methods it does not know.
import http, { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { corsPreflight, type Handler, type HandlerTable } from './handlers.js';
import { BodyTimeout } from './body.js';

/** Db_globs.http_limit_max_rpc_size: the biggest XML-RPC / JSON-RPC request body. */
export const RPC_BODY_LIMIT = 300 * 1024;

/**
 * The whole body of an RPC request must arrive within this (xapi bounds only the headers, by
 * header_total_timeout_tcp = 60 s; the same bound for the body, which is at most 300 KiB, means
 * at least 5 KB/s). RPC bodies are read before any authentication, so without a bound anyone
 * could hold connections open for ever.
 */
export const RPC_BODY_TIMEOUT_MS = 60_000;
/**
 * An upload (disk and VM imports, streaming for minutes) is never bounded in total time, only
 * in idleness: it fails if nothing arrives for this long while the handler waits for data.
 */
export const UPLOAD_IDLE_TIMEOUT_MS = 300_000;
/** Header read timeout (xapi_globs header_read_timeout_tcp: 10 s). */
const HEADERS_TIMEOUT_MS = 10_000;
/** Idle keep-alive connections. xapi itself never times them out; a minute is long enough that
 * clients (which usually drop idle sockets sooner) rarely race a server-side close. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;
/** After an error page on a request whose body was not read, how long to keep discarding what
 * the client still sends before closing (see lingerOnClose). */
const LINGER_MS = 2_000;
/** How long close() lets in-flight requests finish before cutting their connections. */
export const CLOSE_GRACE_MS = 5_000;

/** Methods http.ml knows; anything else parses as `Unknown m`, which has no handlers → 501. */
const XAPI_METHODS = new Set(['GET', 'POST', 'PUT', 'CONNECT', 'OPTIONS']);

type LogFn = (obj: object, msg?: string) => void;

export interface HttpServersOptions {
  address: string;
  httpPort: number;
  httpsPort: number;
  tls: { key: string; cert: string };
  table: HandlerTable;
  log: { info: LogFn; warn: LogFn; error: LogFn };
  /** How long a request body may send nothing while its handler waits for it (UPLOAD_IDLE_TIMEOUT_MS). */
  uploadIdleTimeoutMs?: number;
}

export interface HttpServers {
  httpPort: number;
  httpsPort: number;
  /** Stops accepting, closes idle connections, waits up to graceMs for busy ones, then cuts them. */
  close(graceMs?: number): Promise<void>;
}

const ERRNO_TEXT: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EACCES: 'permission denied',
  EADDRNOTAVAIL: 'address not available',
};

export class ListenError extends Error {
  constructor(
    readonly address: string,
    readonly port: number,
    readonly code: string,
    readonly flag: '--http-port' | '--https-port',
    cause?: unknown,
  ) {
    const hint = code === 'EADDRNOTAVAIL' ? 'choose another address with --address' : `choose another port with ${flag}`;
    super(`cannot listen on ${address}:${port} (${code}: ${ERRNO_TEXT[code] ?? (cause as Error)?.message ?? 'error'}); ${hint}`, { cause });
    this.name = 'ListenError';
  }
}

const escapeHtml = (s: string) =>
  s.replace(/[<>'"&]/g, (c) => ({ '<': '&lt;', '>': '&gt;', "'": '&apos;', '"': '&quot;', '&': '&amp;' })[c]!);

/** Status line reason and body of xapi's error pages (Http_svr.response_* and Fileserver.missing). */
function errorPage(status: number, message: string): [reason: string, body: string] {
  const page = (inner: string) => `<html><body>${inner}</body></html>`;
  switch (status) {
    case 400:
      return ['Bad Request', page('<h1>HTTP 400 bad request</h1>The HTTP request was malformed. Please correct and retry.')];
    case 401:
      return ['Unauthorised', page('<h1>HTTP 401 unauthorised</h1>Please check your credentials and retry.')];
    case 403:
      return ['Forbidden', page('<h1>HTTP 403 forbidden</h1>Access to the requested resource is forbidden.')];
    case 404:
      return [
        'Not Found',
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"> <html><head> <title>404 Not Found</title> </head><body> ' +
          `<h1>Not Found</h1> <p>The requested URL ${escapeHtml(message)} was not found on this server.</p> ` +
          '<hr><address>Xapi Server</address></body></html>',
      ];
    case 408:
      return ['Request Timeout', page('<h1>HTTP 408 request timeout</h1>Timed out waiting for the request.')];
    case 431:
      return [
        'Request Header Fields Too Large',
        page('<h1>HTTP 431 request header fields too large</h1>Exceeded the maximum header size.'),
      ];
    case 500:
      return [
        'Internal Error',
        page(
          '<h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while and try again. ' +
            'If the problem persists, please contact your support representative.' +
            (message ? `<h1> Additional information </h1>${escapeHtml(message)}` : ''),
        ),
      ];
    case 501:
      return ['Method not implemented', page(`<h1>HTTP 501 Method Not Implemented</h1><p>${escapeHtml(message)} not supported.<br /></p>`)];
    default: {
      // Not a status xapi sends; same shape as its pages.
      const reason = STATUS_CODES[status] ?? 'Error';
      return [reason, page(`<h1>HTTP ${status} ${reason.toLowerCase()}</h1>${escapeHtml(message)}`)];
    }
  }
}

/**
 * Sends one of xapi's small HTML error pages and closes the connection afterwards, as http_svr
 * does after any error. `message` is: for 500 the "Additional information" (xapi puts the
 * exception there, e.g. BodyTooLarge's message for an oversized RPC body — xapi answers that with
 * 500, not 413); for 404 the requested path; for 501 the method; for other statuses without a
 * fixed xapi text, the body text. 400/401/403/408/431 have fixed xapi texts and ignore it.
 */
export function sendHttpError(res: ServerResponse, status: number, message = '', headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    // Too late for a page: cutting the connection is the only way to tell the client it failed.
    res.destroy();
    return;
  }
  const [reason, body] = errorPage(status, message);
  lingerOnClose(res);
  res.writeHead(status, reason, {
    'content-length': Buffer.byteLength(body),
    ...(status === 404 ? {} : { 'content-type': 'text/html' }), // Http_svr.response_missing sets none
    connection: 'close',
    'cache-control': 'no-cache, no-store',
    ...headers,
  });
  res.end(body);
}

/**
 * If the request body has not been fully received (e.g. it was too large), closing the socket
 * right after the response would make the kernel answer the unread bytes with a RST, and the
 * client may lose the error page before reading it. So, like Apache's lingering close, half-close
 * (FIN after the page), drop whatever still arrives, and close at the client's FIN or after
 * LINGER_MS. Node closes a `connection: close` response with socket.destroySoon(), hence the
 * per-socket override.
 */
function lingerOnClose(res: ServerResponse): void {
  const req = res.req as IncomingMessage | undefined;
  if (!req || req.complete) return;
  req.on('error', () => {});
  req.resume();
  const socket = req.socket as Socket & { destroySoon?: () => void };
  socket.destroySoon = () => {
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    socket.once('end', () => socket.destroy());
    socket.once('close', () => clearTimeout(timer));
    socket.end();
  };
}

/** The status xapi's http_svr answers a request it cannot parse with (node's parser error codes). */
function parseErrorStatus(code: string | undefined): number {
  if (code === 'HPE_HEADER_OVERFLOW') return 431;
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return 408; // headersTimeout
  if (code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') return 413;
  return 400;
}

/** Per connection: the responses not yet finished, the latest request, and a pending refusal. */
interface ConnectionState {
  unfinished: number;
  latest?: { req: IncomingMessage; res: ServerResponse };
  refusal?: number;
}
const connections = new WeakMap<Socket, ConnectionState>();

function countResponse(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket;
  let state = connections.get(socket);
  if (!state) {
    state = { unfinished: 0 };
    connections.set(socket, state);
  }
  state.unfinished++;
  state.latest = { req, res };
  const st = state;
  res.once('close', () => {
    st.unfinished--;
    if (st.unfinished === 0 && st.refusal !== undefined) refuse(socket, st.refusal);
  });
}

/**
 * What follows an unparsable request on a connection. Requests before it in the same stream
 * (HTTP/1.1 pipelining) are still answered, in order; only then does the error page go out and
 * the connection close. Node's default would write its bare error at once and destroy the
 * socket, losing the replies still being computed.
 */
function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  const state = connections.get(socket) ?? { unfinished: 0 };
  // The parser reports every later chunk again; the first report decides.
  if (state.refusal !== undefined) return;
  const parseError = err.code?.startsWith('HPE_') || err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
  if (!parseError || err.code === 'HPE_INVALID_EOF_STATE') {
    socket.destroy(err); // a reset, or the client closed mid-request: nobody to answer
    return;
  }
  const status = parseErrorStatus(err.code);
  const latest = state.latest;
  if (latest && !latest.req.complete) {
    // The error is inside the body of the request being received: that request is lost with
    // the connection (its handler sees the abort). Answer if nothing is queued before it.
    if (socket.writable && state.unfinished === 1 && !latest.res.headersSent) {
      const [reason, body] = errorPage(status, '');
      socket.write(rawResponse(status, reason, body));
    }
    socket.destroy(err);
    return;
  }
  state.refusal = status;
  connections.set(socket, state);
  if (state.unfinished === 0) refuse(socket, status);
}

function rawResponse(status: number, reason: string, body: string): string {
  return (
    `HTTP/1.1 ${status} ${reason}\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncontent-type: text/html\r\n` +
    `connection: close\r\ncache-control: no-cache, no-store\r\n\r\n${body}`
  );
}

/** Writes xapi's error page straight to the connection and closes it, lingering (see lingerOnClose). */
function refuse(socket: Socket, status: number): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const [reason, body] = errorPage(status, '');
  socket.write(rawResponse(status, reason, body));
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('end', () => socket.destroy());
  socket.once('close', () => clearTimeout(timer));
  socket.end();
}

/**
 * Bounds how long a request body may go quiet while its handler waits for it. Progress is the
 * connection's received-byte count; data buffered and not yet taken by the handler is the
 * handler's delay, not the client's, so it counts as progress too. A quiet body is aborted: the
 * handler sees its stream fail (an upload fails its task) and the connection closes.
 */
function watchBodyIdle(req: IncomingMessage, idleMs: number, log: HttpServersOptions['log']): void {
  const socket = req.socket;
  let bytes = socket.bytesRead;
  let quietSince = performance.now();
  const check = () => {
    if (req.complete || req.destroyed) return;
    const now = performance.now();
    if (socket.bytesRead !== bytes || req.readableLength > 0) {
      bytes = socket.bytesRead;
      quietSince = now;
    } else if (now - quietSince >= idleMs) {
      log.warn({ method: req.method, path: req.url?.replace(/\?.*/, ''), idleMs }, 'request body idle: connection closed');
      req.destroy(new BodyTimeout(idleMs, true));
      return;
    }
    timer = setTimeout(check, Math.min(idleMs, 1000));
  };
  let timer = setTimeout(check, Math.min(idleMs, 1000));
  const stop = () => clearTimeout(timer);
  req.once('end', stop);
  req.once('close', stop);
}

function listen(server: http.Server, address: string, port: number, flag: '--http-port' | '--https-port'): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      reject(new ListenError(address, port, e.code ?? 'UNKNOWN', flag, e));
    };
    const onListening = () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ host: address, port });
  });
}

export async function startHttpServers(opts: HttpServersOptions): Promise<HttpServers> {
  const { table, log } = opts;
  let closing = false;

  const route = async (req: IncomingMessage, res: ServerResponse) => {
    // While shutting down, finish this request but do not keep its connection.
    if (closing) res.setHeader('connection', 'close');
    const method = req.method ?? 'GET';
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://xapi.invalid');
    } catch {
      sendHttpError(res, 400);
      return;
    }
    let handler: Handler | undefined = table.match(method, url.pathname);
    // xapi registers the preflight on OPTIONS "/", so by prefix it answers every OPTIONS path.
    if (!handler && method === 'OPTIONS') handler = corsPreflight;
    if (!handler) {
      if (XAPI_METHODS.has(method)) sendHttpError(res, 404, url.pathname);
      else sendHttpError(res, 501, `Unknown ${method}`); // Http.string_of_method_t
      return;
    }
    try {
      await handler(req, res, url);
    } catch (e) {
      log.error({ err: e, method, path: url.pathname }, 'HTTP handler failed');
      sendHttpError(res, 500, String(e));
    }
  };

  // Node emits CONNECT (xapi's console protocol: `CONNECT /console?ref=...`) as 'connect' with the
  // raw socket instead of 'request', and a request asking for an Upgrade (the console's WebSocket
  // form) as 'upgrade'; give it a response object so it goes through the same table. Handlers
  // that take over the connection use req.socket. Such sockets are no longer the HTTP server's
  // to close, so they are kept here and cut at close().
  const takenOver = new Set<Socket>();
  const onConnect = (req: IncomingMessage, socket: Socket, head: Buffer) => {
    if (head.length > 0) socket.unshift(head);
    socket.on('error', () => {});
    takenOver.add(socket);
    socket.on('close', () => takenOver.delete(socket));
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket);
    res.on('finish', () => {
      res.detachSocket(socket);
      socket.end();
    });
    void route(req, res);
  };

  const serverOptions: http.ServerOptions = {
    keepAlive: true, // SO_KEEPALIVE, as Http_svr.bind sets
    noDelay: true, // TCP_NODELAY, likewise
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    headersTimeout: HEADERS_TIMEOUT_MS,
    requestTimeout: 0, // node's default (5 min for the whole request) would cut VM imports
    connectionsCheckingInterval: 1_000, // how often headersTimeout is enforced
  };
  const idleMs = opts.uploadIdleTimeoutMs ?? UPLOAD_IDLE_TIMEOUT_MS;
  const listener = (req: IncomingMessage, res: ServerResponse) => {
    countResponse(req, res);
    watchBodyIdle(req, idleMs, log);
    void route(req, res);
  };
  const plain = http.createServer(serverOptions, listener);
  const secure = https.createServer({ ...serverOptions, key: opts.tls.key, cert: opts.tls.cert }, listener);
  const servers = [plain, secure];
  for (const s of servers) {
    s.on('connect', onConnect);
    s.on('upgrade', onConnect);
    s.on('clientError', onClientError);
  }

  let httpPort: number;
  let httpsPort: number;
  try {
    httpPort = await listen(plain, opts.address, opts.httpPort, '--http-port');
    httpsPort = await listen(secure, opts.address, opts.httpsPort, '--https-port');
  } catch (e) {
    plain.close();
    throw e;
  }
  // After a successful listen, errors (e.g. EMFILE on accept) must be logged, not crash the host.
  for (const s of servers) s.on('error', (err) => log.error({ err }, 'HTTP server error'));
  log.info({ address: opts.address, httpPort, httpsPort }, 'listening');

  return {
    httpPort,
    httpsPort,
    async close(graceMs = CLOSE_GRACE_MS) {
      closing = true;
      // consoles: streams with no end of their own
      for (const socket of takenOver) socket.destroy();
      const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      // Busy keep-alive connections become idle one response later; close them as they do.
      const closeIdle = () => {
        for (const s of servers) s.closeIdleConnections();
      };
      const idle = setInterval(closeIdle, 100);
      const force = setTimeout(() => {
        for (const s of servers) s.closeAllConnections();
      }, graceMs);
      closeIdle();
      try {
        await closed;
      } finally {
        clearInterval(idle);
        clearTimeout(force);
      }
    },
  };
}
