// How commands reach the API: every call goes through the host's dispatcher, exactly as a client's
// call over the wire would (session check, RBAC, the message's own checks, tasks), and its result
// comes back as the wire tree a client would decode. Refs are named (uuid, name-label) by reading
// the database, as xapi's CLI does through its Ref_index.
import type { Dispatcher } from '../api/dispatch.js';
import { type AnyDb, untyped } from '../db/interface.js';
import { XapiError } from '../rpc/errors.js';
import type { Rpc, RpcStruct } from '../rpc/rpc.js';

export class Api {
  private readonly db: AnyDb;
  private readonly classes: string[];

  constructor(readonly dispatcher: Dispatcher) {
    this.db = untyped(dispatcher.host.db);
    this.classes = [...dispatcher.host.schema.classes.values()].filter((c) => c.inDb).map((c) => c.name);
  }

  /** A call as a client makes it: XapiError on failure, the result as a wire tree. */
  async call(method: string, ...params: Rpc[]): Promise<Rpc> {
    const out = await this.dispatcher.dispatch(method, params);
    if (!out.ok) throw new XapiError(out.error[0] ?? 'INTERNAL_ERROR', out.error.slice(1));
    return this.dispatcher.host.marshal.toRpc(out.type, out.value);
  }

  /**
   * `<cls>.get_all_records_where` as a client makes it, each record converted to its wire form
   * field by field as it is read: a listing shows a few fields of thousands of records.
   */
  async allRecords(session: string, cls: string, expr: string): Promise<[string, RpcStruct][]> {
    const out = await this.dispatcher.dispatch(`${cls}.get_all_records_where`, [session, expr]);
    if (!out.ok) throw new XapiError(out.error[0] ?? 'INTERNAL_ERROR', out.error.slice(1));
    const { marshal, schema } = this.dispatcher.host;
    const fields = schema.cls(cls).fields;
    const types = new Map(fields.filter((f) => !f.internal).map((f) => [f.name, f.type]));
    const v = out.value;
    const rows: [string, Record<string, unknown>][] = Array.isArray(v)
      ? (v as [string, Record<string, unknown>][])
      : Object.entries((v ?? {}) as Record<string, Record<string, unknown>>);
    return rows.map(([ref, row]) => {
      const cache = new Map<string, Rpc>();
      const lazy = new Proxy(Object.create(null) as RpcStruct, {
        get: (_t, key) => {
          if (typeof key !== 'string') return undefined;
          const type = types.get(key);
          if (!type) return undefined;
          let got = cache.get(key);
          if (got === undefined) {
            got = type.k === 'option' && row[key] === undefined ? null : marshal.toRpc(type, row[key]);
            cache.set(key, got);
          }
          return got;
        },
      });
      return [ref, lazy];
    });
  }

  /** An object's row fields as the wire names them, or undefined (for naming refs only). */
  async lookup(cls: string, ref: string): Promise<{ uuid: string; name?: string } | undefined> {
    if (!ref.startsWith('OpaqueRef:') || ref === 'OpaqueRef:NULL') return undefined;
    const row = await this.db.tryGet(cls, ref).catch(() => undefined);
    if (!row) return undefined;
    const name = row.name_label;
    return { uuid: String(row.uuid), name: typeof name === 'string' ? name : undefined };
  }

  /** Any ref, whatever its class (xapi's Ref_index.lookup). */
  async lookupAny(ref: string): Promise<{ uuid: string; name?: string } | undefined> {
    if (!ref.startsWith('OpaqueRef:') || ref === 'OpaqueRef:NULL') return undefined;
    for (const cls of this.classes) {
      const hit = await this.lookup(cls, ref);
      if (hit) return hit;
    }
    return undefined;
  }
}

export type { RpcStruct };
