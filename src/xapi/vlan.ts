// VLANs (xapi_vlan.ml; network.md §3): VLAN.create and destroy on the tagged PIF's host, with
// networkd's VLAN device made and removed; pool.create_VLAN_from_PIF and the deprecated
// pool.create_VLAN, which make one on every host of the pool (undone where made if one fails);
// PIF.create_VLAN and PIF.destroy, the deprecated per-host forms.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Ref } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import { newRef } from '../api/implicit.js';
import { type Nm, pifKind } from './nm.js';
import { type PifService, assertManaged, assertNoProtection, onHost } from './pif.js';

/** The MAC a VLAN's untagged PIF shows (xapi's dummy). */
const VLAN_MAC = 'fe:ff:ff:ff:ff:ff';

export class VlanService {
  constructor(
    private readonly nm: Nm,
    private readonly pifs: PifService,
  ) {}

  /** VLAN.create, on the tagged PIF's host. */
  async create(call: Call, taggedRef: Ref<'PIF'>, tag: number, network: Ref<'network'>): Promise<Ref<'VLAN'>> {
    const db = call.db;
    const net = await db.get('network', network);
    if (!net.managed) throw new XapiError('NETWORK_UNMANAGED', [network]);
    const tagged = await db.get('PIF', taggedRef);
    const [other] = await db.find('PIF', { host: tagged.host, network });
    if (other) throw new XapiError('NETWORK_ALREADY_CONNECTED', [tagged.host, other[0]]);
    assertManaged(taggedRef, tagged);
    const kind = pifKind(tagged);
    if (kind.kind === 'physical' && tagged.bond_slave_of !== NULL_REF) throw new XapiError('CANNOT_ADD_VLAN_TO_BOND_SLAVE', [taggedRef]);
    if (kind.kind === 'vlan') throw new XapiError('PIF_IS_VLAN', [taggedRef]);
    if (kind.kind === 'tunnel-access') throw new XapiError('IS_TUNNEL_ACCESS_PIF', [taggedRef]);
    // (The SR-IOV compatibility checks need network_sriov rows, which nothing makes yet.)
    if (!Number.isInteger(tag) || tag < 0 || tag > 4094) throw new XapiError('VLAN_TAG_INVALID', [String(tag)]);
    const device = tagged.device;
    if ((await db.find('VLAN', { tagged_PIF: taggedRef })).some(([, v]) => Number(v.tag) === tag)) {
      throw new XapiError('PIF_VLAN_EXISTS', [device]);
    }
    if (await this.nm.networkd.hasVlan(device, tag)) throw new XapiError('VLAN_IN_USE', [device, String(tag)]);
    // The untagged PIF shares the tagged PIF's MTU and metrics.
    const vlan = newRef() as Ref<'VLAN'>;
    const untagged = newRef() as Ref<'PIF'>;
    await db.create('PIF', untagged, {
      uuid: randomUUID(),
      device,
      network,
      host: tagged.host,
      MAC: VLAN_MAC,
      MTU: tagged.MTU,
      VLAN: tag,
      metrics: tagged.metrics,
      physical: false,
      currently_attached: false,
      igmp_snooping_status: 'unknown',
      ip_configuration_mode: 'None',
      IP: '',
      netmask: '',
      gateway: '',
      DNS: '',
      VLAN_master_of: vlan,
      management: false,
      other_config: {},
      disallow_unplug: false,
      ipv6_configuration_mode: 'None',
      IPv6: [''],
      ipv6_gateway: '',
      primary_address_type: tagged.primary_address_type,
      managed: true,
      properties: {},
      capabilities: [],
    });
    await db.create('VLAN', vlan, { uuid: randomUUID(), tagged_PIF: taggedRef, untagged_PIF: untagged, tag, other_config: {} });
    // As xapi: a plug that fails leaves the rows (no rollback).
    await this.pifs.plug(call, untagged);
    return vlan;
  }

  /** VLAN.destroy, on the tagged PIF's host. */
  async destroy(call: Call, ref: Ref<'VLAN'>): Promise<void> {
    const db = call.db;
    const vlan = await db.get('VLAN', ref);
    const untagged = await db.tryGet('PIF', vlan.untagged_PIF);
    if (!untagged) {
      await db.destroy('VLAN', ref); // an orphan
      return;
    }
    const pifRef = vlan.untagged_PIF;
    if ((untagged.bond_slave_of !== NULL_REF && (await db.tryGet('Bond', untagged.bond_slave_of))) || untagged.bond_master_of.length > 0) {
      throw new XapiError('PIF_ALREADY_BONDED', [pifRef]);
    }
    if (call.host.role.kind === 'slave' && untagged.currently_attached && untagged.management) {
      throw new XapiError('PIF_IS_MANAGEMENT_INTERFACE', [pifRef]);
    }
    await assertNoProtection(db, untagged);
    if (untagged.VLAN < 0) throw new XapiError('PIF_IS_PHYSICAL', []);
    await this.pifs.unplug(call, pifRef);
    await db.destroy('VLAN', ref).catch(() => undefined);
    // The metrics are the tagged PIF's: they stay.
    await db.destroy('PIF', pifRef);
  }

  /** PIF.create_VLAN's work on `host`: the device's untagged PIF carries it. */
  async createFromDevice(call: Call, device: string, network: Ref<'network'>, host: Ref<'host'>, tag: number): Promise<Ref<'PIF'>> {
    const base = (await call.db.find('PIF', { host })).find(([, p]) => p.device === device && p.VLAN === -1);
    if (!base) throw new XapiError('INVALID_VALUE', ['device', device]);
    const vlan = await this.createOn(call, base[0], tag, network);
    return (await call.db.get('VLAN', vlan)).untagged_PIF;
  }

  /** VLAN.create as a client calls it: on the tagged PIF's host. */
  async createOn(call: Call, tagged: Ref<'PIF'>, tag: number, network: Ref<'network'>): Promise<Ref<'VLAN'>> {
    const host = (await call.db.get('PIF', tagged)).host;
    return onHost(call, host, 'VLAN.create', [tagged, tag, network], () => this.create(call, tagged, tag, network));
  }

  /** VLAN.destroy as a client calls it. */
  async destroyOn(call: Call, vlan: Ref<'VLAN'>): Promise<void> {
    const row = await call.db.get('VLAN', vlan);
    const tagged = await call.db.tryGet('PIF', row.tagged_PIF);
    if (!tagged) return this.destroy(call, vlan);
    await onHost(call, tagged.host, 'VLAN.destroy', [vlan], () => this.destroy(call, vlan));
  }

  /** A PIF plugged through its host (best effort after a pool-wide creation). */
  private async plugOn(call: Call, pif: Ref<'PIF'>): Promise<void> {
    const host = (await call.db.get('PIF', pif)).host;
    await onHost(call, host, 'PIF.plug', [pif], () => this.pifs.plug(call, pif));
  }

  /** pool.create_VLAN_from_PIF: on every PIF of `pif`'s network on a live host. */
  async poolCreateFromPif(call: Call, pif: Ref<'PIF'>, network: Ref<'network'>, tag: number): Promise<Ref<'PIF'>[]> {
    const db = call.db;
    const base = await db.get('PIF', pif);
    const onNetwork = (await db.get('network', base.network)).PIFs;
    const live: Ref<'PIF'>[] = [];
    for (const p of onNetwork) {
      const host = await db.get('host', (await db.get('PIF', p)).host);
      const metrics = await db.tryGet('host_metrics', host.metrics);
      if (metrics?.live) live.push(p);
    }
    const created: Ref<'VLAN'>[] = [];
    try {
      for (const p of live) created.push(await this.createOn(call, p, tag, network));
    } catch (e) {
      for (const vlan of created) await this.destroyOn(call, vlan).catch(() => undefined);
      throw e;
    }
    const untagged: Ref<'PIF'>[] = [];
    for (const vlan of created) untagged.push((await db.get('VLAN', vlan)).untagged_PIF);
    for (const p of untagged)
      await this.plugOn(call, p).catch((e: unknown) => call.host.log.warn({ err: e, pif: p }, 'plugging a VLAN PIF failed'));
    return untagged;
  }

  /** The deprecated pool.create_VLAN: PIF.create_VLAN on every host. */
  async poolCreate(call: Call, device: string, network: Ref<'network'>, tag: number): Promise<Ref<'PIF'>[]> {
    const db = call.db;
    const created: Ref<'PIF'>[] = [];
    try {
      for (const [host] of await db.all('host')) {
        created.push(
          await onHost(call, host, 'PIF.create_VLAN', [device, network, host, tag], () =>
            this.createFromDevice(call, device, network, host, tag),
          ),
        );
      }
    } catch (e) {
      for (const pif of created) {
        const host = (await db.tryGet('PIF', pif))?.host;
        if (!host) continue;
        await onHost(call, host, 'PIF.destroy', [pif], () => this.destroyPif(call, pif)).catch(async (err: unknown) => {
          // A host that is offline loses the row only; any other failure leaves it to the operator.
          if (err instanceof XapiError && err.code === 'HOST_OFFLINE') await db.destroy('PIF', pif).catch(() => undefined);
        });
      }
      throw e;
    }
    for (const p of created)
      await this.plugOn(call, p).catch((e: unknown) => call.host.log.warn({ err: e, pif: p }, 'plugging a VLAN PIF failed'));
    return created;
  }

  /** PIF.destroy's work: a VLAN PIF's VLAN destroyed. */
  async destroyPif(call: Call, pif: Ref<'PIF'>): Promise<void> {
    const row = await call.db.get('PIF', pif);
    if (row.VLAN < 0) throw new XapiError('PIF_IS_PHYSICAL', []);
    await this.destroyOn(call, row.VLAN_master_of);
  }
}

/**
 * VLAN.pool_introduce: the VLAN row over an existing untagged PIF, which takes the tagged PIF's
 * metrics (its own, if any, go): database only.
 */
async function poolIntroduce(call: Call, tagged: Ref<'PIF'>, untagged: Ref<'PIF'>, tag: number, other_config: Record<string, string>) {
  const db = call.db;
  const vlan = newRef() as Ref<'VLAN'>;
  await db.create('VLAN', vlan, { uuid: randomUUID(), tagged_PIF: tagged, untagged_PIF: untagged, tag, other_config });
  await db.update('PIF', untagged, { VLAN_master_of: vlan });
  const own = (await db.get('PIF', untagged)).metrics;
  const shared = (await db.get('PIF', tagged)).metrics;
  if (own !== shared) {
    await db.update('PIF', untagged, { metrics: shared });
    if (own !== NULL_REF) await db.destroy('PIF_metrics', own).catch(() => undefined);
  }
  return vlan;
}

export function register(r: Registry, svc: VlanService): void {
  r.implement('VLAN.create', (call, [tagged, tag, network]) => svc.createOn(call, tagged, tag, network))
    .implement('VLAN.pool_introduce', (call, [tagged, untagged, tag, oc]) => poolIntroduce(call, tagged, untagged, tag, oc))
    .implement('VLAN.destroy', (call, [self]) => svc.destroyOn(call, self))
    .implement('pool.create_VLAN_from_PIF', (call, [pif, network, tag]) => svc.poolCreateFromPif(call, pif, network, tag))
    .implement('pool.create_VLAN', (call, [device, network, tag]) => svc.poolCreate(call, device, network, tag));
}
