// One running host: the state directory, the database, the start-up sync, the API and the
// HTTP/HTTPS servers, wired together in one place. `xapi serve` and the in-process tests both
// start hosts through startHost().
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { hostname as osHostname } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { type Schema, schema as loadSchema } from '../schema/schema.js';
import { LocalDb } from '../db/database.js';
import { typed, type AnyDb } from '../db/interface.js';
import { SqliteStore } from '../db/store.js';
import { Marshal } from '../api/marshal.js';
import { Registry, type HostContext } from '../api/context.js';
import { Dispatcher } from '../api/dispatch.js';
import * as session from '../xapi/session.js';
import * as task from '../xapi/task.js';
import * as event from '../xapi/event.js';
import * as message from '../xapi/message.js';
import * as role from '../xapi/role.js';
import * as subject from '../xapi/subject.js';
import * as user from '../xapi/user.js';
import * as secret from '../xapi/secret.js';
import * as hostApi from '../xapi/host.js';
import * as pool from '../xapi/pool.js';
import * as liveness from '../xapi/liveness.js';
import * as poolEject from '../xapi/pool-eject.js';
import * as network from '../xapi/network.js';
import * as pif from '../xapi/pif.js';
import * as vlan from '../xapi/vlan.js';
import * as management from '../xapi/management.js';
import * as consoleApi from '../xapi/console.js';
import * as vmAppliance from '../xapi/vm-appliance.js';
import * as vmss from '../xapi/vmss.js';
import * as vm from '../xapi/vm.js';
import * as vmMigrate from '../xapi/vm-migrate.js';
import * as storageMotion from '../xapi/storage-motion.js';
import { settleDepartures } from '../xapi/cross-pool.js';
import * as memory from '../xapi/memory.js';
import * as vbd from '../xapi/vbd.js';
import * as vif from '../xapi/vif.js';
import { XenopsSync } from '../xapi/xenops-sync.js';
import * as sr from '../xapi/sr.js';
import * as pbd from '../xapi/pbd.js';
import * as vdi from '../xapi/vdi.js';
import * as vmSnapshot from '../xapi/vm-snapshot.js';
import * as hostOperations from '../xapi/host-operations.js';
import * as hostEvacuate from '../xapi/host-evacuate.js';
import * as hostPower from '../xapi/host-power.js';
import { detectRollingUpgrade } from '../xapi/rpu.js';
import { Storage } from '../xapi/storage.js';
import { ensureLocalStorage, plugLocalPbds } from './local-storage.js';
import type { DomainManager } from '../xenopsd/interface.js';
import { SimulatorBackend } from '../xenopsd/backends/simulator.js';
import { EventService } from '../xapi/event.js';
import { PasswordFile } from './passwords.js';
import { writeFileAtomic } from '../util/files.js';
import { LogFile } from './log-file.js';
import { coordinatorUuid, syncDatabase } from './dbsync.js';
import { startMember } from './member.js';
import { registerPoolDbHandlers } from './pool-db.js';
import { registerMigrationReceiver } from './migrate-receive.js';
import { registerDiskMirrorReceiver } from './mirror-receive.js';
import { registerMessageReceiver } from './message-receive.js';
import { RemoteDb } from '../db/remote.js';
import { DB_FILE } from '../db/backup.js';
import { closePeers } from '../xapi/forward.js';
import * as ha from '../xapi/ha.js';
import * as poolBackup from '../xapi/pool-backup.js';
import * as poolTransition from '../xapi/pool-transition.js';
import { CHECKING, guardCoordinator, type CoordinatorGuard } from './coordinator-check.js';
import { readInstallationUuid, readPoolRole, writeInstallationUuid, writePoolRole } from './pool-role.js';
import { simulatedMachine } from '../xenopsd/machine.js';
import { SimulatedNetworkd } from '../networkd/sim.js';
import { Nm } from '../xapi/nm.js';
import { firstStartNetworking, startNetworking } from '../xapi/pif-scan.js';
import { HandlerTable } from '../http/handlers.js';
import { cliHandler } from '../xe-server/handler.js';
import { startHttpServers, type HttpServers } from '../http/server.js';
import { loadOrCreateCertificate } from '../http/tls.js';
import { jsonRpcHandler, xmlRpcHandler } from '../http/api-handlers.js';
import { registerVdiTransfers } from '../http/vdi-transfer.js';
import { registerVmTransfers } from '../http/vm-transfer.js';
import { faultPoint } from '../util/fault-point.js';
import { Rrdd } from '../rrdd/service.js';
import * as dataSource from '../xapi/data-source.js';
import { Perfmon } from '../xapi/perfmon.js';
import { registerMetricsHandlers } from './metrics-http.js';
import { registerConsoleHandlers } from './console-http.js';
import { registerUi } from './ui-http.js';
import { prometheusExporter } from './prometheus.js';

export const DB_GC_INTERVAL_MS = 30_000;
/** How long a closing member's database calls may still wait for the coordinator. */
const MEMBER_CLOSE_DB_WAIT_MS = 5_000;

export interface HostOptions {
  address: string;
  httpPort: number;
  httpsPort: number;
  stateDir: string;
  backend: 'simulator';
  /** Sets root's password at start (from XAPI_ROOT_PASSWORD or --root-password-file). */
  rootPassword?: string;
  sim?: { cpus?: number; memoryMiB?: number; nics?: string[] };
  /**
   * Liveness timings shorter than xapi's, for tests: a member's heartbeat period (30 s) and the
   * database GC period, which runs the coordinator's liveness check (30 s).
   */
  timing?: { heartbeatIntervalMs?: number; dbGcIntervalMs?: number };
  /** Simulated boot and shutdown times (ms). */
  simTiming?: { bootTimeMs?: number; shutdownTimeMs?: number };
  /** Bounds on how long a request body may take (defaults in src/http/server.ts). */
  http?: { rpcBodyTimeoutMs?: number; uploadIdleTimeoutMs?: number };
  logLevel?: string;
  /**
   * Seconds without a heartbeat after which the coordinator takes a member for dead
   * (host_metrics.live false): xapi's host_assumed_dead_interval, 600 by default. From
   * `--host-assumed-dead-interval`; absent = the default.
   */
  hostAssumedDeadIntervalS?: number;
  /** The coordinator's pause before each member's database backup (xapi: 300 s). */
  poolDbSyncIntervalMs?: number;
  /**
   * The release this host claims (`--platform-version` X.Y.Z; absent: the build's default): its
   * software_version, hence where it stands in a rolling pool upgrade.
   */
  platformVersion?: string;
  /**
   * The performance counters: how often xcp-rrdd samples (ms, 5000), how often perfmon looks
   * (ms, 300 s) and at which archive (its rrd step, 60 s or 5 s). Tests shorten them.
   */
  metrics?: { sampleIntervalMs?: number; perfmonIntervalMs?: number; perfmonRrdStepS?: number };
  /** Where a generated root password is told to the operator (once). */
  announce?: (line: string) => void;
}

export interface RunningHost {
  readonly host: HostContext;
  readonly dispatcher: Dispatcher;
  readonly httpPort: number;
  readonly httpsPort: number;
  /** Settles when the host asked to be restarted (a role change, a reboot), with the reason. */
  readonly restartRequested: Promise<string>;
  /** Set, before restartRequested settles, when the host asked to close and not start again (host.shutdown). */
  readonly shutdownRequested: boolean;
  /** Gives back caches an idle host does not need (its database store's). */
  releaseMemory(): void;
  close(): Promise<void>;
}

/**
 * The coordinator's look at its hosts' releases (db_gc's detect_rolling_upgrade): at start, once
 * this host's own record says what it runs, then at every database GC pass.
 */
async function rollingUpgradeCheck(host: HostContext): Promise<void> {
  const changed = await detectRollingUpgrade(host.db);
  if (!changed) return;
  await host.db.commit();
  const versions = (await host.db.all('host')).map(([, h]) => `${h.name_label}: ${h.software_version.platform_version}`);
  host.log.warn(
    { versions },
    changed === 'started'
      ? 'the hosts run different releases: rolling pool upgrade in progress'
      : 'the hosts run one release again: rolling pool upgrade over',
  );
}

/** How long after a role change the host restarts: time for the reply to the call that asked. */
export const ROLE_CHANGE_FUSE_MS = 300;

async function writePoolSecret(stateDir: string, secret: string): Promise<void> {
  await writeFileAtomic(join(stateDir, 'ptoken'), secret + '\n', 0o600);
}

async function loadOrCreatePoolSecret(stateDir: string): Promise<string> {
  const path = join(stateDir, 'ptoken');
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const secret = [randomUUID(), randomUUID(), randomUUID()].join('/');
  await writePoolSecret(stateDir, secret);
  return secret;
}

/** The API of a host: every class's implementations registered behind one dispatcher. */
export function buildApi(
  host: HostContext,
  db: AnyDb,
  setPassword: session.SetPassword,
  domains: DomainManager,
  livenessOptions: liveness.LivenessOptions = {},
  rrdd: Rrdd = new Rrdd({
    stateDir: host.config.stateDir,
    hostUuid: '',
    counters: () => domains.counters(),
    coordinator: () => undefined,
    httpsPort: host.config.httpsPort,
    poolSecret: () => '',
    log: host.log,
  }),
  nm: Nm = new Nm(SimulatedNetworkd.memory([]), host.config.stateDir),
): { registry: Registry; dispatcher: Dispatcher; xenops: XenopsSync; storage: Storage; liveness: liveness.Liveness; vms: vm.VmService } {
  const registry = new Registry();
  const hosts = new liveness.Liveness(host, livenessOptions);
  const events = new EventService(host, db);
  const storage = new Storage(host);
  const xenops = new XenopsSync(host, domains, storage);
  // this host's xcp-rrdd (a host built here for tests or tools gets one that never samples)
  xenops.rrdd = rrdd;
  dataSource.register(registry, rrdd);
  session.register(registry, setPassword);
  event.register(registry, events);
  message.register(registry);
  role.register(registry, host.schema);
  subject.register(registry, host.schema);
  user.register(registry, host.schema);
  secret.register(registry, host.schema);
  hostApi.register(registry);
  liveness.register(registry, hosts);
  pool.register(registry, hosts);
  poolBackup.register(registry);
  poolTransition.register(registry);
  network.register(registry, new network.NetworkService());
  const pifs = new pif.PifService(nm);
  const vlans = new vlan.VlanService(nm, pifs);
  pif.register(registry, pifs, vlans);
  vlan.register(registry, vlans);
  management.register(registry, new management.ManagementService(nm));
  consoleApi.register(registry);
  vmAppliance.register(registry, host.schema);
  vmss.register(registry);
  const vms = new vm.VmService(xenops);
  vm.register(registry, vms, host.schema);
  vmMigrate.register(registry, vms);
  storageMotion.register(registry, vms);
  vmSnapshot.register(registry, vms);
  memory.register(registry, xenops);
  vbd.register(registry, xenops);
  vif.register(registry, xenops);
  sr.register(registry, storage);
  pbd.register(registry, storage);
  poolEject.register(registry, storage);
  vdi.register(registry, storage);
  const dispatcher = new Dispatcher(host, registry);
  task.register(registry, dispatcher.tasks);
  hostOperations.register(registry);
  hostEvacuate.register(registry, vms);
  hostPower.register(registry);
  ha.register(registry, storage);
  return { registry, dispatcher, xenops, storage, liveness: hosts, vms };
}

export async function startHost(opts: HostOptions, schema: Schema = loadSchema()): Promise<RunningHost> {
  await mkdir(opts.stateDir, { recursive: true, mode: 0o700 });
  // A host ejected from its pool finishes its reset before anything of the old pool is read.
  const ejected = await poolEject.finishEject(opts.stateDir);
  // Buffered: one write per 4 KiB of log lines, not one per call (flushed at close).
  const logFile = new LogFile(join(opts.stateDir, 'xapi.log'));
  const log: Logger = pino({ level: opts.logLevel ?? 'info', base: { host: opts.address }, redact: ['password', 'pwd'] }, logFile);

  if (ejected) log.info('ejected from its pool: starting as a pool of its own');

  const passwords = PasswordFile.at(opts.stateDir);
  const existed = await passwords.load();
  if (opts.rootPassword !== undefined) {
    if (!existed || !(await passwords.verify('root', opts.rootPassword))) await passwords.set('root', opts.rootPassword);
  } else if (!existed || !passwords.has('root')) {
    const generated = randomBytes(12).toString('base64url');
    await passwords.set('root', generated);
    (opts.announce ?? console.log)(`xapi: generated root password (shown once, stored hashed): ${generated}`);
  }
  const poolSecret = await loadOrCreatePoolSecret(opts.stateDir);

  // A coordinator runs its own database; a member reads and writes the coordinator's, and keeps
  // the backups it is sent in xapi.db (what it would start from as coordinator).
  const role = await readPoolRole(opts.stateDir);
  const local =
    role.kind === 'slave'
      ? undefined
      : new LocalDb(schema, new SqliteStore(join(opts.stateDir, DB_FILE)), {
          onWritable: (writable, cause) => {
            if (writable) log.warn('database writes work again');
            else log.error({ err: cause }, 'database writes fail: refusing writes until they work again');
          },
        });
  const remote =
    role.kind === 'slave'
      ? new RemoteDb(schema, {
          address: role.master,
          port: opts.httpsPort,
          poolSecret: () => poolSecret,
          onRetry: (cause, delayMs) => log.warn({ err: cause, delayMs }, 'the coordinator does not answer: retrying'),
        })
      : undefined;
  const db: AnyDb = local ?? remote!;
  const uuid =
    (await readInstallationUuid(opts.stateDir)) ??
    (await writeInstallationUuid(opts.stateDir, (local && (await coordinatorUuid(typed(local)))) ?? randomUUID()));
  const hostname = osHostname();
  const machine = simulatedMachine({ ...opts.sim, seed: `${opts.address}:${opts.stateDir}` });
  const identity = { uuid, hostname, address: opts.address, machine, platformVersion: opts.platformVersion };
  let restart!: (reason: string) => void;
  let shutdownRequested = false;
  const restartRequested = new Promise<string>((resolve) => {
    restart = resolve;
  });

  // A member serves only the emergency calls until its coordinator has taken it back; a broken
  // host only them until its role changes.
  let emergency: HostContext['emergency'] =
    role.kind === 'slave'
      ? { code: 'HOST_STILL_BOOTING', params: [] }
      : role.kind === 'broken'
        ? { code: 'HOST_BROKEN', params: [] }
        : undefined;
  let guard: CoordinatorGuard | undefined;
  const host: HostContext = {
    schema,
    db: typed(db),
    marshal: new Marshal(schema),
    log,
    config: {
      stateDir: opts.stateDir,
      address: opts.address,
      hostname,
      httpPort: opts.httpPort,
      httpsPort: opts.httpsPort,
      backend: opts.backend,
      platformVersion: opts.platformVersion,
    },
    role,
    // A coordinator whose event loop was just stalled runs no call until it has checked again
    // that no other host took over meanwhile (coordinator-check.ts): the calls wait for the
    // check, and a rival asking meanwhile hears that this host is still checking.
    get emergency() {
      return guard?.stalled() ? CHECKING : emergency;
    },
    set emergency(state) {
      emergency = state;
    },
    recheckInProgress: () => guard?.recheckInProgress(),
    hostRef: '',
    poolRef: '',
    requestRestart: (reason) => {
      log.info({ reason }, 'restart requested');
      restart(reason);
    },
    requestShutdown: (reason) => {
      log.info({ reason }, 'shutdown requested');
      shutdownRequested = true;
      restart(reason);
    },
    changeRole: async (next, reason, secret) => {
      // The role before the secret: a host killed between the two must not restart as a
      // coordinator holding its new pool's secret, for the pool's coordinator would take it
      // for a rival at its start-up check and yield to it. Killed there, it restarts as a member
      // its coordinator refuses (HOST_UNKNOWN_TO_MASTER), from which emergency_transition_to_master
      // frees it. (Only pool.join passes a secret.)
      await writePoolRole(opts.stateDir, next);
      if (secret !== undefined) {
        faultPoint('join.role-written');
        await writePoolSecret(opts.stateDir, secret);
      }
      log.info({ role: next, reason }, 'role changed: restarting');
      setTimeout(() => host.requestRestart(reason), ROLE_CHANGE_FUSE_MS).unref();
    },
    writeRole: (next) => writePoolRole(opts.stateDir, next),
    verifyLocalPassword: (user, password) => passwords.verify(user, password),
    localSessions: new Map(),
    poolSecrets: () => [poolSecret],
    now: () => Date.now(),
    authFailureDelayMs: session.AUTH_FAILURE_DELAY_MS,
    coordinatorContacted: () => remote?.wake(),
  };

  const nm = new Nm(await SimulatedNetworkd.open(machine.nics, opts.stateDir), opts.stateDir);
  const networkWarn = (err: unknown, pif: string) => log.warn({ err, pif }, 'bringing a PIF up at start failed');
  const domains = new SimulatorBackend({
    machine,
    stateDir: opts.stateDir,
    ...opts.simTiming,
    onSaving: (works, cause) => {
      if (works) log.warn('the domain manager saves its state again');
      else log.error({ err: cause }, 'the domain manager cannot save its state: its operations wait until it can');
    },
  });
  const rrdd = new Rrdd({
    stateDir: opts.stateDir,
    hostUuid: uuid,
    counters: () => domains.counters(),
    coordinator: () => (role.kind === 'slave' ? { address: role.master, httpsPort: opts.httpsPort, poolSecret } : undefined),
    httpsPort: opts.httpsPort,
    poolSecret: () => poolSecret,
    sampleIntervalMs: opts.metrics?.sampleIntervalMs,
    log,
  });
  const {
    dispatcher,
    xenops,
    storage,
    liveness: hosts,
    vms,
  } = buildApi(
    host,
    db,
    (user, password) => passwords.set(user, password),
    domains,
    { deadIntervalMs: opts.hostAssumedDeadIntervalS !== undefined ? opts.hostAssumedDeadIntervalS * 1000 : undefined },
    rrdd,
    nm,
  );

  let firstStart = false;
  let justBecame = false;
  if (local) {
    ({ hostRef: host.hostRef, poolRef: host.poolRef, firstStart } = await syncDatabase(typed(local), schema, identity));
    // The host's networks through its network daemon: its NICs scanned at first start, then
    // what every start brings up.
    if (firstStart) await firstStartNetworking(host.db, nm, host.hostRef, opts.address);
    await startNetworking(host.db, nm, host.hostRef, networkWarn);
    const cancelled = await dispatcher.tasks.cancelLeftovers();
    await storage.clearStaleOperations();
    if (firstStart) await ensureLocalStorage(storage, join(opts.stateDir, 'storage'));
    await plugLocalPbds(storage);
    await storage.sweepUnfinishedImports(cancelled);
    await storageMotion.sweepUnfinishedMirrors(storage);
    // The domain manager is the truth about what runs: reconcile before serving.
    await xenops.resync();
    void settleDepartures(host, (vm) => storageMotion.forgetDeparted(storage, xenops, vm)).catch((e: unknown) =>
      host.log.warn({ err: e }, 'settling the migrations to other pools failed'),
    );
    await hostOperations.updateAllAllowedOperations(host.db);
    if (role.kind === 'master') await rollingUpgradeCheck(host);
    xenops.start();
    // consider_enabling_host, as a member does once taken back: storage and domains are in
    // order, so VMs may start here again (after a host.reboot, say, which needs it disabled).
    if (!(await local.get('host', host.hostRef)).enabled) {
      await local.update('host', host.hostRef, { enabled: true });
      await hostOperations.updateHostAllowedOperations(host.db, host.hostRef);
    }
    await local.commit();
    // A coordinator of a pool serves only the emergency calls until it has made sure that no
    // other host is coordinator (coordinator-check.ts).
    if (role.kind === 'master') {
      justBecame = await poolTransition.justBecameCoordinator(host);
      if ((await local.count('host')) > 1) host.emergency = CHECKING;
    }
  }

  const gcTimer = setInterval(() => {
    if (!local) return; // the coordinator collects the pool's garbage
    void (async () => {
      await dispatcher.tasks.gc();
      await session.sessionGc(host);
      // Without HA, which members are live is decided here from their heartbeats.
      await hosts.check(host.db);
      await local.commit();
      // xapi's GC pass ends with the check for a rolling upgrade, outside the database lock.
      if (role.kind === 'master') await rollingUpgradeCheck(host);
    })().catch((e) => log.error({ err: e }, 'database GC failed'));
  }, opts.timing?.dbGcIntervalMs ?? DB_GC_INTERVAL_MS);
  gcTimer.unref();

  const table = new HandlerTable()
    .add('POST', '/', xmlRpcHandler(dispatcher, log, opts.http?.rpcBodyTimeoutMs))
    .add('POST', '/RPC2', xmlRpcHandler(dispatcher, log, opts.http?.rpcBodyTimeoutMs))
    .add('POST', '/json', xmlRpcHandler(dispatcher, log, opts.http?.rpcBodyTimeoutMs))
    .add('POST', '/jsonrpc', jsonRpcHandler(dispatcher, log, opts.http?.rpcBodyTimeoutMs));
  table.add('POST', '/cli', cliHandler(dispatcher));
  registerVdiTransfers(table, dispatcher, storage);
  registerVmTransfers(table, dispatcher, storage);
  registerMigrationReceiver(table, host, (uuid, channel, vdiMap) => vmMigrate.receiveMigration(host, vms, uuid, channel, vdiMap));
  registerDiskMirrorReceiver(table, host, storage);
  registerMessageReceiver(table, host);
  registerMetricsHandlers(table, dispatcher, rrdd, prometheusExporter(rrdd, { uuid, name: () => hostname }));
  registerConsoleHandlers(table, dispatcher, domains);
  registerUi(table);
  registerPoolDbHandlers(table, {
    role: local ? { coordinator: true, db: local } : { coordinator: false, coordinatorAddress: (role as { master: string }).master },
    poolSecrets: host.poolSecrets,
    bodyTimeoutMs: opts.http?.rpcBodyTimeoutMs,
    log,
  });

  const tls = await loadOrCreateCertificate(opts.stateDir, hostname);
  let servers: HttpServers;
  try {
    servers = await startHttpServers({
      address: opts.address,
      httpPort: opts.httpPort,
      httpsPort: opts.httpsPort,
      tls,
      table,
      uploadIdleTimeoutMs: opts.http?.uploadIdleTimeoutMs,
      log: {
        info: (o, m) => log.info(o, m),
        warn: (o, m) => log.warn(o, m),
        error: (o, m) => log.error(o, m),
      },
    });
  } catch (e) {
    clearInterval(gcTimer);
    await xenops.stop();
    local?.close();
    remote?.close();
    await logFile.close();
    throw e;
  }
  log.info({ httpPort: servers.httpPort, httpsPort: servers.httpsPort, hostRef: host.hostRef, role: role.kind }, 'host started');

  await rrdd.start();
  const perfmon = new Perfmon(host, rrdd, { intervalMs: opts.metrics?.perfmonIntervalMs, rrdStepS: opts.metrics?.perfmonRrdStepS });
  perfmon.run();

  let backups: { stop(): Promise<void> } | undefined;
  let closing = false;
  if (role.kind === 'master') {
    guard = guardCoordinator(host, justBecame, () => {
      if (!closing) backups = poolBackup.startCoordinatorBackups(host, opts.poolDbSyncIntervalMs);
    });
  }

  // A member's own records wait for its coordinator, which must be able to call it back first.
  const member =
    role.kind === 'slave'
      ? startMember({
          host,
          identity,
          schema,
          xenops,
          storage,
          poolSecret,
          master: role.master,
          remote: remote!,
          startNetworking: () => startNetworking(host.db, nm, host.hostRef, networkWarn),
          heartbeatIntervalMs: opts.timing?.heartbeatIntervalMs,
        })
      : undefined;

  let closed: Promise<void> | undefined;
  return {
    host,
    dispatcher,
    httpPort: servers.httpPort,
    httpsPort: servers.httpsPort,
    restartRequested,
    get shutdownRequested() {
      return shutdownRequested;
    },
    releaseMemory: () => local?.releaseMemory(),
    // Idempotent: a signal may arrive while a restart is closing the host.
    close() {
      closed ??= (async () => {
        closing = true;
        // A member's database calls wait for a silent (stopped) coordinator for ever, and the
        // steps below wait for some of them (the storage GC, the update loop, the commit of the
        // writes in flight): a few seconds into the close, the RemoteDb is closed, failing them.
        const cut = remote ? setTimeout(() => remote.close(), MEMBER_CLOSE_DB_WAIT_MS) : undefined;
        clearInterval(gcTimer);
        guard?.stop();
        await ha.closeHa(host);
        await backups?.stop();
        await member?.stop();
        await perfmon.stop();
        await servers.close();
        await rrdd.close();
        closePeers(host);
        await storage.close();
        await xenops.stop();
        await nm.networkd.close();
        await db.commit().catch(() => undefined);
        clearTimeout(cut);
        local?.close();
        remote?.close();
        await logFile.close();
      })();
      return closed;
    },
  };
}
