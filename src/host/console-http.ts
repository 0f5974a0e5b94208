// VM consoles over HTTP, as xapi's console.ml: `CONNECT /console?ref=…|uuid=…` (connect_console)
// answers "HTTP/1.1 200 OK" and then carries the console's bytes both ways (RFB for an rfb
// console, text for vt100); `GET /console` with a WebSocket upgrade (connect_console_ws) carries
// the same bytes in binary WebSocket messages, for browsers (noVNC).
//
// In xapi's order: credentials (session_id in the query or a cookie, or HTTP Basic; none or bad:
// 401) and the http/<action> permission (403); then the console — a `uuid` of a VM or a console,
// or a `ref` of either; a VM means its rfb console — and failing that, 500 (console.ml's
// Failure); the VM must be Running; then the console's address from the domain manager's VM.stat
// (no such console: 404). xapi also refuses a VM resident on another host; here the request is
// forwarded to that host (the console's location names it, but a client that asks the host it
// knows still gets its console): the same CONNECT is made there over HTTPS with the same
// session, and the bytes are relayed.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import type { WebSocketServer } from 'ws';
import type { HostContext, SessionInfo } from '../api/context.js';
import type { Dispatcher } from '../api/dispatch.js';
import { checkPermission, httpActionRoles } from '../api/rbac.js';
import type { HandlerTable } from '../http/handlers.js';
import { sendHttpError } from '../http/server.js';
import { authenticate, cookie } from '../http/transfer.js';
import { NULL_REF } from '../schema/types.js';
import type { DomainManager } from '../xenopsd/interface.js';

/** console.ml raises its Failure for a request it cannot serve; the page names it. */
const FAILURE = 'Console.Failure';
/** Http.http_200_ok (): the line and headers before the console's bytes. */
const OK = 'HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nCache-Control: no-cache, no-store\r\n\r\n';

class ConsoleFailure extends Error {
  constructor(
    readonly status: number,
    readonly page = '',
  ) {
    super(page || String(status));
  }
}

interface Target {
  vmUuid: string;
  protocol: 'rfb' | 'vt100';
  /** The console of a host's control domain. */
  dom0: boolean;
  /** Set when another host runs the VM: its address. */
  elsewhere?: string;
}

/** console_of_request + the checks after it: which console, and where it is served. */
async function findConsole(host: HostContext, url: URL, session: SessionInfo, action: string): Promise<Target> {
  const db = host.db;
  const q = url.searchParams;
  const uuid = q.get('uuid');
  const given = q.get('ref');
  if (uuid === null && given === null) throw new ConsoleFailure(500, FAILURE);
  let ref: string;
  if (uuid !== null) {
    const found = (await db.refByUuid('VM', uuid)) ?? (await db.refByUuid('console', uuid));
    if (!found) throw new ConsoleFailure(500, `Db_exn.Read_missing_uuid("console", "", "${uuid}")`);
    ref = found;
  } else ref = given ?? '';
  let consoleRef: string;
  const vm = await db.tryGet('VM', ref);
  if (vm) {
    let rfb: string | undefined;
    for (const c of vm.consoles) if ((await db.tryGet('console', c))?.protocol === 'rfb') rfb ??= c;
    if (!rfb) throw new ConsoleFailure(500, FAILURE);
    consoleRef = rfb;
  } else if (await db.tryGet('console', ref)) consoleRef = ref;
  else throw new ConsoleFailure(500, FAILURE);
  const c = await db.get('console', consoleRef);
  const owner = await db.get('VM', c.VM);
  if (owner.is_control_domain) {
    try {
      const sub = `${action}/host_${action.replace('connect_', '')}`;
      checkPermission(host, session, `http/${sub}`, httpActionRoles(host.schema, sub));
    } catch {
      throw new ConsoleFailure(403);
    }
  }
  if (c.protocol === 'rdp') throw new ConsoleFailure(404); // no tunnelling of RDP, as xapi
  // dom0's consoles would be served by the host's own VNC and text servers, which a simulated
  // host does not run: no address, so 404 (after the checks xapi makes first)
  if (owner.power_state !== 'Running') throw new ConsoleFailure(500, FAILURE);
  const target: Target = { vmUuid: owner.uuid, protocol: c.protocol, dom0: owner.is_control_domain };
  if (owner.resident_on !== host.hostRef) {
    const there = owner.resident_on !== NULL_REF ? await db.tryGet('host', owner.resident_on) : undefined;
    if (!there) throw new ConsoleFailure(500, FAILURE);
    target.elsewhere = there.address;
  }
  return target;
}

/** Opens the same console on the host that runs the VM: its socket after the request line was sent. */
function connectElsewhere(address: string, port: number, url: URL, session: string): Promise<tls.TLSSocket> {
  const query = new URLSearchParams(url.searchParams);
  query.set('session_id', session);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: address, port, rejectUnauthorized: false }, () => {
      socket.write(`CONNECT ${url.pathname}?${query} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Reads a response's head off `socket`: its status, and the bytes after it put back. */
function readHead(socket: Duplex): Promise<number> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) {
        if (got.length > 64 * 1024) done(new Error('response head too long'));
        return;
      }
      socket.off('data', onData);
      socket.pause();
      const rest = got.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(got.toString('latin1'));
      done(m ? undefined : new Error('not an HTTP response'), m ? Number(m[1]) : 0);
    };
    const onEnd = () => done(new Error('connection closed before the response'));
    const done = (e: Error | undefined, status = 0) => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', done);
      if (e) reject(e);
      else resolve(status);
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', done);
  });
}

/** Two streams joined both ways; either ending ends the other. */
function splice(a: Duplex, b: Duplex): void {
  a.pipe(b);
  b.pipe(a);
  const close = () => {
    a.destroy();
    b.destroy();
  };
  a.on('close', close);
  b.on('close', close);
  a.on('error', close);
  b.on('error', close);
}

export function registerConsoleHandlers(table: HandlerTable, d: Dispatcher, domains: DomainManager): void {
  const host = d.host;
  // ws is loaded at the first WebSocket console, as prom-client is at the first scrape: an idle
  // host does not pay for it. noVNC asks for the `binary` subprotocol, the one xapi's proxy
  // answers with; a client asking for none gets none (a browser refuses a subprotocol it did not
  // ask for).
  let ws: Promise<{ server: WebSocketServer; stream: typeof import('ws').createWebSocketStream }> | undefined;
  const webSockets = () =>
    (ws ??= import('ws').then((m) => ({
      server: new m.WebSocketServer({
        noServer: true,
        handleProtocols: (protocols) => (protocols.has('binary') ? 'binary' : false),
        perMessageDeflate: false,
      }),
      stream: m.createWebSocketStream,
    })));

  const handle = (action: 'connect_console' | 'connect_console_ws') => async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    const socket = req.socket;
    const auth = await authenticate(d, req, url);
    if (!auth) return sendHttpError(res, 401, '', { 'www-authenticate': `Basic realm="${action}"` });
    let keep = false;
    try {
      checkPermission(host, auth.session, `http/${action}`, httpActionRoles(host.schema, action));
      const target = await findConsole(host, url, auth.session, action);
      const session = url.searchParams.get('session_id') ?? cookie(req, 'session_id') ?? auth.session.ref;
      const upgrade = action === 'connect_console_ws';
      if (upgrade && req.headers.upgrade?.toLowerCase() !== 'websocket') throw new ConsoleFailure(501);

      let open: (stream: Duplex) => void;
      if (target.elsewhere !== undefined) {
        const there = await connectElsewhere(target.elsewhere, host.config.httpsPort, url, session).catch(() => {
          throw new ConsoleFailure(500, `cannot reach the host ${target.elsewhere} that runs the VM`);
        });
        if (!upgrade) {
          // the other host's answer, 200 and the console or an error page, goes to the client as it is
          keep = true;
          socket.on('close', () => void auth.logout?.().catch(() => undefined));
          splice(socket, there);
          return;
        }
        const status = await readHead(there).catch(() => 502);
        if (status !== 200) {
          there.destroy();
          throw new ConsoleFailure(status);
        }
        socket.once('close', () => there.destroy()); // an upgrade that fails never reaches open()
        open = (stream) => splice(stream, there);
      } else {
        if (target.dom0) throw new ConsoleFailure(404);
        const state = await domains.stat(target.vmUuid);
        if (!state.consoles.some((c) => c.protocol === target.protocol)) throw new ConsoleFailure(404);
        open = (stream) => domains.attachConsole(target.vmUuid, target.protocol, stream);
      }

      keep = true;
      socket.on('close', () => void auth.logout?.().catch(() => undefined));
      if (upgrade) {
        const { server, stream: streamOf } = await webSockets();
        server.handleUpgrade(req, socket, Buffer.alloc(0), (ws) => {
          const stream = streamOf(ws);
          stream.on('error', () => stream.destroy());
          try {
            open(stream);
          } catch (e) {
            host.log.warn({ err: e, vm: target.vmUuid }, 'console: the domain went away');
            ws.close(1011);
          }
        });
      } else {
        socket.write(OK);
        try {
          open(socket);
        } catch (e) {
          // too late for a status (xapi's proxy likewise closes after its 200)
          host.log.warn({ err: e, vm: target.vmUuid }, 'console: the domain went away');
          socket.destroy();
        }
      }
    } catch (e) {
      if (e instanceof ConsoleFailure) sendHttpError(res, e.status, e.page);
      else if ((e as { code?: string }).code === 'RBAC_PERMISSION_DENIED') sendHttpError(res, 403);
      else {
        host.log.warn({ err: e, action }, 'console request failed');
        sendHttpError(res, 500, String(e));
      }
    } finally {
      if (!keep) await auth.logout?.().catch(() => undefined);
    }
  };

  table.add('CONNECT', '/console', handle('connect_console'));
  table.add('GET', '/console', handle('connect_console_ws'));
}
