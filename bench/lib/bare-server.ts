// The baseline ("limit") server for bench/rpc: plain node:http, run as a forked child so it has
// its own event loop (and core), exactly like the xapi process it is compared with. Configured
// over IPC by the parent:
//   {type:'listen', address}          -> replies {type:'listening', port}
//   {type:'body', path, body, headers}  POST <path> answers these exact bytes and headers (any request body)
//   {type:'events', delayMs, size}    enables POST /poll and POST /write (see below)
// The child exits when the parent goes away (IPC disconnect).
//
// Long-poll protocol (the same timing algorithm as src/xapi/event.ts's event.from, with an
// in-memory version counter instead of the database, and no session/auth/RPC decoding):
//   POST /poll  {"token":N,"w":W} -> answers watcher W at most once per delayMs: if N >= 0, wait
//                               out what is left of W's window (delayMs after its last answer);
//                               then, until version > N, wait for a write, let the event loop
//                               turn, and wait out the window again; answer
//                               {"result":{"token":V,"label":L,"pad":"..."}} padded to `size`
//                               bytes (the size of a real event.from reply).
//   POST /write {"label":L}  -> version++, wakes all held polls, answers {"result":V}.
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const bodies = new Map<string, { body: Buffer; headers: Record<string, string> }>();
let delayMs = 0;
let eventSize = 0;
let version = 0;
let label = '';
let wake: (() => void)[] = [];

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function eventReply(): string {
  const head = `{"result":{"token":"${version}","label":${JSON.stringify(label)},"pad":"`;
  const tail = '"}}';
  return head + 'x'.repeat(Math.max(0, eventSize - head.length - tail.length)) + tail;
}

const lastAnswer = new Map<number, number>();

async function window(w: number): Promise<void> {
  const wait = (lastAnswer.get(w) ?? -Infinity) + delayMs - performance.now();
  if (wait > 0) await sleep(wait);
}

async function poll(token: number, w: number): Promise<string> {
  if (token >= 0) await window(w);
  while (version <= token) {
    await new Promise<void>((r) => wake.push(r));
    await new Promise((r) => setImmediate(r));
    await window(w);
  }
  lastAnswer.set(w, performance.now());
  return eventReply();
}

function send(res: http.ServerResponse, body: string | Buffer, contentType: string): void {
  res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer({ keepAlive: true, noDelay: true, keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
  void (async () => {
    const body = await readBody(req);
    const path = req.url ?? '/';
    const fixed = bodies.get(path);
    if (fixed) {
      res.writeHead(200, fixed.headers);
      return void res.end(fixed.body);
    }
    if (path === '/poll') {
      const { token, w } = JSON.parse(body.toString()) as { token: number; w: number };
      return send(res, await poll(token, w), 'application/json');
    }
    if (path === '/write') {
      label = (JSON.parse(body.toString()) as { label: string }).label;
      version++;
      const w = wake;
      wake = [];
      for (const f of w) f();
      return send(res, `{"result":${version}}`, 'application/json');
    }
    res.writeHead(404).end();
  })().catch((e: unknown) => {
    res.writeHead(500).end(String(e));
  });
});

type Msg =
  | { type: 'listen'; address: string }
  | { type: 'body'; path: string; body: string; headers: Record<string, string> }
  | { type: 'events'; delayMs: number; size: number };

process.on('message', (m: Msg) => {
  switch (m.type) {
    case 'listen':
      server.listen(0, m.address, () => process.send!({ type: 'listening', port: (server.address() as { port: number }).port }));
      break;
    case 'body':
      bodies.set(m.path, { body: Buffer.from(m.body), headers: m.headers });
      process.send!({ type: 'ok' });
      break;
    case 'events':
      delayMs = m.delayMs;
      eventSize = m.size;
      process.send!({ type: 'ok' });
      break;
  }
});
process.on('disconnect', () => process.exit(0));
