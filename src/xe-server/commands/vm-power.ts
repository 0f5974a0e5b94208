// The VM commands that act on selected VMs (cli_operations.ml vm_start, vm_shutdown...).
import { XapiError } from '../../rpc/errors.js';
import { CliFailure } from '../errors.js';
import { boolParam, param } from '../parse.js';
import { doVmOp, waitTask } from '../selectors.js';
import type { CommandTable, Ctx } from '../table.js';
import { hostByNameOrId } from './util.js';

const asyncOp = (ctx: Ctx, method: string, ...args: unknown[]) =>
  (async () => String(await ctx.call(`Async.${method}`, ...(args as never[]))))().then((task) => waitTask(ctx, task));

export function addVmPowerCommands(table: CommandTable): void {
  table
    .define('vm-start', async (ctx) => {
      const force = boolParam(ctx.params, 'force');
      const paused = boolParam(ctx.params, 'paused');
      const on = param(ctx.params, 'on');
      await doVmOp(ctx, { includeControl: true, ignore: ['on', 'paused', 'progress'] }, async (vm) => {
        if (on !== undefined) await asyncOp(ctx, 'VM.start_on', vm.ref, await hostByNameOrId(ctx, on), paused, force);
        else await asyncOp(ctx, 'VM.start', vm.ref, paused, force);
      });
    })
    .define('vm-shutdown', async (ctx) => {
      const force = boolParam(ctx.params, 'force');
      await doVmOp(ctx, { ignore: ['progress'] }, (vm) => asyncOp(ctx, force ? 'VM.hard_shutdown' : 'VM.clean_shutdown', vm.ref));
    })
    .define('vm-reboot', async (ctx) => {
      const force = boolParam(ctx.params, 'force');
      await doVmOp(ctx, { ignore: [] }, (vm) => ctx.call(force ? 'VM.hard_reboot' : 'VM.clean_reboot', vm.ref));
    })
    .define('vm-suspend', async (ctx) => {
      await doVmOp(ctx, { ignore: ['progress'] }, (vm) => asyncOp(ctx, 'VM.suspend', vm.ref));
    })
    .define('vm-resume', async (ctx) => {
      const force = boolParam(ctx.params, 'force');
      const on = param(ctx.params, 'on');
      await doVmOp(ctx, { ignore: ['on', 'progress'] }, async (vm) => {
        if (on !== undefined) await asyncOp(ctx, 'VM.resume_on', vm.ref, await hostByNameOrId(ctx, on), false, force);
        else await asyncOp(ctx, 'VM.resume', vm.ref, false, force);
      });
    })
    .define('vm-pause', async (ctx) => {
      await doVmOp(ctx, { ignore: [] }, (vm) => ctx.call('VM.pause', vm.ref));
    })
    .define('vm-unpause', async (ctx) => {
      await doVmOp(ctx, { ignore: [] }, (vm) => ctx.call('VM.unpause', vm.ref));
    })
    .define('vm-reset-powerstate', async (ctx) => {
      if (!boolParam(ctx.params, 'force')) {
        throw new CliFailure('This operation is dangerous and may cause data loss. This operation must be forced (use --force).');
      }
      await doVmOp(ctx, { ignore: [] }, (vm) => ctx.call('VM.power_state_reset', vm.ref));
    })
    .define('vm-destroy', async (ctx) => {
      const vm = String(await ctx.call('VM.get_by_uuid', param(ctx.params, 'uuid')!));
      if ((await ctx.call('VM.get_is_control_domain', vm)) === true) {
        throw new XapiError('OPERATION_NOT_ALLOWED', ['You cannot destroy a control domain via the CLI']);
      }
      await ctx.call('VM.destroy', vm);
    });
}
