// pool.eject's data side (message_forwarding.ml Pool.eject, xapi_pool.ml eject and eject_self):
// the refusals in xapi's order, the records the pool's database loses, and what the ejected
// host's state directory keeps when it starts again as a pool of its own.
//
// Order of the refusals: the coordinator first takes the pool operation `eject` (its waiting
// and OTHER_OPERATION_IN_PROGRESS are the caller's, with the other pool operations), then
// forwards to the host, which must be live (HOST_OFFLINE; the coordinator is always live to
// itself). On the coordinator xapi's eject raises the bare exception Cannot_eject_master, which
// reaches the client as INTERNAL_ERROR with its printed name, before any HA check; on a member,
// eject_self checks HA, a pool update in progress, then the VMs resident there.
//
// The host's uuid survives: xapi's eject deletes the local databases, the pool secret and the
// pool certificates, and resets pool.conf to master, but the inventory (INSTALLATION_UUID) is
// left alone (the reset-and-reboot script only rewrites its TLS verification line), so the host
// record its next start creates has the same uuid. What it had on local storage is gone (the
// pool forgot those SRs, and a fresh standalone host makes a new local SR).
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { XapiError } from '../rpc/errors.js';
import type { Db } from '../db/interface.js';
import { NULL_REF } from '../schema/types.js';
import { writeFileAtomic } from '../util/files.js';

/** Whether a host counts as live: its metrics say so (the coordinator always is, to itself). */
export async function isHostLive(db: Db, host: string): Promise<boolean> {
  const row = await db.tryGet('host', host);
  if (!row) return false;
  return (await db.tryGet('host_metrics', row.metrics))?.live === true;
}

/**
 * What the coordinator checks once it holds the pool operation: the target must be live (unless
 * it is the coordinator itself, which cannot be ejected).
 */
export async function assertEjectTarget(host: string, coordinator: string, live: (host: string) => Promise<boolean>): Promise<void> {
  if (host !== coordinator && !(await live(host))) throw new XapiError('HOST_OFFLINE', [host]);
  if (host === coordinator) throw new XapiError('INTERNAL_ERROR', ['Xapi_pool.Cannot_eject_master']);
}

/** eject_self's refusals, on the host being ejected. */
export async function assertCanEjectSelf(db: Db, host: string): Promise<void> {
  const [pool] = await db.all('pool');
  if (pool?.[1].ha_enabled) throw new XapiError('HA_IS_ENABLED', []);
  if (pool && Object.values(pool[1].current_operations).includes('apply_updates')) throw new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
  const control = (await db.get('host', host)).control_domain;
  for (const [ref, vm] of await db.find('VM', { resident_on: host })) {
    const domainZero = vm.is_control_domain && ref === control;
    if (!domainZero && vm.power_state !== 'Halted') throw new XapiError('OPERATION_NOT_ALLOWED', ['VM resident on host']);
  }
}

/** Every refusal of pool.eject after the pool operation, in xapi's order. */
export async function assertCanEject(db: Db, host: string, coordinator: string, live = (h: string) => isHostLive(db, h)): Promise<void> {
  await db.get('host', host);
  await assertEjectTarget(host, coordinator, live);
  await assertCanEjectSelf(db, host);
}

/**
 * The host's records leave the pool's database, as they do in xapi between eject_self (PBDs
 * unplugged, SRs that only this host saw forgotten with their VDIs, its control domains
 * destroyed), the coordinator's Host.destroy and the database GC that follows (its metrics,
 * CPUs, PIFs with their metrics, PBDs and every other row bound to the host; disk VBDs of VDIs
 * that went, while CD VBDs are emptied). Other VMs stay. Returns what was removed.
 */
export function removeEjectedHost(db: Db, host: string): Promise<[string, string][]> {
  return removeHostRecords(db, host, { forgetLocalSrs: true });
}

/**
 * The records removal itself. With `forgetLocalSrs` false (host.destroy), the SRs only this host
 * saw stay in the database with their VDIs, losing only their PBD, as xapi's database GC leaves
 * them.
 */
export async function removeHostRecords(db: Db, host: string, opts: { forgetLocalSrs: boolean }): Promise<[string, string][]> {
  const removed: [string, string][] = [];
  const destroy = async (cls: Parameters<Db['destroy']>[0], ref: string) => {
    if (ref === NULL_REF || !(await db.tryGet(cls, ref))) return;
    await db.destroy(cls, ref);
    removed.push([cls, ref]);
  };
  const hostRow = await db.get('host', host);
  const myPbds = await db.find('PBD', { host });

  // SRs whose only PBD is this host's: SR.forget, with their VDIs.
  const localSrs = new Set<string>();
  if (opts.forgetLocalSrs) {
    for (const [, pbd] of myPbds) if ((await db.find('PBD', { SR: pbd.SR })).length === 1) localSrs.add(pbd.SR);
  }
  const goneVdis = new Set<string>();
  for (const sr of localSrs) for (const [vdi] of await db.find('VDI', { SR: sr })) goneVdis.add(vdi);

  // Control domains resident here, or with disks on a local SR of this host.
  for (const [ref, vm] of await db.find('VM', { is_control_domain: true })) {
    let mine = vm.resident_on === host;
    if (!mine) {
      for (const [, vbd] of await db.find('VBD', { VM: ref })) if (goneVdis.has(vbd.VDI)) mine = true;
    }
    if (!mine) continue;
    for (const [vbd, row] of await db.find('VBD', { VM: ref })) {
      await destroy('VBD_metrics', row.metrics);
      await destroy('VBD', vbd);
    }
    for (const [vif, row] of await db.find('VIF', { VM: ref })) {
      await destroy('VIF_metrics', row.metrics);
      await destroy('VIF', vif);
    }
    for (const [c] of await db.find('console', { VM: ref })) await destroy('console', c);
    await destroy('VM_metrics', vm.metrics);
    await destroy('VM_guest_metrics', vm.guest_metrics);
    await destroy('VM', ref);
  }

  for (const [pbd] of myPbds) await destroy('PBD', pbd);
  for (const sr of localSrs) {
    for (const [pbd] of await db.find('PBD', { SR: sr })) await destroy('PBD', pbd);
    for (const vdi of goneVdis) await destroy('VDI', vdi);
    await destroy('SR', sr);
  }
  // The database GC's treatment of VBDs whose VDI is gone.
  for (const [vbd, row] of await db.all('VBD')) {
    if (!goneVdis.has(row.VDI)) continue;
    if (row.type === 'CD') {
      await db.update('VBD', vbd, { VDI: NULL_REF, empty: true });
    } else {
      await destroy('VBD_metrics', row.metrics);
      await destroy('VBD', vbd);
    }
  }

  for (const [pif, row] of await db.find('PIF', { host })) {
    await destroy('PIF_metrics', row.metrics);
    await destroy('PIF', pif);
  }
  // Every other row bound to the host by a `host` field (CPUs, PCIs, GPUs, USBs, features,
  // patches, crash dumps, certificates...): the GC removes them once the host has gone.
  for (const cls of db.schema.dbClasses()) {
    const f = cls.field.get('host');
    if (f?.type.k !== 'ref' || f.type.cls !== 'host' || cls.name === 'PIF' || cls.name === 'PBD') continue;
    const name = cls.name as Parameters<Db['destroy']>[0];
    for (const [ref] of await db.find(name as 'host_cpu', { host })) await destroy(name, ref);
  }
  await destroy('host_metrics', hostRow.metrics);
  await destroy('host', host);
  return removed;
}

/**
 * The ejected host's state directory, made ready for a start as a standalone pool: its role is
 * coordinator again; the pool secret, the database (with its write-ahead log) and local storage
 * go, so the next start makes a new secret, a database where it is the pool's coordinator and a
 * new local SR. Kept: the inventory (the host's uuid), the root password, the server
 * certificate (xapi keeps xapi-ssl.pem), the log and the domain manager's state.
 */
export const EJECT_REMOVES = ['ptoken', 'xapi.db', 'xapi.db-wal', 'xapi.db-shm', 'storage'];

export async function resetEjectedStateDir(stateDir: string): Promise<void> {
  // The pool's database copy goes before the role changes: a crash in between must not leave a
  // coordinator starting from a backup of the pool it left (a second coordinator of that pool).
  for (const name of EJECT_REMOVES) await rm(join(stateDir, name), { recursive: true, force: true });
  await writeFileAtomic(join(stateDir, 'pool.conf'), 'master');
}
