// `npm run bench -- rpc [--profile DIR] [--quick]`: XenAPI RPC throughput and latency of a real
// `xapi serve` process on a loopback address, each figure beside a limit measured in the same run
// on the same machine by the same load generator.
//
// Processes: this process is the load generator. It starts (1) one xapi server (harness.startXapi,
// own 127.x address, temp state dir) and (2) one bare node:http server (bench/lib/bare-server.ts,
// forked, on another 127.x address). Each server has its own event loop, as xapi does, so on a
// 2-core box both sides get the same arrangement: one core for the client, one for the server.
// Both are ended by PID (and the bare child also exits when our IPC channel closes); the state
// dir is removed.
//
// Figures and their limits:
//  1. xmlrpc_c1/c32, jsonrpc_c1/c32 — host.get_record with a logged-in session, calls/s, closed
//     loop at concurrency 1 and 32 over keep-alive sockets (http.Agent keepAlive, maxSockets =
//     concurrency), 1 s warm-up then 5 s counted, in 1 s slices alternating with the limit's
//     (xapi, bare, xapi, bare, ...) so that noise from other load on the box hits both alike.
//     p50/p99 latencies in the table are medians over the slices.
//     Limit: the bare node:http server answering POST on the same path with the *exact bytes and
//     headers* of our host.get_record reply (captured from xapi at the start), driven by the same
//     generator with the same request body, concurrency and check. This is the cost of HTTP/1.1
//     keep-alive request handling in Node itself plus the client's own cost — what xapi would reach
//     if RPC decoding, auth, dispatch, the DB read and encoding were free. ratio = ours / bare
//     (issue target >= 0.5).
//  2. network_create_c32 — the setup of (3): 10,000 network.create over JSON-RPC, 32 concurrent.
//     Limit: the bare server's JSON-RPC c32 rate from (1) — an upper bound for any call at c32.
//     get_all_records_10k_{jsonrpc,xmlrpc} — network.get_all_records on >= 10,000 networks, ms
//     from sending the request to the last byte of the reply: `_first` the first call after the
//     networks were written (every record written afresh), the plain figure the median of 5
//     calls after 2 more not counted (JIT and GC warm-up, as the limit's in-process run has
//     one): the rows unchanged, so their text is the one kept from the first call.
//     Limit: serialising the same records in-process, median of 5: JSON.stringify of the parsed
//     JSON-RPC result (V8's native serialiser, the floor for producing that JSON in Node), and for
//     XML-RPC a minimal string-concatenating XML-RPC encoder over the same values (JSON.stringify
//     would understate XML, whose document is ~2-3x larger). Everything a server must do besides
//     producing the text (reading rows, marshalling, the socket) is overhead over this limit.
//     ratio = limit / ours.
//  3. Watchers looping event.from(['network'], token, 30) over JSON-RPC, each with its own
//     session, and a writer doing network.set_name_label on one network.
//     event_idle_latency_p50/p99 — one watcher; 50 single writes (after 3 warm-up), each sent
//     after the watcher has waited twice the batching delay: ms from sending the write to the
//     watcher seeing the new name. Limit: the same on the bare server, where an idle watcher's
//     poll is answered as soon as the write lands (a long-poll server's wake-up latency).
//     ratio: bare / ours.
//     event_fanout_* — 100 watchers; 200 sequential writes (after 10 warm-up), each waiting
//     after its acknowledgement until all 100 watchers have seen it.
//     event_fanout_deliveries: 100 x 200 / total time (events/s);
//     event_fanout_latency_p50/p99: ms from the write's acknowledgement to the 100th watcher.
//     Limit: the bare server holding 100 long-poll requests with the same timing algorithm as
//     event.from (answers to one watcher at least EVENT_FROM_DELAY_MS apart, so a watcher in a
//     tight loop gets batches: a deliberate protocol behaviour, not overhead, so the baseline
//     pays it too), answering each with a JSON body padded to the size of a real event.from
//     reply; the writer and the watcher loops are the same code over the same kind of agent. So
//     the difference is xapi's own cost of the write, wake-up, change scan, session checks and
//     encoding. ratio: deliveries ours / bare; latency bare / ours.
//
// Prints a table as it goes; the LAST line is one JSON object {"bench":"rpc", <figure>: {value,
// unit, limit, ratio}, ...}. --profile DIR profiles xapi's CPU (V8 sampling profiler, preloaded by
// bench/lib/cpu-profile.ts) into DIR/xapi-<pid>.cpuprofile, written when xapi exits.
// --quick shortens every phase (for smoke runs; figures are then noisier).
import { fork, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { startXapi, stopXapi, loopbackAddress, PASSWORD, type XapiProcess } from '../test/integration/harness.js';
import { jsonRpcRequest, parseJsonRpcResponse } from '../src/rpc/jsonrpc.js';
import { parseXmlRpcResponse, xmlRpcRequest } from '../src/rpc/xmlrpc.js';
import { EVENT_FROM_DELAY_MS } from '../src/xapi/event.js';
import { alternating, closedLoop, JsonRpc, median, pct, post, type Reply, type Target } from './lib/http-load.js';

interface Figure {
  value: number;
  unit: string;
  limit: number;
  ratio: number;
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

function log(line: string): void {
  process.stdout.write(line + '\n');
}

// ---------------------------------------------------------------------------------------------
// Bare baseline child

interface Bare {
  proc: ChildProcess;
  target: Target;
  request<T = unknown>(msg: object, expect: string): Promise<T>;
  stop(): Promise<void>;
}

async function startBare(address: string): Promise<Bare> {
  const proc = fork(fileURLToPath(new URL('./lib/bare-server.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const request = <T>(msg: object, expect: string) =>
    new Promise<T>((resolve, reject) => {
      const onMsg = (m: { type: string }) => {
        if (m.type === expect) {
          proc.off('message', onMsg);
          proc.off('exit', onExit);
          resolve(m as T);
        }
      };
      const onExit = () => reject(new Error('bare server exited'));
      proc.on('message', onMsg);
      proc.once('exit', onExit);
      proc.send(msg);
    });
  const { port } = await request<{ port: number }>({ type: 'listen', address }, 'listening');
  return {
    proc,
    target: { host: address, port },
    request,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) process.kill(proc.pid!, 'SIGTERM');
      const t = setTimeout(() => proc.exitCode === null && proc.signalCode === null && process.kill(proc.pid!, 'SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 1. small calls

const XML_OK = Buffer.from('<name>Status</name><value>Success</value>');
const JSON_OK = Buffer.from('"result":');

async function smallCalls(
  xapi: Target,
  bare: Bare,
  session: string,
  hostRef: string,
  warmupMs: number,
  durationMs: number,
  figures: Record<string, Figure>,
): Promise<{ bareJsonC32: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const protocols = [
    {
      name: 'xmlrpc',
      path: '/',
      contentType: 'text/xml',
      body: Buffer.from(xmlRpcRequest('host.get_record', [session, hostRef])),
      ok: XML_OK,
      verify: (r: Reply) => {
        const v = parseXmlRpcResponse(r.body) as Record<string, unknown>;
        if (v['Status'] !== 'Success') throw new Error(`host.get_record over XML-RPC failed: ${r.body.toString().slice(0, 300)}`);
      },
    },
    {
      name: 'jsonrpc',
      path: '/jsonrpc',
      contentType: 'application/json',
      body: Buffer.from(jsonRpcRequest('host.get_record', [session, hostRef], '2.0', 1)),
      ok: JSON_OK,
      verify: (r: Reply) => {
        const v = parseJsonRpcResponse(r.body);
        if (!v.ok) throw new Error(`host.get_record over JSON-RPC failed: ${r.body.toString().slice(0, 300)}`);
      },
    },
  ];
  let bareJsonC32 = NaN;
  log('');
  log('1. host.get_record, authenticated, keep-alive closed loop');
  log(
    `   ${'figure'.padEnd(14)} ${'reply B'.padStart(8)} ${'xapi calls/s'.padStart(13)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'bare calls/s'.padStart(13)} ${'p50 ms'.padStart(7)} ${'ratio'.padStart(6)}`,
  );
  // Warm both servers up (JIT, first allocations) on both wires before anything is counted.
  // (The bare server is warmed up by alternating(), once it has its bodies.)
  for (const p of protocols) {
    await closedLoop({
      target: xapi,
      path: p.path,
      body: p.body,
      contentType: p.contentType,
      concurrency: 8,
      warmupMs: 0,
      durationMs: warmupMs,
      check: () => true,
    });
  }
  for (const p of protocols) {
    // Capture xapi's reply and hand the exact bytes and headers to the bare server.
    const sample = await post(agent, xapi, p.path, p.body, p.contentType);
    if (sample.status !== 200) throw new Error(`${p.name}: HTTP ${sample.status}`);
    p.verify(sample);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(sample.headers)) {
      if (v !== undefined && !['date', 'connection', 'keep-alive', 'transfer-encoding'].includes(k))
        headers[k] = Array.isArray(v) ? v.join(', ') : v;
    }
    await bare.request({ type: 'body', path: p.path, body: sample.body.toString(), headers }, 'ok');
    const check = (r: Reply) => r.status === 200 && r.body.indexOf(p.ok) >= 0;
    const bareSample = await post(agent, bare.target, p.path, p.body, p.contentType);
    if (!bareSample.body.equals(sample.body)) throw new Error(`${p.name}: bare server does not reproduce the reply`);
    for (const c of [1, 32]) {
      const common = { path: p.path, body: p.body, contentType: p.contentType, concurrency: c, check };
      const [ours, base] = await alternating(common, xapi, bare.target, warmupMs, durationMs / 5, 5);
      if (ours.errors > 0 || base.errors > 0) log(`   (errors: xapi ${ours.errors}, bare ${base.errors})`);
      const key = `${p.name}_c${c}`;
      figures[key] = {
        value: round(ours.perSecond, 0),
        unit: 'calls/s',
        limit: round(base.perSecond, 0),
        ratio: round(ours.perSecond / base.perSecond, 3),
      };
      if (p.name === 'jsonrpc' && c === 32) bareJsonC32 = base.perSecond;
      log(
        `   ${key.padEnd(14)} ${String(sample.body.length).padStart(8)} ${ours.perSecond.toFixed(0).padStart(13)} ${ours.p50.toFixed(2).padStart(7)} ${ours.p99.toFixed(2).padStart(7)} ${base.perSecond.toFixed(0).padStart(13)} ${base.p50.toFixed(2).padStart(7)} ${(ours.perSecond / base.perSecond).toFixed(3).padStart(6)}`,
      );
    }
  }
  agent.destroy();
  return { bareJsonC32 };
}

// ---------------------------------------------------------------------------------------------
// 2. 10,000 networks: create, then get_all_records

function naiveXmlEscape(s: string): string {
  return /[&<>]/.test(s) ? s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;') : s;
}

/** A minimal XML-RPC encoder (the limit for the XML-RPC reply): plain string concatenation. */
function naiveXmlValue(v: unknown): string {
  if (typeof v === 'string') return '<value>' + naiveXmlEscape(v) + '</value>';
  if (typeof v === 'number') return Number.isInteger(v) ? '<value>' + v + '</value>' : '<value><double>' + v + '</double></value>';
  if (typeof v === 'boolean') return v ? '<value><boolean>1</boolean></value>' : '<value><boolean>0</boolean></value>';
  if (v === null) return '<value><nil/></value>';
  if (Array.isArray(v)) {
    let s = '<value><array><data>';
    for (const x of v) s += naiveXmlValue(x);
    return s + '</data></array></value>';
  }
  let s = '<value><struct>';
  const o = v as Record<string, unknown>;
  for (const k in o) s += '<member><name>' + naiveXmlEscape(k) + '</name>' + naiveXmlValue(o[k]) + '</member>';
  return s + '</struct></value>';
}

function naiveXmlResponse(v: unknown): string {
  return (
    '<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name>' +
    naiveXmlValue(v) +
    '</member></struct></value></param></params></methodResponse>'
  );
}

async function manyObjects(
  xapi: Target,
  session: string,
  count: number,
  runs: number,
  bareJsonC32: number,
  figures: Record<string, Figure>,
): Promise<string> {
  log('');
  log(`2. ${count} networks`);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const rpc = new JsonRpc(xapi, agent);
  let next = 0;
  let first = '';
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      for (let i = next++; i < count; i = next++) {
        const ref = (await rpc.call('network.create', [
          session,
          { name_label: `bench-${i}`, name_description: 'bench/rpc', MTU: 1500, other_config: { bench: String(i) } },
        ])) as string;
        if (i === 0) first = ref;
      }
    }),
  );
  const createS = (performance.now() - t0) / 1000;
  figures['network_create_c32'] = {
    value: round(count / createS, 0),
    unit: 'calls/s',
    limit: round(bareJsonC32, 0),
    ratio: round(count / createS / bareJsonC32, 3),
  };
  log(
    `   network.create x${count}, 32 concurrent, JSON-RPC: ${createS.toFixed(2)} s = ${(count / createS).toFixed(0)} calls/s (bare c32 limit ${bareJsonC32.toFixed(0)})`,
  );

  const one = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const time = async (path: string, body: Buffer, ct: string) => {
    const ms: number[] = [];
    let last: Reply | undefined;
    const warmup = 2;
    for (let i = 0; i < 1 + warmup + runs; i++) {
      const s = performance.now();
      last = await post(one, xapi, path, body, ct);
      ms.push(performance.now() - s);
      if (last.status !== 200) throw new Error(`get_all_records: HTTP ${last.status}`);
    }
    return { first: ms[0]!, ms: median(ms.slice(1 + warmup)), reply: last! };
  };
  const inProcess = (f: () => string) => {
    const ms: number[] = [];
    let len = 0;
    f(); // warm-up (JIT), not counted
    for (let i = 0; i < runs; i++) {
      const s = performance.now();
      // Buffer.byteLength flattens a concatenated string (as writing it to a socket would).
      len = Buffer.byteLength(f());
      ms.push(performance.now() - s);
    }
    return { ms: median(ms), len };
  };
  const json = await time('/jsonrpc', Buffer.from(jsonRpcRequest('network.get_all_records', [session], '2.0', 1)), 'application/json');
  const parsed = JSON.parse(json.reply.body.toString()) as { result?: Record<string, unknown>; error?: unknown };
  if (!parsed.result) throw new Error(`network.get_all_records failed: ${json.reply.body.toString().slice(0, 300)}`);
  const records = parsed.result;
  const n = Object.keys(records).length;
  if (n < count) throw new Error(`get_all_records returned ${n} networks, expected >= ${count}`);
  const xml = await time('/', Buffer.from(xmlRpcRequest('network.get_all_records', [session])), 'text/xml');
  if (xml.reply.body.indexOf(XML_OK) < 0)
    throw new Error(`network.get_all_records over XML-RPC failed: ${xml.reply.body.toString().slice(0, 300)}`);
  const jsonLimit = inProcess(() => JSON.stringify({ jsonrpc: '2.0', result: records, id: 1 }));
  const xmlLimit = inProcess(() => naiveXmlResponse(records));
  const figure = (key: string, ms: number, limit: number) => {
    figures[key] = { value: round(ms, 1), unit: 'ms', limit: round(limit, 1), ratio: round(limit / ms, 3) };
  };
  figure('get_all_records_10k_jsonrpc_first', json.first, jsonLimit.ms);
  figure('get_all_records_10k_jsonrpc', json.ms, jsonLimit.ms);
  figure('get_all_records_10k_xmlrpc_first', xml.first, xmlLimit.ms);
  figure('get_all_records_10k_xmlrpc', xml.ms, xmlLimit.ms);
  log(`   network.get_all_records (${n} records): the first call, then the median of ${runs} more (after 2 not counted)`);
  log(
    `   ${'protocol'.padEnd(10)} ${'reply MB'.padStart(9)} ${'first ms'.padStart(9)} ${'ratio'.padStart(6)} ${'next ms'.padStart(9)} ${'ratio'.padStart(6)} ${'limit ms'.padStart(9)} ${'limit MB'.padStart(9)}`,
  );
  for (const [name, r, l] of [
    ['jsonrpc', json, jsonLimit],
    ['xmlrpc', xml, xmlLimit],
  ] as const) {
    log(
      `   ${name.padEnd(10)} ${(r.reply.body.length / 1e6).toFixed(2).padStart(9)} ${r.first.toFixed(1).padStart(9)} ${(l.ms / r.first).toFixed(3).padStart(6)} ${r.ms.toFixed(1).padStart(9)} ${(l.ms / r.ms).toFixed(3).padStart(6)} ${l.ms.toFixed(1).padStart(9)} ${(l.len / 1e6).toFixed(2).padStart(9)}`,
    );
  }
  agent.destroy();
  one.destroy();
  return first;
}

// ---------------------------------------------------------------------------------------------
// 3. event.from fan-out

/**
 * Generic fan-out driver: `watchers` long-poll loops (poll(i) resolves with the highest write
 * index the watcher has seen), a sequential writer (write(i)), the writer waiting after each
 * acknowledgement until every watcher has seen write i.
 */
async function fanout(
  watchers: number,
  warmup: number,
  writes: number,
  startWatcher: (w: number, seen: (idx: number) => void, stopped: () => boolean) => Promise<void>,
  write: (i: number) => Promise<void>,
): Promise<{ deliveriesPerS: number; p50: number; p99: number }> {
  const seen = new Array<number>(watchers).fill(0);
  let minSeen = 0;
  let waiting: { idx: number; resolve: () => void; reject: (e: unknown) => void } | undefined;
  let stop = false;
  let watcherError: unknown;
  const update = (w: number, idx: number) => {
    if (idx <= seen[w]!) return;
    seen[w] = idx;
    if (waiting && idx >= waiting.idx) {
      minSeen = Math.min(...seen);
      if (minSeen >= waiting.idx) {
        const r = waiting.resolve;
        waiting = undefined;
        r();
      }
    }
  };
  const loops = Array.from({ length: watchers }, (_, w) =>
    startWatcher(
      w,
      (idx) => update(w, idx),
      () => stop,
    ).catch((e: unknown) => {
      if (stop) return; // the agent was destroyed under a pending poll
      watcherError ??= e;
      waiting?.reject(e);
    }),
  );
  const lat: number[] = [];
  let elapsed = 0;
  for (let i = 1; i <= warmup + writes; i++) {
    const t0 = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const all = new Promise<void>((resolve, reject) => {
      waiting = { idx: i, resolve, reject };
      if (watcherError !== undefined) reject(watcherError);
      timer = setTimeout(
        () => reject(new Error(`fan-out: write ${i} not seen by all watchers within 30 s (min seen ${Math.min(...seen)})`)),
        30_000,
      );
    });
    all.catch(() => {});
    try {
      await write(i);
      const tAck = performance.now();
      if (Math.min(...seen) >= i) waiting = undefined;
      else await all;
      const tAll = performance.now();
      if (i > warmup) {
        lat.push(tAll - tAck);
        elapsed += tAll - t0;
      }
    } finally {
      clearTimeout(timer);
    }
  }
  stop = true;
  lat.sort((a, b) => a - b);
  void loops;
  return { deliveriesPerS: (watchers * writes) / (elapsed / 1000), p50: pct(lat, 0.5), p99: pct(lat, 0.99) };
}

/**
 * Idle-watcher latency: one long-poll loop, and `writes` single writes, each sent after the
 * watcher has been waiting longer than the batching delay; ms from sending the write to the
 * watcher seeing it.
 */
async function idleLatency(
  warmup: number,
  writes: number,
  idleMs: number,
  startWatcher: (seen: (idx: number) => void, stopped: () => boolean) => Promise<void>,
  write: (i: number) => Promise<void>,
): Promise<{ p50: number; p99: number; ackP50: number }> {
  let seen = 0;
  let waiting: { idx: number; resolve: (at: number) => void; reject: (e: unknown) => void } | undefined;
  let stop = false;
  let watcherError: unknown;
  const loop = startWatcher(
    (idx) => {
      if (idx <= seen) return;
      seen = idx;
      if (waiting && idx >= waiting.idx) {
        const r = waiting.resolve;
        waiting = undefined;
        r(performance.now());
      }
    },
    () => stop,
  ).catch((e: unknown) => {
    if (stop) return;
    watcherError ??= e;
    waiting?.reject(e);
  });
  const lat: number[] = [];
  const acks: number[] = [];
  for (let i = 1; i <= warmup + writes; i++) {
    await sleep(idleMs);
    let timer: NodeJS.Timeout | undefined;
    const seenAt = new Promise<number>((resolve, reject) => {
      waiting = { idx: i, resolve, reject };
      if (watcherError !== undefined) reject(watcherError);
      timer = setTimeout(() => reject(new Error(`idle watcher: write ${i} not seen within 30 s`)), 30_000);
    });
    seenAt.catch(() => {});
    try {
      const t0 = performance.now();
      await write(i);
      const acked = performance.now();
      const at = await seenAt;
      if (i > warmup) {
        lat.push(at - t0);
        acks.push(acked - t0);
      }
    } finally {
      clearTimeout(timer);
    }
  }
  stop = true;
  void loop;
  lat.sort((a, b) => a - b);
  acks.sort((a, b) => a - b);
  return { p50: pct(lat, 0.5), p99: pct(lat, 0.99), ackP50: pct(acks, 0.5) };
}

/** How a benchmark talks to one side (xapi or the bare server): watcher loops and a writer. */
interface EventSide {
  /** Where watchers start: taken before any of the writes they must see. */
  start(): Promise<string>;
  /** A watcher loop from `from`, reporting the highest `<prefix><n>` label it has seen on the network. */
  watch(w: number, prefix: string, from: string, seen: (idx: number) => void, stopped: () => boolean): Promise<void>;
  write(label: string): Promise<void>;
  close(): Promise<void>;
}

const labelIndex = (prefix: string, label: string) => (label.startsWith(prefix) ? Number(label.slice(prefix.length)) : 0);

/** xapi's side: one session per watcher, event.from(['network'], token, 30) over JSON-RPC. */
async function xapiEvents(xapi: Target, session: string, netRef: string, watchers: number): Promise<EventSide & { replyBytes: number }> {
  const setup = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const setupRpc = new JsonRpc(xapi, setup);
  // one more session than watchers, for the idle watcher
  const sessions = await Promise.all(
    Array.from(
      { length: watchers + 1 },
      () => setupRpc.call('session.login_with_password', ['root', PASSWORD, '1.0', 'bench']) as Promise<string>,
    ),
  );
  const watchAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const writeAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const writer = new JsonRpc(xapi, writeAgent);
  const side = {
    replyBytes: 0,
    async start() {
      return ((await setupRpc.call('event.from', [session, ['pool'], '', 0])) as { token: string }).token;
    },
    async watch(w: number, prefix: string, from: string, seen: (idx: number) => void, stopped: () => boolean) {
      let token = from;
      let id = 0;
      while (!stopped()) {
        const body = Buffer.from(
          JSON.stringify({ jsonrpc: '2.0', method: 'event.from', params: [sessions[w], ['network'], token, 30], id: ++id }),
        );
        const r = await post(watchAgent, xapi, '/jsonrpc', body, 'application/json');
        const doc = JSON.parse(r.body.toString()) as {
          result?: { token: string; events: { ref: string; snapshot?: { name_label: string } }[] };
          error?: unknown;
        };
        if (!doc.result) throw new Error(`event.from failed: ${r.body.toString().slice(0, 300)}`);
        token = doc.result.token;
        let idx = 0;
        for (const ev of doc.result.events)
          if (ev.ref === netRef && ev.snapshot) idx = Math.max(idx, labelIndex(prefix, ev.snapshot.name_label));
        if (idx > 0) {
          if (w === 0 && doc.result.events.length === 1) side.replyBytes = r.body.length;
          seen(idx);
        }
      }
    },
    async write(label: string) {
      await writer.call('network.set_name_label', [session, netRef, label]);
    },
    async close() {
      watchAgent.destroy();
      writeAgent.destroy();
      await Promise.all(sessions.map((s) => setupRpc.call('session.logout', [s]).catch(() => {})));
      setup.destroy();
    },
  };
  return side;
}

/** The bare server's side: the same loops over its /poll and /write. */
async function bareEvents(bare: Bare, replyBytes: number): Promise<EventSide> {
  await bare.request({ type: 'events', delayMs: EVENT_FROM_DELAY_MS, size: replyBytes }, 'ok');
  const watchAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const writeAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let nextWatcher = 0;
  return {
    async start() {
      return '-1'; // the first poll answers the current label at once
    },
    async watch(_w, prefix, from, seen, stopped) {
      const w = nextWatcher++; // unique across runs: each loop has its own batching window
      let token = Number(from);
      while (!stopped()) {
        const r = await post(watchAgent, bare.target, '/poll', Buffer.from(JSON.stringify({ token, w })), 'application/json');
        const doc = JSON.parse(r.body.toString()) as { result: { token: string; label: string } };
        token = Number(doc.result.token);
        const idx = labelIndex(prefix, doc.result.label);
        if (idx > 0) seen(idx);
      }
    },
    async write(label) {
      const r = await post(writeAgent, bare.target, '/write', Buffer.from(JSON.stringify({ label })), 'application/json');
      JSON.parse(r.body.toString());
    },
    async close() {
      watchAgent.destroy();
      writeAgent.destroy();
    },
  };
}

async function events(
  xapi: Target,
  bare: Bare,
  session: string,
  netRef: string,
  watchers: number,
  writes: number,
  idleWrites: number,
  figures: Record<string, Figure>,
): Promise<void> {
  const warmup = 10;
  const D = EVENT_FROM_DELAY_MS;
  log('');
  log(
    `3. event.from, batching delay ${D} ms on both sides (answers to one watcher at least ${D} ms apart; a watcher idle for that long is answered at once)`,
  );

  const run = async (side: EventSide) => {
    let from = await side.start();
    const idle = await idleLatency(
      3,
      idleWrites,
      2 * D,
      (seen, stopped) => side.watch(watchers, 'idle-', from, seen, stopped),
      (i) => side.write(`idle-${i}`),
    );
    from = await side.start();
    const fan = await fanout(
      watchers,
      warmup,
      writes,
      (w, seen, stopped) => side.watch(w, 'fan-', from, seen, stopped),
      (i) => side.write(`fan-${i}`),
    );
    await side.close();
    return { idle, fan };
  };
  const ours = await xapiEvents(xapi, session, netRef, watchers);
  const { idle: oursIdle, fan: oursFan } = await run(ours);
  const { idle: baseIdle, fan: baseFan } = await run(await bareEvents(bare, ours.replyBytes));

  figures['event_idle_latency_p50'] = {
    value: round(oursIdle.p50, 1),
    unit: 'ms',
    limit: round(baseIdle.p50, 1),
    ratio: round(baseIdle.p50 / oursIdle.p50, 3),
  };
  figures['event_idle_latency_p99'] = {
    value: round(oursIdle.p99, 1),
    unit: 'ms',
    limit: round(baseIdle.p99, 1),
    ratio: round(baseIdle.p99 / oursIdle.p99, 3),
  };
  figures['event_fanout_deliveries'] = {
    value: round(oursFan.deliveriesPerS, 0),
    unit: 'events/s',
    limit: round(baseFan.deliveriesPerS, 0),
    ratio: round(oursFan.deliveriesPerS / baseFan.deliveriesPerS, 3),
  };
  figures['event_fanout_latency_p50'] = {
    value: round(oursFan.p50, 1),
    unit: 'ms',
    limit: round(baseFan.p50, 1),
    ratio: round(baseFan.p50 / oursFan.p50, 3),
  };
  figures['event_fanout_latency_p99'] = {
    value: round(oursFan.p99, 1),
    unit: 'ms',
    limit: round(baseFan.p99, 1),
    ratio: round(baseFan.p99 / oursFan.p99, 3),
  };
  log(
    `   a. one idle watcher, ${idleWrites} single writes (+3 warm-up) ${2 * D} ms apart: ms from sending the write to the watcher seeing it`,
  );
  log(`      (xapi hands out a change once it is durable: the write's own time to its acknowledgement, fsync included, is in it)`);
  log(`   ${''.padEnd(6)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'write ack p50 ms'.padStart(17)}`);
  log(
    `   ${'xapi'.padEnd(6)} ${oursIdle.p50.toFixed(1).padStart(8)} ${oursIdle.p99.toFixed(1).padStart(8)} ${oursIdle.ackP50.toFixed(1).padStart(17)}`,
  );
  log(
    `   ${'bare'.padEnd(6)} ${baseIdle.p50.toFixed(1).padStart(8)} ${baseIdle.p99.toFixed(1).padStart(8)} ${baseIdle.ackP50.toFixed(1).padStart(17)}`,
  );
  log(
    `   b. fan-out: ${watchers} watchers, ${writes} sequential writes (+${warmup} warm-up), each write waiting until all have seen the previous one`,
  );
  log(`   event.from reply with one event: ${ours.replyBytes} B (bare replies padded to the same size)`);
  log(`   ${''.padEnd(6)} ${'deliveries/s'.padStart(13)} ${'ack->all p50 ms'.padStart(16)} ${'p99 ms'.padStart(8)}`);
  log(
    `   ${'xapi'.padEnd(6)} ${oursFan.deliveriesPerS.toFixed(0).padStart(13)} ${oursFan.p50.toFixed(1).padStart(16)} ${oursFan.p99.toFixed(1).padStart(8)}`,
  );
  log(
    `   ${'bare'.padEnd(6)} ${baseFan.deliveriesPerS.toFixed(0).padStart(13)} ${baseFan.p50.toFixed(1).padStart(16)} ${baseFan.p99.toFixed(1).padStart(8)}`,
  );
}

// ---------------------------------------------------------------------------------------------

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const pi = args.indexOf('--profile');
  const profileDir = pi >= 0 ? args[pi + 1] : undefined;
  const began = performance.now();
  const figures: Record<string, Figure> = {};
  let xapi: XapiProcess | undefined;
  let bare: Bare | undefined;
  const cleanup = async () => {
    await Promise.all([xapi && stopXapi(xapi), bare?.stop()]);
  };
  const onSignal = () => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const env: Record<string, string> = {};
    if (profileDir) {
      // node refuses --cpu-prof in NODE_OPTIONS; a preloaded module drives the same profiler.
      const preload = new URL('./lib/cpu-profile.js', import.meta.url).href;
      env['NODE_OPTIONS'] = `${process.env['NODE_OPTIONS'] ?? ''} --import=${preload}`.trim();
      env['XAPI_BENCH_CPU_PROFILE_DIR'] = resolve(profileDir);
    }
    xapi = await startXapi({ env });
    const bareAddress = loopbackAddress();
    bare = await startBare(bareAddress);
    const target: Target = { host: xapi.address, port: xapi.httpPort };
    log(
      `xapi pid ${xapi.pid} at ${xapi.url}; bare node:http pid ${bare.proc.pid} at http://${bare.target.host}:${bare.target.port}; ${quick ? 'QUICK mode' : ''}`,
    );

    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const rpc = new JsonRpc(target, agent);
    const session = (await rpc.call('session.login_with_password', ['root', PASSWORD, '1.0', 'bench'])) as string;
    const hostRef = ((await rpc.call('host.get_all', [session])) as string[])[0]!;
    agent.destroy();

    const { bareJsonC32 } = await smallCalls(target, bare, session, hostRef, quick ? 300 : 1000, quick ? 1000 : 5000, figures);
    const netRef = await manyObjects(target, session, quick ? 2000 : 10_000, 5, bareJsonC32, figures);
    await events(target, bare, session, netRef, 100, quick ? 40 : 200, quick ? 10 : 50, figures);
    log('');
    log(`total ${((performance.now() - began) / 1000).toFixed(1)} s`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (profileDir) log(`xapi CPU profile written to ${profileDir}`);
  log(JSON.stringify({ bench: 'rpc', ...figures }));
}
