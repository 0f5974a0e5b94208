// The pool's web page, GET /ui/ on every host: plain ES modules from the repository's ui/
// folder, and under /ui/vendor/<name>/ the browser builds of the front-end packages it imports
// (preact, htm, uPlot, noVNC) straight from node_modules: no build step, no CDN. The page
// itself talks to the host as any client does (JSON-RPC, /rrd_updates, /console); serving it
// needs no credentials (xapi's get_root is likewise public).
import { createReadStream, existsSync, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HandlerTable } from '../http/handlers.js';
import { sendHttpError } from '../http/server.js';

/** dist/src/host/ → the repository's ui/ folder. */
const UI_DIR = fileURLToPath(new URL('../../../ui/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.map': 'application/json',
};

/** A package's folder, found from the file its name resolves to (some export no package.json). */
function packageDir(name: string): string | undefined {
  const require = createRequire(import.meta.url);
  let dir: string;
  try {
    dir = dirname(require.resolve(name));
  } catch {
    return undefined;
  }
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && dir.endsWith(name.split('/').join(sep))) return dir;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

/** The packages the page imports, by the name it uses under /ui/vendor/. */
const VENDOR: Record<string, string> = { preact: 'preact', htm: 'htm', uplot: 'uplot', novnc: '@novnc/novnc' };

function sendFile(req: IncomingMessage, res: ServerResponse, root: string, rel: string): void {
  const path = normalize(join(root, rel));
  if (!path.startsWith(root) || !existsSync(path) || !statSync(path).isFile()) {
    sendHttpError(res, 404, req.url ?? '');
    return;
  }
  res.writeHead(200, {
    'content-type': TYPES[extname(path)] ?? 'application/octet-stream',
    'content-length': statSync(path).size,
    'cache-control': 'no-cache',
  });
  if (req.method === 'HEAD') return void res.end();
  createReadStream(path).pipe(res);
}

export function registerUi(table: HandlerTable): void {
  const vendorDirs = new Map<string, string>();
  for (const [alias, name] of Object.entries(VENDOR)) {
    const dir = packageDir(name);
    if (dir) vendorDirs.set(alias, dir + sep);
  }
  table.add('GET', '/ui', (req, res, url) => {
    if (url.pathname === '/ui') {
      res.writeHead(302, { location: '/ui/', 'content-length': 0 });
      return void res.end();
    }
    const rest = decodeURIComponent(url.pathname.slice('/ui/'.length));
    if (rest.startsWith('vendor/')) {
      const [, alias, ...file] = rest.split('/');
      const dir = vendorDirs.get(alias);
      if (!dir) return sendHttpError(res, 404, url.pathname);
      return sendFile(req, res, dir, file.join('/'));
    }
    sendFile(req, res, UI_DIR, rest === '' ? 'index.html' : rest);
  });
}
