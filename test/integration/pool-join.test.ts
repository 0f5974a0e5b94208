// pool.join through the API against real processes: the pre-join errors a client sees, the
// joiner's objects in the pool's database, HOST_IS_SLAVE on a member over both wires and both
// transports, the member's local login, and a member restarted alone coming back as a member.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { loopbackAddress, PASSWORD, startXapi, stopHosts, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login, xapiFailure } from './client.js';
import { joinPool, startHosts, startPool, type TestPool } from './pool-harness.js';
import { vmRecord } from '../vm-record.js';
import { waitForEmitted, waitUntil } from '../wait.js';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';

const run = promisify(execFile);

/** The ErrorDescription Python's xmlrpc.client gets for login_with_password at `url`. */
async function pythonLogin(url: string): Promise<string[]> {
  const script = `
import json, ssl, sys, xmlrpc.client
p = xmlrpc.client.ServerProxy(sys.argv[1], context=ssl._create_unverified_context())
r = p.session.login_with_password('root', sys.argv[2], '1.0', 'test')
print(json.dumps(r.get('ErrorDescription', [r.get('Status')])))
`;
  const { stdout } = await run('python3', ['-c', script, url, PASSWORD]);
  return JSON.parse(stdout) as string[];
}

describe('a pool of three hosts formed with pool.join', () => {
  let pool: TestPool;
  before(async () => {
    pool = await startPool(3);
  });
  after(async () => {
    await pool?.stop();
  });

  it('holds every host, its control domain and its local storage, on the coordinator', async () => {
    const { coordinator: c, session: s } = pool;
    const hosts = (await jsonCall(c.url, 'host.get_all_records', [s])) as Record<string, Record<string, unknown>>;
    assert.deepEqual(
      Object.values(hosts)
        .map((h) => h.address)
        .sort(),
      pool.hosts.map((h) => h.address).sort(),
    );
    const vms = (await jsonCall(c.url, 'VM.get_all_records', [s])) as Record<string, Record<string, unknown>>;
    const dom0s = Object.values(vms).filter((v) => v.is_control_domain === true);
    assert.deepEqual(dom0s.map((v) => v.resident_on).sort(), [...pool.refs].sort());
    // each host's local SR, with a PBD on that host only
    const pbds = (await jsonCall(c.url, 'PBD.get_all_records', [s])) as Record<string, Record<string, unknown>>;
    const srs = (await jsonCall(c.url, 'SR.get_all_records', [s])) as Record<string, Record<string, unknown>>;
    for (const ref of pool.refs) {
      const local = Object.entries(srs).filter(
        ([sr, r]) => r.name_label === 'Local storage' && Object.values(pbds).some((p) => p.SR === sr && p.host === ref),
      );
      assert.equal(local.length, 1, `one local SR for ${ref}`);
    }
    const pools = (await jsonCall(c.url, 'pool.get_all_records', [s])) as Record<string, Record<string, unknown>>;
    assert.equal(Object.keys(pools).length, 1);
    assert.equal(Object.values(pools)[0]!.master, pool.refs[0]);
  });

  it('answers HOST_IS_SLAVE [coordinator] on a member, JSON-RPC and XML-RPC, HTTP and HTTPS', async () => {
    const m = pool.members[0]!;
    const expected = ['HOST_IS_SLAVE', pool.coordinator.address];
    assert.deepEqual(await xapiFailure(login(m.url, PASSWORD)), expected);
    assert.deepEqual(await pythonLogin(m.url), expected);
    assert.deepEqual(await pythonLogin(m.httpsUrl), expected);
    // a client's session from the coordinator is not for a member's calls
    assert.deepEqual(await xapiFailure(jsonCall(m.url, 'host.get_all', [pool.session])), expected);
    // even for an emergency call: the session check comes first
    assert.deepEqual(await xapiFailure(jsonCall(m.url, 'pool.is_slave', [pool.session, pool.refs[1]])), expected);
  });

  it('lets root log in locally on a member (slave_local_login_with_password)', async () => {
    const m = pool.members[1]!;
    const local = (await jsonCall(m.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
    assert.equal(await jsonCall(m.url, 'pool.is_slave', [local, pool.refs[2]]), true);
    // the local session reads the pool's database (through the coordinator)
    const hosts = (await jsonCall(m.url, 'host.get_all', [local])) as string[];
    assert.equal(hosts.length, 3);
    await jsonCall(m.url, 'session.local_logout', [local]);
    assert.deepEqual(await xapiFailure(jsonCall(m.url, 'session.slave_local_login_with_password', ['root', 'wrong'])), [
      'SESSION_AUTHENTICATION_FAILED',
      'root',
      'Authentication failure',
    ]);
  });

  it("Xen Orchestra's connector pointed at a member follows HOST_IS_SLAVE and stays connected", { timeout: 60_000 }, async () => {
    const m = pool.members[1]!;
    const xapi = new Xapi({ url: m.httpsUrl, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true, eventPollDelay: 500 });
    try {
      await xapi.connect();
      assert.equal(xapi.status, 'connected');
      await xapi.objectsFetched;
      const hosts = Object.values((xapi.objects.indexes.type.host ?? {}) as Record<string, { address: string }>);
      assert.deepEqual(hosts.map((h) => h.address).sort(), pool.hosts.map((h) => h.address).sort());
      // it talks to the coordinator now, and follows changes there
      assert.equal(xapi._url.hostname, pool.coordinator.address);
      const [poolRef] = Object.keys((xapi.objects.indexes.type.pool ?? {}) as Record<string, unknown>);
      await xapi.call(
        'pool.set_name_label',
        (xapi.objects.indexes.type.pool as Record<string, { $ref: string }>)[poolRef!]!.$ref,
        'followed',
      );
      await waitForEmitted('the new pool name in the cache', xapi.objects, ['update'], () =>
        Object.values((xapi.objects.indexes.type.pool ?? {}) as Record<string, { name_label: string }>).some(
          (p) => p.name_label === 'followed',
        ),
      );
    } finally {
      await xapi.disconnect();
    }
  });

  it('refuses a join aimed at a member: HOST_IS_SLAVE [coordinator]', async () => {
    const c = pool.coordinator;
    const extra = await startXapi({ address: loopbackAddress(), httpPort: c.httpPort, httpsPort: c.httpsPort });
    try {
      const s = await login(extra.url, PASSWORD);
      assert.deepEqual(await xapiFailure(jsonCall(extra.url, 'pool.join', [s, pool.members[0]!.address, 'root', PASSWORD])), [
        'HOST_IS_SLAVE',
        pool.coordinator.address,
      ]);
    } finally {
      await stopXapi(extra);
    }
  });
});

describe('pool.join refusals', () => {
  let hosts: XapiProcess[];
  before(async () => {
    hosts = await startHosts(2);
  });
  after(async () => {
    await stopHosts(hosts);
  });

  it('a wrong password: SESSION_AUTHENTICATION_FAILED from the coordinator', async () => {
    const [c, j] = hosts as [XapiProcess, XapiProcess];
    const s = await login(j.url, PASSWORD);
    assert.deepEqual(await xapiFailure(jsonCall(j.url, 'pool.join', [s, c.address, 'root', 'not-the-password'])), [
      'SESSION_AUTHENTICATION_FAILED',
      'root',
      'Authentication failure',
    ]);
  });

  it('joining itself: OPERATION_NOT_ALLOWED', async () => {
    const [, j] = hosts as [XapiProcess, XapiProcess];
    const s = await login(j.url, PASSWORD);
    assert.deepEqual(await xapiFailure(jsonCall(j.url, 'pool.join', [s, j.address, 'root', PASSWORD])), [
      'OPERATION_NOT_ALLOWED',
      'Host cannot become slave of itself',
    ]);
  });

  it('a running VM on the joiner: JOINING_HOST_CANNOT_HAVE_RUNNING_VMS; halted, the join goes through', async () => {
    const [c, j] = hosts as [XapiProcess, XapiProcess];
    const s = await login(j.url, PASSWORD);
    const vm = (await jsonCall(j.url, 'VM.create', [s, vmRecord('joiner-vm', { memory: 256 * 2 ** 20 })])) as string;
    await jsonCall(j.url, 'VM.start', [s, vm, false, false]);
    assert.deepEqual(await xapiFailure(jsonCall(j.url, 'pool.join', [s, c.address, 'root', PASSWORD])), [
      'JOINING_HOST_CANNOT_HAVE_RUNNING_VMS',
    ]);
    await jsonCall(j.url, 'VM.hard_shutdown', [s, vm]);
    await joinPool(c, j);
    // the joiner's VM is now the pool's
    const cs = await login(c.url, PASSWORD);
    const uuid = await jsonCall(c.url, 'VM.get_by_name_label', [cs, 'joiner-vm']);
    assert.equal((uuid as string[]).length, 1);
  });

  it('a member restarted alone comes back as a member', async () => {
    const [c, j] = hosts as [XapiProcess, XapiProcess];
    await stopXapi(j, true);
    const again = await startXapi({ address: j.address, httpPort: j.httpPort, httpsPort: j.httpsPort, stateDir: j.stateDir });
    hosts[1] = again;
    assert.match(again.output(), /host ready \(slave:/);
    await joinPoolBack(c, again);
    // Its record may read enabled from before the restart (pool.hello clears it only once the
    // member gets there): what says the member is back is the member itself, past its start-up.
    const answer = await waitUntil('the restarted member past its start-up', async () => {
      const e = await xapiFailure(login(again.url, PASSWORD));
      return e[0] === 'HOST_STILL_BOOTING' ? undefined : e;
    });
    assert.deepEqual(answer, ['HOST_IS_SLAVE', c.address]);
  });
});

/** Waits until a restarted member is enabled again (its pool.hello went through). */
async function joinPoolBack(c: XapiProcess, m: XapiProcess): Promise<void> {
  const cs = await login(c.url, PASSWORD);
  await waitUntil('the restarted member enabled', async () => {
    const hosts = (await jsonCall(c.url, 'host.get_all_records', [cs])) as Record<string, Record<string, unknown>>;
    return Object.values(hosts).find((h) => h.address === m.address)?.enabled === true;
  });
}
