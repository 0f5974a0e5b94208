// JSON-RPC codec as xapi speaks it (ocaml-rpc src/lib/jsonrpc.ml over Yojson.Safe, wrapped by
// ocaml/xapi/api_server.ml). The reader is a small iterative JSON parser rather than JSON.parse
// because the wire distinguishes integers from floats by their spelling (Yojson `Int`/`Intlit`
// vs `Float`: xapi refuses 1.0 where an int is expected), integers are 64-bit, duplicate keys
// resolve to the first occurrence (List.assoc) and nesting must be bounded without recursion.
import { MalformedRequest, RpcDateTime, formatG, newStruct, type Rpc, type RpcCall, type RpcStruct } from './rpc.js';
import { checkParamsUtf8, decodeBody } from './xmlrpc.js';

export type JsonRpcVersion = '1.0' | '2.0';
/** A request id as echoed back: strings, integers (bigint beyond 2^53), or null when unknown. */
export type JsonRpcId = string | number | bigint | null;

/** Containers deeper than this are refused. */
export const MAX_JSON_DEPTH = 1024;

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

function fail(msg: string): never {
  throw new MalformedRequest(msg);
}

// ---------------------------------------------------------------------------------------------
// Reader

const NUMBER = /-?(?:0|[1-9]\d*)(\.\d*)?([eE][+-]?\d+)?/y;

interface Parsed {
  value: Rpc;
  /** a string held a lone low surrogate from a \u escape (invalid UTF-8 for xapi) */
  badSurrogate: boolean;
}

/**
 * Parses one JSON document (Yojson.Safe's dialect: also NaN, Infinity, -Infinity, and comments).
 * Integers (no '.' or exponent) become bigint, other numbers number.
 */
export function parseJson(s: string): Parsed {
  const n = s.length;
  let i = 0;
  let badSurrogate = false;
  // Open containers; for objects, keys[] holds the member being read.
  const stack: (Rpc[] | RpcStruct)[] = [];
  const keys: string[] = [];

  const skipWs = () => {
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else if (c === 47 /* / */) {
        const d = s.charCodeAt(i + 1);
        if (d === 42 /* * */) {
          const end = s.indexOf('*/', i + 2);
          if (end < 0) fail('unterminated comment');
          i = end + 2;
        } else if (d === 47) {
          const end = s.indexOf('\n', i + 2);
          i = end < 0 ? n : end + 1;
        } else return;
      } else return;
    }
  };

  const readString = (): string => {
    // s[i] is the opening quote.
    const q = s.indexOf('"', i + 1);
    if (q < 0) fail('unterminated string');
    const plain = s.slice(i + 1, q);
    if (!plain.includes('\\')) {
      i = q + 1;
      return plain;
    }
    // Slow path: escapes.
    let out = '';
    let j = i + 1;
    for (;;) {
      const b = s.indexOf('\\', j);
      const e = s.indexOf('"', j);
      if (e < 0) fail('unterminated string');
      if (b < 0 || e < b) {
        out += s.slice(j, e);
        i = e + 1;
        return out;
      }
      out += s.slice(j, b);
      const c = s.charCodeAt(b + 1);
      j = b + 2;
      switch (c) {
        case 34:
          out += '"';
          break;
        case 92:
          out += '\\';
          break;
        case 47:
          out += '/';
          break;
        case 98:
          out += '\b';
          break;
        case 102:
          out += '\f';
          break;
        case 110:
          out += '\n';
          break;
        case 114:
          out += '\r';
          break;
        case 116:
          out += '\t';
          break;
        case 117: {
          const u = hex4(b + 2);
          j = b + 6;
          if (u >= 0xd800 && u <= 0xdbff) {
            // Yojson requires the low half right after a high surrogate.
            if (s.charCodeAt(j) !== 92 || s.charCodeAt(j + 1) !== 117) fail('invalid low surrogate');
            const lo = hex4(j + 2);
            if (lo < 0xdc00 || lo > 0xdfff) fail('invalid low surrogate');
            out += String.fromCharCode(u, lo);
            j += 6;
          } else {
            // A lone low surrogate becomes (invalid) UTF-8 bytes in Yojson; keep it and flag it.
            if (u >= 0xdc00 && u <= 0xdfff) badSurrogate = true;
            out += String.fromCharCode(u);
          }
          break;
        }
        default:
          fail('invalid escape in string');
      }
    }
  };

  const hex4 = (at: number): number => {
    const h = s.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('invalid \\u escape');
    return parseInt(h, 16);
  };

  const readKey = () => {
    skipWs();
    if (s.charCodeAt(i) !== 34) fail('expected a member name');
    keys[stack.length - 1] = readString();
    skipWs();
    if (s.charCodeAt(i) !== 58 /* : */) fail("expected ':'");
    i++;
  };

  const literal = (word: string, v: Rpc): Rpc => {
    if (!s.startsWith(word, i)) fail('invalid literal');
    i += word.length;
    return v;
  };

  for (;;) {
    // Read one value.
    skipWs();
    let v: Rpc;
    const c = s.charCodeAt(i);
    if (c === 34) v = readString();
    else if (c === 123 /* { */ || c === 91 /* [ */) {
      i++;
      skipWs();
      const close = c === 123 ? 125 : 93;
      if (s.charCodeAt(i) === close) {
        i++;
        v = c === 123 ? newStruct() : [];
      } else {
        if (stack.length >= MAX_JSON_DEPTH) fail(`JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
        stack.push(c === 123 ? newStruct() : []);
        if (c === 123) readKey();
        continue;
      }
    } else if (c === 116) v = literal('true', true);
    else if (c === 102) v = literal('false', false);
    else if (c === 110) v = literal('null', null);
    else if (c === 78) v = literal('NaN', NaN);
    else if (c === 73) v = literal('Infinity', Infinity);
    else if (c === 45 && s.charCodeAt(i + 1) === 73) {
      i++;
      v = literal('Infinity', -Infinity);
    } else {
      NUMBER.lastIndex = i;
      const m = NUMBER.exec(s);
      if (m === null) fail(i >= n ? 'unexpected end of JSON' : `unexpected character '${s[i]}'`);
      i = NUMBER.lastIndex;
      if (m[1] === undefined && m[2] === undefined) {
        const b = BigInt(m[0]);
        if (b < I64_MIN || b > I64_MAX) fail(`integer out of range ${m[0]}`);
        v = b;
      } else v = Number(m[0]);
    }

    // Hand the value to its container; close every container that ends here.
    for (;;) {
      const depth = stack.length;
      if (depth === 0) {
        skipWs();
        if (i < n) fail('junk after the JSON value');
        return { value: v, badSurrogate };
      }
      const top = stack[depth - 1]!;
      if (Array.isArray(top)) top.push(v);
      else {
        const k = keys[depth - 1]!;
        // Yojson keeps duplicates and rpclib's List.assoc finds the first: first one wins.
        if (!(k in top)) top[k] = v;
      }
      skipWs();
      const d = s.charCodeAt(i);
      if (d === 44 /* , */) {
        i++;
        if (!Array.isArray(top)) readKey();
        break;
      }
      if (d === (Array.isArray(top) ? 93 : 125)) {
        i++;
        stack.pop();
        v = top;
        continue;
      }
      fail(i >= n ? 'unexpected end of JSON' : `unexpected character '${s[i]}'`);
    }
  }
}

function isStructValue(v: Rpc | undefined): v is RpcStruct {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof RpcDateTime);
}

/**
 * Decodes a JSON-RPC request (ocaml-rpc `version_id_and_call_of_string`): `jsonrpc` absent = 1.0,
 * "2.0" = 2.0; `method` a string; v1 `params` a required array, v2 an array, an object (one struct
 * param) or absent/null; `id` a string or integer, required (notifications are refused).
 * Integer ids come back as number when safe, bigint otherwise.
 */
export function parseJsonRpcCall(body: Buffer | string): { call: RpcCall; version: JsonRpcVersion; id: string | number | bigint } {
  const { text, lossy } = typeof body === 'string' ? { text: body, lossy: false } : decodeBody(body);
  const { value: doc, badSurrogate } = parseJson(text);
  if (!isStructValue(doc)) fail('Invalid request body');
  if (!('method' in doc)) fail('Required field method is missing');
  const method = doc['method'];
  if (typeof method !== 'string') fail("Invalid field 'method' in request body");
  let version: JsonRpcVersion;
  if (!('jsonrpc' in doc)) version = '1.0';
  else if (doc['jsonrpc'] === '2.0') version = '2.0';
  else fail("Invalid field 'jsonrpc' in request body");
  let params: Rpc[];
  const p = doc['params'];
  if (version === '1.0') {
    if (!('params' in doc)) fail('Required field params is missing');
    if (!Array.isArray(p)) fail("Invalid field 'params' in request body");
    params = p;
  } else if (p === undefined || p === null) params = [];
  else if (Array.isArray(p)) params = p;
  else if (isStructValue(p)) params = [p];
  else fail("Invalid field 'params' in request body");
  const rawId = doc['id'];
  let id: string | number | bigint;
  if (typeof rawId === 'string') id = rawId;
  else if (typeof rawId === 'bigint') id = rawId >= -9007199254740991n && rawId <= 9007199254740991n ? Number(rawId) : rawId;
  else fail("Invalid field 'id' in request body");
  const call: RpcCall = { method, params };
  if (lossy || badSurrogate) checkParamsUtf8(call, version, id);
  return { call, version, id };
}

// ---------------------------------------------------------------------------------------------
// Writer (Yojson.Safe.to_string: compact, no spaces)

// Yojson escapes " \ and control characters (\b \f \n \r \t short forms, others \u00xx) and DEL.
// Strings with surrogates take JSON.stringify too, which writes a lone one as a \u escape (it
// cannot come off the wire, where it is refused as invalid UTF-8): so jsonString(s) is always
// JSON.stringify(s) with DEL escaped, and the result writers may stringify whole string arrays.
export const JSON_SPECIAL = /["\\\x00-\x1f\x7f\ud800-\udfff]/;

export function jsonString(s: string): string {
  if (!JSON_SPECIAL.test(s)) return '"' + s + '"';
  const j = JSON.stringify(s);
  return j.includes('\x7f') ? j.replace(/\x7f/g, '\\u007f') : j;
}

/** Yojson's write_float: %.16g, or %.17g when that does not read back; ".0" when it looks like an int. */
export function jsonFloat(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (x === Infinity) return 'Infinity';
  if (x === -Infinity) return '-Infinity';
  let s = formatG(x, 16);
  if (Number(s) !== x) s = formatG(x, 17);
  return /^-?\d+$/.test(s) ? s + '.0' : s;
}

/** Encodes one value as xapi does (int → integer literal, datetime → its text). */
export function jsonRpcValue(v: Rpc): string {
  switch (typeof v) {
    case 'string':
      return JSON_SPECIAL.test(v) ? jsonString(v) : '"' + v + '"';
    case 'bigint':
      return v.toString();
    case 'number':
      return jsonFloat(v);
    case 'boolean':
      return v ? 'true' : 'false';
  }
  if (v === null) return 'null';
  if (v instanceof RpcDateTime) return jsonString(v.text);
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    let s = '[' + jsonRpcValue(v[0]!);
    for (let i = 1; i < v.length; i++) s += ',' + jsonRpcValue(v[i]!);
    return s + ']';
  }
  let s = '{';
  let first = true;
  for (const k in v) {
    if (first) first = false;
    else s += ',';
    s += (JSON_SPECIAL.test(k) ? jsonString(k) : '"' + k + '"') + ':' + jsonRpcValue(v[k]!);
  }
  return s + '}';
}

function jsonId(id: JsonRpcId): string {
  if (id === null) return 'null';
  if (typeof id === 'string') return jsonString(id);
  return String(id);
}

/** v1: {"result":R,"error":null,"id":ID}; v2: {"jsonrpc":"2.0","result":R,"id":ID} (jsonrpc.ml json_of_response). */
export function jsonRpcSuccess(version: JsonRpcVersion, id: JsonRpcId, result: Rpc): string {
  return jsonRpcSuccessEncoded(version, id, jsonRpcValue(result));
}

/** The success envelope around a result already encoded as JSON text. */
export function jsonRpcSuccessEncoded(version: JsonRpcVersion, id: JsonRpcId, resultJson: string): string {
  const [head, tail] = jsonRpcSuccessAround(version, id);
  return head + resultJson + tail;
}

/** The success envelope as the text before and after the result. */
export function jsonRpcSuccessAround(version: JsonRpcVersion, id: JsonRpcId): [string, string] {
  return version === '2.0'
    ? ['{"jsonrpc":"2.0","result":', ',"id":' + jsonId(id) + '}']
    : ['{"result":', ',"error":null,"id":' + jsonId(id) + '}'];
}

/**
 * v1: {"result":null,"error":["CODE",...],"id":ID};
 * v2: {"jsonrpc":"2.0","error":{"code":1,"message":"CODE","data":[...]},"id":ID}
 * (api_server.ml translates v2 errors with json_of_error_object, error_code_lit = 1).
 */
export function jsonRpcFailure(version: JsonRpcVersion, id: JsonRpcId, errorDescription: string[]): string {
  if (version === '2.0') {
    let data = '';
    for (let i = 1; i < errorDescription.length; i++) data += (i > 1 ? ',' : '') + jsonString(errorDescription[i]!);
    const message = errorDescription.length > 0 ? errorDescription[0]! : '';
    return '{"jsonrpc":"2.0","error":{"code":1,"message":' + jsonString(message) + ',"data":[' + data + ']},"id":' + jsonId(id) + '}';
  }
  let err = '';
  for (let i = 0; i < errorDescription.length; i++) err += (i > 0 ? ',' : '') + jsonString(errorDescription[i]!);
  return '{"result":null,"error":[' + err + '],"id":' + jsonId(id) + '}';
}

// ---------------------------------------------------------------------------------------------
// Client side (tests, benchmarks)

/** A request as ocaml-rpc's string_of_call writes it (v2 sends a lone struct param bare). */
export function jsonRpcRequest(method: string, params: Rpc[], version: JsonRpcVersion = '1.0', id: JsonRpcId = 1): string {
  const ps = jsonRpcValue(params);
  return version === '2.0'
    ? '{"jsonrpc":"2.0","method":' + jsonString(method) + ',"params":' + ps + ',"id":' + jsonId(id) + '}'
    : '{"method":' + jsonString(method) + ',"params":' + ps + ',"id":' + jsonId(id) + '}';
}

export type JsonRpcResponse =
  | { ok: true; version: JsonRpcVersion; id: JsonRpcId; value: Rpc }
  | { ok: false; version: JsonRpcVersion; id: JsonRpcId; error: Rpc };

/** Reads a response (jsonrpc.ml get_response): v1 result/error with one of them null; v2 result xor error. */
export function parseJsonRpcResponse(body: Buffer | string): JsonRpcResponse {
  const text = typeof body === 'string' ? body : decodeBody(body).text;
  const doc = parseJson(text).value;
  if (!isStructValue(doc)) fail('response is not an object');
  const rawId = doc['id'];
  let id: JsonRpcId;
  if (typeof rawId === 'string' || rawId === null) id = rawId;
  else if (typeof rawId === 'bigint') id = rawId >= -9007199254740991n && rawId <= 9007199254740991n ? Number(rawId) : rawId;
  else fail('response id missing or invalid');
  if (!('jsonrpc' in doc)) {
    if (!('result' in doc) || !('error' in doc)) fail('v1 response needs result and error');
    const result = doc['result']!;
    const error = doc['error']!;
    if (error === null) return { ok: true, version: '1.0', id, value: result };
    if (result === null) return { ok: false, version: '1.0', id, error };
    fail('v1 response has both result and error');
  }
  if (doc['jsonrpc'] !== '2.0') fail("invalid 'jsonrpc' in response");
  const hasResult = 'result' in doc;
  const hasError = 'error' in doc;
  if (hasResult && !hasError) return { ok: true, version: '2.0', id, value: doc['result']! };
  if (hasError && !hasResult) {
    const e = doc['error']!;
    if (!isStructValue(e) || typeof e['code'] !== 'bigint' || typeof e['message'] !== 'string') fail('invalid v2 error object');
    return { ok: false, version: '2.0', id, error: e };
  }
  return fail('v2 response needs exactly one of result and error');
}
