// The performance counters over HTTP, on every host (xapi's rrdd_proxy.ml in front of
// rrdd_http_handler.ml): GET /rrd_updates, /host_rrd, /vm_rrd (the coordinator sends a client
// asking for a VM another host runs to that host; a stopped VM's RRD comes from the
// coordinator's archive), PUT /rrd (an RRD sent by another host of the pool), and GET /metrics
// (Prometheus). The reads are checked by session (or HTTP Basic credentials, or the pool secret
// of another host) with the http/<action> permission; answered without a task, as xapi's are.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { Dispatcher } from '../api/dispatch.js';
import type { SessionInfo } from '../api/context.js';
import { checkPermission, httpActionRoles } from '../api/rbac.js';
import { readBody } from '../http/body.js';
import type { HandlerTable } from '../http/handlers.js';
import { sendHttpError } from '../http/server.js';
import { authenticate, cookie } from '../http/transfer.js';
import type { Cf } from '../rrdd/rrd.js';
import { rrdFromXml, rrdToJson, rrdToXml } from '../rrdd/rrd-text.js';
import type { Rrdd } from '../rrdd/service.js';
import { xportToJson, xportToXml } from '../rrdd/xport.js';
import { NULL_REF } from '../schema/types.js';
import type { PrometheusExporter } from './prometheus.js';

/** The largest RRD another host may PUT (a VM with many devices is a few MB of XML). */
const PUT_RRD_LIMIT = 64 * 1024 * 1024;

const sameSecret = (a: string, b: string) => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

/**
 * Who asks: another host (its pool secret), or a client with a session or Basic credentials
 * allowed `http/<action>`. Answers 401/403 and returns undefined otherwise.
 */
async function authorize(
  d: Dispatcher,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  action: string,
): Promise<{ session?: SessionInfo; logout?: () => Promise<void> } | undefined> {
  const secret = cookie(req, 'pool_secret');
  if (secret !== undefined) {
    if (d.host.poolSecrets().some((s) => sameSecret(s, secret))) return {};
    sendHttpError(res, 403);
    return undefined;
  }
  const auth = await authenticate(d, req, url);
  if (!auth) {
    req.resume();
    sendHttpError(res, 401, '', { 'www-authenticate': `Basic realm="${action}"` });
    return undefined;
  }
  try {
    checkPermission(d.host, auth.session, `http/${action}`, httpActionRoles(d.host.schema, action));
  } catch {
    await auth.logout?.().catch(() => undefined);
    sendHttpError(res, 403);
    return undefined;
  }
  return auth;
}

/**
 * HTTP Basic credentials on a pool member, which refuses password logins (HOST_IS_SLAVE):
 * checked against the host's own root password instead, as its local logins are.
 */
async function memberBasicAuth(d: Dispatcher, req: IncomingMessage): Promise<{ logout?: () => Promise<void> } | undefined> {
  const auth = req.headers.authorization;
  if (d.host.role.kind !== 'slave' || !auth?.startsWith('Basic ')) return undefined;
  const text = Buffer.from(auth.slice(6), 'base64').toString('utf8');
  const colon = text.indexOf(':');
  return colon > 0 && (await d.host.verifyLocalPassword(text.slice(0, colon), text.slice(colon + 1))) ? {} : undefined;
}

/** JSON when the client asks for it (Accept preferring application/json, else a `json` parameter). */
function prefersJson(req: IncomingMessage, url: URL): boolean {
  const accept = req.headers.accept ?? '';
  const json = /application\/json/.exec(accept);
  const xml = /text\/xml/.exec(accept);
  if (json && (!xml || json.index < xml.index)) return true;
  if (xml && !json) return false;
  return url.searchParams.has('json');
}

function send(res: ServerResponse, body: string, json: boolean, extra: Record<string, string> = {}): void {
  res.writeHead(200, {
    'content-type': json ? 'application/json' : 'text/xml',
    'content-length': Buffer.byteLength(body),
    'access-control-allow-origin': '*',
    ...extra,
  });
  res.end(body);
}

function redirect(res: ServerResponse, address: string, port: number, url: URL, extra?: [string, string]): void {
  const target = new URL(`https://${address}:${port}${url.pathname}`);
  if (extra) target.searchParams.append(...extra);
  for (const [k, v] of url.searchParams) target.searchParams.append(k, v);
  res.writeHead(302, { location: target.toString(), 'content-length': 0, connection: 'close' });
  res.end();
}

export function registerMetricsHandlers(table: HandlerTable, d: Dispatcher, rrdd: Rrdd, prometheus: PrometheusExporter): void {
  const host = d.host;
  const guarded =
    (action: string, fn: (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void>) =>
    async (req: IncomingMessage, res: ServerResponse, url: URL) => {
      const auth = await authorize(d, req, res, url, action);
      if (!auth) return;
      try {
        await fn(req, res, url);
      } catch (e) {
        host.log.warn({ err: e, action }, 'performance counters request failed');
        if (!res.headersSent) sendHttpError(res, 500);
        else res.destroy();
      } finally {
        await auth.logout?.().catch(() => undefined);
      }
    };

  table.add(
    'GET',
    '/rrd_updates',
    guarded('rrd_updates', async (req, res, url) => {
      const q = url.searchParams;
      const start = q.get('start');
      if (start === null || !/^-?\d+$/.test(start)) return sendHttpError(res, 400, "get_rrd_updates: missing the 'start' parameter");
      const cf = q.get('cf');
      const interval = Number(q.get('interval') ?? '0');
      const vmUuids = q.getAll('vm_uuid');
      const x = rrdd.updates({
        start: Number(start),
        interval: Number.isFinite(interval) ? interval : 0,
        cf: cf === 'AVERAGE' || cf === 'MIN' || cf === 'MAX' || cf === 'LAST' ? (cf as Cf) : undefined,
        host: q.get('host') === 'true',
        vmUuids: vmUuids.length > 0 ? vmUuids : undefined,
      });
      const json = prefersJson(req, url);
      send(res, json ? xportToJson(x) : xportToXml(x), json, { 'access-control-allow-headers': 'X-Requested-With' });
    }),
  );

  table.add(
    'GET',
    '/host_rrd',
    guarded('host_rrd', async (req, res, url) => {
      const rrd = rrdd.hostRrd();
      if (!rrd) return sendHttpError(res, 404);
      const json = prefersJson(req, url);
      send(res, json ? rrdToJson(rrd) : rrdToXml(rrd), json);
    }),
  );

  table.add(
    'GET',
    '/vm_rrd',
    guarded('vm_rrd', async (req, res, url) => {
      const uuid = url.searchParams.get('uuid');
      if (uuid === null) return sendHttpError(res, 400, "get_vm_rrd: missing the 'uuid' parameter");
      const json = prefersJson(req, url);
      const serve = (rrd: ReturnType<Rrdd['vmRrd']>) =>
        rrd ? send(res, json ? rrdToJson(rrd) : rrdToXml(rrd), json) : sendHttpError(res, 404);
      const live = rrdd.vmRrd(uuid);
      if (live) return serve(live);
      const role = host.role;
      // an archived RRD is the coordinator's
      if (url.searchParams.has('rrd_unarchive')) return serve(await rrdd.unarchive(uuid));
      if (role.kind === 'broken') return sendHttpError(res, 503);
      const ref = await host.db.refByUuid('VM', uuid);
      const resident = ref ? (await host.db.get('VM', ref)).resident_on : NULL_REF;
      const owner = resident !== NULL_REF && resident !== host.hostRef ? await host.db.tryGet('host', resident) : undefined;
      if (owner) return redirect(res, owner.address, host.config.httpsPort, url);
      if (role.kind === 'master') return serve(await rrdd.unarchive(uuid));
      return redirect(res, role.master, host.config.httpsPort, url, ['rrd_unarchive', '']);
    }),
  );

  // another host's RRD for a VM: arriving with it, or (archive) to keep while it is stopped
  table.add('PUT', '/rrd', async (req, res, url) => {
    const secret = cookie(req, 'pool_secret');
    const session = url.searchParams.get('session_id');
    const byHost = secret !== undefined && host.poolSecrets().some((s) => sameSecret(s, secret));
    if (!byHost) {
      const auth = session ? await authenticate(d, req, url) : undefined;
      if (!auth) {
        req.resume();
        return sendHttpError(res, secret === undefined && !session ? 401 : 403);
      }
    }
    const uuid = url.searchParams.get('uuid');
    if (!uuid) {
      req.resume();
      return sendHttpError(res, 400, "put_rrd: missing the 'uuid' parameter");
    }
    const archive = url.searchParams.has('archive');
    if (archive && host.role.kind !== 'master') {
      req.resume();
      return redirect(res, host.role.kind === 'slave' ? host.role.master : host.config.address, host.config.httpsPort, url);
    }
    const isVm = (await host.db.refByUuid('VM', uuid)) !== undefined;
    const isHost = !isVm && (await host.db.refByUuid('host', uuid)) !== undefined;
    if (!isVm && !isHost) {
      req.resume();
      return sendHttpError(res, 404, "put_rrd: invalid 'uuid' parameter");
    }
    if (isHost && !archive) {
      req.resume();
      return sendHttpError(res, 400, 'put_rrd: cannot archive host RRD');
    }
    let rrd: ReturnType<typeof rrdFromXml>;
    try {
      rrd = rrdFromXml((await readBody(req, PUT_RRD_LIMIT, 60_000)).toString('utf8'));
    } catch (e) {
      host.log.warn({ err: e, uuid }, 'PUT /rrd: the RRD does not read');
      return sendHttpError(res, 400);
    }
    await rrdd.received(uuid, rrd, archive);
    res.writeHead(200, { 'content-length': 0 });
    res.end();
  });

  // Prometheus (beyond xapi): HTTP Basic credentials or a session, else 401
  table.add('GET', '/metrics', async (req, res, url) => {
    const auth = (await memberBasicAuth(d, req)) ?? (await authenticate(d, req, url));
    if (!auth) {
      req.resume();
      return sendHttpError(res, 401, '', { 'www-authenticate': 'Basic realm="metrics"' });
    }
    try {
      const { body, contentType } = await prometheus.render();
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    } finally {
      await auth.logout?.().catch(() => undefined);
    }
  });
}
