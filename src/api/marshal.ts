// Typed conversion between wire trees (Rpc) and datamodel values, driven by the schema's types,
// the job xapi's generated marshallers do. Input is checked: a value of the wrong shape fails as
// it does in xapi's rpclib unmarshallers, INTERNAL_ERROR ["Failure(\"Expected <type>, got '<value>'\")"],
// and an enum value outside the enum as INTERNAL_ERROR ["Failure(\"Unknown tag/contents\")"].
// Enum names are matched case-insensitively.
import { XapiError } from '../rpc/errors.js';
import { RpcDateTime, newStruct, isStruct, formatG, rpcDebugString, type Rpc, type RpcStruct } from '../rpc/rpc.js';
import { EPOCH, formatDateTime, parseDateTime, type Type } from '../schema/types.js';
import type { Schema } from '../schema/schema.js';
import { escapeXml, parseOcamlInt64, xmlRpcValue } from '../rpc/xmlrpc.js';
import { JSON_SPECIAL, jsonFloat, jsonRpcValue, jsonString } from '../rpc/jsonrpc.js';
import { flat } from '../util/flat.js';
import { ROW_TEXT, type RowTextSlot } from '../db/row-text.js';

export const typeError = (expected: string, v: Rpc) =>
  new XapiError('INTERNAL_ERROR', [`Failure("Expected ${expected}, got '${rpcDebugString(v)}'")`]);

export class Marshal {
  /** enum name -> (lower-case value -> datamodel spelling) */
  private readonly enumIndex = new Map<string, Map<string, string>>();

  constructor(readonly schema: Schema) {
    for (const [name, values] of Object.entries(schema.enums)) {
      this.enumIndex.set(name, new Map(values.map((v) => [v.toLowerCase(), v])));
    }
  }

  fromRpc(t: Type, v: Rpc, name: string): unknown {
    switch (t.k) {
      case 'string':
      case 'ref':
        if (typeof v === 'string') return v;
        throw typeError('string', v);
      case 'int': {
        if (typeof v === 'bigint') return Number(v);
        if (typeof v === 'number' && Number.isInteger(v)) return v;
        if (typeof v === 'string') {
          // rpclib hands strings to OCaml's Int64.of_string (0x/0o/0b, underscores), as here
          try {
            return Number(parseOcamlInt64(v));
          } catch {
            throw new XapiError('INTERNAL_ERROR', ['Failure("Int64.of_string")']);
          }
        }
        throw typeError('int64', v);
      }
      case 'float': {
        if (typeof v === 'number') return v;
        if (typeof v === 'bigint') return Number(v);
        if (typeof v === 'string' && v.trim() !== '' && !Number.isNaN(Number(v))) return Number(v);
        throw typeError('float', v);
      }
      case 'bool':
        if (typeof v === 'boolean') return v;
        throw typeError('bool', v);
      case 'datetime': {
        const text = v instanceof RpcDateTime ? v.text : typeof v === 'string' ? v : undefined;
        if (text === undefined) throw typeError('datetime', v);
        const d = parseDateTime(text);
        if (!d) throw new XapiError('INTERNAL_ERROR', [`Failure("Expected datetime, got '${rpcDebugString(v)}'")`]);
        return formatDateTime(d);
      }
      case 'enum': {
        if (typeof v !== 'string') throw typeError('enum', v);
        const canonical = this.enumIndex.get(t.name)?.get(v.toLowerCase());
        if (canonical === undefined) throw new XapiError('INTERNAL_ERROR', ['Failure("Unknown tag/contents")']);
        return canonical;
      }
      case 'set': {
        if (!Array.isArray(v)) throw typeError('array', v);
        return v.map((x) => this.fromRpc(t.of, x, name));
      }
      case 'map': {
        if (!isStruct(v)) throw typeError('dict', v);
        const out: Record<string, unknown> = {};
        for (const key of Object.keys(v)) {
          const k = this.fromRpc(t.key, key, name);
          defineMember(out, String(k), this.fromRpc(t.val, v[key]!, name));
        }
        return out;
      }
      case 'option':
        return v === null ? undefined : this.fromRpc(t.of, v, name);
      case 'record': {
        if (!isStruct(v)) throw typeError('dict', v);
        const cls = this.schema.cls(t.cls);
        const out: Record<string, unknown> = {};
        for (const f of cls.fields) {
          if (f.name in v) out[f.name] = this.fromRpc(f.type, v[f.name]!, f.name);
        }
        return out;
      }
      case 'void':
        return undefined;
      default:
        throw typeError(t.k, v);
    }
  }

  toRpc(t: Type, v: unknown): Rpc {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return v === undefined || v === null ? '' : String(v);
      case 'int':
        return typeof v === 'number' ? BigInt(Math.trunc(v)) : BigInt((v as bigint | string | undefined) ?? 0);
      case 'float':
        return Number(v ?? 0);
      case 'bool':
        return v === true;
      case 'datetime':
        return new RpcDateTime(String(v ?? '19700101T00:00:00Z'));
      case 'set':
        return ((v as unknown[] | undefined) ?? []).map((x) => this.toRpc(t.of, x));
      case 'map': {
        const out = newStruct();
        for (const [k, x] of members(v)) out[k] = this.toRpc(t.val, x);
        return out;
      }
      case 'option':
        return v === undefined ? null : this.toRpc(t.of, v);
      case 'record':
        // Event records are built as Rpc by the event service, which knows each snapshot's class.
        if (t.cls === 'event') return v as Rpc;
        return this.recordToRpc(t.cls, v as Record<string, unknown>);
      case 'void':
        return '';
      case 'eventBatch':
      case 'anyRecord':
      case 'rpc':
        return v as Rpc; // built as Rpc by the event code, which knows each record's class
    }
  }

  /**
   * A value straight to XML-RPC text: the same bytes as xmlRpcValue(toRpc(t, v)) without building
   * the tree, through a writer compiled once per type. Results are the hot path (a 10,000-record
   * get_all_records would otherwise be ~400k tree nodes).
   */
  xml(t: Type, v: unknown): string {
    return this.writer(t, 'xml')(v);
  }

  /** A value straight to JSON text, as jsonRpcValue(toRpc(t, v)) would give. */
  json(t: Type, v: unknown): string {
    return this.writer(t, 'json')(v);
  }

  /**
   * xml() as pieces appended to `out`, whose concatenation is xml(t, v): what the reply writer
   * takes. A large set or map (get_all_records of 10,000 objects) stays a list of its members'
   * texts, each encoded into the reply buffer in turn, rather than one string of many
   * megabytes that V8 must flatten (a walk of every fragment) before it can be encoded.
   */
  xmlParts(t: Type, v: unknown, out: string[]): void {
    if (t.k === 'map') {
      const w = this.writer(t.val, 'xml');
      out.push('<value><struct>');
      for (const [k, x] of members(v)) out.push('<member><name>' + escapeXml(k) + '</name>', w(x), '</member>');
      out.push('</struct></value>');
    } else if (t.k === 'set') {
      const w = this.writer(t.of, 'xml');
      out.push('<value><array><data>');
      for (const x of (v as unknown[] | undefined) ?? []) out.push(w(x));
      out.push('</data></array></value>');
    } else out.push(this.xml(t, v));
  }

  /** json() as pieces (see xmlParts); a set or map of strings is one piece already, written natively. */
  jsonParts(t: Type, v: unknown, out: string[]): void {
    if (t.k === 'map' && !isStringLike(t.val)) {
      const w = this.writer(t.val, 'json');
      let first = true;
      out.push('{');
      for (const [k, x] of members(v)) {
        out.push((first ? '' : ',') + jsonString(k) + ':', w(x));
        first = false;
      }
      out.push('}');
    } else if (t.k === 'set' && !isStringLike(t.of)) {
      const w = this.writer(t.of, 'json');
      const xs = (v as unknown[] | undefined) ?? [];
      out.push('[');
      for (let i = 0; i < xs.length; i++) {
        if (i) out.push(',');
        out.push(w(xs[i]));
      }
      out.push(']');
    } else out.push(this.json(t, v));
  }

  private readonly writers = { xml: new WeakMap<Type, Writer>(), json: new WeakMap<Type, Writer>() };

  /**
   * The text of database rows, per wire. Rows are frozen and replaced on write, so a row's text
   * never goes stale: a record fetched again (get_all_records after get_all_records, the same row
   * in many watchers' events) is written once. Bounded by ROW_TEXT_BUDGET characters a wire.
   */
  private readonly rowText = { xml: new RowTextCache('xml'), json: new RowTextCache('json') };

  private writer(t: Type, wire: Wire): Writer {
    let w = this.writers[wire].get(t);
    if (!w) {
      w = wire === 'xml' ? this.compileXml(t) : this.compileJson(t);
      this.writers[wire].set(t, w);
    }
    return w;
  }

  private compileXml(t: Type): Writer {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return (v) => '<value>' + xmlText(v) + '</value>';
      case 'int':
        return (v) => '<value>' + intText(v) + '</value>';
      case 'float':
        return (v) => '<value><double>' + formatG(Number(v ?? 0), 16) + '</double></value>';
      case 'bool':
        return (v) => (v === true ? '<value><boolean>1</boolean></value>' : '<value><boolean>0</boolean></value>');
      case 'datetime':
        return (v) => '<value><dateTime.iso8601>' + escapeXml(String(v ?? EPOCH)) + '</dateTime.iso8601></value>';
      case 'void':
        return () => '<value></value>';
      case 'set': {
        if (isStringLike(t.of)) return xmlStringSet;
        const elem = this.lazy(t.of, 'xml');
        return (v) => {
          const w = elem();
          let out = '<value><array><data>';
          for (const x of (v as unknown[] | undefined) ?? []) out += w(x);
          return out + '</data></array></value>';
        };
      }
      case 'map': {
        if (isStringLike(t.val)) return xmlStringMap;
        const val = this.lazy(t.val, 'xml');
        return (v) => {
          const w = val();
          let out = '<value><struct>';
          for (const [k, x] of members(v)) out += '<member><name>' + escapeXml(k) + '</name>' + w(x) + '</member>';
          return out + '</struct></value>';
        };
      }
      case 'option': {
        const inner = this.lazy(t.of, 'xml');
        return (v) => (v === undefined ? '<value><nil/></value>' : inner()(v));
      }
      case 'record':
        if (t.cls === 'event') return (v) => xmlRpcValue(v as Rpc);
        return this.rowText.xml.wrap(this.compileRecord(t.cls, 'xml'));
      default:
        return (v) => xmlRpcValue(v as Rpc);
    }
  }

  private compileJson(t: Type): Writer {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return jsonText;
      case 'datetime':
        return (v) => jsonString(v === undefined || v === null ? EPOCH : String(v));
      case 'int':
        return intText;
      case 'float':
        return (v) => jsonFloat(Number(v ?? 0));
      case 'bool':
        return (v) => (v === true ? 'true' : 'false');
      case 'void':
        return () => '""';
      case 'set': {
        const elem = this.lazy(t.of, 'json');
        const each = (xs: unknown[]) => {
          const w = elem();
          let out = '[';
          for (let i = 0; i < xs.length; i++) out += (i ? ',' : '') + w(xs[i]);
          return out + ']';
        };
        if (isStringLike(t.of)) return (v) => jsonStringSet(v, each);
        return (v) => each((v as unknown[] | undefined) ?? []);
      }
      case 'map': {
        const val = this.lazy(t.val, 'json');
        const each = (m: unknown) => {
          const w = val();
          let out = '{';
          let first = true;
          for (const [k, x] of members(m)) {
            out += (first ? '' : ',') + jsonString(k) + ':' + w(x);
            first = false;
          }
          return out + '}';
        };
        if (isStringLike(t.val)) return (v) => jsonStringMap(v, each);
        return each;
      }
      case 'option': {
        const inner = this.lazy(t.of, 'json');
        return (v) => (v === undefined ? 'null' : inner()(v));
      }
      case 'record':
        if (t.cls === 'event') return (v) => jsonRpcValue(v as Rpc);
        return this.rowText.json.wrap(this.compileRecord(t.cls, 'json'));
      default:
        return (v) => jsonRpcValue(v as Rpc);
    }
  }

  /** Writers are looked up on first use: records refer to each other only through refs, but
   * compiling lazily keeps any recursion out of compile time. */
  private lazy(t: Type, wire: Wire): () => Writer {
    let w: Writer | undefined;
    return () => (w ??= this.writer(t, wire));
  }

  /**
   * One function per class and wire that writes a whole record: the field names and the markup
   * between values are constants in its code, and scalar fields are written inline, so a record
   * costs a handful of string concatenations rather than a closure call per value. Fields of
   * other types call the compiled writer of their type.
   */
  private compileRecord(cls: string, wire: Wire): Writer {
    const fields = this.schema.cls(cls).fields.filter((f) => !f.internal);
    const sub: Writer[] = [];
    const subOf = (t: Type): string => {
      const i = sub.length;
      // Resolved on first call, then the real writer replaces the stub.
      sub.push((v) => {
        const writer = this.writer(t, wire);
        sub[i] = writer;
        return writer(v);
      });
      return `w[${i}]`;
    };
    const code = wire === 'json' ? recordJsonCode(fields, subOf) : recordXmlCode(fields, subOf);
    const make = new Function('h', 'w', `"use strict";\nreturn function write_${cls.replace(/\W/g, '_')}(row) {\n${code}\n};`);
    return make(helpers, sub) as Writer;
  }

  recordToRpc(clsName: string, row: Record<string, unknown>): RpcStruct {
    const out = newStruct();
    for (const f of this.schema.cls(clsName).fields) {
      if (f.internal) continue;
      const value = row[f.name];
      if (f.type.k === 'option' && value === undefined) continue;
      out[f.name] = this.toRpc(f.type, value);
    }
    return out;
  }
}

type Wire = 'xml' | 'json';
type Writer = (v: unknown) => string;

type FieldDefLike = { name: string; type: Type };

/** The characters of row text one wire's cache keeps before it empties the slots it filled. */
const ROW_TEXT_BUDGET = 32 * 1024 * 1024;

/**
 * Text of database rows, kept in the rows' own slots (db/row-text.ts), one cache per wire. A slot
 * holds the text of the writer that filled it (a row is only ever found under its own class).
 * Bounded: the slots filled are listed, and when they hold ROW_TEXT_BUDGET characters they are
 * all emptied, so the text kept (of rows since replaced, too) stays below that.
 */
class RowTextCache {
  private size = 0;
  private filled: RowTextSlot[] = [];

  constructor(private readonly wire: Wire) {}

  wrap(write: Writer): Writer {
    // This writer's mark on the slots it fills.
    const mark = {};
    // One closure per wire, so each reads and writes its own fields of the slot directly.
    if (this.wire === 'json') {
      return (v) => {
        // Only the database's rows have a slot; anything else is written afresh.
        const slot = typeof v === 'object' && v !== null ? (v as { [ROW_TEXT]?: RowTextSlot })[ROW_TEXT] : undefined;
        if (slot === undefined) return write(v);
        if (slot.jsonBy === mark) return slot.json!;
        const text = write(v);
        slot.json = text;
        slot.jsonBy = mark;
        this.kept(slot, text.length);
        return text;
      };
    }
    return (v) => {
      const slot = typeof v === 'object' && v !== null ? (v as { [ROW_TEXT]?: RowTextSlot })[ROW_TEXT] : undefined;
      if (slot === undefined) return write(v);
      if (slot.xmlBy === mark) return slot.xml!;
      const text = write(v);
      slot.xml = text;
      slot.xmlBy = mark;
      this.kept(slot, text.length);
      return text;
    };
  }

  private kept(slot: RowTextSlot, length: number): void {
    this.size += length;
    this.filled.push(slot);
    if (this.size <= ROW_TEXT_BUDGET) return;
    for (const s of this.filled) {
      if (this.wire === 'json') s.json = s.jsonBy = undefined;
      else s.xml = s.xmlBy = undefined;
    }
    this.filled = [];
    this.size = 0;
  }
}

/** What the generated record writers call. */
const helpers = {
  jsonInner,
  jsonDateInner: (v: unknown) => jsonInner(v === undefined || v === null ? EPOCH : v),
  jsonFloat: (v: unknown) => jsonFloat(Number(v ?? 0)),
  escapeXml,
  xmlText,
  xmlDate: (v: unknown) => escapeXml(String(v ?? EPOCH)),
  xmlFloat: (v: unknown) => formatG(Number(v ?? 0), 16),
  intText,
  flat,
};

const lit = (s: string) => JSON.stringify(s);

/**
 * The body of a JSON record writer: `row` in, the record's JSON text returned.
 *
 * The text is the join of one array: the constant markup (field names, and the quotes around
 * string values) and each value's text, so V8 copies every piece once into one flat string.
 * Built with `+` instead, a record is a tree of a few dozen fragments (each an allocation, each
 * string value copied once more to quote it) that is flattened again when the text is kept or
 * encoded: writing 10,000 fresh network records took about twice as long that way (44-57 ms
 * against 26-28 on the first pass; the same once the code is optimised, 13-15 ms).
 */
function recordJsonCode(fields: FieldDefLike[], subOf: (t: Type) => string): string {
  type Part = { c: string } | { e: string };
  const value = (t: Type, v: string): Part[] => {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return [{ c: '"' }, { e: `h.jsonInner(${v})` }, { c: '"' }];
      case 'datetime':
        return [{ c: '"' }, { e: `h.jsonDateInner(${v})` }, { c: '"' }];
      case 'int':
        // A safe integer goes into the array as a number: join writes it as String() does.
        return [{ e: `(Number.isSafeInteger(${v}) ? ${v} : h.intText(${v}))` }];
      case 'float':
        return [{ e: `h.jsonFloat(${v})` }];
      case 'bool':
        return [{ e: `(${v} === true ? 'true' : 'false')` }];
      case 'void':
        return [{ c: '""' }];
      default:
        return [{ e: `${subOf(t)}(${v})` }];
    }
  };
  const lines: string[] = [];
  for (const [i, f] of fields.entries()) lines.push(`const v${i} = row[${lit(f.name)}];`);
  if (!fields.some((f) => f.type.k === 'option')) {
    const parts: Part[] = [{ c: '{' }];
    for (const [i, f] of fields.entries()) parts.push({ c: (i === 0 ? '' : ',') + jsonString(f.name) + ':' }, ...value(f.type, `v${i}`));
    parts.push({ c: '}' });
    lines.push(`return [${joinParts(parts).join(', ')}].join('');`);
    return lines.join('\n');
  }
  // Optional fields are left out when absent (results such as sr_stat, never database rows).
  lines.push(`const out = ['{'];`, `let sep = '';`);
  fields.forEach((f, i) => {
    const t = f.type.k === 'option' ? f.type.of : f.type;
    const push = `{ out.push(sep + ${lit(jsonString(f.name) + ':')}, ${joinParts(value(t, `v${i}`)).join(', ')}); sep = ','; }`;
    lines.push(f.type.k === 'option' ? `if (v${i} !== undefined) ${push}` : push);
  });
  lines.push(`out.push('}');`, `return out.join('');`);
  return lines.join('\n');
}

/** Parts as code: adjacent constants merged into one literal. */
function joinParts(parts: ({ c: string } | { e: string })[]): string[] {
  const merged: string[] = [];
  let c = '';
  for (const p of parts) {
    if ('c' in p) c += p.c;
    else {
      if (c) merged.push(lit(c));
      c = '';
      merged.push(p.e);
    }
  }
  if (c) merged.push(lit(c));
  return merged;
}

/** The body of an XML-RPC record writer; adjacent constant markup is emitted as one literal. */
function recordXmlCode(fields: FieldDefLike[], subOf: (t: Type) => string): string {
  type Part = { c: string } | { e: string };
  const value = (t: Type, v: string): Part[] => {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return [{ c: '<value>' }, { e: `(typeof ${v} === 'string' ? h.escapeXml(${v}) : h.xmlText(${v}))` }, { c: '</value>' }];
      case 'datetime':
        return [{ c: '<value><dateTime.iso8601>' }, { e: `h.xmlDate(${v})` }, { c: '</dateTime.iso8601></value>' }];
      case 'int':
        return [
          { c: '<value>' },
          { e: `(typeof ${v} === 'number' && Number.isInteger(${v}) ? '' + ${v} : h.intText(${v}))` },
          { c: '</value>' },
        ];
      case 'float':
        return [{ c: '<value><double>' }, { e: `h.xmlFloat(${v})` }, { c: '</double></value>' }];
      case 'bool':
        return [{ e: `(${v} === true ? '<value><boolean>1</boolean></value>' : '<value><boolean>0</boolean></value>')` }];
      case 'void':
        return [{ c: '<value></value>' }];
      default:
        return [{ e: `${subOf(t)}(${v})` }];
    }
  };
  const expr = (parts: Part[]): string => joinParts(parts).join(' + ');
  const lines: string[] = [`let out = '';`];
  let pending: Part[] = [{ c: '<value><struct>' }];
  fields.forEach((f, i) => {
    const v = `v${i}`;
    lines.push(`const ${v} = row[${lit(f.name)}];`);
    const t = f.type.k === 'option' ? f.type.of : f.type;
    const member: Part[] = [{ c: '<member><name>' + escapeXml(f.name) + '</name>' }, ...value(t, v), { c: '</member>' }];
    if (f.type.k !== 'option') {
      pending.push(...member);
      return;
    }
    lines.push(`out += ${expr(pending)};`);
    pending = [];
    lines.push(`if (${v} !== undefined) out += ${expr(member)};`);
  });
  pending.push({ c: '</struct></value>' });
  // Concatenated text is a tree of fragments: flattened once here, so text kept and written many
  // times is copied, not walked, each time (the JSON writers join an array, flat already).
  lines.push(`return h.flat(out + ${expr(pending)});`);
  return lines.join('\n');
}

const isStringLike = (t: Type) => t.k === 'string' || t.k === 'ref' || t.k === 'enum';

/** A string-typed value's text inside <value> (absent values are empty). */
function xmlText(v: unknown): string {
  return v === undefined || v === null ? '' : escapeXml(String(v));
}

/** A string-typed value as JSON without its quotes (absent values are empty). */
function jsonInner(v: unknown): string {
  if (typeof v !== 'string') v = v === undefined || v === null ? '' : String(v);
  const s = v as string;
  return JSON_SPECIAL.test(s) ? jsonString(s).slice(1, -1) : s;
}

/** A string-typed value as JSON (absent values are ""). */
function jsonText(v: unknown): string {
  return typeof v === 'string' ? jsonString(v) : jsonString(v === undefined || v === null ? '' : String(v));
}

function xmlStringSet(v: unknown): string {
  let out = '<value><array><data>';
  for (const x of (v as unknown[] | undefined) ?? []) out += '<value>' + (typeof x === 'string' ? escapeXml(x) : xmlText(x)) + '</value>';
  return out + '</data></array></value>';
}

function xmlStringMap(v: unknown): string {
  let out = '<value><struct>';
  for (const [k, x] of members(v)) {
    out += '<member><name>' + escapeXml(k) + '</name><value>' + (typeof x === 'string' ? escapeXml(x) : xmlText(x)) + '</value></member>';
  }
  return out + '</struct></value>';
}

/**
 * A set of strings as JSON. When every member is a string, JSON.stringify writes the array in
 * one native call with the same bytes jsonString gives member by member (jsonString escapes as
 * JSON.stringify does, and DEL besides); anything else goes member by member.
 */
function jsonStringSet(v: unknown, each: (xs: unknown[]) => string): string {
  if (v === undefined || v === null) return '[]';
  const xs = v as unknown[];
  if (xs.length === 0) return '[]';
  for (let i = 0; i < xs.length; i++) if (typeof xs[i] !== 'string') return each(xs);
  return escapeDel(JSON.stringify(xs));
}

/** A map with string values as JSON, natively when every value is a string (see jsonStringSet). */
function jsonStringMap(v: unknown, each: (m: unknown) => string): string {
  if (v === undefined || v === null) return '{}';
  if (Array.isArray(v)) return each(v);
  const m = v as Record<string, unknown>;
  let empty = true;
  for (const k in m) {
    if (typeof m[k] !== 'string') return each(m);
    empty = false;
  }
  return empty ? '{}' : escapeDel(JSON.stringify(m));
}

/**
 * The members of a map-typed value: a plain object, or an array of [key, value] pairs, as
 * get_all_records hands over its rows, listed so by the database (see implicit.ts). An object
 * with 10,000 keys (each key interned, the object turned into a hash table as it grows) took
 * 20-35 ms to build, a Map 4-6 ms: more than a tenth of a first call, for nothing.
 */
function members(v: unknown): Iterable<readonly [string, unknown]> {
  if (Array.isArray(v)) return v as [string, unknown][];
  return v === undefined || v === null ? [] : Object.entries(v as Record<string, unknown>);
}

/** Yojson escapes DEL, which JSON.stringify leaves as is. */
function escapeDel(s: string): string {
  return s.includes('\x7f') ? s.replace(/\x7f/g, '\\u007f') : s;
}

/** An int64 as decimal text (values are JS numbers; a bigint or a numeric string is kept exact). */
function intText(v: unknown): string {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.trunc(v));
  if (typeof v === 'bigint') return v.toString();
  return v === undefined || v === null ? '0' : String(BigInt(v as string));
}

/** Sets a member even when it is called "__proto__": client data is data. */
export function defineMember(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}
