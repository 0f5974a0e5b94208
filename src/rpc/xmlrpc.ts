// XML-RPC codec, byte-compatible with what xapi writes (ocaml-rpc's Xmlrpc module, src/lib/xmlrpc.ml)
// and tolerant of what it reads. Parsing is a SAX state machine over an explicit stack (saxes is
// itself iterative), so hostile nesting costs a bounded amount of stack and memory.
import { SaxesParser, type SaxesTagPlain } from 'saxes';
import { MalformedRequest, RpcDateTime, formatG, newStruct, rpcDebugString, type Rpc, type RpcCall, type RpcStruct } from './rpc.js';

/** Elements deeper than this are refused (a value nested ~340 levels is far beyond any real call). */
export const MAX_XML_DEPTH = 1024;

/**
 * A call that parsed, but one of its parameters is not valid UTF-8. xapi's generated server
 * checks every parameter (`Utf8.is_valid (Rpc.to_string p)`, gen_server.ml) and answers
 * INVALID_VALUE ["Invalid UTF-8 string in parameter"; Rpc.to_string p].
 *  - value: the offending parameter rendered like rpclib's Rpc.to_string (e.g. "S(caf\uFFFD)"),
 *           i.e. exactly what xapi quotes, with the undecodable bytes shown as U+FFFD;
 *  - text:  the first string (or member name) inside it that holds the bad bytes;
 *  - call, version, id: what was decoded (version/id only for JSON-RPC), so the reply can use them.
 */
export class InvalidUtf8Param extends Error {
  constructor(
    readonly value: string,
    readonly text: string,
    readonly call: RpcCall,
    readonly version?: '1.0' | '2.0',
    readonly id?: string | number | bigint,
  ) {
    super(`Invalid UTF-8 string in parameter: ${value}`);
  }
}

/** An XML-RPC <fault> (never sent by xapi for API errors; parseXmlRpcResponse raises it). */
export class XmlRpcFault extends Error {
  constructor(
    readonly faultCode: Rpc,
    readonly faultString: Rpc,
  ) {
    super(`XML-RPC fault ${String(faultCode)}: ${String(faultString)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Body decoding

const utf8Fatal = new TextDecoder('utf-8', { fatal: true });
const utf8Lossy = new TextDecoder('utf-8');
const latin1 = new TextDecoder('latin1');

/** Decodes a request body; `lossy` is set when invalid UTF-8 was replaced by U+FFFD. */
export function decodeBody(body: Buffer | Uint8Array): { text: string; lossy: boolean } {
  try {
    return { text: utf8Fatal.decode(body), lossy: false };
  } catch {
    return { text: utf8Lossy.decode(body), lossy: true };
  }
}

// Characters a bad byte sequence can leave behind: U+FFFD from the lossy decoder, or a lone
// surrogate from a JSON \u escape (which xapi's Yojson would turn into invalid UTF-8).
const BAD_CHAR = /\uFFFD|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const BAD_CHAR_G = /\uFFFD|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** The first string (value, member name or datetime text) in v with a bad character, iteratively. */
function firstBadString(v: Rpc): string | undefined {
  const todo: Rpc[] = [v];
  while (todo.length > 0) {
    const x = todo.pop()!;
    if (typeof x === 'string') {
      if (BAD_CHAR.test(x)) return x;
    } else if (x instanceof RpcDateTime) {
      if (BAD_CHAR.test(x.text)) return x.text;
    } else if (Array.isArray(x)) {
      for (let i = x.length - 1; i >= 0; i--) todo.push(x[i]!);
    } else if (x !== null && typeof x === 'object') {
      const keys = Object.keys(x);
      for (let i = keys.length - 1; i >= 0; i--) {
        todo.push(x[keys[i]!]!);
        todo.push(keys[i]!); // the name comes first in document order
      }
    }
  }
  return undefined;
}

/**
 * After a lossy decode (or when a JSON string held a lone surrogate): if a parameter carries a
 * bad character, throw InvalidUtf8Param for the first such parameter, as xapi checks params in order.
 */
export function checkParamsUtf8(call: RpcCall, version?: '1.0' | '2.0', id?: string | number | bigint): void {
  for (const p of call.params) {
    const bad = firstBadString(p);
    if (bad !== undefined) {
      const clean = (s: string) => s.replace(BAD_CHAR_G, '\uFFFD');
      throw new InvalidUtf8Param(clean(rpcDebugString(p)), clean(bad), call, version, id);
    }
  }
}

// The encoding declaration is honoured for the single-byte encodings Xmlm knows; UTF-16 is refused.
const XML_DECL_ENCODING = /^(?:\uFEFF)?<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']/;

function decodeXmlBody(body: Buffer | string): { text: string; lossy: boolean } {
  if (typeof body === 'string') return { text: body, lossy: false };
  // Cheap sniff: only bodies that start with an XML declaration naming an encoding.
  if (body.length > 5 && body[0] === 0x3c && body[1] === 0x3f) {
    const head = latin1.decode(body.subarray(0, Math.min(body.length, 256)));
    const m = XML_DECL_ENCODING.exec(head);
    if (m) {
      const enc = m[1]!.toLowerCase();
      if (enc === 'iso-8859-1' || enc === 'latin1' || enc === 'latin-1' || enc === 'iso8859-1') {
        return { text: latin1.decode(body), lossy: false };
      }
      if (enc !== 'utf-8' && enc !== 'utf8' && enc !== 'us-ascii' && enc !== 'ascii') {
        throw new MalformedRequest(`unsupported XML encoding "${m[1]}"`);
      }
    }
  }
  return decodeBody(body);
}

// ---------------------------------------------------------------------------------------------
// Scalar text conversions, as ocaml-rpc does them (Int64.of_string, float_of_string)

const SIMPLE_INT = /^-?\d{1,18}$/;
const OCAML_INT = /^([-+]?)(?:(0[xX][0-9a-fA-F][0-9a-fA-F_]*)|(0[oO][0-7][0-7_]*)|(0[bB][01][01_]*)|0[uU]([0-9][0-9_]*)|([0-9][0-9_]*))$/;
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const U64_MAX = 2n ** 64n - 1n;

/**
 * OCaml's Int64.of_string: optional sign, decimal (signed range) or 0x/0o/0b/0u (unsigned
 * 64-bit range, wrapping to signed), '_' allowed after the first digit. Throws MalformedRequest.
 */
export function parseOcamlInt64(text: string): bigint {
  if (SIMPLE_INT.test(text)) return BigInt(text);
  const m = OCAML_INT.exec(text);
  if (!m) throw new MalformedRequest(`invalid integer "${text}"`);
  const neg = m[1] === '-';
  if (m[6] !== undefined) {
    let n = BigInt(m[6].replace(/_/g, ''));
    if (neg) n = -n;
    if (n < I64_MIN || n > I64_MAX) throw new MalformedRequest(`integer out of range "${text}"`);
    return n;
  }
  let n: bigint;
  if (m[5] !== undefined) n = BigInt(m[5].replace(/_/g, ''));
  else n = BigInt((m[2] ?? m[3] ?? m[4]!).replace(/_/g, '')); // BigInt understands 0x/0o/0b
  if (n > U64_MAX) throw new MalformedRequest(`integer out of range "${text}"`);
  return BigInt.asIntN(64, neg ? -n : n);
}

const DEC_FLOAT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const SPECIAL_FLOAT = /^([+-]?)(?:(inf(?:inity)?)|(nan(?:\([0-9A-Za-z_]*\))?))$/i;
const HEX_FLOAT = /^([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?\d+))?$/;

/** OCaml's float_of_string ('_' ignored, strtod syntax incl. leading blanks, inf/nan, hex). */
export function parseOcamlFloat(text: string): number {
  let s = text.includes('_') ? text.replace(/_/g, '') : text;
  s = s.replace(/^[ \t\n\v\f\r]+/, '');
  if (DEC_FLOAT.test(s)) return Number(s);
  let m = SPECIAL_FLOAT.exec(s);
  if (m) return m[2] !== undefined ? (m[1] === '-' ? -Infinity : Infinity) : NaN;
  m = HEX_FLOAT.exec(s);
  if (m && (m[2]! + (m[3] ?? '')).length > 0) {
    const frac = m[3] ?? '';
    const mant = BigInt('0x' + (m[2]! + frac || '0'));
    const exp = (m[4] ? parseInt(m[4], 10) : 0) - 4 * frac.length;
    const v = Number(mant) * 2 ** exp;
    return m[1] === '-' ? -v : v;
  }
  throw new MalformedRequest(`invalid double "${text}"`);
}

// ---------------------------------------------------------------------------------------------
// Parser: one frame per open element

// biome-ignore lint/suspicious/noConstEnum: module-local (no other file or bundler sees it); tsc inlines the members in the parser's hot loop
const enum K {
  Doc, // before/after the root element
  MethodCall,
  MethodName,
  Params,
  Param,
  Value,
  Leaf, // <string> <int> <i4> <i8> <double> <boolean> <dateTime.iso8601> <base64>
  Nil,
  Array,
  Data,
  Struct,
  Member,
  Name,
  MethodResponse,
  Fault,
}

class Frame {
  text = '';
  /** Value/Param/Member/Fault: the child value; Array: the <data> array. */
  result: Rpc | undefined = undefined;
  /** Progress inside the element: MethodCall 0 → 1 (methodName) → 2 (params); Member 0 → 1 (name); Value 1 once a typed child opened. */
  state = 0;
  name: string | undefined = undefined;
  arr: Rpc[] | undefined = undefined;
  obj: RpcStruct | undefined = undefined;
  constructor(
    readonly kind: K,
    readonly tag: string,
  ) {}
}

const WS = /^[ \t\r\n]*$/;

function fail(msg: string): never {
  throw new MalformedRequest(msg);
}

/** Leaf text → value. Empty leaves other than <string> are errors, as in ocaml-rpc (`empty_tag`). */
function leafValue(tag: string, text: string): Rpc {
  switch (tag) {
    case 'string':
      return text;
    case 'int':
    case 'i4':
    case 'i8':
      if (text === '') fail(`empty <${tag}>`);
      return parseOcamlInt64(text);
    case 'boolean':
      if (text === '') fail('empty <boolean>');
      return text === '1';
    case 'double':
      if (text === '') fail('empty <double>');
      return parseOcamlFloat(text);
    case 'dateTime.iso8601':
      if (text === '') fail('empty <dateTime.iso8601>');
      return new RpcDateTime(text);
    case 'base64':
      if (text === '') fail('empty <base64>');
      // ocaml-rpc hands back the base64 text (xapi's base64_decoder is the identity for strings).
      return text;
  }
  return fail(`unknown element <${tag}>`);
}

interface ParseResult {
  method: string | undefined;
  params: Rpc[];
  fault: Rpc | undefined;
}

/** Runs the state machine over a whole document; `response` selects methodResponse as the root. */
function parseDocument(text: string, response: boolean): ParseResult {
  const res: ParseResult = { method: undefined, params: [], fault: undefined };
  const stack: Frame[] = [new Frame(K.Doc, '')];
  let top = stack[0]!;
  let rootSeen = false;

  const push = (kind: K, tag: string) => {
    if (stack.length > MAX_XML_DEPTH) fail(`XML nested deeper than ${MAX_XML_DEPTH} elements`);
    top = new Frame(kind, tag);
    stack.push(top);
  };

  /** Hands a finished value to the element that contains its <value>. */
  const deliver = (v: Rpc) => {
    switch (top.kind) {
      case K.Param:
      case K.Fault:
        top.result = v;
        return;
      case K.Data:
        top.arr!.push(v);
        return;
      case K.Member:
        top.result = v;
        return;
    }
  };

  const onOpen = (t: SaxesTagPlain) => {
    const tag = t.name;
    switch (top.kind) {
      case K.Doc:
        if (rootSeen) fail('content after the root element');
        rootSeen = true;
        if (!response && tag === 'methodCall') return push(K.MethodCall, tag);
        if (response && tag === 'methodResponse') return push(K.MethodResponse, tag);
        return fail(`root element must be <${response ? 'methodResponse' : 'methodCall'}>, got <${tag}>`);
      case K.MethodCall:
        if (top.state === 0) {
          if (tag !== 'methodName') fail(`expected <methodName>, got <${tag}>`);
          top.state = 1;
          return push(K.MethodName, tag);
        }
        if (top.state === 1 && tag === 'params') {
          top.state = 2;
          return push(K.Params, tag);
        }
        return fail(`unexpected <${tag}> in <methodCall>`);
      case K.MethodResponse:
        if (top.state !== 0) fail(`unexpected <${tag}> in <methodResponse>`);
        top.state = 1;
        if (tag === 'params') return push(K.Params, tag);
        if (tag === 'fault') return push(K.Fault, tag);
        return fail(`expected <params> or <fault>, got <${tag}>`);
      case K.Params:
        if (tag !== 'param') fail(`expected <param>, got <${tag}>`);
        return push(K.Param, tag);
      case K.Param:
      case K.Fault:
      case K.Data:
        if (tag !== 'value') fail(`expected <value>, got <${tag}>`);
        if (top.kind !== K.Data && top.result !== undefined) fail(`more than one <value> in <${top.tag}>`);
        return push(K.Value, tag);
      case K.Member:
        if (top.state === 0) {
          if (tag !== 'name') fail(`expected <name> in <member>, got <${tag}>`);
          top.state = 1;
          return push(K.Name, tag);
        }
        if (tag !== 'value' || top.state !== 2) fail(`unexpected <${tag}> in <member>`);
        top.state = 3;
        return push(K.Value, tag);
      case K.Value:
        if (top.state !== 0) fail(`more than one element in <value>`);
        if (!WS.test(top.text)) fail(`text and <${tag}> mixed in <value>`);
        top.state = 1;
        switch (tag) {
          case 'string':
          case 'int':
          case 'i4':
          case 'i8':
          case 'double':
          case 'boolean':
          case 'dateTime.iso8601':
          case 'base64':
            return push(K.Leaf, tag);
          case 'array':
            return push(K.Array, tag);
          case 'struct':
            push(K.Struct, tag);
            top.obj = newStruct();
            return;
          case 'nil':
            return push(K.Nil, tag);
        }
        return fail(`unknown element <${tag}> in <value>`);
      case K.Array:
        if (tag !== 'data' || top.arr !== undefined) fail(`unexpected <${tag}> in <array>`);
        top.arr = [];
        push(K.Data, tag);
        top.arr = stack[stack.length - 2]!.arr;
        return;
      case K.Struct:
        if (tag !== 'member') fail(`expected <member>, got <${tag}>`);
        return push(K.Member, tag);
    }
    // MethodName, Leaf, Nil, Name: no child elements.
    return fail(`unexpected <${tag}> in <${top.tag}>`);
  };

  const onClose = () => {
    const f = stack.pop()!;
    top = stack[stack.length - 1]!;
    switch (f.kind) {
      case K.MethodName:
        res.method = f.text;
        return;
      case K.MethodCall:
        if (f.state === 0) fail('missing <methodName>');
        if (f.state === 1) fail('missing <params>');
        return;
      case K.MethodResponse:
        if (f.state === 0) fail('empty <methodResponse>');
        return;
      case K.Params:
        return;
      case K.Param:
        if (f.result === undefined) fail('<param> without <value>');
        res.params.push(f.result);
        return;
      case K.Fault:
        if (f.result === undefined) fail('<fault> without <value>');
        res.fault = f.result;
        return;
      case K.Value:
        // Untyped text is a string; whitespace around a typed child is dropped.
        return deliver(f.state === 1 ? f.result! : f.text);
      case K.Leaf:
        top.result = leafValue(f.tag, f.text);
        return;
      case K.Nil:
        top.result = null;
        return;
      case K.Array:
        top.result = f.arr ?? [];
        return;
      case K.Data:
        return;
      case K.Struct:
        top.result = f.obj!;
        return;
      case K.Member: {
        if (f.state !== 3) fail(f.state === 0 ? '<member> without <name>' : '<member> without <value>');
        const obj = top.obj!;
        // rpclib keeps duplicate members and List.assoc finds the first: first one wins.
        if (!(f.name! in obj)) obj[f.name!] = f.result!;
        return;
      }
      case K.Name:
        top.name = f.text;
        top.state = 2;
        return;
    }
  };

  const onText = (t: string) => {
    switch (top.kind) {
      case K.Value:
        if (top.state === 0) {
          top.text += t;
          return;
        }
        break;
      case K.Leaf:
      case K.MethodName:
      case K.Name:
        top.text += t;
        return;
    }
    if (!WS.test(t)) fail(top.kind === K.Doc ? 'text outside the root element' : `unexpected text in <${top.tag}>`);
  };

  const parser = new SaxesParser({ xmlns: false, position: false });
  parser.on('opentag', onOpen);
  parser.on('closetag', onClose);
  parser.on('text', onText);
  parser.on('cdata', onText);
  parser.on('doctype', () => fail('DOCTYPE is not allowed'));
  try {
    parser.write(text).close();
  } catch (e) {
    if (e instanceof MalformedRequest) throw e;
    throw new MalformedRequest(`invalid XML: ${(e as Error).message}`);
  }
  if (!rootSeen) fail('no root element');
  return res;
}

/** Decodes an XML-RPC request body (the `<methodCall>` document xapi accepts). */
export function parseXmlRpcCall(body: Buffer | string): RpcCall {
  const { text, lossy } = decodeXmlBody(body);
  const r = parseDocument(text, false);
  const call: RpcCall = { method: r.method!, params: r.params };
  if (lossy) checkParamsUtf8(call);
  return call;
}

/** The value of a `<methodResponse>` (for xapi, the Status struct); a `<fault>` throws XmlRpcFault. */
export function parseXmlRpcResponse(body: Buffer | string): Rpc {
  const { text } = decodeXmlBody(body);
  const r = parseDocument(text, true);
  if (r.fault !== undefined) {
    const f = r.fault;
    if (f === null || typeof f !== 'object' || Array.isArray(f) || f instanceof RpcDateTime)
      throw new MalformedRequest('<fault> value is not a struct');
    throw new XmlRpcFault(f['faultCode'] ?? null, f['faultString'] ?? null);
  }
  if (r.params.length !== 1) throw new MalformedRequest(`expected one <param> in <methodResponse>, got ${r.params.length}`);
  return r.params[0]!;
}

// ---------------------------------------------------------------------------------------------
// Writer (xapi's output encoding)

// ocaml-rpc encode_buf: escape & < > ", drop control characters other than TAB, LF, CR.
const XML_SPECIAL = /[&<>"\x00-\x08\x0b\x0c\x0e-\x1f]/;
const XML_SPECIAL_G = /[&<>"\x00-\x08\x0b\x0c\x0e-\x1f]/g;
const xmlReplacement = (c: string): string => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : c === '>' ? '&gt;' : c === '"' ? '&quot;' : '');

export function escapeXml(s: string): string {
  return XML_SPECIAL.test(s) ? s.replace(XML_SPECIAL_G, xmlReplacement) : s;
}

/** Encodes one value, xapi style. Recursion depth = value depth, bounded by the parsers' limits. */
export function xmlRpcValue(v: Rpc): string {
  switch (typeof v) {
    case 'string':
      return '<value>' + (XML_SPECIAL.test(v) ? v.replace(XML_SPECIAL_G, xmlReplacement) : v) + '</value>';
    case 'bigint':
      // rpclib writes Int without a type tag (non-strict mode): a decimal string on the wire.
      return '<value>' + v.toString() + '</value>';
    case 'number':
      return '<value><double>' + formatG(v, 16) + '</double></value>';
    case 'boolean':
      return v ? '<value><boolean>1</boolean></value>' : '<value><boolean>0</boolean></value>';
  }
  if (v === null) return '<value><nil/></value>';
  if (v instanceof RpcDateTime) return '<value><dateTime.iso8601>' + escapeXml(v.text) + '</dateTime.iso8601></value>';
  if (Array.isArray(v)) {
    let s = '<value><array><data>';
    for (let i = 0; i < v.length; i++) s += xmlRpcValue(v[i]!);
    return s + '</data></array></value>';
  }
  let s = '<value><struct>';
  // rpclib writes member names unescaped; we escape them so the document stays well-formed
  // (identical output for every name without & < > " or control characters).
  for (const k in v) s += '<member><name>' + escapeXml(k) + '</name>' + xmlRpcValue(v[k]!) + '</member>';
  return s + '</struct></value>';
}

/** Appends the encoding of v to out (for callers assembling larger documents). */
export function writeXmlRpcValue(v: Rpc, out: string[]): void {
  out.push(xmlRpcValue(v));
}

const RESPONSE_HEAD = '<?xml version="1.0"?><methodResponse><params><param>';
const RESPONSE_TAIL = '</param></params></methodResponse>';

/** xapi's success envelope: struct {Status: "Success", Value: value}. */
export function xmlRpcSuccess(value: Rpc): string {
  return xmlRpcSuccessEncoded(xmlRpcValue(value));
}

/** The success envelope around a value already encoded as `<value>…</value>`. */
export function xmlRpcSuccessEncoded(valueXml: string): string {
  return XML_SUCCESS[0] + valueXml + XML_SUCCESS[1];
}

/** A bare methodResponse around an encoded value (system.listMethods). */
export function xmlRpcBareEncoded(valueXml: string): string {
  return XML_BARE[0] + valueXml + XML_BARE[1];
}

/** The text before and after the encoded value, in the success envelope and the bare one. */
export const XML_SUCCESS: readonly [string, string] = [
  RESPONSE_HEAD + '<value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name>',
  '</member></struct></value>' + RESPONSE_TAIL,
];
export const XML_BARE: readonly [string, string] = [RESPONSE_HEAD, RESPONSE_TAIL];

/** xapi's failure envelope: struct {Status: "Failure", ErrorDescription: [code, params...]}. */
export function xmlRpcFailure(errorDescription: string[]): string {
  let s =
    RESPONSE_HEAD +
    '<value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data>';
  for (const e of errorDescription) s += '<value>' + escapeXml(e) + '</value>';
  return s + '</data></array></value></member></struct></value>' + RESPONSE_TAIL;
}

/** A methodResponse with the value directly (xapi's system.listMethods answer, api_server.ml). */
export function xmlRpcBare(value: Rpc): string {
  return RESPONSE_HEAD + xmlRpcValue(value) + RESPONSE_TAIL;
}

// ---------------------------------------------------------------------------------------------
// Client side (tests, benchmarks)

/** A request as a client would send it: typed tags for ints (<int>) and doubles, untyped strings. */
export function xmlRpcRequest(method: string, params: Rpc[]): string {
  let s = '<?xml version="1.0"?><methodCall><methodName>' + escapeXml(method) + '</methodName><params>';
  for (const p of params) s += '<param>' + requestValue(p) + '</param>';
  return s + '</params></methodCall>';
}

function requestValue(v: Rpc): string {
  if (typeof v === 'bigint') return '<value><int>' + v.toString() + '</int></value>';
  // Shortest round-trip text, so the server reads back exactly this double.
  if (typeof v === 'number') return '<value><double>' + String(v) + '</double></value>';
  if (Array.isArray(v)) {
    let s = '<value><array><data>';
    for (const x of v) s += requestValue(x);
    return s + '</data></array></value>';
  }
  if (v !== null && typeof v === 'object' && !(v instanceof RpcDateTime)) {
    let s = '<value><struct>';
    for (const k in v) s += '<member><name>' + escapeXml(k) + '</name>' + requestValue(v[k]!) + '</member>';
    return s + '</struct></value>';
  }
  return xmlRpcValue(v);
}
