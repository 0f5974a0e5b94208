// The untyped wire value tree shared by the XML-RPC and JSON-RPC codecs, in the spirit of
// ocaml-rpc's Rpc.t: the codecs only move these trees on and off the wire, and the typed layer
// (src/api/marshal.ts) converts between them and datamodel values using the schema.
//
// Mapping:  int -> bigint (so it is never confused with a float); float -> number;
//           string -> string; bool -> boolean; datetime -> RpcDateTime; array -> Rpc[];
//           struct -> RpcStruct (a null-prototype object, so a member named "__proto__" is data);
//           nil / JSON null -> null.

export class RpcDateTime {
  constructor(readonly text: string) {}
}

export type RpcStruct = { [member: string]: Rpc };

export type Rpc = string | boolean | number | bigint | RpcDateTime | Rpc[] | RpcStruct | null;

export function newStruct(): RpcStruct {
  return Object.create(null) as RpcStruct;
}

export function isStruct(v: Rpc): v is RpcStruct {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof RpcDateTime);
}

/** A decoded call, whichever wire it came from. */
export interface RpcCall {
  method: string;
  params: Rpc[];
}

/** Raised by a codec when the body is not a well-formed call: the HTTP layer answers 500. */
export class MalformedRequest extends Error {}

// ---- Helpers shared by the codecs (added with xmlrpc.ts / jsonrpc.ts) ----

// Reinterpret a double as (m, k) with |x| = m * 2^k exactly, for the tie check in formatG.
const f64 = new Float64Array(1);
const u64 = new BigUint64Array(f64.buffer);

/** True iff |x| is exactly digits * 10^pow10 (x finite, non-zero). */
function exactlyDecimal(x: number, digits: bigint, pow10: number): boolean {
  f64[0] = x;
  const bits = u64[0]!;
  const e = Number((bits >> 52n) & 0x7ffn);
  const frac = bits & 0xfffffffffffffn;
  const m = e === 0 ? frac : frac | 0x10000000000000n;
  const k = e === 0 ? -1074 : e - 1075;
  let lhs = m;
  let rhs = digits;
  if (k >= 0) lhs <<= BigInt(k);
  else rhs <<= BigInt(-k);
  if (pow10 >= 0) rhs *= 10n ** BigInt(pow10);
  else lhs *= 10n ** BigInt(-pow10);
  return lhs === rhs;
}

/**
 * C printf's `%.<p>g` (glibc, round-half-even on exact ties), which OCaml's Printf uses:
 * xapi writes XML-RPC doubles with %.16g and Rpc.to_string floats with %g (p = 6).
 * JS's toExponential rounds exact ties away from zero, so ties are detected and fixed.
 */
export function formatG(x: number, p = 6): string {
  if (Number.isNaN(x)) return 'nan';
  if (x === Infinity) return 'inf';
  if (x === -Infinity) return '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  if (p < 1) p = 1;
  let s = x.toExponential(p - 1);
  // A tie is possible only if p+1 significant digits end in 5 and are the exact value.
  const longer = x.toExponential(p);
  const le = longer.indexOf('e');
  if (longer.charCodeAt(le - 1) === 53 /* '5' */) {
    const neg = x < 0;
    const mant = longer.slice(neg ? 1 : 0, le).replace('.', '');
    const exp = +longer.slice(le + 1);
    if (exactlyDecimal(x, BigInt(mant), exp - p) && (mant.charCodeAt(p - 1) - 48) % 2 === 0) {
      // Round half to even: the p-digit truncation is already even, keep it.
      const d = mant.slice(0, p);
      s = (neg ? '-' : '') + d[0] + (p > 1 ? '.' + d.slice(1) : '') + 'e' + (exp < 0 ? '' : '+') + exp;
    }
  }
  const ei = s.indexOf('e');
  const exp = +s.slice(ei + 1);
  const neg = s.charCodeAt(0) === 45;
  const digits = s.slice(neg ? 1 : 0, ei).replace('.', '');
  if (exp < -4 || exp >= p) {
    const frac = digits.slice(1).replace(/0+$/, '');
    const ae = exp < 0 ? -exp : exp;
    return (neg ? '-' : '') + digits[0] + (frac ? '.' + frac : '') + 'e' + (exp < 0 ? '-' : '+') + (ae < 10 ? '0' : '') + ae;
  }
  let int: string;
  let frac: string;
  if (exp >= 0) {
    int = digits.slice(0, exp + 1);
    frac = digits.slice(exp + 1);
  } else {
    int = '0';
    frac = '0'.repeat(-exp - 1) + digits;
  }
  frac = frac.replace(/0+$/, '');
  return (neg ? '-' : '') + int + (frac ? '.' + frac : '');
}

/**
 * rpclib's Rpc.to_string (a debug rendering xapi quotes in some errors, e.g. the
 * INVALID_VALUE for bad UTF-8): I(1) B(true) F(%g) S(s) D(s) [a;b] {k:v;k2:v2} N.
 */
export function rpcDebugString(v: Rpc): string {
  if (v === null) return 'N';
  switch (typeof v) {
    case 'string':
      return 'S(' + v + ')';
    case 'bigint':
      return 'I(' + v.toString() + ')';
    case 'number':
      return 'F(' + formatG(v, 6) + ')';
    case 'boolean':
      return v ? 'B(true)' : 'B(false)';
  }
  if (v instanceof RpcDateTime) return 'D(' + v.text + ')';
  if (Array.isArray(v)) return '[' + v.map(rpcDebugString).join(';') + ']';
  let out = '';
  for (const k in v) out += (out ? ';' : '') + k + ':' + rpcDebugString(v[k]!);
  return '{' + out + '}';
}
