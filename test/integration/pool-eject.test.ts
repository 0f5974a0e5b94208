// pool.eject through the API against real processes: ejecting the coordinator refused as xapi
// refuses it, a member ejected (it restarts as a pool of its own with its uuid and root password,
// the pool keeps the other hosts only, its CPUs no longer counted in pool.cpu_info), the ejected
// host joining again, and an offline member refused (HOST_OFFLINE).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PASSWORD, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login, xapiFailure } from './client.js';
import { joinPool, startPool, type TestPool } from './pool-harness.js';
import { vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

type Records = Record<string, Record<string, unknown>>;

/** The role in the last "host ready" line a process printed (it prints one at every start). */
function lastRole(x: XapiProcess): string | undefined {
  return [...x.output().matchAll(/host ready \(([^)]*)\)/g)].at(-1)?.[1];
}

describe('pool.eject in a pool of three', () => {
  let pool: TestPool;
  before(async () => {
    // The member ejected below has 2 CPUs, the others 4.
    pool = await startPool(3, { hostArgs: [[], ['--sim-cpus', '2'], []] });
  });
  after(async () => {
    await pool?.stop();
  });

  it('refuses to eject the coordinator: INTERNAL_ERROR, and the pool operation is released', async () => {
    const { coordinator: c, session: s } = pool;
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'pool.eject', [s, pool.refs[0]])), [
      'INTERNAL_ERROR',
      'Xapi_pool.Cannot_eject_master',
    ]);
    const [poolRef] = (await jsonCall(c.url, 'pool.get_all', [s])) as string[];
    assert.deepEqual(await jsonCall(c.url, 'pool.get_current_operations', [s, poolRef]), {});
    assert.ok(((await jsonCall(c.url, 'pool.get_allowed_operations', [s, poolRef])) as string[]).includes('eject'));
    assert.equal(((await jsonCall(c.url, 'host.get_all', [s])) as string[]).length, 3);
  });

  it('refuses to eject a member a VM runs on: OPERATION_NOT_ALLOWED ["VM resident on host"]', async () => {
    const { coordinator: c, session: s } = pool;
    const m = pool.members[1]!;
    const ref = pool.refs[2]!;
    // Started on the member itself, under a local session there.
    const local = (await jsonCall(m.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
    const vm = (await jsonCall(m.url, 'VM.create', [local, vmRecord('on-the-member', { memory: 256 * 2 ** 20 })])) as string;
    await jsonCall(m.url, 'VM.start_on', [local, vm, ref, false, false]);
    assert.equal(await jsonCall(c.url, 'VM.get_resident_on', [s, vm]), ref);
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'pool.eject', [s, ref])), ['OPERATION_NOT_ALLOWED', 'VM resident on host']);
    // Nothing was let go: the member is still the pool's, with its storage.
    assert.equal(await jsonCall(m.url, 'pool.is_slave', [local, ref]), true);
    assert.equal(((await jsonCall(c.url, 'host.get_all', [s])) as string[]).length, 3);
    assert.equal(((await jsonCall(c.url, 'host.get_PBDs', [s, ref])) as string[]).length, 1);
    await jsonCall(m.url, 'VM.hard_shutdown', [local, vm]);
    await jsonCall(m.url, 'VM.destroy', [local, vm]);
    await jsonCall(m.url, 'session.local_logout', [local]);
  });

  it('ejects a member: it restarts as a pool of its own, the pool keeps the others, and it can join again', async () => {
    const { coordinator: c, session: s } = pool;
    const m = pool.members[0]!;
    const ref = pool.refs[1]!;
    const uuid = (await jsonCall(c.url, 'host.get_uuid', [s, ref])) as string;
    const [oldPool] = (await jsonCall(c.url, 'pool.get_all', [s])) as string[];
    const oldPoolUuid = await jsonCall(c.url, 'pool.get_uuid', [s, oldPool]);
    const passwd = await readFile(join(m.stateDir, 'passwd'), 'utf8');
    const secret = await readFile(join(m.stateDir, 'ptoken'), 'utf8');
    const cpuCount = async (url: string, session: string, poolRef: string) =>
      ((await jsonCall(url, 'pool.get_cpu_info', [session, poolRef])) as Record<string, string>).cpu_count;
    assert.equal(await cpuCount(c.url, s, oldPool!), '10');

    await jsonCall(c.url, 'pool.eject', [s, ref]);
    assert.equal(await cpuCount(c.url, s, oldPool!), '8');

    // The pool lists the remaining hosts only, and nothing of the ejected host is left.
    const hosts = (await jsonCall(c.url, 'host.get_all', [s])) as string[];
    assert.deepEqual([...hosts].sort(), [pool.refs[0], pool.refs[2]].sort());
    const pbds = (await jsonCall(c.url, 'PBD.get_all_records', [s])) as Records;
    assert.ok(!Object.values(pbds).some((p) => p.host === ref));
    const vms = (await jsonCall(c.url, 'VM.get_all_records', [s])) as Records;
    assert.ok(!Object.values(vms).some((v) => v.resident_on === ref));
    assert.deepEqual(await jsonCall(c.url, 'pool.get_current_operations', [s, oldPool]), {});

    // The ejected host restarts as the coordinator of a pool of one: root logs in with the same
    // password, its uuid is the same, its pool and secret are new.
    await waitUntil('the ejected host restarted as a coordinator', () => lastRole(m) === 'master');
    const ms = await login(m.url, PASSWORD);
    const mine = (await jsonCall(m.url, 'host.get_all', [ms])) as string[];
    assert.equal(mine.length, 1);
    assert.equal(await jsonCall(m.url, 'host.get_uuid', [ms, mine[0]]), uuid);
    const [newPool] = (await jsonCall(m.url, 'pool.get_all', [ms])) as string[];
    assert.equal(await jsonCall(m.url, 'pool.get_master', [ms, newPool]), mine[0]);
    assert.notEqual(await jsonCall(m.url, 'pool.get_uuid', [ms, newPool]), oldPoolUuid);
    assert.equal(await jsonCall(m.url, 'pool.is_slave', [ms, mine[0]]), false);
    assert.equal(await cpuCount(m.url, ms, newPool!), '2');
    assert.equal(await readFile(join(m.stateDir, 'passwd'), 'utf8'), passwd);
    assert.notEqual(await readFile(join(m.stateDir, 'ptoken'), 'utf8'), secret);
    await assert.rejects(access(join(m.stateDir, 'ejected')), 'the reset is finished');
    // A fresh standalone host: its own local storage and control domain.
    const srs = (await jsonCall(m.url, 'SR.get_all_records', [ms])) as Records;
    assert.ok(Object.values(srs).some((sr) => sr.name_label === 'Local storage'));
    const dom0s = Object.values((await jsonCall(m.url, 'VM.get_all_records', [ms])) as Records).filter((v) => v.is_control_domain);
    assert.deepEqual(
      dom0s.map((v) => v.resident_on),
      mine,
    );

    // It joins the pool again, under its same uuid.
    await joinPool(c, m);
    assert.equal(lastRole(m), `slave:${c.address}`);
    const all = (await jsonCall(c.url, 'host.get_all_records', [s])) as Records;
    assert.equal(Object.keys(all).length, 3);
    assert.equal(Object.values(all).find((h) => h.address === m.address)?.uuid, uuid);
    assert.equal(await cpuCount(c.url, s, oldPool!), '10');
    assert.deepEqual(await xapiFailure(login(m.url, PASSWORD)), ['HOST_IS_SLAVE', c.address]);
  });

  it('refuses to eject an offline member: HOST_OFFLINE [host], and the pool keeps it', async () => {
    const { coordinator: c, session: s } = pool;
    const ref = pool.refs[2]!;
    // Stopped cleanly, its last heartbeat says so: the coordinator takes it for dead at once.
    await stopXapi(pool.members[1]!, true);
    const metrics = (await jsonCall(c.url, 'host.get_metrics', [s, ref])) as string;
    assert.equal(await jsonCall(c.url, 'host_metrics.get_live', [s, metrics]), false);
    assert.deepEqual(await xapiFailure(jsonCall(c.url, 'pool.eject', [s, ref])), ['HOST_OFFLINE', ref]);
    const [poolRef] = (await jsonCall(c.url, 'pool.get_all', [s])) as string[];
    assert.deepEqual(await jsonCall(c.url, 'pool.get_current_operations', [s, poolRef]), {});
    assert.ok(((await jsonCall(c.url, 'pool.get_allowed_operations', [s, poolRef])) as string[]).includes('eject'));
    assert.ok(((await jsonCall(c.url, 'host.get_all', [s])) as string[]).includes(ref));
    assert.equal(((await jsonCall(c.url, 'host.get_PBDs', [s, ref])) as string[]).length, 1);
  });
});
