// A host whose database store refuses writes for a while (as on a full disk), in-process: the
// domains go on meanwhile, and once the store takes writes again the database catches up with
// them by itself — a guest that halted itself shows Halted, an operation cut short leaves no
// mark on its VM, and its task says why it failed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { schema } from '../../src/schema/schema.js';
import { LocalDb } from '../../src/db/database.js';
import { SqliteStore } from '../../src/db/store.js';
import { memoryHost } from '../../src/host/memory-host.js';
import { apiClient } from './api-client.js';
import { waitUntil } from '../wait.js';
import { vmStruct } from '../vm-record.js';

const GiB = 1024 ** 3;

const until = (what: string, cond: () => boolean | Promise<boolean>) => waitUntil(what, cond, { intervalMs: 5 });

test('once the store takes writes again, the database catches up with what the domains did meanwhile', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'xapi-full-'));
  const store = new SqliteStore(join(dir, 'xapi.db'));
  let full = false;
  const write = store.writeBatch.bind(store);
  store.writeBatch = (b) => {
    if (full) throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    write(b);
  };
  const db = new LocalDb(schema(), store, { probeIntervalMs: 10 });
  const h = await memoryHost({ rootPassword: 'pw', db, stateDir: dir, bootTimeMs: 5, shutdownTimeMs: 300 });
  h.xenops.start();
  const { ok } = apiClient(h);
  try {
    const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
    const vm = (await ok('VM.create', s, vmStruct('guest', { memory: GiB }))) as string;
    const uuid = (await db.get('VM', vm)).uuid as string;
    const power = async () => (await db.get('VM', vm)).power_state;

    // 1. the guest halts itself while the store refuses: the update loop's write is undone...
    await ok('VM.start', s, vm, false, false);
    const before = db.epoch();
    full = true;
    h.domains.inject(uuid, 'guest-shutdown');
    await until('the update loop to try', () => db.epoch() > before);
    assert.equal(await power(), 'Running', 'the database shows only what is stored');
    // ...and once writes work again, it reaches the database
    full = false;
    await until('the halt to reach the database', async () => (await power()) === 'Halted');

    // 2. an operation whose mark is stored, cut short by the store refusing its writes
    await ok('VM.start', s, vm, false, false);
    // a clean shutdown needs the guest's agent (VM_LACKS_FEATURE before it reports)
    await until('the guest agent to report', async () =>
      ((await db.get('VM', vm)).allowed_operations as string[]).includes('clean_shutdown'),
    );
    const task = (await ok('Async.VM.clean_shutdown', s, vm)) as string;
    await until('the operation to be marked and stored', async () =>
      Object.values((await db.get('VM', vm)).current_operations as object).includes('clean_shutdown'),
    );
    await db.commit();
    const marked = db.epoch();
    full = true;
    await until('the guest to halt', async () => (await h.domains.stat(uuid))?.powerState === 'Halted');
    await until('a write of the operation to be refused', () => db.epoch() > marked);
    full = false;
    await until('the mark to come off', async () => Object.keys((await db.get('VM', vm)).current_operations as object).length === 0);
    await until('the database to catch up', async () => (await power()) === 'Halted');
    await until('the task to finish', async () => (await db.get('task', task)).status !== 'pending');
    const t = await db.get('task', task);
    assert.equal(t.status, 'failure');
    assert.deepEqual(t.error_info, ['OUT_OF_SPACE', dir]);
    // nothing is left blocking the VM
    await ok('VM.start', s, vm, false, false);
  } finally {
    await h.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  }
});
