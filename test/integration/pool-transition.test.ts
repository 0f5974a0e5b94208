// Coordinator transitions with real processes (pool.md §5): an orderly designate_new_master on a
// pool of three, and the emergency path (coordinator killed, a member takes over from its backup,
// the other member recovered, the old coordinator restarted and demoting itself without ever
// accepting a login as coordinator).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { jsonCall, login, RpcFailure } from './client.js';
import { startPool } from './pool-harness.js';
import { waitUntil } from '../wait.js';

type Records = Record<string, Record<string, unknown>>;

/** The error a call fails with (its code and parameters), or undefined if it succeeds. */
async function failure(p: Promise<unknown>): Promise<string[] | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    if (e instanceof RpcFailure) return e.error;
    return ['CONNECTION', (e as Error).message];
  }
}

/** A session on `x` once it serves as coordinator (it may still be restarting or checking). */
function coordinatorSession(x: XapiProcess): Promise<string> {
  return waitUntil(`${x.address} serving as coordinator`, () => login(x.url, PASSWORD).catch(() => ''), {
    timeoutMs: 60_000,
    intervalMs: 100,
  });
}

/** Waits until `member` is an enabled, live member of the coordinator `c`, answering HOST_IS_SLAVE [c]. */
async function waitMember(c: XapiProcess, session: string, member: XapiProcess): Promise<void> {
  await waitUntil(
    `${member.address} a member of ${c.address}`,
    async () => {
      const f = await failure(login(member.url, PASSWORD));
      if (f?.[0] !== 'HOST_IS_SLAVE' || f[1] !== c.address) return false;
      const hosts = (await jsonCall(c.url, 'host.get_all_records', [session])) as Records;
      const row = Object.values(hosts).find((h) => h.address === member.address);
      if (!row?.enabled) return false;
      return (await jsonCall(c.url, 'host_metrics.get_live', [session, row.metrics])) === true;
    },
    { timeoutMs: 60_000, intervalMs: 200 },
  );
}

async function poolRef(url: string, session: string): Promise<string> {
  return ((await jsonCall(url, 'pool.get_all', [session])) as string[])[0]!;
}

test('designate_new_master: the new host is coordinator, the others its members, nothing acknowledged lost', {
  timeout: 240_000,
}, async () => {
  const pool = await startPool(3);
  const [a, b, c] = pool.hosts as [XapiProcess, XapiProcess, XapiProcess];
  try {
    const s = pool.session;
    const p = await poolRef(a.url, s);
    // Acknowledged writes before the call: the pool's name and a new VM.
    await jsonCall(a.url, 'pool.set_name_label', [s, p, 'before-designate']);
    const templates = (await jsonCall(a.url, 'VM.get_all_records', [s])) as Records;
    const template = Object.entries(templates).find(([, v]) => v.is_a_template && v.name_label === 'Other install media')![0];
    const vm = (await jsonCall(a.url, 'VM.clone', [s, template, 'written-before-designate'])) as string;

    // A client that stays connected to the old coordinator follows HOST_IS_SLAVE by itself.
    const xo = new Xapi({ url: a.url, auth: { user: 'root', password: PASSWORD }, allowUnauthorized: true });

    await jsonCall(a.url, 'pool.designate_new_master', [s, pool.refs[1]]);

    const sb = await coordinatorSession(b);
    await waitMember(b, sb, a);
    await waitMember(b, sb, c);
    const pb = await poolRef(b.url, sb);
    assert.equal(await jsonCall(b.url, 'pool.get_master', [sb, pb]), pool.refs[1]);
    assert.equal(await jsonCall(b.url, 'pool.get_name_label', [sb, pb]), 'before-designate');
    assert.equal(await jsonCall(b.url, 'VM.get_name_label', [sb, vm]), 'written-before-designate');
    // No operation left marked, and the alert of the transition raised.
    assert.deepEqual(await jsonCall(b.url, 'pool.get_current_operations', [sb, pb]), {});
    const messages = (await jsonCall(b.url, 'message.get_all_records', [sb])) as Records;
    assert.ok(Object.values(messages).some((m) => m.name === 'POOL_MASTER_TRANSITION'));

    await xo.connect();
    try {
      assert.equal((xo as unknown as { _url: { hostname: string } })._url.hostname, b.address);
      const name = await xo.call('VM.get_name_label', vm);
      assert.equal(name, 'written-before-designate');
    } finally {
      await xo.disconnect();
    }
    // The pool works through the new coordinator: a write there, read back.
    await jsonCall(b.url, 'pool.set_name_description', [sb, pb, 'after-designate']);
    assert.equal(await jsonCall(b.url, 'pool.get_name_description', [sb, pb]), 'after-designate');
  } finally {
    await pool.stop();
  }
});

test('coordinator killed: emergency_transition_to_master, recover_slaves; the old one comes back as a member and never serves logins', {
  timeout: 300_000,
}, async () => {
  const pool = await startPool(3);
  const [a, b, c] = pool.hosts as [XapiProcess, XapiProcess, XapiProcess];
  let restarted: XapiProcess | undefined;
  try {
    const s = pool.session;
    const p = await poolRef(a.url, s);
    await jsonCall(a.url, 'pool.set_name_label', [s, p, 'before-the-crash']);
    // Every member holds the database as it is now.
    await jsonCall(a.url, 'pool.sync_database', [s]);
    a.kill('SIGKILL');
    await a.exited;

    // On b, with a local session (the coordinator is gone): become the coordinator.
    const local = (await jsonCall(b.url, 'session.slave_local_login_with_password', ['root', PASSWORD])) as string;
    await jsonCall(b.url, 'pool.emergency_transition_to_master', [local]);
    const sb = await coordinatorSession(b);
    const pb = await poolRef(b.url, sb);
    assert.equal(await jsonCall(b.url, 'pool.get_name_label', [sb, pb]), 'before-the-crash');
    assert.equal(await jsonCall(b.url, 'pool.get_master', [sb, pb]), pool.refs[1]);

    // c follows; a (dead) does not.
    const recovered = (await jsonCall(b.url, 'pool.recover_slaves', [sb])) as string[];
    assert.deepEqual(recovered, [pool.refs[2]]);
    await waitMember(b, sb, c);
    // The pool is usable: a write through the new coordinator, read by Python's xmlrpc.client.
    await jsonCall(b.url, 'pool.set_name_description', [sb, pb, 'after-the-crash']);
    assert.equal(await pythonRead(b, pb), 'after-the-crash');

    // The old coordinator restarts from its own database, where it is coordinator. Logins are
    // tried all along its start: none may succeed on it.
    let stopHammer = false;
    const answers = new Map<string, number>();
    const hammer = (async () => {
      while (!stopHammer) {
        const f = await failure(login(a.url, PASSWORD));
        const key = f === undefined ? 'SESSION' : f[0] === 'CONNECTION' ? 'CONNECTION' : `${f[0]} ${f.slice(1).join(' ')}`;
        answers.set(key, (answers.get(key) ?? 0) + 1);
        if (key === 'CONNECTION') await new Promise((r) => setTimeout(r, 5)); // not yet listening
      }
    })();
    restarted = await startXapi({ stateDir: a.stateDir, address: a.address, httpPort: a.httpPort, httpsPort: a.httpsPort });
    await waitMember(b, sb, restarted);
    stopHammer = true;
    await hammer;
    assert.equal(answers.get('SESSION'), undefined, `a login succeeded on the old coordinator: ${JSON.stringify([...answers])}`);
    assert.ok((answers.get(`HOST_IS_SLAVE ${b.address}`) ?? 0) > 0, JSON.stringify([...answers]));
    // Still one coordinator, and it kept what it had.
    assert.equal(await jsonCall(b.url, 'pool.get_name_description', [sb, pb]), 'after-the-crash');
    assert.equal(await jsonCall(b.url, 'pool.get_master', [sb, pb]), pool.refs[1]);
  } finally {
    if (restarted) await stopXapi(restarted);
    await pool.stop();
  }
});

/** Reads the pool's name_description through Python's xmlrpc.client (a login on the coordinator). */
function pythonRead(x: XapiProcess, poolRef: string): Promise<string> {
  const script = `
import sys, xmlrpc.client
s = xmlrpc.client.ServerProxy(sys.argv[1])
r = s.session.login_with_password('root', sys.argv[2])
assert r['Status'] == 'Success', r
v = s.pool.get_name_description(r['Value'], sys.argv[3])
assert v['Status'] == 'Success', v
print(v['Value'])
`;
  return new Promise((resolve, reject) => {
    const py = spawn('python3', ['-c', script, x.url, PASSWORD, poolRef], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    py.stdout.on('data', (d: Buffer) => (out += d.toString()));
    py.stderr.on('data', (d: Buffer) => (err += d.toString()));
    py.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`python failed (${code}): ${err}`))));
  });
}
