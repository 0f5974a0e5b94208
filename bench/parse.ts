// `npm run bench -- parse [--quick]`: decoding a large XML-RPC and JSON-RPC request body
// in-process (parseXmlRpcCall, parseJsonRpcCall), at two sizes, each beside a limit measured in
// the same run on the same bytes.
//
// Bodies: a call whose one parameter is an array of N small structs (a uuid, an int, a float,
// a two-string array), N = 5,000 and 50,000. Ten times the items should cost about ten times
// the time: a ratio to the limit that falls from the small body to the large one points at
// work growing faster than the input (the unit tests check the results, not the time).
//
// Figures: ms to decode the body (from the Buffer, UTF-8 decoding included), the median of 7
// runs after 5 not counted, alternating with the limit's runs so that noise hits both alike.
// Limits: for JSON-RPC, JSON.parse of the same bytes (V8's native parser, which keeps no int64
// and checks nothing, so the floor for reading that JSON in Node); for XML-RPC, saxes alone
// over the same bytes with no handlers (the tokenizer our parser is built on: what is left is
// ours). ratio = limit / ours.
//
// Prints a table; the LAST line is one JSON object {"bench":"parse", <figure>: {value, unit,
// limit, ratio}, ...}. --quick: sizes 1,000 and 10,000 (for smoke runs).
import { SaxesParser } from 'saxes';
import { jsonRpcRequest, parseJsonRpcCall } from '../src/rpc/jsonrpc.js';
import { newStruct, type Rpc } from '../src/rpc/rpc.js';
import { parseXmlRpcCall, xmlRpcRequest } from '../src/rpc/xmlrpc.js';
import { median } from './lib/http-load.js';

interface Figure {
  value: number;
  unit: string;
  limit: number;
  ratio: number;
}

const WARM_UP = 5;
const RUNS = 7;

function items(n: number): Rpc[] {
  const out: Rpc[] = [];
  for (let i = 0; i < n; i++) {
    const s = newStruct();
    s.uuid = `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
    s.n = BigInt(i);
    s.f = i / 7;
    s.tags = ['a', 'b\n'];
    out.push(s);
  }
  return out;
}

function ms(fn: () => unknown): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

/** Median ms of `ours` and of `limit`, runs alternating. */
function measure(ours: () => unknown, limit: () => unknown): { ours: number; limit: number } {
  for (let i = 0; i < WARM_UP; i++) {
    ours();
    limit();
  }
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    a.push(ms(ours));
    b.push(ms(limit));
  }
  return { ours: median(a), limit: median(b) };
}

function saxesOnly(body: Buffer): void {
  const p = new SaxesParser();
  p.write(body.toString('utf8')).close();
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

export async function run(args: string[]): Promise<void> {
  const sizes = args.includes('--quick') ? [1_000, 10_000] : [5_000, 50_000];
  const figures: Record<string, Figure> = {};
  console.log('figure                       ours ms   limit ms   ratio   body');
  for (const n of sizes) {
    const params = [items(n)];
    const label = n >= 1000 ? `${n / 1000}k` : String(n);
    const bodies = {
      jsonrpc: {
        body: Buffer.from(jsonRpcRequest('VM.m', params)),
        ours: parseJsonRpcCall,
        limit: (b: Buffer) => JSON.parse(b.toString('utf8')) as unknown,
      },
      xmlrpc: { body: Buffer.from(xmlRpcRequest('VM.m', params)), ours: parseXmlRpcCall, limit: saxesOnly },
    };
    for (const [wire, t] of Object.entries(bodies)) {
      const r = measure(
        () => t.ours(t.body),
        () => t.limit(t.body),
      );
      const name = `${wire}_parse_${label}`;
      figures[name] = { value: round(r.ours), unit: 'ms', limit: round(r.limit), ratio: round(r.limit / r.ours, 3) };
      console.log(
        `${name.padEnd(26)} ${r.ours.toFixed(2).padStart(9)} ${r.limit.toFixed(2).padStart(10)} ${(r.limit / r.ours).toFixed(3).padStart(7)}   ${(t.body.length / 1024 / 1024).toFixed(1)} MiB`,
      );
    }
  }
  console.log(JSON.stringify({ bench: 'parse', ...figures }));
}
