// A small closed-loop HTTP load generator and RPC client for benchmarks. The same code drives
// xapi and the bare baseline servers, so per-request client cost is identical on both sides.
import http from 'node:http';

export interface Target {
  host: string;
  port: number;
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One POST over `agent`; resolves with the whole body. */
export function post(agent: http.Agent, t: Target, path: string, body: Buffer, contentType: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: t.host,
        port: t.port,
        path,
        method: 'POST',
        headers: { 'content-type': contentType, 'content-length': body.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export interface LoadOptions {
  target: Target;
  path: string;
  body: Buffer;
  contentType: string;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  /** A cheap validity check applied to every reply (same check for xapi and the baseline). */
  check: (r: Reply) => boolean;
  /** reuse these keep-alive sockets (default: a fresh agent with maxSockets = concurrency, destroyed after) */
  agent?: http.Agent;
}

export interface LoadResult {
  calls: number;
  seconds: number;
  perSecond: number;
  errors: number;
  /** latency percentiles of the counted calls, ms */
  p50: number;
  p99: number;
}

/**
 * Closed loop: `concurrency` workers, each sending the next request when the previous reply has
 * arrived, over keep-alive sockets (agent maxSockets = concurrency). Calls completing during
 * the warm-up are not counted; the rate is counted calls / measured window.
 */
export async function closedLoop(o: LoadOptions): Promise<LoadResult> {
  const agent = o.agent ?? new http.Agent({ keepAlive: true, maxSockets: o.concurrency });
  const start = performance.now();
  const measureFrom = start + o.warmupMs;
  const end = measureFrom + o.durationMs;
  let calls = 0;
  let errors = 0;
  const lat: number[] = [];
  const worker = async () => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= end) return;
      let ok = false;
      try {
        ok = o.check(await post(agent, o.target, o.path, o.body, o.contentType));
      } catch {
        ok = false;
      }
      const t1 = performance.now();
      if (t1 >= measureFrom && t1 < end) {
        if (ok) {
          calls++;
          lat.push(t1 - t0);
        } else errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  if (!o.agent) agent.destroy();
  const seconds = o.durationMs / 1000;
  lat.sort((a, b) => a - b);
  return { calls, seconds, perSecond: calls / seconds, errors, p50: pct(lat, 0.5), p99: pct(lat, 0.99) };
}

/**
 * Measures two targets in alternating slices (A warm-up, B warm-up, then A, B, A, B, ... for
 * `rounds` slices of `sliceMs` each), each over its own kept-alive agent, so that background
 * noise on a shared machine falls on both sides alike. Rates and latencies are over all slices.
 */
export async function alternating(
  o: Omit<LoadOptions, 'target' | 'warmupMs' | 'durationMs' | 'agent'>,
  a: Target,
  b: Target,
  warmupMs: number,
  sliceMs: number,
  rounds: number,
): Promise<[LoadResult, LoadResult]> {
  const agents = [a, b].map(() => new http.Agent({ keepAlive: true, maxSockets: o.concurrency }));
  const targets = [a, b];
  const acc = [0, 1].map(() => ({ calls: 0, errors: 0, p50: [] as number[], p99: [] as number[] }));
  for (let i = 0; i < 2; i++) await closedLoop({ ...o, target: targets[i]!, agent: agents[i]!, warmupMs: 0, durationMs: warmupMs });
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < 2; i++) {
      const x = await closedLoop({ ...o, target: targets[i]!, agent: agents[i]!, warmupMs: 0, durationMs: sliceMs });
      acc[i]!.calls += x.calls;
      acc[i]!.errors += x.errors;
      acc[i]!.p50.push(x.p50);
      acc[i]!.p99.push(x.p99);
    }
  }
  for (const ag of agents) ag.destroy();
  const seconds = (sliceMs * rounds) / 1000;
  return acc.map((x) => ({
    calls: x.calls,
    seconds,
    perSecond: x.calls / seconds,
    errors: x.errors,
    p50: median(x.p50),
    p99: median(x.p99),
  })) as [LoadResult, LoadResult];
}

export function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export function median(xs: number[]): number {
  return pct(
    [...xs].sort((a, b) => a - b),
    0.5,
  );
}

export class RpcError extends Error {}

/** A JSON-RPC 2.0 client for setup calls and the event watchers (JSON.parse on the reply). */
export class JsonRpc {
  private id = 0;
  constructor(
    readonly target: Target,
    readonly agent: http.Agent,
  ) {}

  async call(method: string, params: unknown[]): Promise<unknown> {
    const body = Buffer.from(JSON.stringify({ jsonrpc: '2.0', method, params, id: ++this.id }));
    const r = await post(this.agent, this.target, '/jsonrpc', body, 'application/json');
    if (r.status !== 200) throw new RpcError(`${method}: HTTP ${r.status}: ${r.body.toString().slice(0, 200)}`);
    const doc = JSON.parse(r.body.toString()) as { result?: unknown; error?: { message: string; data?: unknown } };
    if (doc.error) throw new RpcError(`${method}: ${doc.error.message} ${JSON.stringify(doc.error.data ?? '')}`);
    return doc.result;
  }
}
