// xe console (cli_operations.ml console): the text (vt100) console of the one VM the selectors
// pick, control domains included. The client is told to CONNECT to the console's location with
// this session, and relays the terminal until the user types Ctrl+] (src/xe/main.ts httpConnect).
import { XapiError } from '../../rpc/errors.js';
import { fieldLookup, safeGet } from '../records.js';
import { selectVms } from '../selectors.js';
import type { CommandTable } from '../table.js';
import { ExitWithError } from '../errors.js';

export function addConsoleCommands(table: CommandTable): void {
  table.define('console', async (ctx) => {
    const vms = await selectVms(ctx, { includeControl: true, ignore: [] });
    const fail = (text: string) => {
      ctx.channel.stderr(text);
      throw new ExitWithError(1);
    };
    if (vms.length === 0) return fail('No VM found\n');
    if (vms.length > 1) return fail('Multiple VMs found: please narrow your request to one VM.\n');
    const consoles = (await ctx.call('VM.get_consoles', vms[0]!.ref)) as string[];
    let text: string | undefined;
    for (const c of consoles) if ((await ctx.call('console.get_protocol', c)) === 'vt100') text ??= c;
    if (text === undefined) return fail('No text console available\n');
    const name = await safeGet(fieldLookup(vms[0]!.fields, 'name-label'));
    ctx.channel.print(`Connecting to console on VM ${name}. Press Ctrl + ']' to quit.`);
    const location = String(await ctx.call('console.get_location', text));
    ctx.channel.send({ tag: 'httpConnect', text: `${location}&session_id=${ctx.session}` });
    const answer = await ctx.channel.next();
    if (answer.kind !== 'response' || answer.response !== 'ok') throw new XapiError('INTERNAL_ERROR', ['Failure: Failure']);
  });
}
