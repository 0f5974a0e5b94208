// XenAPI types as the datamodel spells them ("VM ref", "(string -> enum vm_operations) map",
// "event record set"...), parsed once into a small tree that the marshaller and the database
// walk. Internal values: string/uuid/ref/enum/datetime -> string (datetimes in xapi's
// YYYYMMDDTHH:MM:SSZ text), int/float -> number, bool -> boolean, set -> array,
// map -> plain object with stringified keys, record -> object keyed by field name,
// option -> the value or undefined.

export type Type =
  | { k: 'string' }
  | { k: 'int' }
  | { k: 'float' }
  | { k: 'bool' }
  | { k: 'datetime' }
  | { k: 'void' }
  | { k: 'enum'; name: string }
  | { k: 'ref'; cls: string }
  | { k: 'set'; of: Type }
  | { k: 'map'; key: Type; val: Type }
  | { k: 'record'; cls: string }
  | { k: 'option'; of: Type }
  | { k: 'eventBatch' }
  | { k: 'anyRecord' }
  /** A value that is already a wire tree (Rpc): event batches, system.isAlive's echo. */
  | { k: 'rpc' };

export const RPC_TYPE: Type = { k: 'rpc' };

const cache = new Map<string, Type>();

export function parseType(text: string): Type {
  let t = cache.get(text);
  if (!t) {
    t = parse(text.trim());
    cache.set(text, t);
  }
  return t;
}

function parse(s: string): Type {
  if (s.endsWith(' set') && !s.endsWith(' map')) return { k: 'set', of: parse(s.slice(0, -4).trim()) };
  if (s.endsWith(' option')) return { k: 'option', of: parse(s.slice(0, -7).trim()) };
  if (s.endsWith(' map')) {
    // "(K -> V) map": split at the top-level arrow
    const inner = s.slice(0, -4).trim();
    if (!inner.startsWith('(') || !inner.endsWith(')')) throw new Error(`bad map type ${s}`);
    const body = inner.slice(1, -1);
    let depth = 0;
    for (let i = 0; i < body.length; i++) {
      const ch = body[i];
      if (ch === '(') depth++;
      else if (ch === ')') depth--;
      else if (depth === 0 && body.startsWith(' -> ', i)) {
        return { k: 'map', key: parse(body.slice(0, i).trim()), val: parse(body.slice(i + 4).trim()) };
      }
    }
    throw new Error(`bad map type ${s}`);
  }
  if (s.startsWith('enum ')) return { k: 'enum', name: s.slice(5) };
  if (s.endsWith(' ref')) return { k: 'ref', cls: s.slice(0, -4) };
  if (s === '<class> record') return { k: 'anyRecord' };
  if (s.endsWith(' record')) return { k: 'record', cls: s.slice(0, -7) };
  switch (s) {
    case 'string':
    case 'uuid':
      return { k: 'string' };
    case 'int':
      return { k: 'int' };
    case 'float':
      return { k: 'float' };
    case 'bool':
      return { k: 'bool' };
    case 'datetime':
      return { k: 'datetime' };
    case 'void':
      return { k: 'void' };
    case 'an event batch':
      return { k: 'eventBatch' };
  }
  throw new Error(`unknown datamodel type ${s}`);
}

export const NULL_REF = 'OpaqueRef:NULL';
export const EPOCH = '19700101T00:00:00Z';

/** The value a field of this type holds when nothing else is known (xapi's zero values). */
export function zeroValue(t: Type): unknown {
  switch (t.k) {
    case 'string':
      return '';
    case 'int':
    case 'float':
      return 0;
    case 'bool':
      return false;
    case 'datetime':
      return EPOCH;
    case 'ref':
      return NULL_REF;
    case 'set':
      return [];
    case 'map':
      return {};
    case 'option':
      return undefined;
    case 'enum':
      return undefined; // callers substitute the first enum value
    default:
      return undefined;
  }
}

/** xapi's datetime text for a JS Date: YYYYMMDDTHH:MM:SSZ. */
export function formatDateTime(d: Date): string {
  const p = (n: number) => (n < 10 ? '0' + n : '' + n);
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}T${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}Z`;
}

export function nowDateTime(): string {
  return formatDateTime(new Date());
}

/**
 * Parses the datetime forms xapi accepts on input: YYYYMMDDTHH:MM:SSZ and RFC 3339
 * (YYYY-MM-DDTHH:MM:SS[.frac][Z|+hh:mm]); a missing zone means UTC. Returns undefined if neither.
 */
export function parseDateTime(text: string): Date | undefined {
  const m = /^(\d{4})-?(\d{2})-?(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:?\d{2})?$/.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, zone] = m;
  let ms = Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +s!);
  if (zone && zone !== 'Z') {
    const sign = zone[0] === '-' ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    ms -= sign * (+digits.slice(0, 2) * 60 + +digits.slice(2)) * 60_000;
  }
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? undefined : date;
}
