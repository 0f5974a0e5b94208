// `xapi pool`: a resource pool on one machine, as an operator would build it. Starts N `xapi
// serve` processes on consecutive addresses (all on the same ports, state in D/host<i>), waits
// until each answers, makes hosts 2..N join host 1 with pool.join through the XenAPI, and waits
// until the coordinator lists every host as live. It stays in the foreground and owns its hosts:
// SIGINT/SIGTERM stops them all; each host holds an IPC channel to the launcher and stops when
// that channel closes, so no host outlives the launcher even when it is SIGKILLed; and the
// launcher stops when the process that started it goes, so a wrapper that passes no signal on
// (npx, `npm run`) still stops the pool. A host that dies is reported, not restarted: a real
// pool has no supervisor (xapi restarts itself, in-process, where it must).
import { HOST_NODE_FLAGS, hostEnv } from './host-process.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { isIPv4 } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConnectionFailed, XapiClient } from '../rpc/client.js';
import { XapiError } from '../rpc/errors.js';
import { isStruct, type Rpc } from '../rpc/rpc.js';
import { SERVE_OPTIONS, type ServeFlag, type ServeValues, UsageError, hostOptions, port } from './flags.js';

export const POOL_USAGE = `usage: xapi pool --hosts N --base-address A [--state-dir D] [--http-port P] [--https-port Q]
                 [--root-password-file F] [--host-assumed-dead-interval S] [any other xapi serve flag]
starts N hosts on the addresses A, A+1, ... (host i's state in D/host<i>; default --state-dir ./pool),
all on the same ports (80 and 443 unless given); hosts 2..N join host 1, the coordinator, with
pool.join. Every host gets the same root password: XAPI_ROOT_PASSWORD, or --root-password-file,
otherwise one generated and printed. Stays in the foreground: SIGINT or SIGTERM stops every host,
and so does the end of the process that started it.`;

/** How long one host may take to answer after it is started. */
const START_TIMEOUT_MS = 120_000;
/**
 * How many hosts start at once. A host's start-up is ~2 s of CPU: 64 started together on 2 cores
 * each took minutes to answer (over START_TIMEOUT_MS); a few at a time, each answers in seconds.
 */
const STARTING_AT_ONCE = 2 * availableParallelism();
/** How long the coordinator may take, after the joins, to list every host as live: a base and a share per host. */
const LIVE_TIMEOUT_MS = 60_000;
const LIVE_TIMEOUT_PER_HOST_MS = 5_000;
/** A host that has not exited this long after SIGTERM is killed. */
const STOP_DEADLINE_MS = 30_000;
/** How often the launcher checks that the process that started it is still there. */
const PARENT_CHECK_MS = 500;
/** Between two attempts to reach a starting host. */
const POLL_INTERVAL_MS = 100;

/** serve's flags the launcher sets itself for each host rather than passing them on as given. */
const SET_PER_HOST: ReadonlySet<string> = new Set(['address', 'state-dir', 'http-port', 'https-port', 'root-password-file']);

const POOL_OPTIONS = {
  // serve's flags, without their defaults: only those given are passed on (each host applies its own defaults).
  ...(Object.fromEntries(Object.keys(SERVE_OPTIONS).map((k) => [k, { type: 'string' }])) as Record<ServeFlag, { type: 'string' }>),
  hosts: { type: 'string' },
  'base-address': { type: 'string' },
} as const;

interface PoolPlan {
  hosts: number;
  addresses: string[];
  stateDir: string;
  httpPort: number;
  httpsPort: number;
  /** The serve flags passed to every host as given. */
  passOn: string[];
}

/** The consecutive addresses A, A+1, ...: all in A's last number, never wrapping or carrying. */
export function poolAddresses(base: string, hosts: number): string[] {
  if (!isIPv4(base)) throw new UsageError(`--base-address takes an IPv4 address (e.g. 127.0.0.10), not ${JSON.stringify(base)}`);
  if (base === '0.0.0.0') throw new UsageError('--base-address must be an address the hosts can be reached at, not 0.0.0.0');
  const octets = base.split('.').map(Number);
  const last = octets[3]!;
  if (last + hosts - 1 > 255) {
    throw new UsageError(
      `--base-address ${base} leaves room for ${256 - last} host(s) before ${octets.slice(0, 3).join('.')}.255, not ${hosts}: ` +
        `pick a base address whose last number is at most ${256 - hosts}`,
    );
  }
  return Array.from({ length: hosts }, (_, i) => [...octets.slice(0, 3), last + i].join('.'));
}

function plan(values: ServeValues & { hosts?: string; 'base-address'?: string }): PoolPlan {
  if (values.address !== undefined)
    throw new UsageError("xapi pool sets each host's --address from --base-address; --address is not taken here");
  if (values.hosts === undefined) throw new UsageError('xapi pool needs --hosts N');
  const hosts = Number(values.hosts);
  if (!/^\d+$/.test(values.hosts) || hosts < 1)
    throw new UsageError(`--hosts takes a positive whole number, not ${JSON.stringify(values.hosts)}`);
  if (values['base-address'] === undefined) throw new UsageError("xapi pool needs --base-address A (the first host's address)");
  const addresses = poolAddresses(values['base-address'], hosts);
  const ports = ['http-port', 'https-port'].map((flag, i) => {
    const p = port(values[flag as 'http-port' | 'https-port'] ?? (i === 0 ? '80' : '443'), `--${flag}`);
    // The hosts of a pool find each other by address on shared ports: 0 would give each its own.
    if (p === 0) throw new UsageError(`--${flag} 0 would give each host a different port; a pool's hosts share theirs`);
    return p;
  });
  const stateDir = resolve(values['state-dir'] ?? './pool');
  // Every serve flag is checked here once, so a bad value is one usage error, not N hosts failing.
  const given: ServeValues = {};
  const passOn: string[] = [];
  for (const flag of Object.keys(SERVE_OPTIONS) as ServeFlag[]) {
    const value = values[flag];
    if (value === undefined || flag === 'address') continue;
    given[flag] = value;
    if (!SET_PER_HOST.has(flag)) passOn.push(`--${flag}`, value);
  }
  hostOptions({ ...given, address: addresses[0], 'state-dir': stateDir });
  return { hosts, addresses, stateDir, httpPort: ports[0]!, httpsPort: ports[1]!, passOn };
}

interface PoolHost {
  name: string;
  address: string;
  proc: ChildProcess;
  pid: number;
  exited: Promise<string>;
  running: boolean;
}

/** A pause between two polls of a starting host. */
function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export async function pool(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: POOL_OPTIONS, strict: true });
  const p = plan(values);

  let password = process.env.XAPI_ROOT_PASSWORD;
  let passwordFrom = 'XAPI_ROOT_PASSWORD';
  if (values['root-password-file']) {
    password = (await readFile(values['root-password-file'], 'utf8')).replace(/\r?\n$/, '');
    passwordFrom = values['root-password-file'];
  }
  const generated = password === undefined || password === '';
  if (generated) password = randomBytes(12).toString('base64url');
  const rootPassword = password!;

  await mkdir(p.stateDir, { recursive: true, mode: 0o700 });
  const launcher = new Launcher(p, rootPassword);
  process.on('SIGINT', () => launcher.stop('SIGINT'));
  process.on('SIGTERM', () => launcher.stop('SIGTERM'));
  process.on('SIGHUP', () => launcher.stop('SIGHUP'));
  // Run through npx or `npm run`, the launcher's parent is a shell that dies of SIGTERM or SIGINT
  // without passing it on; the launcher is then adopted by another process. It is a foreground
  // program, so losing the process that started it is the same as being told to stop.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) launcher.stop(`parent process ${parent} gone`);
  }, PARENT_CHECK_MS).unref();

  let coordinator: string;
  try {
    coordinator = await launcher.form();
    launcher.formed = true;
  } catch (e) {
    if (launcher.stopping) return; // a signal came during formation: stop() finishes the job
    console.error(`xapi pool: ${(e as Error).message}`);
    launcher.stop('start-up failed', 1);
    return;
  }
  console.log(`xapi pool: ${p.hosts} host(s) on ports ${p.httpPort}/${p.httpsPort}, state in ${p.stateDir}:`);
  for (const h of launcher.hosts) {
    const role = h.address === coordinator ? 'coordinator' : 'member';
    console.log(`  ${h.name}  ${h.address}  ${role.padEnd(11)}  pid ${h.pid}`);
  }
  console.log(generated ? `xapi pool: root password: ${rootPassword}` : `xapi pool: root password: as given (${passwordFrom})`);
  console.log(`xapi pool: ready (launcher pid ${process.pid}; SIGINT or SIGTERM stops every host)`);
}

class Launcher {
  readonly hosts: PoolHost[] = [];
  stopping = false;
  formed = false;
  private readonly clients: XapiClient[] = [];
  /** Rejects when a host dies before the pool is formed. */
  private readonly died: Promise<never>;
  private rejectDied!: (e: Error) => void;
  private readonly bin = fileURLToPath(new URL('../../../bin/xapi.js', import.meta.url));

  constructor(
    private readonly plan: PoolPlan,
    private readonly password: string,
  ) {
    this.died = new Promise<never>((_, reject) => (this.rejectDied = reject));
    this.died.catch(() => {});
  }

  /** Starts the hosts, joins them, waits until all are live; resolves with the coordinator's address. */
  async form(): Promise<string> {
    // Hosts start in order, STARTING_AT_ONCE at a time: the next starts when one answers.
    const roles: (string | undefined)[] = [];
    let next = 0;
    const starter = async () => {
      while (next < this.plan.addresses.length && !this.stopping) {
        const i = next++;
        this.start(i + 1, this.plan.addresses[i]!);
        roles[i] = await this.answered(this.hosts[i]!, this.clients[i]!);
      }
    };
    await this.race(Promise.all(Array.from({ length: Math.min(STARTING_AT_ONCE, this.plan.hosts) }, starter)));
    // Host 1 is the coordinator, unless it says it is a member of another's pool (a later coordinator
    // transition): then that host is.
    const coordinator = roles[0] ?? this.plan.addresses[0]!;
    for (let i = 0; i < this.hosts.length; i++) {
      const h = this.hosts[i]!;
      const role = roles[i];
      if (h.address === coordinator) continue;
      if (role === coordinator) continue; // already a member of this pool (started again on the same state)
      if (role !== undefined) throw new Error(`${h.name} (${h.address}) is a member of the pool of ${role}, not of ${coordinator}`);
      await this.race(this.join(h, this.clients[i]!, coordinator));
    }
    await this.race(this.allLive(this.clients[this.plan.addresses.indexOf(coordinator)] ?? new XapiClient(this.url(coordinator))));
    for (const c of this.clients) c.close();
    return coordinator;
  }

  /** SIGTERM to every running host, wait for them all, exit. A second signal kills them at once. */
  stop(why: string, code = 0): void {
    if (this.stopping) {
      if (why.startsWith('SIG')) for (const h of this.hosts) this.signal(h, 'SIGKILL');
      return;
    }
    this.stopping = true;
    console.log(`xapi pool: ${why}: stopping ${this.hosts.filter((h) => h.running).length} host(s)`);
    for (const h of this.hosts) this.signal(h, 'SIGTERM');
    const deadline = setTimeout(() => {
      for (const h of this.hosts) {
        if (h.running) console.error(`xapi pool: ${h.name} (${h.address}) still running ${STOP_DEADLINE_MS} ms after SIGTERM: killing it`);
        this.signal(h, 'SIGKILL');
      }
    }, STOP_DEADLINE_MS);
    void Promise.all(this.hosts.map((h) => h.exited)).then(() => {
      clearTimeout(deadline);
      process.exit(code);
    });
  }

  private url(address: string): string {
    return `http://${address}:${this.plan.httpPort}`;
  }

  private start(index: number, address: string): void {
    const name = `host${index}`;
    const args = [
      ...HOST_NODE_FLAGS,
      this.bin,
      'serve',
      '--address',
      address,
      '--http-port',
      String(this.plan.httpPort),
      '--https-port',
      String(this.plan.httpsPort),
      '--state-dir',
      join(this.plan.stateDir, name),
      ...this.plan.passOn,
    ];
    // The host's output goes straight to ours; the IPC channel is how it knows we are gone.
    const proc = spawn(process.execPath, args, {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: hostEnv({ ...process.env, XAPI_ROOT_PASSWORD: this.password }),
    });
    const host: PoolHost = { name, address, proc, pid: proc.pid ?? -1, running: proc.pid !== undefined, exited: Promise.resolve('') };
    host.exited = new Promise<string>((resolve) => {
      proc.on('error', (e) => {
        if (host.pid === -1) {
          host.running = false;
          resolve(`not started: ${e.message}`);
          this.lost(host, `could not be started: ${e.message}`);
        }
      });
      proc.on('exit', (code, signal) => {
        host.running = false;
        const how = signal ? `killed by ${signal}` : `exit code ${code}`;
        resolve(how);
        this.lost(host, `exited (${how})`);
      });
    });
    this.hosts.push(host);
    this.clients.push(new XapiClient(this.url(address)));
  }

  private lost(host: PoolHost, what: string): void {
    if (this.stopping) return;
    if (!this.formed) {
      this.rejectDied(new Error(`${host.name} (${host.address}) ${what} before the pool was formed`));
      return;
    }
    console.error(`xapi pool: ${host.name} (${host.address}) ${what}; it is not restarted`);
    if (this.hosts.every((h) => !h.running)) this.stop('no host left', 1);
  }

  private signal(h: PoolHost, signal: NodeJS.Signals): void {
    if (!h.running) return;
    try {
      process.kill(h.pid, signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  }

  /** The step, or the first host death before the pool is formed, whichever comes first. */
  private race<T>(step: Promise<T>): Promise<T> {
    return Promise.race([step, this.died]);
  }

  /**
   * Polls the host until its API answers a login; resolves with the coordinator address it names
   * if it is a pool member (HOST_IS_SLAVE), undefined if it is a coordinator (or standalone).
   */
  private async answered(h: PoolHost, client: XapiClient): Promise<string | undefined> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (this.stopping || !h.running) return await this.died;
      try {
        const session = await client.call('session.login_with_password', ['root', this.password, '1.0', 'xapi pool']);
        await client.call('session.logout', [session]);
        return undefined;
      } catch (e) {
        if (e instanceof XapiError && e.code === 'HOST_IS_SLAVE') return e.params[0];
        // A member started again serves only emergency calls until its coordinator takes it back;
        // meanwhile a login gets its emergency error (HOST_STILL_BOOTING, or what stops it).
        const booting = e instanceof XapiError && e.code !== 'SESSION_AUTHENTICATION_FAILED';
        if (!booting && !(e instanceof ConnectionFailed))
          throw new Error(`${h.name} (${h.address}) answered the launcher's login with ${e}`);
      }
      if (Date.now() > deadline) throw new Error(`${h.name} (${h.address}) did not answer on ${client.url} within ${START_TIMEOUT_MS} ms`);
      await pause(POLL_INTERVAL_MS);
    }
  }

  private async join(h: PoolHost, client: XapiClient, coordinator: string): Promise<void> {
    let session: Rpc;
    try {
      session = await client.call('session.login_with_password', ['root', this.password, '1.0', 'xapi pool']);
      await client.call('pool.join', [session, coordinator, 'root', this.password]);
    } catch (e) {
      throw new Error(`${h.name} (${h.address}) could not join the pool of ${coordinator}: ${e instanceof Error ? e.message : e}`);
    }
    console.log(`xapi pool: ${h.name} (${h.address}) joined the pool of ${coordinator}`);
  }

  /** Waits, on the coordinator's events, until it lists every one of our hosts with host_metrics.live true. */
  private async allLive(client: XapiClient): Promise<void> {
    const timeoutMs = LIVE_TIMEOUT_MS + LIVE_TIMEOUT_PER_HOST_MS * this.plan.hosts;
    const deadline = Date.now() + timeoutMs;
    const session = await client.call('session.login_with_password', ['root', this.password, '1.0', 'xapi pool']);
    const classes = ['host', 'host_metrics'];
    // The first event.from answers at once with a token; read the state after taking it, so a change
    // between the read and the next wait still wakes that wait.
    let token = eventToken(await client.call('event.from', [session, classes, '', 0]));
    let missing: string[];
    for (;;) {
      missing = await this.notLive(client, session);
      if (missing.length === 0) break;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`the coordinator does not list ${missing.join(', ')} as live hosts ${timeoutMs} ms after the joins`);
      }
      token = eventToken(await client.call('event.from', [session, classes, token, Math.min(left, 10_000) / 1000]));
    }
    await client.call('session.logout', [session]).catch(() => {});
  }

  /** Our hosts the coordinator does not list, or lists as not live ("host2 (127.0.0.11)"). */
  private async notLive(client: XapiClient, session: Rpc): Promise<string[]> {
    const hosts = await client.call('host.get_all_records', [session]);
    const metrics = await client.call('host_metrics.get_all_records', [session]);
    const live = new Set<string>();
    if (isStruct(hosts) && isStruct(metrics)) {
      for (const rec of Object.values(hosts)) {
        if (!isStruct(rec)) continue;
        const m = metrics[String(rec['metrics'])];
        if (isStruct(m) && m['live'] === true) live.add(String(rec['address']));
      }
    }
    return this.hosts.filter((h) => !live.has(h.address)).map((h) => `${h.name} (${h.address})`);
  }
}

function eventToken(batch: Rpc): string {
  if (!isStruct(batch) || typeof batch['token'] !== 'string') throw new Error('event.from answered without a token');
  return batch['token'];
}
