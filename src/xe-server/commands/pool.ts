// Pool commands (cli_operations.ml pool_*): join, eject, coordinator changes.
import { XapiError } from '../../rpc/errors.js';
import type { Rpc } from '../../rpc/rpc.js';
import { boolParam, required } from '../parse.js';
import type { CommandTable } from '../table.js';
import { byUuid, FUSE_TIME, uuidOf } from './util.js';

export function addPoolCommands(table: CommandTable): void {
  table
    .define('pool-join', async (ctx) => {
      const args = [
        required(ctx.params, 'master-address'),
        required(ctx.params, 'master-username'),
        required(ctx.params, 'master-password'),
      ];
      try {
        await ctx.call(boolParam(ctx.params, 'force') ? 'pool.join_force' : 'pool.join', ...args);
        ctx.printer.list([`Host agent will restart and attempt to join pool in ${FUSE_TIME} seconds...`]);
      } catch (e) {
        if (!(e instanceof XapiError && e.code === 'POOL_JOINING_HOST_CONNECTION_FAILED')) throw e;
        ctx.printer.list([
          'Host cannot contact destination host: connection refused.',
          'Check destination host has services running and accessible from this host.',
        ]);
      }
    })
    .define('pool-eject', async (ctx) => {
      const host = await byUuid(ctx, 'host', 'host-uuid');
      const go = async () => {
        await ctx.call('pool.eject', host);
        ctx.printer.list([`Specified host will attempt to restart as a master of a new pool in ${FUSE_TIME} seconds...`]);
      };
      if (boolParam(ctx.params, 'force')) {
        await go();
        return;
      }
      // The VDIs of SRs only this host sees are lost with it: listed before asking.
      const warnings: string[] = [];
      try {
        for (const pbd of (await ctx.call('host.get_PBDs', host)) as Rpc[]) {
          try {
            const sr = await ctx.call('PBD.get_SR', pbd);
            const others: Rpc[] = [];
            for (const p of (await ctx.call('SR.get_PBDs', sr)) as Rpc[]) {
              const h = await ctx.call('PBD.get_host', p);
              if (h !== host) others.push(h);
            }
            if (others.length > 0) continue;
            for (const vdi of (await ctx.call('SR.get_VDIs', sr)) as Rpc[]) {
              try {
                warnings.unshift(`VDI: ${await uuidOf(ctx, 'VDI', vdi)} (${String(await ctx.call('VDI.get_name_label', vdi))})`);
              } catch {
                // gone meanwhile
              }
            }
          } catch {
            // a PBD gone meanwhile
          }
        }
      } catch {
        warnings.length = 0;
      }
      ctx.channel.print("WARNING: Ejecting a host from the pool will reinitialise that host's local SRs.");
      ctx.channel.print('WARNING: Any data contained with the local SRs will be lost.');
      if (warnings.length > 0) {
        ctx.channel.print('The following VDI objects will be destroyed:');
        for (const w of warnings) ctx.channel.print(w);
      }
      if (await ctx.channel.userSaysYes()) await go();
    })
    .define('pool-designate-new-master', async (ctx) => {
      await ctx.call('pool.designate_new_master', await byUuid(ctx, 'host', 'host-uuid'));
    })
    .define('pool-emergency-transition-to-master', async (ctx) => {
      const isMaster = ctx.api.dispatcher.host.role.kind === 'master';
      if (!isMaster || boolParam(ctx.params, 'force')) {
        await ctx.call('pool.emergency_transition_to_master');
        ctx.printer.list([`Host agent will restart and transition to master in ${FUSE_TIME} seconds...`]);
      } else ctx.printer.list(["Host agent is already master. Use '--force' to execute the operation anyway."]);
    })
    .define('pool-emergency-reset-master', async (ctx) => {
      const address = required(ctx.params, 'master-address');
      await ctx.call('pool.emergency_reset_master', address);
      ctx.printer.list([`Host agent will restart and become slave of ${address} in ${FUSE_TIME} seconds...`]);
    })
    .define('pool-recover-slaves', async (ctx) => {
      const hosts = (await ctx.call('pool.recover_slaves')) as Rpc[];
      ctx.printer.list(await Promise.all(hosts.map((h) => uuidOf(ctx, 'host', h))));
    })
    .define('pool-sync-database', async (ctx) => {
      await ctx.call('pool.sync_database');
    });
}
