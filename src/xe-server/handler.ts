// POST /cli (xapi_cli.ml handler): the body is the command's words, one a line. No HTTP response
// follows: the server sends the protocol handshake on the same connection, reads the client's,
// then drives the client with commands (print, stderr, file transfers, exit code).
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Dispatcher } from '../api/dispatch.js';
import { BodyAborted, BodyTimeout, BodyTooLarge, readBody } from '../http/body.js';
import type { Handler } from '../http/handlers.js';
import { RPC_BODY_TIMEOUT_MS, sendHttpError } from '../http/server.js';
import { XapiError } from '../rpc/errors.js';
import type { Rpc } from '../rpc/rpc.js';
import { ByteReader, handshake, MAJOR } from '../xe/protocol.js';
import { Api } from './api.js';
import { CliChannel } from './channel.js';
import { buildTable } from './commands/index.js';
import { ParamNotFound, UnknownCommand } from './errors.js';
import { help } from './help.js';
import { boolOf, type CommandLine, param, parseCommandLine, splitBody } from './parse.js';
import { Printer } from './printer.js';
import { reportFailure } from './render-error.js';
import type { CommandTable, Ctx } from './table.js';

/** Constants.http_limit_max_cli_size. */
export const CLI_BODY_LIMIT = 200 * 1024;

/**
 * Takes the connection away from node's HTTP parser once the request (headers and body) is read,
 * so the protocol's bytes that follow reach us instead of being parsed as another request. Node
 * feeds its parser from the socket's 'data' listeners once anyone listens for 'data'; we remove
 * its own listener and keep ours (the ByteReader's).
 */
function takeOver(req: IncomingMessage): { socket: Socket; reader: ByteReader } {
  const socket = req.socket;
  const httpListeners = socket.listeners('data');
  const reader = new ByteReader(socket);
  for (const l of httpListeners) socket.removeListener('data', l as (...a: unknown[]) => void);
  socket.setTimeout(0);
  socket.resume();
  return { socket, reader };
}

export function cliHandler(dispatcher: Dispatcher): Handler {
  let table: CommandTable | undefined;
  const api = new Api(dispatcher);
  return async (req, res) => {
    let body: Buffer;
    try {
      body = await readBody(req, CLI_BODY_LIMIT, RPC_BODY_TIMEOUT_MS);
    } catch (e) {
      if (e instanceof BodyTooLarge) sendHttpError(res, 500, e.message);
      else if (e instanceof BodyTimeout) sendHttpError(res, 408);
      else if (!(e instanceof BodyAborted)) throw e;
      return;
    }
    const { socket, reader } = takeOver(req);
    socket.on('error', () => {});
    socket.write(handshake());
    try {
      const [major] = await reader.readHandshake();
      if (major !== MAJOR) throw new Error('Version mismatch');
    } catch {
      socket.destroy();
      return;
    }
    const channel = new CliChannel(socket, reader);
    table ??= buildTable(api);
    const code = await run(table, api, channel, body.toString());
    channel.send({ tag: 'exit', code });
    socket.end();
  };
}

async function run(table: CommandTable, api: Api, channel: CliChannel, body: string): Promise<number> {
  const { session: given, words } = splitBody(body);
  let cmd: CommandLine;
  try {
    cmd = parseCommandLine(words);
  } catch (e) {
    return reportFailure(api, channel, e);
  }
  try {
    const minimalText = param(cmd.params, 'minimal');
    const minimal = minimalText === undefined ? false : boolOf('minimal', minimalText);
    const printer = new Printer(channel, minimal);
    if (cmd.name === 'help') {
      help(table, cmd.params, printer);
      printer.flush();
      return 0;
    }
    const spec = table.get(cmd.name);
    if (!spec) throw new UnknownCommand(cmd.name);
    for (const r of spec.reqd) if (param(cmd.params, r) === undefined) throw new ParamNotFound(r);
    const username = param(cmd.params, 'username') ?? '';
    const password = param(cmd.params, 'password') ?? '';
    let session = given;
    if (session === undefined) {
      const version = `${api.dispatcher.host.schema.apiVersion.major}.${api.dispatcher.host.schema.apiVersion.minor}`;
      session = spec.local
        ? String(await api.call('session.slave_local_login_with_password', username, password))
        : String(await api.call('session.login_with_password', username, password, version, 'cli'));
    }
    const ctx: Ctx = {
      api,
      session,
      params: cmd.params,
      printer,
      channel,
      call: (method: string, ...args: Rpc[]) => api.call(method, session, ...args),
    };
    try {
      await spec.run(ctx);
      printer.flush();
      return 0;
    } finally {
      if (given === undefined) await api.call(spec.local ? 'session.local_logout' : 'session.logout', session).catch(() => undefined);
    }
  } catch (e) {
    if (!(e instanceof XapiError) && !(e instanceof Error && e.constructor.name !== 'Error')) {
      api.dispatcher.host.log.error({ err: e, command: cmd.name }, 'xe command failed');
    }
    return reportFailure(api, channel, e);
  }
}
