// The server's reading of the words the client sent (cli_frontend.ml parse_commandline): the
// command name, then `--flag` -> (flag, "true"), `-x VALUE` for the few known switches,
// `key=value` split at the first `=`, a bare word -> (word, "").
import { CliFailure, ParseError, ParamNotFound } from './errors.js';

export type Params = [name: string, value: string][];

export interface CommandLine {
  name: string;
  params: Params;
}

const SWITCHES: Record<string, string> = {
  '--force': 'force',
  '--live': 'live',
  '--internal': 'internal',
  '-u': 'username',
  '-pw': 'password',
  '-s': 'server',
  '-h': 'server',
  '-p': 'port',
  '--debug': 'debug',
  '--minimal': 'minimal',
  '--all': 'all',
};

export function parseCommandLine(words: string[]): CommandLine {
  // xapi re-raises every failure here as ParseError "" (so the text after "Syntax error: " is empty).
  const name = words[0];
  if (name === undefined || name.includes('=')) throw new ParseError('');
  const params: Params = [];
  for (let i = 1; i < words.length; i++) {
    const w = words[i]!;
    if (w.startsWith('--')) params.push([w.slice(2), 'true']);
    else if (w.startsWith('-')) {
      const to = SWITCHES[w];
      if (to === undefined || i + 1 >= words.length) throw new ParseError('');
      params.push([to, words[++i]!]);
    } else {
      const eq = w.indexOf('=');
      params.push(eq < 0 ? [w, ''] : [w.slice(0, eq), w.slice(eq + 1)]);
    }
  }
  return { name, params };
}

/** The body of the POST: lines, a trailing CR dropped from each; an optional first `session_id=` line. */
export function splitBody(body: string): { session?: string; words: string[] } {
  const words = body.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  if (words[0]?.startsWith('session_id=')) return { session: words[0].slice(11), words: words.slice(1) };
  return { words };
}

/** The first value given for a name (xapi's List.assoc). */
export const param = (params: Params, name: string): string | undefined => params.find(([k]) => k === name)?.[1];

export const has = (params: Params, name: string): boolean => params.some(([k]) => k === name);

export function required(params: Params, name: string): string {
  const v = param(params, name);
  if (v === undefined) throw new ParamNotFound(name);
  return v;
}

const TRUE = new Set(['true', 't', 'yes', 'y', '1']);
const FALSE = new Set(['false', 'f', 'no', 'n', '0']);

/** record_util.ml bool_of_string, as the server reads flags such as --force and --multiple. */
export function boolOf(name: string, value: string): boolean {
  const v = value.toLowerCase();
  if (TRUE.has(v)) return true;
  if (FALSE.has(v)) return false;
  throw new CliFailure(`Failed to parse parameter '${name}': Expected 'true','t','yes','y','1','false','f','no','n','0' got ${value}`);
}

export function boolParam(params: Params, name: string, dflt = false): boolean {
  const v = param(params, name);
  return v === undefined ? dflt : boolOf(name, v);
}

/**
 * The params `NAME:KEY=VALUE` as [KEY, VALUE] (cli_operations.ml read_map_params): any word
 * starting with NAME and longer than NAME plus one separator, so the legacy `NAME-KEY=` works too.
 */
export function mapParams(params: Params, name: string): [string, string][] {
  const len = name.length + 1;
  return params.filter(([k]) => k.startsWith(name) && k.length > len).map(([k, v]) => [k.slice(len), v]);
}

export const setParams = (params: Params, name: string): string[] => mapParams(params, name).map(([k]) => k);

/** An Rpc struct from pairs (a map argument). */
export function struct(pairs: [string, string][]): { [k: string]: string } {
  const s = Object.create(null) as { [k: string]: string };
  for (const [k, v] of pairs) if (!(k in s)) s[k] = v;
  return s;
}

/** The parameters never used as record filters (cli_operations.ml stdparams). */
export const STD_PARAMS = ['server', 'password', 'port', 'username', 'minimal', 'force', 'multiple', 'all', 'message-priority', 'trace'];
