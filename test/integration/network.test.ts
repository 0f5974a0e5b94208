// Networking in a pool of two real processes (network.md §2-4): each host's NICs (--sim-nics)
// scanned into PIFs on the pool-wide networks, one management PIF each; a pool-wide VLAN made
// on both hosts and destroyed again through Xen Orchestra's connector, each host's networkd state
// (its state directory) showing the VLAN device come and go; the management interface moved
// across the pool and back; xapi's errors as Python's xmlrpc.client receives them, for calls
// forwarded to the member too.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi } from './harness.js';
import { startPool, type TestPool } from './pool-harness.js';
import { RpcFailure, jsonCall } from './client.js';
import { waitUntil } from '../wait.js';

interface XapiError {
  code: string;
  params: string[];
}

type Rec = Record<string, unknown>;

const NIC_ARGS = ['--sim-nics', 'eth0,eth1:mtu=9000:speed=1000'];
let pool: TestPool;
// biome-ignore lint/suspicious/noExplicitAny: the connector is untyped
let xapi: any;

/** A host's simulated networkd state: bridge name -> its configuration. */
async function bridgesOf(
  stateDir: string,
): Promise<Record<string, { ports: Record<string, unknown>; vlan?: { parent: string; tag: number } }>> {
  const text = await readFile(join(stateDir, 'networkd', 'state.json'), 'utf8');
  return (JSON.parse(text) as { bridges: Record<string, never> }).bridges;
}

const call = (method: string, ...args: unknown[]) => xapi.call(method, ...args) as Promise<unknown>;

/** A new managed network, its bridge named by xapi. */
async function newNetwork(name_label: string): Promise<string> {
  const record = { name_label, name_description: '', MTU: 1500, other_config: {}, bridge: '', managed: true, tags: [] };
  return (await call('network.create', record)) as string;
}

/** The PIFs of the pool by host ref, then device. */
async function pifsByHost(): Promise<Map<string, Map<string, Rec & { $ref: string }>>> {
  const all = (await call('PIF.get_all_records')) as Record<string, Rec>;
  const out = new Map<string, Map<string, Rec & { $ref: string }>>();
  for (const [ref, p] of Object.entries(all)) {
    const host = p.host as string;
    if (!out.has(host)) out.set(host, new Map());
    if ((p.VLAN as number) === -1) out.get(host)!.set(p.device as string, { ...p, $ref: ref });
  }
  return out;
}

function python(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`python3 exited ${code}:\n${out}`))));
  });
}

/** Each call's ErrorDescription (or "ok") as Python's xmlrpc.client sees it. */
async function pythonErrors(url: string, calls: [string, ...unknown[]][]): Promise<unknown[]> {
  const script = `
import json, ssl, sys, xmlrpc.client
p = xmlrpc.client.ServerProxy(sys.argv[1], context=ssl._create_unverified_context())
s = p.session.login_with_password('root', sys.argv[2])['Value']
out = []
for c in json.loads(sys.argv[3]):
    obj = p
    for part in c[0].split('.'):
        obj = getattr(obj, part)
    r = obj(s, *c[1:])
    out.append(r['ErrorDescription'] if r['Status'] == 'Failure' else 'ok')
print(json.dumps(out))
`;
  return JSON.parse(await python(script, [url, PASSWORD, JSON.stringify(calls)])) as unknown[];
}

before(async () => {
  pool = await startPool(2, { args: NIC_ARGS });
  xapi = new Xapi({
    url: pool.coordinator.httpsUrl,
    allowUnauthorized: true,
    auth: { user: 'root', password: PASSWORD },
    eventPollDelay: 500,
  });
  await xapi.connect();
});

after(async () => {
  await xapi?.disconnect().catch(() => undefined);
  await pool?.stop();
});

test('each host: a PIF per NIC on the pool-wide xenbr<N> networks, one management PIF with its address, metrics filled', {
  timeout: 60_000,
}, async () => {
  const byHost = await pifsByHost();
  assert.equal(byHost.size, 2);
  const networks = (await call('network.get_all_records')) as Record<string, Rec>;
  for (const [i, host] of pool.refs.entries()) {
    const pifs = byHost.get(host)!;
    assert.deepEqual([...pifs.keys()].sort(), ['eth0', 'eth1']);
    const eth0 = pifs.get('eth0')!;
    const eth1 = pifs.get('eth1')!;
    assert.equal(eth0.management, true);
    assert.equal(eth0.IP, pool.hosts[i]!.address);
    assert.equal(eth1.management, false);
    assert.equal(networks[eth0.network as string]!.bridge, 'xenbr0');
    assert.equal(networks[eth1.network as string]!.bridge, 'xenbr1');
    assert.equal(eth1.currently_attached, true);
    const metrics = (await call('PIF_metrics.get_record', eth1.metrics)) as Rec;
    assert.equal(metrics.carrier, true);
    assert.equal(Number(metrics.speed), 1000);
    assert.equal(metrics.vendor_name, 'Simulated');
  }
  // the two hosts' NICs share the pool-wide networks
  assert.equal(byHost.get(pool.refs[0]!)!.get('eth1')!.network, byHost.get(pool.refs[1]!)!.get('eth1')!.network);
  assert.equal(await call('host.get_management_interface', pool.refs[1]), byHost.get(pool.refs[1]!)!.get('eth0')!.$ref);
});

test('pool.create_VLAN_from_PIF makes the VLAN on both hosts; VLAN.destroy on the member removes its device', {
  timeout: 60_000,
}, async () => {
  const byHost = await pifsByHost();
  const eth0 = byHost.get(pool.refs[0]!)!.get('eth0')!;
  const network = await newNetwork('VLAN 42');
  const bridge = (await call('network.get_bridge', network)) as string;
  const made = (await call('pool.create_VLAN_from_PIF', eth0.$ref, network, 42)) as string[];
  assert.equal(made.length, 2);
  const hosts = new Set<string>();
  for (const pif of made) {
    const r = (await call('PIF.get_record', pif)) as Rec;
    hosts.add(r.host as string);
    assert.equal(Number(r.VLAN), 42);
    assert.equal(r.currently_attached, true);
  }
  assert.deepEqual([...hosts].sort(), [...pool.refs].sort());
  for (const h of pool.hosts) {
    const b = (await bridgesOf(h.stateDir))[bridge];
    assert.deepEqual(b?.vlan, { parent: 'xenbr0', tag: 42 }, `${h.address} has the VLAN bridge`);
    assert.deepEqual(Object.keys(b.ports), ['eth0.42']);
  }
  // a second pool-wide VLAN with the same tag on another network: refused, nothing left behind
  const other = await newNetwork('again');
  await assert.rejects(call('pool.create_VLAN_from_PIF', eth0.$ref, other, 42), (e: XapiError) => {
    assert.equal(e.code, 'PIF_VLAN_EXISTS');
    assert.deepEqual(e.params, ['eth0']);
    return true;
  });
  assert.deepEqual(await call('network.get_PIFs', other), []);

  // destroy the member's VLAN (forwarded to it), then the coordinator's
  const vlans = (await call('VLAN.get_all_records')) as Record<string, Rec>;
  let memberPif = '';
  for (const pif of made) if ((await call('PIF.get_host', pif)) === pool.refs[1]) memberPif = pif;
  for (const [ref, v] of Object.entries(vlans)) {
    const host = (await call('PIF.get_host', v.untagged_PIF)) as string;
    await call('VLAN.destroy', ref);
    const h = pool.hosts[pool.refs.indexOf(host)]!;
    assert.equal((await bridgesOf(h.stateDir))[bridge], undefined, `${h.address} lost the VLAN bridge`);
    assert.ok((await bridgesOf(h.stateDir)).xenbr0, `${h.address} keeps xenbr0`);
  }
  await assert.rejects(call('PIF.get_record', memberPif), (e: XapiError) => e.code === 'HANDLE_INVALID');
  assert.deepEqual(await call('network.get_PIFs', network), []);
});

test('pool.management_reconfigure moves every host onto eth1 and back', { timeout: 60_000 }, async () => {
  const byHost = await pifsByHost();
  const eth1Network = byHost.get(pool.refs[0]!)!.get('eth1')!.network as string;
  const eth0Network = byHost.get(pool.refs[0]!)!.get('eth0')!.network as string;
  await assert.rejects(call('pool.management_reconfigure', eth1Network), (e: XapiError) => {
    assert.equal(e.code, 'PIF_HAS_NO_NETWORK_CONFIGURATION');
    return true;
  });
  // each host's eth1 gets the host's own address (where the simulated host listens)
  for (const [i, host] of pool.refs.entries()) {
    const eth1 = byHost.get(host)!.get('eth1')!;
    await call('PIF.reconfigure_ip', eth1.$ref, 'Static', pool.hosts[i]!.address, '255.0.0.0', '', '');
  }
  await call('pool.management_reconfigure', eth1Network);
  let now = await pifsByHost();
  for (const host of pool.refs) {
    assert.equal(now.get(host)!.get('eth1')!.management, true);
    assert.equal(now.get(host)!.get('eth0')!.management, false);
    assert.equal(now.get(host)!.get('eth0')!.currently_attached, true);
  }
  for (const h of pool.hosts) assert.match(await readFile(join(h.stateDir, 'inventory'), 'utf8'), /^MANAGEMENT_INTERFACE='xenbr1'$/m);
  // the member still answers through the coordinator
  await call('host.management_reconfigure', byHost.get(pool.refs[1]!)!.get('eth0')!.$ref);
  await call('pool.management_reconfigure', eth0Network);
  now = await pifsByHost();
  for (const host of pool.refs) assert.equal(now.get(host)!.get('eth0')!.management, true);
});

test("xapi's errors through Python's xmlrpc.client, on the coordinator and forwarded to the member", { timeout: 60_000 }, async () => {
  const byHost = await pifsByHost();
  const memberEth0 = byHost.get(pool.refs[1]!)!.get('eth0')!.$ref;
  const memberEth1 = byHost.get(pool.refs[1]!)!.get('eth1')!.$ref;
  const errors = await pythonErrors(pool.coordinator.url, [
    ['PIF.unplug', memberEth0],
    ['PIF.forget', memberEth0],
    ['PIF.reconfigure_ip', memberEth1, 'Static', '10.0.0', '255.0.0.0', '', ''],
    ['PIF.reconfigure_ip', memberEth0, 'None', '', '', '', ''],
    ['PIF.destroy', memberEth1],
    ['VLAN.create', memberEth1, '5000', byHost.get(pool.refs[1]!)!.get('eth0')!.network],
    ['PIF.introduce', pool.refs[1], '', 'eth0', true],
    ['host.management_reconfigure', byHost.get(pool.refs[1]!)!.get('eth1')!.$ref],
  ]);
  assert.deepEqual(errors, [
    ['PIF_IS_MANAGEMENT_INTERFACE', memberEth0],
    ['PIF_IS_MANAGEMENT_INTERFACE', memberEth0],
    ['INVALID_IP_ADDRESS_SPECIFIED', 'IP'],
    ['PIF_IS_MANAGEMENT_INTERFACE', memberEth0],
    ['PIF_IS_PHYSICAL'],
    ['NETWORK_ALREADY_CONNECTED', pool.refs[1], memberEth0],
    ['DUPLICATE_PIF_DEVICE_NAME', 'eth0'],
    'ok',
  ]);
  // the member's eth1 had its address from the previous test: it is management now; back to eth0
  await call('host.management_reconfigure', memberEth0);
  // the coordinator may disable its own (not forwarded: it runs where it is called), then take it back
  assert.deepEqual(await pythonErrors(pool.coordinator.url, [['host.management_disable']]), ['ok']);
  assert.equal((await pifsByHost()).get(pool.refs[0]!)!.get('eth0')!.management, false);
  await call('host.management_reconfigure', byHost.get(pool.refs[0]!)!.get('eth0')!.$ref);
  assert.equal((await pifsByHost()).get(pool.refs[0]!)!.get('eth0')!.management, true);
});

test('a member killed (-9) and restarted keeps its VLAN: networkd and the records agree', { timeout: 120_000 }, async () => {
  const member = pool.hosts[1]!;
  const eth1 = (await pifsByHost()).get(pool.refs[1]!)!.get('eth1')!;
  const network = await newNetwork('VLAN 7');
  const bridge = (await call('network.get_bridge', network)) as string;
  const vlan = (await call('VLAN.create', eth1.$ref, 7, network)) as string;
  const untagged = (await call('VLAN.get_untagged_PIF', vlan)) as string;
  assert.deepEqual(Object.keys((await bridgesOf(member.stateDir))[bridge]!.ports), ['eth1.7']);

  member.kill('SIGKILL');
  await member.exited;
  const again = await startXapi({
    args: NIC_ARGS,
    stateDir: member.stateDir,
    address: member.address,
    httpPort: member.httpPort,
    httpsPort: member.httpsPort,
  });
  pool.hosts[1] = again;
  // Serving again: a member answers calls other than the emergency ones once its start-up (the
  // network sync with it) is over; a pool session on it says when.
  const secret = (await readFile(join(pool.coordinator.stateDir, 'ptoken'), 'utf8')).trim();
  await waitUntil(
    'the member serving again',
    async () => {
      try {
        const s = (await jsonCall(pool.coordinator.url, 'session.slave_login', [pool.refs[1], secret])) as string;
        await jsonCall(again.url, 'pool.get_all', [s]);
        return true;
      } catch (e) {
        if (e instanceof RpcFailure && e.error[0] === 'HOST_STILL_BOOTING') return false;
        if (e instanceof RpcFailure) throw e;
        return false; // not listening yet
      }
    },
    { timeoutMs: 90_000 },
  );
  assert.equal(await call('PIF.get_currently_attached', untagged), true);
  assert.deepEqual((await bridgesOf(member.stateDir))[bridge]?.vlan, { parent: 'xenbr1', tag: 7 });
  const pifs = (await pifsByHost()).get(pool.refs[1]!)!;
  assert.equal(pifs.get('eth0')!.management, true);
  assert.ok([...pifs.values()].every((p) => p.currently_attached === true));
  // and it goes again cleanly, through the coordinator
  await call('VLAN.destroy', vlan);
  assert.equal((await bridgesOf(member.stateDir))[bridge], undefined);
});
