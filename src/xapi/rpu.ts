// Rolling pool upgrade (pool.md §8): the pool's hosts are upgraded one at a time, the coordinator
// first, and meanwhile run different releases. The coordinator notices (detectRollingUpgrade,
// from its database GC pass, as xapi's db_gc does) and marks the pool with
// other_config:rolling_upgrade_in_progress; while the mark is there, what an older host could not
// do is refused: VMs go only from older hosts to newer ones and start only on the newest, and the
// operations older releases lack are not allowed (the operation tables in vm-lifecycle.ts,
// storage-operations.ts, host-operations.ts and pool-operations.ts read the mark).
import type { Db } from '../db/interface.js';
import { XapiError } from '../rpc/errors.js';
import { updateAllAllowedOperations } from './host-operations.js';
import { compareVersionKey } from './version.js';

/** The Pool.other_config key that says a rolling upgrade is in progress. */
export const RPU_KEY = 'rolling_upgrade_in_progress';

/** Helpers.Checks.RPU.version_keys: what makes two hosts of different releases. */
const RPU_KEYS = ['platform_version', 'xapi'];
/** Helpers.Checks.Migration.version_keys: what a VM may not go down in. */
const MIGRATION_KEYS = ['platform_version', 'xapi_build', 'xen'];

type Versions = Record<string, string>;

/** Is every key of `a` at least that of `b`? (compare_all_versions) */
const atLeast = (keys: string[], a: Versions, b: Versions) => keys.every((k) => compareVersionKey(k, a, b) >= 0);

/** Helpers.rolling_upgrade_in_progress: the mark is in Pool.other_config (no pool: no upgrade). */
export async function rollingUpgradeInProgress(db: Db): Promise<boolean> {
  const [pool] = await db.all('pool');
  return pool !== undefined && RPU_KEY in pool[1].other_config;
}

/** assert_rolling_upgrade_not_in_progress. */
export async function assertRollingUpgradeNotInProgress(db: Db): Promise<void> {
  if (await rollingUpgradeInProgress(db)) throw new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
}

/**
 * max_version_in_pool: folding the hosts' versions, the running maximum stays only if it is at
 * least the next host's in every key, else that host's replaces it (so with crossed versions,
 * one newer in a key and older in another, the one folded last stands).
 */
async function maxVersionInPool(db: Db): Promise<Versions | undefined> {
  let max: Versions | undefined;
  for (const [, h] of await db.all('host')) {
    const keep = max !== undefined && atLeast(RPU_KEYS, max, h.software_version);
    if (!keep) max = h.software_version;
  }
  return max;
}

/** host_has_highest_version_in_pool. */
export async function hostHasHighestVersion(db: Db, hostRef: string): Promise<boolean> {
  const mine = (await db.get('host', hostRef)).software_version;
  const max = await maxVersionInPool(db);
  return max === undefined || atLeast(RPU_KEYS, mine, max);
}

/** assert_host_has_highest_version_in_pool: where VMs may start and resume during an upgrade. */
export async function assertHostHasHighestVersion(db: Db, hostRef: string): Promise<void> {
  if (!(await hostHasHighestVersion(db, hostRef))) throw new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
}

/** are_host_versions_same_on_master: the coordinator always is; another host if its release matches. */
async function sameVersionsAsCoordinator(db: Db, hostRef: string, coordinator: string): Promise<boolean> {
  if (hostRef === coordinator) return true;
  const master = (await db.get('host', coordinator)).software_version;
  const host = (await db.get('host', hostRef)).software_version;
  return RPU_KEYS.every((k) => compareVersionKey(k, master, host) === 0);
}

/**
 * Xapi_vm.assert_can_boot_here's extra during an upgrade: a host whose release differs from the
 * coordinator's is refused (VM_HOST_INCOMPATIBLE_VERSION [host, vm]).
 */
export async function assertHostVersionsSameAsCoordinator(db: Db, hostRef: string, vmRef: string): Promise<void> {
  const [pool] = await db.all('pool');
  if (pool && !(await sameVersionsAsCoordinator(db, hostRef, pool[1].master)))
    throw new XapiError('VM_HOST_INCOMPATIBLE_VERSION', [hostRef, vmRef]);
}

/** host_versions_not_decreasing: may a VM go from `from` to `to` (platform, xapi build and xen)? */
export async function versionsNotDecreasing(db: Db, from: string, to: string): Promise<boolean> {
  const a = (await db.get('host', from)).software_version;
  const b = (await db.get('host', to)).software_version;
  return softwareVersionsNotDecreasing(a, b);
}

/** The same comparison of two hosts' software_version (one may be another pool's host). */
export function softwareVersionsNotDecreasing(from: Versions, to: Versions): boolean {
  return atLeast(MIGRATION_KEYS, to, from);
}

/**
 * VM.pool_migrate's direction during an upgrade: only to a host whose versions are not older
 * than the source's (NOT_SUPPORTED_DURING_UPGRADE).
 */
export async function assertMigrationDirection(db: Db, from: string, to: string): Promise<void> {
  if ((await rollingUpgradeInProgress(db)) && !(await versionsNotDecreasing(db, from, to)))
    throw new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
}

/** pool_has_different_host_platform_versions: some host's release is not the coordinator's. */
export async function poolHasDifferentVersions(db: Db): Promise<boolean> {
  const [pool] = await db.all('pool');
  if (!pool) return false;
  for (const [ref] of await db.all('host')) if (!(await sameVersionsAsCoordinator(db, ref, pool[1].master))) return true;
  return false;
}

/**
 * db_gc's detect_rolling_upgrade, on the coordinator: the mark in Pool.other_config is brought in
 * line with the hosts' versions. Then every object's allowed_operations are recomputed: xapi does
 * it for the VMs when an upgrade ends (they were cut to what older releases know), and for the
 * rest as each upgraded host restarts; here, at once, both ways, so that what a client is shown
 * allowed matches what is. Returns what changed, if anything. (xapi also runs an outside hook
 * script and resynchronises pool updates here: neither exists in xapi-ts.)
 */
export async function detectRollingUpgrade(db: Db): Promise<'started' | 'ended' | undefined> {
  const [pool] = await db.all('pool');
  if (!pool) return undefined;
  const [poolRef, row] = pool;
  const actually = await poolHasDifferentVersions(db);
  const marked = RPU_KEY in row.other_config;
  if (actually === marked) return undefined;
  if (actually) await db.update('pool', poolRef, { other_config: { ...row.other_config, [RPU_KEY]: 'true' } });
  else {
    const { [RPU_KEY]: _gone, ...rest } = row.other_config;
    await db.update('pool', poolRef, { other_config: rest });
  }
  await updateAllAllowedOperations(db);
  return actually ? 'started' : 'ended';
}
