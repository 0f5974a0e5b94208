// How a failed command is reported (xapi_cli.ml exception_handler, cli_util.ml server_error): a
// datamodel error as its text and one `name: value` line per parameter (refs as
// `uuid (name-label)`), other codes as an Error message the client prints, CLI failures as
// `Error: ...`, parse problems with the usage hint.
import { XapiError } from '../rpc/errors.js';
import type { Api } from './api.js';
import type { CliChannel } from './channel.js';
import { CliFailure, ExitWithError, MissingField, MultipleFailure, ParamNotFound, ParseError, UnknownCommand } from './errors.js';
import { xeFacts } from './facts.js';

const USAGE_HINT = "For usage run: 'xe help'\n";

function paramError(ch: CliChannel, s: string, t: string): void {
  ch.stderr(`${s !== '' ? `${s}: ${t}` : t}\n`);
  ch.stderr(USAGE_HINT);
}

async function refConvert(api: Api, v: string): Promise<string> {
  const hit = await api.lookupAny(v);
  if (!hit) return v;
  return hit.uuid + (hit.name !== undefined ? ` (${hit.name})` : '');
}

/** The lines of a datamodel error: its text, then its parameters by name (undefined if unknown code). */
export async function serverErrorLines(api: Api, code: string, params: string[]): Promise<string[] | undefined> {
  const known = xeFacts().errors[code];
  const values = await Promise.all(params.map((p) => refConvert(api, p)));
  if (!known) return undefined;
  const names = code === 'VMS_FAILED_TO_COOPERATE' ? params.map(() => 'VM') : known.params;
  const lines = [known.doc];
  for (let i = 0; i < Math.max(names.length, values.length); i++) {
    lines.push(`${names[i] ?? '<extra>'}: ${values[i] ?? '<unknown>'}`);
  }
  return lines;
}

export async function serverError(api: Api, ch: CliChannel, code: string, params: string[]): Promise<void> {
  const lines = await serverErrorLines(api, code, params);
  if (lines) for (const l of lines) ch.stderr(`${l}\n`);
  else ch.send({ tag: 'error', code, params: await Promise.all(params.map((p) => refConvert(api, p))) });
}

/** A failure as xe's --multiple lists it: the error text and parameter lines, or `CODE: [ p1; p2 ]`. */
export async function failureMessage(api: Api, e: unknown): Promise<string> {
  if (e instanceof XapiError) {
    const params = e.params.map(String);
    const lines = await serverErrorLines(api, e.code, params);
    return lines ? lines.join('\n') : `${e.code}: [ ${params.join('; ')} ]`;
  }
  if (e instanceof CliFailure) return e.message;
  return `INTERNAL_ERROR: [ ${String(e)} ]`;
}

export async function reportFailure(api: Api | undefined, ch: CliChannel, e: unknown): Promise<number> {
  if (e instanceof ExitWithError) return e.code;
  if (e instanceof UnknownCommand) paramError(ch, 'Unknown command', e.message);
  else if (e instanceof ParseError) paramError(ch, 'Syntax error', e.message);
  else if (e instanceof ParamNotFound) paramError(ch, 'Required parameter not found', e.message);
  else if (e instanceof MultipleFailure) for (const [uuid, msg] of e.failures) ch.print(`operation failed on ${uuid}: ${msg}`);
  else if (e instanceof CliFailure) ch.stderr(`Error: ${e.message}\n`);
  else if (e instanceof XapiError && e.code === 'SESSION_AUTHENTICATION_FAILED') {
    paramError(ch, '', String(e.params[0] ?? '') === '' ? 'Username/password must be specified' : 'Authentication failed');
  } else if (e instanceof XapiError && api) await serverError(api, ch, e.code, e.params.map(String));
  else if (e instanceof MissingField && api) await serverError(api, ch, 'Missing parameter', [e.field]);
  else if (api) await serverError(api, ch, 'INTERNAL_ERROR', [`Failure: ${e instanceof Error ? e.message : String(e)}`]);
  else ch.send({ tag: 'error', code: 'INTERNAL_ERROR', params: [String(e)] });
  return 1;
}
