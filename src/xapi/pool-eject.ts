// pool.eject (message_forwarding.ml Pool.eject, xapi_pool.ml eject and eject_self): the
// refusals in xapi's order, the call's course through the pool, the records the pool's database
// loses, and what the ejected host's state directory keeps when it starts again as a pool of its
// own.
//
// Order of the refusals: the coordinator first takes the pool operation `eject` (its waiting
// and OTHER_OPERATION_IN_PROGRESS are the caller's, with the other pool operations), then
// forwards to the host, which must be live (HOST_OFFLINE; the coordinator is always live to
// itself). On the coordinator xapi's eject raises the bare exception Cannot_eject_master, which
// reaches the client as INTERNAL_ERROR with its printed name, before any HA check; on a member,
// eject_self checks HA, a pool update in progress, then the VMs resident there.
//
// Course: the ejected host first (its checks again, its PBDs unplugged, then its commitment to
// leave: a marker file, after which it restarts as a pool of its own), then the other members
// (best effort: xapi drops the host's certificate files there; nothing is kept per host here),
// and last the coordinator, which removes the host's records. So the member has left before the
// pool forgets it: a member that restarts before its marker is written is still a member the
// pool knows; once the marker is written, every start finishes the reset (finishEject) and it
// never comes back as a member of the pool it left.
//
// The host's uuid survives: xapi's eject deletes the local databases, the pool secret and the
// pool certificates, and resets pool.conf to master, but the inventory (INSTALLATION_UUID) is
// left alone (the reset-and-reboot script only rewrites its TLS verification line), so the host
// record its next start creates has the same uuid. What it had on local storage is gone (the
// pool forgot those SRs, and a fresh standalone host makes a new local SR).
import { access, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Db } from '../db/interface.js';
import { NULL_REF } from '../schema/types.js';
import { fsyncDir, writeFileAtomic } from '../util/files.js';
import { callOn, isForwardedHere, runOn } from './forward.js';
import { unplugPbd } from './pbd.js';
import { refreshPoolDerived } from './pool-derived.js';
import { withPoolOperation } from './pool-operations.js';
import type { Storage } from './storage.js';

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
  // The pool's CPU features and license restrictions no longer count this host.
  await refreshPoolDerived(db);
  return removed;
}

/**
 * The ejected host's state directory, made ready for a start as a standalone pool: its role is
 * coordinator again; the pool secret, the database (with its write-ahead log) and local storage
 * go, so the next start makes a new secret, a database where it is the pool's coordinator and a
 * new local SR. Kept: the inventory (the host's uuid), the root password, the server
 * certificate (xapi keeps xapi-ssl.pem), the log and the domain manager's state.
 */
export const EJECT_REMOVES = ['ptoken', 'xapi.db', 'xapi.db-wal', 'xapi.db-shm', 'storage', 'networkd'];

export async function resetEjectedStateDir(stateDir: string): Promise<void> {
  // The pool's database copy goes before the role changes: a crash in between must not leave a
  // coordinator starting from a backup of the pool it left (a second coordinator of that pool).
  for (const name of EJECT_REMOVES) await rm(join(stateDir, name), { recursive: true, force: true });
  await writeFileAtomic(join(stateDir, 'pool.conf'), 'master');
}

/**
 * The file that says this host has left its pool: written (durably) before the ejected host
 * answers, so the reset cannot be half done whatever moment the process dies at.
 */
export const EJECTED_MARKER = 'ejected';

/** The ejected host's commitment to leave: from here on every start finishes the reset. */
export async function markEjected(stateDir: string): Promise<void> {
  await writeFileAtomic(join(stateDir, EJECTED_MARKER), 'ejected from its pool\n', 0o600);
}

/**
 * At start, before anything is read: a host that was ejected (marker present) resets its state
 * directory, then drops the marker. Idempotent, so a crash during it only repeats it. Returns
 * whether there was a reset to finish.
 */
export async function finishEject(stateDir: string): Promise<boolean> {
  const marker = join(stateDir, EJECTED_MARKER);
  try {
    await access(marker);
  } catch {
    return false;
  }
  await resetEjectedStateDir(stateDir); // its last write (pool.conf) makes the removals durable
  await rm(marker, { force: true });
  await fsyncDir(stateDir);
  return true;
}

/** eject_self: on the ejected member, its checks, its storage let go, then it leaves. */
async function ejectSelf(call: Call, storage: Storage, host: string): Promise<void> {
  await assertCanEjectSelf(call.db, host);
  // A PBD that will not unplug (a disk still in use) stops the eject before anything is lost.
  for (const [pbd] of await call.db.find('PBD', { host })) await unplugPbd(storage, pbd);
  await markEjected(call.host.config.stateDir);
  call.host.log.info({ host }, 'pool.eject: this host leaves its pool');
  // pool.conf says coordinator again; the restart (after this call's reply) finishes the reset.
  await call.host.changeRole({ kind: 'master' }, 'ejected from the pool');
}

/** xapi_pool.ml eject: each host's part, told apart by which host this is. */
async function ejectPart(call: Call, storage: Storage, host: string): Promise<void> {
  const here = call.host.hostRef;
  const coordinator = (await call.db.get('pool', call.host.poolRef)).master;
  if (host === here && here !== coordinator) return ejectSelf(call, storage, host);
  // Another member: xapi removes the ejected host's certificate files; no such files here.
  if (host !== here && here !== coordinator) return;
  if (host !== here) {
    const removed = await removeEjectedHost(call.db, host);
    await call.db.commit();
    call.host.log.info({ host, removed: removed.length }, 'pool.eject: the host and its records removed');
    return;
  }
  throw new XapiError('INTERNAL_ERROR', ['Xapi_pool.Cannot_eject_master']);
}

/** Message_forwarding's Pool.eject, on the coordinator: the pool operation, then each host's part. */
async function ejectFromPool(call: Call, storage: Storage, host: string): Promise<void> {
  const db = call.db;
  await withPoolOperation(call, call.host.poolRef, 'eject', async () => {
    const coordinator = (await db.get('pool', call.host.poolRef)).master;
    await assertCanEject(db, host, coordinator);
    const others = (await db.all('host')).map(([ref]) => ref).filter((h) => h !== host && h !== coordinator);
    const part = () => ejectPart(call, storage, host);
    await runOn(call, host, 'pool.eject', [host], part);
    // Once the host has left there is no going back: the others' parts are best effort.
    for (const other of others) {
      try {
        await runOn(call, other, 'pool.eject', [host], part);
      } catch (e) {
        call.host.log.warn({ err: e, host, other }, 'pool.eject: a member could not clean up after the ejected host');
      }
    }
    await runOn(call, coordinator, 'pool.eject', [host], part);
  });
}

export function register(r: Registry, storage: Storage): void {
  r.implement('pool.eject', async (call, [host]) => {
    if (call.host.role.kind === 'master') return ejectFromPool(call, storage, host);
    if (isForwardedHere(call)) return ejectPart(call, storage, host);
    // Called on a member under a local session: the coordinator runs it for the whole pool.
    const coordinator = (await call.db.get('pool', call.host.poolRef)).master;
    const address = (call.host.role as { master: string }).master;
    await callOn(call.host, coordinator, address, 'pool.eject', [host]);
  });
}
