// VIF and network commands (cli_operations.ml vif_*, net_*).
import type { Rpc, RpcStruct } from '../../rpc/rpc.js';
import { boolParam, has, param, required } from '../parse.js';
import type { CommandTable } from '../table.js';
import { byUuid, opt, uuidOf } from './util.js';

const rec = (o: Record<string, Rpc>): RpcStruct => Object.assign(Object.create(null) as RpcStruct, o);

/** Record_util.random_mac_local: locally administered, unicast. */
function randomMac(): string {
  const b = Array.from({ length: 6 }, () => Math.floor(Math.random() * 256));
  b[0] = (b[0]! | 0x2) & ~0x1;
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export function addNetworkCommands(table: CommandTable): void {
  table
    .define('vif-create', async (ctx) => {
      const mac = opt(ctx, 'mac');
      const vm = await byUuid(ctx, 'VM', 'vm-uuid');
      const network = await byUuid(ctx, 'network', 'network-uuid');
      const mtu = await ctx.call('network.get_MTU', network);
      const vif = await ctx.call(
        'VIF.create',
        rec({
          device: required(ctx.params, 'device'),
          network,
          VM: vm,
          MAC: mac === 'random' ? randomMac() : mac,
          MTU: mtu,
          other_config: rec({}),
          currently_attached: false,
          qos_algorithm_type: '',
          qos_algorithm_params: rec({}),
          locking_mode: 'network_default',
          ipv4_allowed: [],
          ipv6_allowed: [],
        }),
      );
      ctx.printer.list([await uuidOf(ctx, 'VIF', vif)]);
    })
    .define('vif-destroy', async (ctx) => {
      await ctx.call('VIF.destroy', await byUuid(ctx, 'VIF', 'uuid'));
    })
    .define('vif-plug', async (ctx) => {
      await ctx.call('VIF.plug', await byUuid(ctx, 'VIF', 'uuid'));
    })
    .define('vif-unplug', async (ctx) => {
      await ctx.call(boolParam(ctx.params, 'force') ? 'VIF.unplug_force' : 'VIF.unplug', await byUuid(ctx, 'VIF', 'uuid'));
    })
    .define('network-create', async (ctx) => {
      const mtu = has(ctx.params, 'MTU') ? BigInt(param(ctx.params, 'MTU')!) : 1500n;
      const net = await ctx.call(
        'network.create',
        rec({
          name_label: required(ctx.params, 'name-label'),
          name_description: opt(ctx, 'name-description'),
          MTU: mtu,
          other_config: rec({}),
          bridge: opt(ctx, 'bridge'),
          managed: boolParam(ctx.params, 'managed', true),
          tags: [],
        }),
      );
      ctx.printer.list([await uuidOf(ctx, 'network', net)]);
    })
    .define('network-destroy', async (ctx) => {
      await ctx.call('network.destroy', await byUuid(ctx, 'network', 'uuid'));
    });
}
