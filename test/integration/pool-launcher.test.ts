// `xapi pool`, the launcher: a pool formed on consecutive loopback addresses, the addresses and
// the root password printed, serve's flags passed to every host, and the lifecycle: SIGTERM
// stops every host, and no host outlives the launcher (SIGKILLed, or run through npx, which
// passes no signal on). Joining several hosts: pool-launcher-join.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PASSWORD, ROOT, makeStateDir } from './harness.js';
import { jsonCall, login } from './client.js';
import { XapiClient } from '../../src/rpc/client.js';
import { isRunning, startPool, stopPool, waitGone } from './launcher-harness.js';

test('xapi pool --hosts 1: one coordinator, its address and the generated password printed, serve flags passed on', {
  timeout: 90_000,
}, async () => {
  const p = await startPool({
    hosts: 1,
    env: { XAPI_ROOT_PASSWORD: undefined },
    args: ['--sim-cpus', '3', '--host-assumed-dead-interval', '7.5'],
  });
  try {
    const [address] = p.addresses;
    assert.match(p.output(), new RegExp(`^ {2}host1 {2}${address!.replaceAll('.', '\\.')} {2}coordinator `, 'm'));
    assert.equal(p.hostPids.length, 1);
    assert.equal(p.launcherPid, p.proc.pid);
    const password = /xapi pool: root password: (\S+)$/m.exec(p.output())?.[1];
    assert.ok(password, p.output());
    // The host is reachable at its address with that password, its state is D/host1, and the
    // serve flags reached it.
    const url = `http://${address}:${p.httpPort}`;
    const s = await login(url, password);
    const [host] = (await jsonCall(url, 'host.get_all', [s])) as string[];
    assert.equal(await jsonCall(url, 'host.get_address', [s, host]), address);
    assert.equal(((await jsonCall(url, 'host.get_host_CPUs', [s, host])) as string[]).length, 3);
    assert.ok((await stat(join(p.stateDir, 'host1', 'xapi.db'))).isFile());
    const cmdline = (await readFile(`/proc/${p.hostPids[0]}/cmdline`, 'utf8')).split('\0');
    assert.deepEqual(cmdline.slice(cmdline.indexOf('--host-assumed-dead-interval'), cmdline.indexOf('--host-assumed-dead-interval') + 2), [
      '--host-assumed-dead-interval',
      '7.5',
    ]);
    assert.ok(!cmdline.some((a) => a.includes(password)), 'the password is passed in the environment, not on the command line');
  } finally {
    await stopPool(p);
  }
});

test("a password given in XAPI_ROOT_PASSWORD is the hosts' and is not printed", { timeout: 90_000 }, async () => {
  const p = await startPool({ hosts: 1, env: { XAPI_ROOT_PASSWORD: PASSWORD } });
  try {
    assert.ok(!p.output().includes(PASSWORD));
    assert.match(p.output(), /root password: as given \(XAPI_ROOT_PASSWORD\)/);
    await login(`http://${p.addresses[0]}:${p.httpPort}`, PASSWORD);
    // XapiClient (the hosts' own client) over HTTPS, the self-signed certificate accepted.
    const client = new XapiClient(`https://${p.addresses[0]}:${p.httpsPort}`);
    const session = await client.call('session.login_with_password', ['root', PASSWORD]);
    assert.match(String(session), /^OpaqueRef:/);
    client.close();
  } finally {
    await stopPool(p);
  }
});

test('SIGTERM to the launcher stops every host, then the launcher exits 0', { timeout: 90_000 }, async () => {
  const p = await startPool({ hosts: 1, env: { XAPI_ROOT_PASSWORD: PASSWORD } });
  try {
    p.proc.kill('SIGTERM');
    assert.equal(await p.exited, 0);
    // The launcher exits only once its hosts have: they are gone already.
    assert.deepEqual(p.hostPids.filter(isRunning), []);
    assert.match(p.output(), /xapi: SIGTERM: shutting down/);
  } finally {
    await stopPool(p);
  }
});

test('SIGKILL of the launcher: every host notices its channel close and exits', { timeout: 90_000 }, async () => {
  const p = await startPool({ hosts: 1, env: { XAPI_ROOT_PASSWORD: PASSWORD } });
  try {
    p.proc.kill('SIGKILL');
    await p.exited;
    await waitGone(p.hostPids, 'the hosts of a SIGKILLed launcher');
  } finally {
    await stopPool(p);
  }
});

test('started through npx (which passes no signal on): SIGTERM to npx still stops the launcher and every host', {
  timeout: 300_000,
}, async () => {
  const p = await startPool({ hosts: 1, via: 'npx', env: { XAPI_ROOT_PASSWORD: PASSWORD } });
  try {
    assert.notEqual(p.launcherPid, p.proc.pid, 'npx runs the launcher as a descendant');
    assert.ok(isRunning(p.launcherPid));
    p.proc.kill('SIGTERM');
    await waitGone([p.launcherPid, ...p.hostPids], 'the launcher and hosts started through npx');
  } finally {
    await stopPool(p);
  }
});

test('a host that dies is reported, not restarted; with no host left the launcher exits 1', { timeout: 90_000 }, async () => {
  const p = await startPool({ hosts: 1, env: { XAPI_ROOT_PASSWORD: PASSWORD } });
  try {
    process.kill(p.hostPids[0]!, 'SIGKILL');
    assert.equal(await p.exited, 1);
    assert.match(p.output(), /host1 \(\S+\) exited \(killed by SIGKILL\); it is not restarted/);
  } finally {
    await stopPool(p);
  }
});

/** Runs `xapi <args>` to its end (no host is ever started by these). */
async function run(args: string[]): Promise<{ code: number | null; out: string }> {
  const proc = spawn(process.execPath, [join(ROOT, 'bin/xapi.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
  return { code, out };
}

test('bad pool flags are usage errors (exit 2) naming the flag, before any host starts', { timeout: 180_000 }, async () => {
  const stateDir = await makeStateDir();
  const base = ['pool', '--state-dir', join(stateDir, 'never')];
  const cases: [string[], RegExp][] = [
    [['--base-address', '127.0.0.10'], /needs --hosts/],
    [['--hosts', '2'], /needs --base-address/],
    [['--hosts', '0', '--base-address', '127.0.0.10'], /--hosts takes a positive whole number/],
    [['--hosts', 'x', '--base-address', '127.0.0.10'], /--hosts takes a positive whole number/],
    [['--hosts', '2', '--base-address', 'localhost'], /--base-address takes an IPv4 address/],
    [['--hosts', '2', '--base-address', '0.0.0.0'], /not 0\.0\.0\.0/],
    [['--hosts', '3', '--base-address', '127.0.0.254'], /leaves room for 2 host\(s\) before 127\.0\.0\.255, not 3/],
    [['--hosts', '2', '--base-address', '127.0.0.10', '--address', '127.0.0.1'], /--address is not taken here/],
    [['--hosts', '2', '--base-address', '127.0.0.10', '--http-port', '0'], /--http-port 0 would give each host a different port/],
    [['--hosts', '2', '--base-address', '127.0.0.10', '--https-port', '70000'], /--https-port takes a port number/],
    [['--hosts', '2', '--base-address', '127.0.0.10', '--sim-cpus', 'two'], /--sim-cpus takes a positive whole number/],
    [
      ['--hosts', '2', '--base-address', '127.0.0.10', '--host-assumed-dead-interval', '0'],
      /--host-assumed-dead-interval takes a positive number of seconds/,
    ],
    [['--hosts', '2', '--base-address', '127.0.0.10', '--backend', 'xen'], /unknown --backend xen/],
    [['--hosts', '2', '--base-address', '127.0.0.10', '--no-such-flag'], /Unknown option '--no-such-flag'/],
  ];
  for (const [args, message] of cases) {
    const { code, out } = await run([...base, ...args]);
    assert.equal(code, 2, `${args.join(' ')}: ${out}`);
    assert.match(out, message, args.join(' '));
    assert.match(out, /usage: xapi pool/);
  }
  await assert.rejects(stat(join(stateDir, 'never')), /ENOENT/);
  // serve takes the new flag, with the same check.
  const { code, out } = await run(['serve', '--host-assumed-dead-interval', 'soon']);
  assert.equal(code, 2);
  assert.match(out, /--host-assumed-dead-interval takes a positive number of seconds, not "soon"/);
  await rm(stateDir, { recursive: true, force: true });
});
