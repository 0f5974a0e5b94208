// The datamodel at run time: the project's schema file (schema/xenapi-schema.json, derived from
// xenapi.json by tools/gen-schema.mjs) loaded once and indexed for dispatch, the database, RBAC
// and the marshaller. Everything generic in the server is driven from here.
import { readFileSync } from 'node:fs';
import { parseType, type Type } from './types.js';
import type { Enums } from './generated.js';

export type Qualifier = 'RW' | 'RO/constructor' | 'RO/runtime';

export interface FieldDef {
  name: string;
  typeText: string;
  type: Type;
  qualifier: Qualifier;
  hasDefault: boolean;
  default?: unknown;
  lifecycle: string;
  /** Kept in the database but never sent to clients (xapi's internal_only fields). */
  internal: boolean;
}

export interface ParamDef {
  name: string;
  typeText: string;
  type: Type;
  hasDefault: boolean;
  default?: unknown;
}

export interface MessageDef {
  cls: ClassDef;
  name: string;
  /** `<class>.<message>` as on the wire, datamodel case. */
  wire: string;
  /** Parameters after the session (the session is implied when sessionChecked). */
  params: ParamDef[];
  /** How many trailing params may be omitted because they have defaults. */
  requiredCount: number;
  result: Type;
  errors: string[];
  roles: string[];
  implicit: boolean;
  /** An implicit message that xapi routes to a hand-written implementation (its custom actions)
   *  rather than a generated database action: constructors/destructors, effectful setters... */
  handWritten: boolean;
  async: boolean;
  /** A sync call runs on a database task (destroyed on return), as xapi's generate_task_for. */
  syncTask: boolean;
  sessionChecked: boolean;
  hidden: boolean;
  lifecycle: string;
}

export interface ClassDef {
  name: string;
  lower: string;
  inDb: boolean;
  genEvents: boolean;
  getAll: boolean;
  ctorDtor: boolean;
  lifecycle: string;
  fields: FieldDef[];
  field: Map<string, FieldDef>;
  messages: Map<string, MessageDef>;
}

export interface Relation {
  one: { class: string; field: string };
  many: { class: string; field: string };
}

interface RawSchema {
  relations?: Relation[];
  apiVersion: { major: number; minor: number };
  enums: Record<string, string[]>;
  errors: Record<string, string[]>;
  mapKeysRoles: Record<string, Record<string, string[]>>;
  emergencyCalls: string[];
  rbac: { roleUuids?: Record<string, string>; extraPermissions?: { name: string; roles: string[] }[] };
  constants: Record<string, unknown>;
  classes: {
    name: string;
    inDb: boolean;
    genEvents: boolean;
    getAll: boolean;
    ctorDtor: boolean;
    lifecycle: string;
    fields: { name: string; type: string; qualifier: Qualifier; default?: unknown; lifecycle: string; internal?: boolean }[];
    messages: {
      name: string;
      params: { name: string; type: string; default?: unknown }[];
      result: string;
      errors: string[];
      roles: string[];
      implicit: boolean;
      custom?: boolean;
      async: boolean;
      syncTask: boolean;
      sessionChecked: boolean;
      hidden: boolean;
      lifecycle: string;
    }[];
  }[];
}

export class Schema {
  readonly classes = new Map<string, ClassDef>();
  /** Lower-cased class name -> class, for event subscriptions and HANDLE_INVALID lookups. */
  readonly byLower = new Map<string, ClassDef>();
  readonly messages = new Map<string, MessageDef>();
  readonly enums: Record<string, string[]>;
  readonly errors: Record<string, string[]>;
  readonly mapKeysRoles: Record<string, Record<string, string[]>>;
  readonly apiVersion: { major: number; minor: number };
  readonly roleUuids: Record<string, string>;
  readonly extraPermissions: { name: string; roles: string[] }[];
  /** One-to-many relations: the "one" side's set field is kept from the "many" side's ref. */
  readonly relations: Relation[];
  readonly constants: Record<string, unknown>;
  /** The calls a host serves in emergency mode (datamodel.ml's emergency_calls), by wire name. */
  readonly emergencyCalls: readonly string[];

  constructor(raw: RawSchema) {
    this.enums = raw.enums;
    this.errors = raw.errors;
    this.mapKeysRoles = raw.mapKeysRoles;
    this.apiVersion = raw.apiVersion;
    this.roleUuids = raw.rbac.roleUuids ?? {};
    this.extraPermissions = raw.rbac.extraPermissions ?? [];
    this.relations = raw.relations ?? [];
    this.constants = raw.constants;
    this.emergencyCalls = raw.emergencyCalls;
    const same = new Shared();
    for (const rc of raw.classes) {
      const cls: ClassDef = {
        name: rc.name,
        lower: rc.name.toLowerCase(),
        inDb: rc.inDb,
        genEvents: rc.genEvents,
        getAll: rc.getAll,
        ctorDtor: rc.ctorDtor,
        lifecycle: rc.lifecycle,
        fields: [],
        field: new Map(),
        messages: new Map(),
      };
      for (const f of rc.fields) {
        const fd: FieldDef = {
          name: f.name,
          typeText: same.text(f.type),
          type: parseType(f.type),
          qualifier: f.qualifier,
          hasDefault: 'default' in f,
          default: f.default,
          lifecycle: same.text(f.lifecycle),
          internal: f.internal === true,
        };
        cls.fields.push(fd);
        cls.field.set(f.name, fd);
      }
      for (const m of rc.messages) {
        const params = m.params.map((p) => ({
          name: same.text(p.name),
          typeText: same.text(p.type),
          type: parseType(p.type),
          hasDefault: 'default' in p,
          default: p.default,
        }));
        let requiredCount = params.length;
        while (requiredCount > 0 && params[requiredCount - 1]!.hasDefault) requiredCount--;
        const md: MessageDef = {
          cls,
          name: m.name,
          wire: `${rc.name}.${m.name}`,
          params,
          requiredCount,
          result: parseType(m.result),
          errors: same.list(m.errors),
          roles: same.list(m.roles),
          implicit: m.implicit,
          handWritten: m.custom === true,
          async: m.async,
          syncTask: m.syncTask,
          sessionChecked: m.sessionChecked,
          hidden: m.hidden,
          lifecycle: same.text(m.lifecycle),
        };
        cls.messages.set(m.name, md);
        this.messages.set(md.wire, md);
      }
      this.classes.set(cls.name, cls);
      this.byLower.set(cls.lower, cls);
    }
  }

  /** An enum's values, in the datamodel's order and spelling. */
  enumValues<E extends keyof Enums>(name: E): Enums[E][] {
    return (this.enums[name] ?? []) as Enums[E][];
  }

  cls(name: string): ClassDef {
    const c = this.classes.get(name);
    if (!c) throw new Error(`no class ${name} in the schema`);
    return c;
  }

  /** Classes that have a table in the database. */
  dbClasses(): ClassDef[] {
    return [...this.classes.values()].filter((c) => c.inDb);
  }

  static load(path = new URL('../../../schema/xenapi-schema.json', import.meta.url)): Schema {
    return new Schema(JSON.parse(readFileSync(path, 'utf8')) as RawSchema);
  }
}

/**
 * One copy of each equal string and list of strings. The schema repeats a few values thousands
 * of times (2,065 messages have 10 distinct role lists and 57 distinct error lists; parameter
 * names, type names, lifecycles), and JSON.parse makes a copy of each: every host process holds
 * the schema, ~0.4 MiB smaller with them shared. The values are never changed after loading.
 */
class Shared {
  private readonly texts = new Map<string, string>();
  private readonly lists = new Map<string, string[]>();

  text(s: string): string {
    const seen = this.texts.get(s);
    if (seen !== undefined) return seen;
    this.texts.set(s, s);
    return s;
  }

  list(l: string[]): string[] {
    const key = l.join('\n');
    const seen = this.lists.get(key);
    if (seen !== undefined) return seen;
    const shared = l.map((s) => this.text(s));
    this.lists.set(key, shared);
    return shared;
  }
}

/**
 * The version of the datamodel this build implements (xapi's schema_major_vsn.schema_minor_vsn):
 * software_version's db_schema, and what a database file records it was last read with.
 */
export const DB_SCHEMA_VERSION = '5.909';

let loaded: Schema | undefined;
/** The schema, parsed once per process (it is immutable). */
export function schema(): Schema {
  loaded ??= Schema.load();
  return loaded;
}
