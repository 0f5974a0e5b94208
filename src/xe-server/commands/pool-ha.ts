// The pool's HA commands (cli_operations.ml pool_ha_*): enable with heartbeat SRs and ha-config:,
// disable, the restart pause, and the planner's answers printed as xe prints them.
import { XapiError } from '../../rpc/errors.js';
import { mapParams, param } from '../parse.js';
import type { CommandTable } from '../table.js';

/** OCaml's Int64.of_string, failing as xapi's CLI reports it. */
function int64(text: string | undefined): number {
  if (text === undefined || !/^-?\d+$/.test(text)) throw new XapiError('INTERNAL_ERROR', ['Failure: Int64.of_string']);
  return Number(text);
}

export function addPoolHaCommands(table: CommandTable): void {
  table
    .define('pool-ha-enable', async (ctx) => {
      const uuids = param(ctx.params, 'heartbeat-sr-uuids');
      const srs: string[] = [];
      for (const uuid of uuids === undefined ? [] : uuids.split(',')) srs.push(String(await ctx.call('SR.get_by_uuid', uuid)));
      await ctx.call('pool.enable_ha', srs, Object.fromEntries(mapParams(ctx.params, 'ha-config')));
    })
    .define('pool-ha-disable', async (ctx) => {
      await ctx.call('pool.disable_ha');
    })
    .define('pool-ha-prevent-restarts-for', async (ctx) => {
      await ctx.call('pool.ha_prevent_restarts_for', int64(param(ctx.params, 'seconds')));
    })
    .define('pool-ha-compute-max-host-failures-to-tolerate', async (ctx) => {
      ctx.printer.list([String(await ctx.call('pool.ha_compute_max_host_failures_to_tolerate'))]);
    })
    .define('pool-ha-compute-hypothetical-max-host-failures-to-tolerate', async (ctx) => {
      // vm-uuid= and restart-priority= given in pairs, in order
      const vms = ctx.params.filter(([k]) => k === 'vm-uuid').map(([, v]) => v);
      const priorities = ctx.params.filter(([k]) => k === 'restart-priority').map(([, v]) => v);
      if (vms.length !== priorities.length)
        throw new XapiError('INTERNAL_ERROR', ['Failure: Call requires an equal number of vm-uuid and restart-priority arguments']);
      const configuration: Record<string, string> = {};
      for (const [i, uuid] of vms.entries()) configuration[String(await ctx.call('VM.get_by_uuid', uuid))] = priorities[i]!;
      ctx.printer.list([String(await ctx.call('pool.ha_compute_hypothetical_max_host_failures_to_tolerate', configuration))]);
    })
    .define('pool-ha-compute-vm-failover-plan', async (ctx) => {
      const hosts: string[] = [];
      for (const uuid of (param(ctx.params, 'host-uuids') ?? '').split(',')) hosts.push(String(await ctx.call('host.get_by_uuid', uuid)));
      // every VM resident on those hosts but their control domains
      const vms: string[] = [];
      for (const h of hosts)
        for (const vm of (await ctx.call('host.get_resident_VMs', h)) as string[])
          if ((await ctx.call('VM.get_is_control_domain', vm)) !== true) vms.push(vm);
      const plan = (await ctx.call('pool.ha_compute_vm_failover_plan', hosts, vms)) as Record<string, Record<string, string>>;
      const named = async (cls: string, ref: string) =>
        `${String(await ctx.call(`${cls}.get_uuid`, ref))} (${String(await ctx.call(`${cls}.get_name_label`, ref))})`;
      const rows: [string, string][] = [['VM', 'Destination Host or Error']];
      for (const [vm, result] of Object.entries(plan)) {
        const where =
          result.host !== undefined ? await named('host', result.host) : result.error_code !== undefined ? result.error_code : 'UNKNOWN';
        rows.push([await named('VM', vm), where]);
      }
      ctx.printer.table([rows]);
    });
}
