// The management interface (xapi_host.ml management_reconfigure / management_disable,
// xapi_pool.ml management_reconfigure; network.md §2-3): the inventory's MANAGEMENT_INTERFACE
// names the management network's bridge; moving it brings the new PIF up as management first,
// then the flags follow the inventory. The old PIF stays plugged.
//
// A simulated host keeps listening where `--address` put it whatever its management interface:
// disabling it records the change (inventory, flags) without closing the API's sockets.
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { Ref } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import type { Nm } from './nm.js';
import { onHost } from './pif.js';

async function assertNoHa(db: Db): Promise<void> {
  const pool = (await db.all('pool'))[0]?.[1];
  if (pool?.ha_enabled) throw new XapiError('HA_IS_ENABLED', []);
}

/** assert_usable_for_management: not a bond member, and an address of the primary type configured. */
function assertUsable(ref: string, pif: Row<'PIF'>, type: Row<'PIF'>['primary_address_type']): void {
  if (pif.bond_slave_of !== NULL_REF) throw new XapiError('CANNOT_PLUG_BOND_SLAVE', [ref]);
  if (type === 'IPv4' && pif.ip_configuration_mode === 'None') throw new XapiError('PIF_HAS_NO_NETWORK_CONFIGURATION', [ref]);
  if (type === 'IPv6' && pif.ipv6_configuration_mode === 'None') throw new XapiError('PIF_HAS_NO_V6_NETWORK_CONFIGURATION', [ref]);
}

export class ManagementService {
  constructor(private readonly nm: Nm) {}

  /** host.management_reconfigure's work, on the PIF's host. */
  async reconfigure(call: Call, ref: Ref<'PIF'>): Promise<void> {
    const db = call.db;
    await assertNoHa(db);
    const pif = await db.get('PIF', ref);
    const network = await db.get('network', pif.network);
    if (pif.managed) assertUsable(ref, pif, pif.primary_address_type);
    // (xapi compares the address type with the current management PIF's, inside a catch-all
    // that swallows its own error: no check survives.)
    if (pif.management) return;
    // network.attach as management: the network's PIF here brought up (bond members refused)
    for (const [local, row] of await db.find('PIF', { host: pif.host, network: pif.network })) {
      if (row.bond_slave_of !== NULL_REF) throw new XapiError('CANNOT_PLUG_BOND_SLAVE', [local]);
      await this.nm.bringPifUp(db, local, true);
    }
    await this.nm.setManagement(network.bridge, pif.primary_address_type);
    await this.nm.updateManagementFlags(db, pif.host);
    await this.nm.dom0NetworkingChange(db, pif.host);
  }

  /** host.management_disable, where it is called. */
  async disable(call: Call): Promise<void> {
    const db = call.db;
    await assertNoHa(db);
    if (call.host.role.kind === 'slave') throw new XapiError('SLAVE_REQUIRES_MANAGEMENT_INTERFACE', []);
    await this.nm.setManagement('');
    await this.nm.updateManagementFlags(db, call.host.hostRef);
  }

  /** pool.management_reconfigure, on the coordinator: every host's PIF on the network, members first. */
  async poolReconfigure(call: Call, network: Ref<'network'>, recoverSlaves: () => Promise<unknown>): Promise<void> {
    const db = call.db;
    await assertNoHa(db);
    const pifs = (await db.get('network', network)).PIFs;
    const byHost = new Map<string, Ref<'PIF'>>();
    for (const p of pifs) byHost.set((await db.get('PIF', p)).host, p);
    const hosts = (await db.all('host')).map(([ref]) => ref);
    for (const host of hosts) if (!byHost.has(host)) throw new XapiError('PIF_NOT_PRESENT', [host, network]);
    const first = pifs.length > 0 ? await db.get('PIF', pifs[0]!) : undefined;
    for (const p of pifs) {
      const row = await db.get('PIF', p);
      if (row.primary_address_type !== first!.primary_address_type) throw new XapiError('PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE', [p]);
      assertUsable(p, row, row.primary_address_type);
    }
    const coordinator = call.host.hostRef;
    for (const host of [...hosts.filter((h) => h !== coordinator), ...hosts.filter((h) => h === coordinator)]) {
      const pif = byHost.get(host)!;
      await onHost(call, host, 'host.management_reconfigure', [pif], () => this.reconfigure(call, pif));
    }
    await recoverSlaves();
  }
}

export function register(r: Registry, svc: ManagementService): void {
  r.implement('host.management_reconfigure', async (call, [pif]) => {
    const host = (await call.db.get('PIF', pif)).host;
    await onHost(call, host, 'host.management_reconfigure', [pif], () => svc.reconfigure(call, pif));
  })
    .implement('host.management_disable', (call) => svc.disable(call))
    .implement('host.get_management_interface', async (call, [host]) => {
      const [pif] = await call.db.find('PIF', { host, management: true });
      if (!pif) throw new XapiError('INTERNAL_ERROR', ['Not_found']);
      return pif[0];
    })
    .implement('pool.management_reconfigure', (call, [network]) =>
      svc.poolReconfigure(call, network, async () => {
        const recover = r.get('pool.recover_slaves');
        if (recover) await recover(call, []);
      }),
    );
}
