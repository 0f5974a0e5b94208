// Rolling pool upgrade, in process: the versions a release claims and how xapi compares them,
// the coordinator's detection (the mark in Pool.other_config, allowed operations recomputed both
// ways), which hosts count as the newest (xapi's fold, crossed versions included), and the store
// format a newer build upgrades on open (format 1 to 2) while refusing what a newer one wrote.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { memoryHost } from '../../src/host/memory-host.js';
import { syncDatabase } from '../../src/host/dbsync.js';
import { simulatedMachine } from '../../src/xenopsd/machine.js';
import { applyJoinContribution, collectJoinContribution } from '../../src/xapi/pool-join-merge.js';
import { compareVersionKey, compareXapiMajorMinor, releaseVersions, softwareVersion } from '../../src/xapi/version.js';
import {
  assertHostHasHighestVersion,
  assertMigrationDirection,
  detectRollingUpgrade,
  hostHasHighestVersion,
  rollingUpgradeInProgress,
} from '../../src/xapi/rpu.js';
import type { XapiError } from '../../src/rpc/errors.js';
import { LocalDb } from '../../src/db/database.js';
import { SqliteStore, STORE_FORMAT, StoreFormatError } from '../../src/db/store.js';
import { checkImage, minimalImage } from '../../src/db/backup.js';
import { schema } from '../../src/schema/schema.js';
import { hostOptions, UsageError } from '../../src/cli/flags.js';

test('a release claims its platform version; product and xapi versions follow it, in order', () => {
  assert.deepEqual(releaseVersions(), { platform: '3.4.0', product: '8.4.0', xapi: '25.4.0' });
  assert.deepEqual(releaseVersions('3.5.1'), { platform: '3.5.1', product: '8.5.1', xapi: '25.5.1' });
  const sw = softwareVersion(releaseVersions('4.0.0'));
  assert.equal(sw.platform_version, '4.0.0');
  assert.equal(sw.product_version_text, '9.0');
  assert.equal(sw.xapi, '26.0');
  assert.equal(sw.xapi_build, '26.0.0');
  assert.equal(sw.db_schema, '5.909');
  assert.throws(() => releaseVersions('3.4'));
  // xapi's compare_versions: a missing key is 0.0.0, a prefix is older, a -suffix counts
  const v = (platform_version?: string): Record<string, string> => (platform_version === undefined ? {} : { platform_version });
  assert.equal(compareVersionKey('platform_version', v('3.4.0'), v('3.4.0')), 0);
  assert.equal(compareVersionKey('platform_version', v('3.10.0'), v('3.9.9')), 1);
  assert.equal(compareVersionKey('platform_version', v('1.2'), v('1.2.0')), -1);
  assert.equal(compareVersionKey('platform_version', v('1.2.3-4'), v('1.2.3')), 1);
  assert.equal(compareVersionKey('platform_version', v(), v('0.0.0')), 0);
  assert.equal(compareVersionKey('platform_version', v('0.0.1'), v()), 1);
  // Xapi_version.compare_version: major and minor only
  assert.equal(compareXapiMajorMinor('25.5.0', '25.4.9'), 1);
  assert.equal(compareXapiMajorMinor('25.4.9', '25.4.0'), 0);
  assert.equal(compareXapiMajorMinor('24.9.0', '25.0.0'), -1);
});

/** xapi's rpu_allowed_vm_operations. */
const RPU_VM_OPS = new Set<string>(
  'assert_operation_valid changing_memory_live changing_shadow_memory_live changing_VCPUs_live clean_reboot clean_shutdown clone copy csvm destroy export get_boot_record hard_reboot hard_shutdown import make_into_template migrate_send pause pool_migrate power_state_reset provision resume resume_on send_sysrq send_trigger start start_on suspend unpause update_allowed_operations'.split(
    ' ',
  ),
);

test('--platform-version takes X.Y.Z, on xapi serve and (passed on) xapi pool', () => {
  assert.equal(hostOptions({ 'platform-version': '3.5.0' }).platformVersion, '3.5.0');
  assert.equal(hostOptions({}).platformVersion, undefined);
  for (const bad of ['3.5', '3.5.0.1', 'v3.5.0', '']) assert.throws(() => hostOptions({ 'platform-version': bad }), UsageError);
});

test('the coordinator marks the pool while its hosts run different releases; the newest hosts; migration only upwards', async () => {
  const c = await memoryHost({ rootPassword: 'pw' });
  const j = await memoryHost({ rootPassword: 'pw' });
  try {
    const db = c.host.db;
    const { host: member } = await applyJoinContribution(db, await collectJoinContribution(j.host.db, j.host.hostRef));
    const uuid = (await db.get('host', member)).uuid;
    const start = (platformVersion: string) =>
      syncDatabase(
        db,
        c.host.schema,
        { uuid, hostname: 'j', address: '127.0.0.2', machine: simulatedMachine({ seed: 'j' }), platformVersion },
        'slave',
      );
    await start('3.4.0');
    const coordinator = c.host.hostRef;
    const [[poolRef]] = (await db.all('pool')) as [[string, unknown]];
    assert.equal(await detectRollingUpgrade(db), undefined, 'one release: nothing to do');
    const template = (await db.all('VM')).find(([, v]) => v.is_a_template)!;
    const templateOps = (await db.get('VM', template[0])).allowed_operations;
    assert.ok(templateOps.includes('snapshot' as never) || templateOps.includes('provision' as never), templateOps.join());

    // the member is upgraded first (as xapi would refuse at its start, but the mark does not care)
    await start('3.5.0');
    assert.equal(await detectRollingUpgrade(db), 'started');
    assert.equal((await db.get('pool', poolRef)).other_config.rolling_upgrade_in_progress, 'true');
    assert.equal(await rollingUpgradeInProgress(db), true);
    assert.equal(await detectRollingUpgrade(db), undefined, 'marked once');
    assert.equal(await hostHasHighestVersion(db, member), true);
    assert.equal(await hostHasHighestVersion(db, coordinator), false);
    await assert.rejects(
      assertHostHasHighestVersion(db, coordinator),
      (e: XapiError) => e.code === 'NOT_SUPPORTED_DURING_UPGRADE' && e.params.length === 0,
    );
    await assertMigrationDirection(db, coordinator, member);
    await assert.rejects(assertMigrationDirection(db, member, coordinator), (e: XapiError) => e.code === 'NOT_SUPPORTED_DURING_UPGRADE');
    // allowed operations were cut to what older releases know, at once
    const cut = (await db.get('VM', template[0])).allowed_operations;
    assert.deepEqual(
      cut.filter((op) => !RPU_VM_OPS.has(op)),
      [],
    );
    assert.deepEqual(
      cut,
      templateOps.filter((op) => RPU_VM_OPS.has(op)),
    );
    assert.deepEqual(
      (await db.get('host', member)).allowed_operations.filter((op) => !['evacuate', 'provision'].includes(op)),
      [],
    );

    // crossed versions (a newer platform, an older xapi): in xapi's fold a maximum gives way to
    // any host not below it in every key, so the host folded last stands
    const sw = (await db.get('host', member)).software_version;
    await db.update('host', member, { software_version: { ...sw, platform_version: '3.6.0', xapi: '25.3' } });
    const order = (await db.all('host')).map(([ref]) => ref);
    assert.equal(await hostHasHighestVersion(db, order.at(-1)!), true);
    assert.equal(await hostHasHighestVersion(db, order[0]!), false);

    // all on the new release: the mark goes, the operations come back
    await start('3.5.0');
    await syncDatabase(db, c.host.schema, {
      uuid: (await db.get('host', coordinator)).uuid,
      hostname: 'c',
      address: '127.0.0.1',
      machine: simulatedMachine({ seed: 'memory' }),
      platformVersion: '3.5.0',
    });
    assert.equal(await detectRollingUpgrade(db), 'ended');
    assert.equal('rolling_upgrade_in_progress' in (await db.get('pool', poolRef)).other_config, false);
    assert.ok((await db.get('host', member)).allowed_operations.length > 2);
    assert.deepEqual((await db.get('VM', template[0])).allowed_operations, templateOps);
  } finally {
    await c.close();
    await j.close();
  }
});

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-rpu-store-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const meta = (path: string) => {
  const raw = new Database(path, { readonly: true });
  try {
    return Object.fromEntries(
      (raw.prepare('SELECT key, value FROM meta').all() as { key: string; value: string }[]).map((r) => [r.key, r.value]),
    );
  } finally {
    raw.close();
  }
};

test('a store of format 1 is upgraded as it is opened; one a newer datamodel has read is refused; backups must match exactly', () =>
  withDir(async (dir) => {
    const path = join(dir, 'xapi.db');
    const db = new LocalDb(schema(), new SqliteStore(path));
    await db.create('network', 'OpaqueRef:n', { uuid: 'n', name_label: 'kept' });
    await db.commit();
    const image = await db.backupImage();
    db.close();
    assert.equal(STORE_FORMAT, 2);
    assert.deepEqual({ ...meta(path), generation: undefined }, { store_format: '2', db_schema: '5.909', generation: undefined });
    assert.equal(checkImage(image), 1);

    // the older format: no datamodel version
    const raw = new Database(path);
    raw.prepare("DELETE FROM meta WHERE key = 'db_schema'").run();
    raw.prepare("UPDATE meta SET value = '1' WHERE key = 'store_format'").run();
    const oldImage = raw.serialize();
    raw.close();
    // a member keeps only a backup it can start from as it is
    assert.throws(
      () => checkImage(oldImage),
      (e: XapiError) => e.code === 'RESTORE_INCOMPATIBLE_VERSION',
    );
    assert.throws(
      () => checkImage(minimalImage()),
      (e: XapiError) => e.code === 'RESTORE_INCOMPATIBLE_VERSION',
    );
    const upgraded = new LocalDb(schema(), new SqliteStore(path));
    assert.equal((await upgraded.get('network', 'OpaqueRef:n')).name_label, 'kept');
    upgraded.close();
    assert.equal(meta(path).store_format, '2');
    assert.equal(meta(path).db_schema, '5.909');

    // read by a newer datamodel: an older build does not open it, and leaves it as it was
    const raw2 = new Database(path);
    raw2.prepare("UPDATE meta SET value = '5.999' WHERE key = 'db_schema'").run();
    raw2.close();
    const store = new SqliteStore(path);
    assert.throws(() => new LocalDb(schema(), store), StoreFormatError);
    store.close();
    assert.equal(meta(path).db_schema, '5.999');
  }));
