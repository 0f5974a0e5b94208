// Typed conversion between wire trees (Rpc) and datamodel values, driven by the schema's types,
// the job xapi's generated marshallers do. Input is checked: a value of the wrong shape fails as
// it does in xapi's rpclib unmarshallers, INTERNAL_ERROR ["Failure(\"Expected <type>, got '<value>'\")"],
// and an enum value outside the enum as INTERNAL_ERROR ["Failure(\"Unknown tag/contents\")"].
// Enum names are matched case-insensitively.
import { XapiError } from './errors.js';
import { RpcDateTime, newStruct, isStruct, rpcDebugString, type Rpc, type RpcStruct } from './rpc.js';
import { formatDateTime, parseDateTime, type Type } from '../schema/types.js';
import type { Schema } from '../schema/schema.js';

const typeError = (expected: string, v: Rpc) =>
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
        if (typeof v === 'string' && /^-?\d+$/.test(v.trim())) return Number(v.trim());
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
        return v as Rpc; // built as Rpc by the event code, which knows each record's class
    }
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

/** Sets a member even when it is called "__proto__": client data is data. */
export function defineMember(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}
