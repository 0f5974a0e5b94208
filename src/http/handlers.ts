// The HTTP handler table: (method, path) -> handler, matched as xapi's http_svr does.
//
// xapi keeps one radix tree per method (ocaml/libs/http-lib/radix_tree.ml) and picks the
// handler whose registered path is the LONGEST RAW STRING PREFIX of the request path — not a
// path-segment match. So with POST "/" and POST "/RPC2" registered, POST /xmlrpc and POST /foo/bar
// reach "/", POST /RPC2 and even POST /RPC2x reach "/RPC2", and the legacy GET /vm_rrds reaches
// GET /vm_rrd. Registering the same (method, path) twice is a programming error there
// (Radix_tree.Duplicate_key) and here.
import type { IncomingMessage, ServerResponse } from 'node:http';

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

export class HandlerTable {
  // Per method, entries kept longest path first, so the first prefix hit is the longest one.
  private readonly byMethod = new Map<string, { path: string; handler: Handler }[]>();

  add(method: string, path: string, handler: Handler): this {
    const m = method.toUpperCase();
    const entries = this.byMethod.get(m) ?? [];
    if (entries.some((e) => e.path === path)) throw new Error(`duplicate HTTP handler for ${m} ${path}`);
    entries.push({ path, handler });
    entries.sort((a, b) => b.path.length - a.path.length);
    this.byMethod.set(m, entries);
    return this;
  }

  match(method: string, pathname: string): Handler | undefined {
    return this.byMethod.get(method.toUpperCase())?.find((e) => pathname.startsWith(e.path))?.handler;
  }

  /** (method, path) pairs, grouped by method, longest path first: for logs and docs. */
  routes(): [string, string][] {
    return [...this.byMethod].flatMap(([m, es]) => es.map((e): [string, string] => [m, e.path]));
  }
}

/**
 * CORS preflight, as Http_svr.respond_to_options (registered by xapi for OPTIONS on "/", "/json"
 * and "/jsonrpc" — by prefix matching that is every OPTIONS request): 200 with an empty body,
 * allowing any origin and the requested headers plus X-Requested-With. xapi answers "PUT" as the
 * allowed method; browsers still send the POST because POST is a CORS-safelisted method.
 */
export const corsPreflight: Handler = (req, res) => {
  const requested = req.headers['access-control-request-headers'];
  res.writeHead(200, 'OK', {
    'cache-control': 'no-cache, no-store',
    'access-control-allow-origin': '*',
    'access-control-allow-headers': requested ? `${requested}, X-Requested-With` : 'X-Requested-With',
    'access-control-allow-methods': 'PUT',
    'content-length': 0,
  });
  res.end();
};
