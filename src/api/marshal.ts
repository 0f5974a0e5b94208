// Typed conversion between wire trees (Rpc) and datamodel values, driven by the schema's types,
// the job xapi's generated marshallers do. Input is checked: a value of the wrong shape fails as
// it does in xapi's rpclib unmarshallers, INTERNAL_ERROR ["Failure(\"Expected <type>, got '<value>'\")"],
// and an enum value outside the enum as INTERNAL_ERROR ["Failure(\"Unknown tag/contents\")"].
// Enum names are matched case-insensitively.
import { XapiError } from './errors.js';
import { RpcDateTime, newStruct, isStruct, formatG, rpcDebugString, type Rpc, type RpcStruct } from './rpc.js';
import { EPOCH, formatDateTime, parseDateTime, type Type } from '../schema/types.js';
import type { Schema } from '../schema/schema.js';
import { escapeXml, parseOcamlInt64, xmlRpcValue } from './xmlrpc.js';
import { jsonFloat, jsonRpcValue, jsonString } from './jsonrpc.js';

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
        const m = (v as Record<string, unknown> | undefined) ?? {};
        for (const k of Object.keys(m)) out[k] = this.toRpc(t.val, m[k]);
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

  private readonly writers = { xml: new WeakMap<Type, Writer>(), json: new WeakMap<Type, Writer>() };

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
        return (v) => '<value>' + (v === undefined || v === null ? '' : escapeXml(String(v))) + '</value>';
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
        const elem = this.lazy(t.of, 'xml');
        return (v) => {
          let out = '<value><array><data>';
          for (const x of (v as unknown[] | undefined) ?? []) out += elem()(x);
          return out + '</data></array></value>';
        };
      }
      case 'map': {
        const val = this.lazy(t.val, 'xml');
        return (v) => {
          const m = (v as Record<string, unknown> | undefined) ?? {};
          let out = '<value><struct>';
          for (const k of Object.keys(m)) out += '<member><name>' + escapeXml(k) + '</name>' + val()(m[k]) + '</member>';
          return out + '</struct></value>';
        };
      }
      case 'option': {
        const inner = this.lazy(t.of, 'xml');
        return (v) => (v === undefined ? '<value><nil/></value>' : inner()(v));
      }
      case 'record': {
        if (t.cls === 'event') return (v) => xmlRpcValue(v as Rpc);
        const fields = this.wireFields(t.cls, 'xml', (name) => '<member><name>' + name + '</name>');
        return (v) => {
          const row = v as Record<string, unknown>;
          let out = '<value><struct>';
          for (const f of fields) {
            const x = row[f.name];
            if (f.optional && x === undefined) continue;
            out += f.prefix + f.write()(x) + '</member>';
          }
          return out + '</struct></value>';
        };
      }
      default:
        return (v) => xmlRpcValue(v as Rpc);
    }
  }

  private compileJson(t: Type): Writer {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return (v) => jsonString(v === undefined || v === null ? '' : String(v));
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
        return (v) => {
          const xs = (v as unknown[] | undefined) ?? [];
          let out = '[';
          for (let i = 0; i < xs.length; i++) out += (i ? ',' : '') + elem()(xs[i]);
          return out + ']';
        };
      }
      case 'map': {
        const val = this.lazy(t.val, 'json');
        return (v) => {
          const m = (v as Record<string, unknown> | undefined) ?? {};
          let out = '{';
          let first = true;
          for (const k of Object.keys(m)) {
            out += (first ? '' : ',') + jsonString(k) + ':' + val()(m[k]);
            first = false;
          }
          return out + '}';
        };
      }
      case 'option': {
        const inner = this.lazy(t.of, 'json');
        return (v) => (v === undefined ? 'null' : inner()(v));
      }
      case 'record': {
        if (t.cls === 'event') return (v) => jsonRpcValue(v as Rpc);
        const fields = this.wireFields(t.cls, 'json', (name) => jsonString(name) + ':');
        return (v) => {
          const row = v as Record<string, unknown>;
          let out = '{';
          let first = true;
          for (const f of fields) {
            const x = row[f.name];
            if (f.optional && x === undefined) continue;
            out += (first ? '' : ',') + f.prefix + f.write()(x);
            first = false;
          }
          return out + '}';
        };
      }
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

  private wireFields(cls: string, wire: Wire, prefix: (name: string) => string) {
    return this.schema
      .cls(cls)
      .fields.filter((f) => !f.internal)
      .map((f) => ({ name: f.name, optional: f.type.k === 'option', prefix: prefix(f.name), write: this.lazy(f.type, wire) }));
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
