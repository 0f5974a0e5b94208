// Host commands (cli_operations.ml host_*): selector commands and the careful ones that ask first.
import type { CommandTable, Ctx } from '../table.js';
import { CliFailure } from '../errors.js';
import { type Field, makeFields, RefNames } from '../records.js';
import { printRecord } from '../generic.js';
import { boolParam, param } from '../parse.js';
import { doHostOp } from '../selectors.js';
import { byUuid, record } from './util.js';

/** host_careful_op: without --force, the warnings and a yes/no question first. */
async function careful(ctx: Ctx, warnings: string[], op: (host: string) => Promise<unknown>): Promise<void> {
  const host = await byUuid(ctx, 'host', 'uuid');
  if (boolParam(ctx.params, 'force')) {
    await op(host);
    return;
  }
  for (const w of warnings) ctx.channel.print(w);
  if (await ctx.channel.userSaysYes()) await op(host);
}

export function addHostCommands(table: CommandTable): void {
  table
    .define('host-disable', async (ctx) => {
      const autoEnable = boolParam(ctx.params, 'auto-enable', true);
      const twoParams = ctx.api.dispatcher.host.schema.messages.get('host.disable')!.params.length > 1;
      await doHostOp(ctx, ['auto-enable'], (_n, h) =>
        twoParams ? ctx.call('host.disable', h.ref, autoEnable) : ctx.call('host.disable', h.ref),
      );
    })
    .define('host-enable', async (ctx) => {
      await doHostOp(ctx, [], async (_n, h) => {
        await ctx.call('host.remove_from_other_config', h.ref, 'MAINTENANCE_MODE');
        await ctx.call('host.enable', h.ref);
      });
    })
    .define('host-reboot', async (ctx) => {
      await doHostOp(ctx, [], (_n, h) => ctx.call('host.reboot', h.ref));
    })
    .define('host-shutdown', async (ctx) => {
      await doHostOp(ctx, [], (_n, h) => ctx.call('host.shutdown', h.ref));
    })
    .define('host-evacuate', async (ctx) => {
      const networkUuid = param(ctx.params, 'network-uuid');
      const network = networkUuid === undefined ? 'OpaqueRef:NULL' : String(await ctx.call('network.get_by_uuid', networkUuid));
      // xapi reads batch-size as an unsigned 64-bit decimal, nothing else.
      const size = param(ctx.params, 'batch-size');
      if (size !== undefined && !/^\d+$/.test(size)) throw new CliFailure(`Invalid batch-size: ${size}`);
      const batch = size === undefined ? 0 : Number(size);
      await doHostOp(ctx, ['network-uuid', 'batch-size'], (_n, h) => ctx.call('host.evacuate', h.ref, network, batch), false);
    })
    .define('host-get-vms-which-prevent-evacuation', async (ctx) => {
      const host = await byUuid(ctx, 'host', 'uuid');
      const vms = (await ctx.call('host.get_vms_which_prevent_evacuation', host)) as Record<string, string[]>;
      const names = new RefNames(ctx);
      const wanted = param(ctx.params, 'params');
      const list = wanted === undefined ? ['uuid', 'name-label', 'reason'] : wanted === 'all' ? [] : wanted.split(',');
      for (const [vm, reasons] of Object.entries(vms)) {
        const reason: Field = {
          name: 'reason',
          hidden: false,
          expensive: false,
          deprecated: false,
          caseInsensitive: false,
          get: async () => reasons.join(','),
        };
        const fields = [...makeFields(ctx, 'vm', { ref: vm, rec: () => record(ctx, 'VM', vm) }, names), reason];
        ctx.printer.table([await printRecord(list.length === 0 ? fields : fields.filter((f) => list.includes(f.name)), false)]);
      }
    })
    .define('host-compute-free-memory', async (ctx) => {
      await doHostOp(ctx, [], async (_n, h) => ctx.printer.msg(String(await ctx.call('host.compute_free_memory', h.ref))), false);
    })
    .define('host-compute-memory-overhead', async (ctx) => {
      await doHostOp(ctx, [], async (_n, h) => ctx.printer.msg(String(await ctx.call('host.compute_memory_overhead', h.ref))), false);
    })
    .define('host-forget', (ctx) =>
      careful(
        ctx,
        [
          'WARNING: A host should only be forgotten if it is physically unrecoverable;',
          "WARNING: if possible, Hosts should be 'ejected' from the Pool instead.",
          'WARNING: Once a host has been forgotten it will have to be re-installed.',
          'WARNING: This operation is irreversible.',
        ],
        (h) => ctx.call('host.destroy', h),
      ),
    )
    .define('host-declare-dead', (ctx) =>
      careful(
        ctx,
        [
          'WARNING: A host should only be declared dead if it is verified offline.',
          'WARNING: Performing this operation if the host is still online and has any',
          'WARNING: running VMs may lead to possible data loss and/or corruption.',
        ],
        (h) => ctx.call('host.declare_dead', h),
      ),
    );
}
