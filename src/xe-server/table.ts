// The command table: each command's parameters, help and flags (from xapi's table, see facts.ts)
// with the code that runs it. Only commands the project implements are in it.
import type { Rpc } from '../rpc/rpc.js';
import type { Api } from './api.js';
import type { CliChannel } from './channel.js';
import { xeFacts } from './facts.js';
import type { Params } from './parse.js';
import type { Printer } from './printer.js';

export interface Ctx {
  api: Api;
  session: string;
  params: Params;
  printer: Printer;
  channel: CliChannel;
  /** An API call with this command's session first. */
  call(method: string, ...args: Rpc[]): Promise<Rpc>;
}

export interface CommandSpec {
  name: string;
  reqd: string[];
  optn: string[];
  help: string;
  flags: string[];
  /** Logs in with session.slave_local_login_with_password (xapi's *_local_session commands). */
  local: boolean;
  run(ctx: Ctx): Promise<void>;
}

export class CommandTable {
  readonly commands = new Map<string, CommandSpec>();

  /** A command of xapi's table, with its parameters, help and flags as xapi has them. */
  define(name: string, run: (ctx: Ctx) => Promise<void>): this {
    const f = xeFacts().commands[name];
    if (!f) throw new Error(`no command ${name} in xapi's table`);
    return this.add({ name, reqd: f.reqd, optn: f.optn, help: f.help, flags: f.flags, local: f.impl.endsWith('_local_session'), run });
  }

  add(spec: CommandSpec): this {
    if (this.commands.has(spec.name)) throw new Error(`duplicate command ${spec.name}`);
    this.commands.set(spec.name, spec);
    return this;
  }

  get(name: string): CommandSpec | undefined {
    return this.commands.get(name);
  }
}
