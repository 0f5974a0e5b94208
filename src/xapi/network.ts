// network.create and network.destroy (xapi's xapi_network.ml): a new network gets a bridge name
// of its own ("xapi<N>", or a caller's name that is not reserved nor taken) and a positive MTU;
// a network still carrying PIFs or attached VIFs, or the host-internal management network, is
// refused destruction; the VIFs left on it go with it.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Db } from '../db/interface.js';
import { constructorArgs, newRef } from '../api/implicit.js';
import type { Ref, network_record } from '../schema/generated.js';
import { Mutex } from '../util/mutex.js';
import { globalLock } from './vm-lifecycle.js';

/** Prefixes of bridge names xapi and the host's networking keep for themselves. */
const RESERVED_BRIDGE_PREFIXES = ['xen', 'xapi', 'vif', 'tap', 'eth'];
/** Linux's limit on an interface name (IFNAMSIZ less the terminating NUL). */
const MAX_BRIDGE_NAME = 15;
/** xapi_globs.is_host_internal_management_network: other_config key of that network. */
const HOST_INTERNAL_MANAGEMENT = 'is_host_internal_management_network';

/**
 * The bridge names networks use, followed through the database's change log: xapi reads every
 * network's bridge on each network.create, which made creating the 10,000th network cost a scan
 * of the other 9,999.
 */
class BridgeNames {
  private readonly byNetwork = new Map<string, string>();
  private readonly users = new Map<string, number>();
  /** The generation the names are current at (-1: never read). */
  private gen = -1;

  async inUse(db: Db, bridge: string): Promise<boolean> {
    if (this.gen < db.retainedSince()) {
      // First use, or the log no longer reaches back: read them all, then what changed meanwhile.
      const gen = db.generation();
      for (const [ref, network] of await db.all('network')) this.set(ref, network.bridge);
      this.gen = gen;
    }
    const now = db.generation();
    const changes = db.changesSince(this.gen, (cls) => cls === 'network');
    for (const c of [...changes.adds, ...changes.mods]) this.set(c.ref, String(c.row.bridge));
    for (const c of changes.dels) this.set(c.ref, undefined);
    this.gen = now;
    return (this.users.get(bridge) ?? 0) > 0;
  }

  private set(ref: string, bridge: string | undefined): void {
    const old = this.byNetwork.get(ref);
    if (old === bridge) return;
    if (old !== undefined) this.users.set(old, this.users.get(old)! - 1);
    if (bridge === undefined) this.byNetwork.delete(ref);
    else {
      this.byNetwork.set(ref, bridge);
      this.users.set(bridge, (this.users.get(bridge) ?? 0) + 1);
    }
  }
}

export class NetworkService {
  /** xapi's counter for generated bridge names: from 0 at each start, skipping names in use. */
  private counter = 0;
  /** Choosing a bridge name and creating the network happen without another creation between. */
  private readonly lock = new Mutex();
  private readonly bridges = new BridgeNames();

  private async chooseBridge(db: Db): Promise<string> {
    for (;;) {
      const name = `xapi${this.counter++}`;
      if (!(await this.bridges.inUse(db, name))) return name;
    }
  }

  create(call: Call, record: Partial<network_record>): Promise<Ref<'network'>> {
    const rec = constructorArgs(call.db.schema, 'network', record);
    return this.lock.run(async () => {
      const db = call.db;
      const mtu = rec.MTU <= 0 ? 1500 : rec.MTU;
      let bridge = rec.bridge;
      if (bridge === '') bridge = await this.chooseBridge(db);
      else {
        // Pool-internal sessions (a pool member, an import on its behalf) are trusted to name
        // it; so are sessions the database does not hold (local ones), as xapi cannot read them.
        const session = call.session;
        const internal = session === undefined || session.row.pool || call.host.localSessions.has(session.ref);
        if (!internal && (bridge.length > MAX_BRIDGE_NAME || RESERVED_BRIDGE_PREFIXES.some((p) => bridge.startsWith(p)))) {
          throw new XapiError('INVALID_VALUE', ['bridge', bridge]);
        }
        if (await this.bridges.inUse(db, bridge)) throw new XapiError('BRIDGE_NAME_EXISTS', [bridge]);
      }
      const ref = newRef();
      await db.create('network', ref, {
        uuid: randomUUID(),
        name_label: rec.name_label,
        name_description: rec.name_description,
        MTU: mtu,
        bridge,
        managed: rec.managed,
        other_config: rec.other_config,
        tags: rec.tags,
      });
      return ref;
    });
  }

  /** Checked and done under the global lock, so no VIF is plugged into it meanwhile. */
  destroy(call: Call, ref: Ref<'network'>): Promise<void> {
    return globalLock.run(() => this.destroyNow(call, ref));
  }

  private async destroyNow(call: Call, ref: Ref<'network'>): Promise<void> {
    const db = call.db;
    const network = await db.get('network', ref);
    const connected: Ref<'VIF'>[] = [];
    for (const vif of network.VIFs) if ((await db.get('VIF', vif)).currently_attached) connected.push(vif);
    if (connected.length > 0) throw new XapiError('NETWORK_CONTAINS_VIF', connected);
    if (network.PIFs.length > 0) throw new XapiError('NETWORK_CONTAINS_PIF', network.PIFs);
    if (network.other_config[HOST_INTERNAL_MANAGEMENT] === 'true') throw new XapiError('CANNOT_DESTROY_SYSTEM_NETWORK', [ref]);
    // The VIFs left on it go now (xapi leaves their metrics to its database GC).
    for (const vif of network.VIFs) {
      await db.destroy('VIF', vif).catch((e) => call.host.log.warn({ err: e, vif }, 'VIF of a destroyed network not destroyed'));
    }
    await db.destroy('network', ref);
  }
}

export function register(r: Registry, svc: NetworkService): void {
  r.implement('network.create', (call, [record]) => svc.create(call, record)).implement('network.destroy', (call, [self]) =>
    svc.destroy(call, self),
  );
}
