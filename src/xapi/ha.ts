// High availability, xapi's side (xapi_ha.ml, xapi_pool.ml, xapi_vm.ml; ha.md §5-6):
// pool.enable_ha / disable_ha and the planner's calls, the host calls the coordinator makes of
// every host (preconfigure_ha, ha_join_liveset, ...), VM restart priority and order, and what
// the coordinator does with each liveset its HA daemon pushes (host_metrics.live, the hosts'
// ha_statefiles and ha_network_peers).
//
// Each host's daemon (src/ha/daemon.ts) is reached as xhad's scripts are: start, query,
// set_pool_state, disarm, stop. Its configuration (xhad.conf) and the local flag ha_armed live
// in <state-dir>/ha/. Heartbeats go over UDP to the pool's HTTPS port number on each host's
// address (xapi's 694 cannot serve several pools on one machine).
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Call, HostContext, Registry } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import { HaDaemon, type HaConfig } from '../ha/daemon.js';
import { HaError, XHA_ERRNO } from '../ha/errors.js';
import { PoolState, STATEFILE_SIZE, initStatefile } from '../ha/statefile.js';
import { DEFAULT_TIMEOUT_S, deriveTimeouts, type Timeouts } from '../ha/timeouts.js';
import { XapiError } from '../rpc/errors.js';
import { writeFileAtomic } from '../util/files.js';
import { callOn } from './forward.js';
import {
  HA_RESTART,
  HA_VALID_PRIORITIES,
  allProtectedVms,
  assertAgile,
  assertChangePreservesPlan,
  computeMaxFailures,
  isProtected,
  liveSet,
  planForNFailures,
  plannedMemory,
  updatePoolStatus,
} from './ha-plan.js';
import { updateHostAllowedOperations } from './host-operations.js';
import { withPoolOperation } from './pool-operations.js';
import { poolHasDifferentVersions } from './rpu.js';
import { biggestFitDecreasing } from './ha-binpack.js';
import { computeFreeMemory } from './memory.js';
import type { Storage } from './storage.js';
import { createVdi } from './vdi.js';

/** xha_statefile.ml: 4 KiB of global state and 4 KiB for each of 64 hosts. */
export const MINIMUM_STATEFILE_SIZE = STATEFILE_SIZE;
/** redo_log.ml minimum_vdi_size: 4 GB less two 4 MiB extents, in 4 MiB units. */
export const MINIMUM_METADATA_VDI_SIZE = (Math.floor(4_000_000_000 / (4 * 1024 * 1024)) - 2) * 4 * 1024 * 1024;

const HA_DIR = 'ha';
const CONFIG_FILE = 'xhad.json';
const ARMED_FILE = 'armed';
/** Fault injection for tests: `{"dropHeartbeats": [host uuid...]}` in the state directory. */
export const FAULT_FILE = 'ha-fault.json';

/** Pool.ha_configuration's key for T, and pool.other_config's persistent default. */
const TIMEOUT_KEY = 'timeout';
const DEFAULT_TIMEOUT_KEY = 'default_ha_timeout';

// --- the local side: the daemon, the configuration, ha_armed ---

class HaHost {
  daemon: HaDaemon | undefined;
  /**
   * pool.ha_prevent_restarts_for: no VM restart before this time (ms, the host's clock). Read by
   * the restart of protected VMs (second part); kept whether or not HA is on, as xapi keeps it.
   */
  preventRestartsUntil = 0;
  constructor(readonly host: HostContext) {}
}

/** Until when pool.ha_prevent_restarts_for holds VM restarts back on this host. */
export function restartsPreventedUntil(host: HostContext): number {
  return hosts.get(host)?.preventRestartsUntil ?? 0;
}

const hosts = new WeakMap<HostContext, HaHost>();

function haOf(host: HostContext): HaHost {
  let h = hosts.get(host);
  if (!h) {
    h = new HaHost(host);
    hosts.set(host, h);
  }
  return h;
}

const haDir = (host: HostContext) => join(host.config.stateDir, HA_DIR);

export async function isArmed(host: HostContext): Promise<boolean> {
  return (await readFile(join(haDir(host), ARMED_FILE), 'utf8').catch(() => 'false')).trim() === 'true';
}

async function setArmed(host: HostContext, armed: boolean): Promise<void> {
  await mkdir(haDir(host), { recursive: true });
  await writeFileAtomic(join(haDir(host), ARMED_FILE), armed ? 'true' : 'false');
}

async function readConfig(host: HostContext): Promise<HaConfig> {
  return JSON.parse(await readFile(join(haDir(host), CONFIG_FILE), 'utf8')) as HaConfig;
}

/** The running daemon of this host, for tests and the monitor. */
export function daemonOf(host: HostContext): HaDaemon | undefined {
  return hosts.get(host)?.daemon;
}

/** Stops this host's daemon in order (its watchdog closed) when the host closes. */
export async function closeHa(host: HostContext): Promise<void> {
  const h = hosts.get(host);
  const d = h?.daemon;
  if (!h || !d) return;
  h.daemon = undefined;
  await d.stop();
}

/** T: ha_configuration's timeout, else other_config's default_ha_timeout, else 60 (get_base_t). */
function baseTimeout(pool: { ha_configuration: Record<string, string>; other_config: Record<string, string> }): number {
  const text = pool.ha_configuration[TIMEOUT_KEY] ?? pool.other_config[DEFAULT_TIMEOUT_KEY];
  if (text === undefined) return DEFAULT_TIMEOUT_S;
  return ocamlIntOfString(text);
}

/** OCaml's int_of_string: decimal (or 0x/0o/0b, _ separators), else Failure "int_of_string". */
function ocamlIntOfString(text: string): number {
  const m = /^([-+]?)(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)$/.exec(text);
  if (!m) throw new XapiError('INTERNAL_ERROR', ['Failure("int_of_string")']);
  const body = m[2]!.replaceAll('_', '');
  const n = /^0[xXoObB]/.test(body) ? Number(body.slice(0, 2).toLowerCase() + body.slice(2)) : Number(body);
  return m[1] === '-' ? -n : n;
}

function timeoutsOf(t: number): Timeouts {
  try {
    return deriveTimeouts(t);
  } catch (e) {
    throw new XapiError('INTERNAL_ERROR', [`Failure("${(e as Error).message}")`]);
  }
}

/** Where a statefile VDI's daemon file lives: beside its VHD, in the SR's directory on this host. */
async function statefilePath(db: Db, hostRef: string, vdiRef: string): Promise<string> {
  const vdi = await db.get('VDI', vdiRef);
  const sr = await db.get('SR', vdi.SR);
  for (const p of sr.PBDs) {
    const pbd = await db.tryGet('PBD', p);
    if (pbd?.host !== hostRef) continue;
    const dc = pbd.device_config;
    const base = sr.type === 'ext' ? dc.device : sr.type === 'file' ? dc.location : dc.serverpath;
    if (base) return join(base, sr.uuid, `${vdi.uuid}.statefile`);
  }
  throw new XapiError('VDI_NOT_AVAILABLE', [vdiRef]);
}

/** xhad.conf for this host: every host in the database's order, T's derived timeouts. */
async function writeConfig(host: HostContext, db: Db, statefileVdi: string, generation: string): Promise<HaConfig> {
  const pool = await db.get('pool', host.poolRef);
  const all = await db.all('host');
  const me = await db.get('host', host.hostRef);
  const config: HaConfig = {
    generation,
    udpPort: host.config.httpsPort,
    hosts: all.map(([, h]) => ({ uuid: h.uuid, address: h.address })),
    localUuid: me.uuid,
    statefile: await statefilePath(db, host.hostRef, statefileVdi),
    timeouts: timeoutsOf(baseTimeout(pool)),
  };
  await mkdir(haDir(host), { recursive: true });
  await writeFileAtomic(join(haDir(host), CONFIG_FILE), JSON.stringify(config));
  return config;
}

// --- what the coordinator does with a liveset ---

/**
 * process_liveset_on_master, its first part: host_metrics.live := in the liveset (never true
 * for a host that is shutting down is left to part two); the hosts' ha_statefiles and
 * ha_network_peers as the daemon sees them.
 */
async function applyLiveset(host: HostContext, liveset: string[]): Promise<void> {
  if (host.role.kind !== 'master') return;
  const db = host.db;
  const pool = await db.get('pool', host.poolRef);
  if (!pool.ha_enabled) return;
  const daemon = daemonOf(host);
  const info = daemon?.query();
  for (const [ref, h] of await db.all('host')) {
    const live = liveset.includes(h.uuid);
    const metrics = await db.tryGet('host_metrics', h.metrics);
    if (metrics && metrics.live !== live) {
      host.log.warn({ host: ref, live }, 'HA: host liveness from the liveset');
      await db.update('host_metrics', h.metrics, { live });
      await updateHostAllowedOperations(db, ref);
    }
    const mine = info?.hosts.find((x) => x.uuid === h.uuid);
    if (!mine) continue;
    const statefiles = mine.statefileAccess ? pool.ha_statefiles : [];
    if (statefiles.join() !== h.ha_statefiles.join()) await db.update('host', ref, { ha_statefiles: statefiles });
    const peers = live ? (daemon?.peersOf(h.uuid) ?? []) : [];
    if ([...peers].sort().join() !== [...h.ha_network_peers].sort().join()) await db.update('host', ref, { ha_network_peers: peers });
  }
}

// --- host calls (xapi_ha.ml's per-host steps) ---

/** Host.preconfigure_ha: the statefile's place, xhad.conf, ha_statefiles of this host. */
async function preconfigure(call: Call, statefiles: string[], metadataVdi: string, generation: string): Promise<void> {
  const db = call.db;
  for (const vdi of [metadataVdi, ...statefiles]) {
    if ((await db.get('VDI', vdi)).type === 'cbt_metadata') throw new XapiError('VDI_INCOMPATIBLE_TYPE', [vdi, 'cbt_metadata']);
  }
  await db.update('host', call.host.hostRef, { ha_statefiles: statefiles });
  const first = statefiles[0];
  if (!first) throw new XapiError('VDI_NOT_AVAILABLE', ['']);
  await writeConfig(call.host, db, first, generation);
}

/** Host.ha_join_liveset: start the daemon (Online or an error), then ha_armed. */
async function joinLiveset(host: HostContext): Promise<void> {
  const h = haOf(host);
  if (h.daemon?.running) throw new XapiError('INTERNAL_ERROR', ['HA daemon already running']);
  const config = await readConfig(host);
  const daemon = new HaDaemon(config, {
    simDir: join(host.config.stateDir, 'xenopsd'),
    faultFile: join(host.config.stateDir, FAULT_FILE),
    log: host.log,
  });
  daemon.on('liveset', (liveset: string[]) => {
    void applyLiveset(host, liveset).catch((e) => host.log.warn({ err: e }, 'HA: applying a liveset failed'));
  });
  daemon.on('exit', (code: number) => {
    host.log.warn({ code }, 'HA: the daemon exited');
    if (h.daemon === daemon) h.daemon = undefined;
  });
  h.daemon = daemon;
  try {
    await daemon.start();
  } catch (e) {
    if (h.daemon === daemon) h.daemon = undefined;
    if (e instanceof HaError) {
      host.log.error({ err: e }, 'HA: the daemon did not start');
      if (e.code === XHA_ERRNO.statefileAccess) throw new XapiError('HA_HOST_CANNOT_ACCESS_STATEFILE', []);
      if (e.code === XHA_ERRNO.joinTimeout || e.code === XHA_ERRNO.cannotJoin) throw new XapiError('HA_FAILED_TO_FORM_LIVESET', []);
      throw new XapiError('INTERNAL_ERROR', [e.message]);
    }
    throw e;
  }
  await setArmed(host, true);
}

async function disarmFencing(host: HostContext): Promise<void> {
  await haOf(host).daemon?.disarm();
}

async function stopDaemon(host: HostContext): Promise<void> {
  await closeHa(host);
}

/** Host.ha_wait_for_shutdown_via_statefile: until the daemon has gone (pool state invalid), HA_LOST_STATEFILE if it cannot see the statefile. */
async function waitForShutdown(host: HostContext): Promise<void> {
  for (;;) {
    const d = haOf(host).daemon;
    if (!d?.running) return;
    const me = d.query().hosts.find((x) => x.uuid === d.config.localUuid);
    if (!me?.statefileAccess || me.statefileCorrupted) throw new XapiError('HA_LOST_STATEFILE', []);
    await sleep(500);
  }
}

/** Host.ha_release_resources: nothing attached stays; a restart no longer starts HA. */
async function releaseResources(host: HostContext): Promise<void> {
  await closeHa(host);
  await setArmed(host, false);
  await rm(join(haDir(host), CONFIG_FILE), { force: true });
}

/** Host.emergency_ha_disable: HA off on this host only (HA_NOT_ENABLED unless armed, unless soft). */
async function emergencyDisable(host: HostContext, soft: boolean): Promise<void> {
  if (!(await isArmed(host))) {
    if (soft) return;
    throw new XapiError('HA_NOT_ENABLED', []);
  }
  await disarmFencing(host).catch((e) => host.log.error({ err: e }, 'emergency_ha_disable: disarm failed; continuing'));
  await stopDaemon(host).catch((e) => host.log.error({ err: e }, 'emergency_ha_disable: stop failed; continuing'));
  if (!soft) await setArmed(host, false);
}

// --- pool.enable_ha ---

/** Every host of the pool, each asked `wire` in turn (or here, for this host). */
async function onHost(
  call: Call,
  hostRef: string,
  wire: string,
  args: Parameters<typeof callOn>[4],
  local: () => Promise<void>,
): Promise<void> {
  if (hostRef === call.host.hostRef) return local();
  const h = await call.db.get('host', hostRef);
  await callOn(call.host, hostRef, h.address, wire, args);
}

/** xha_statefile.ml check_sr_can_host_statefile: a PBD on every host, all plugged; an existing fitting VDI if any. */
async function checkSrCanHostStatefile(
  db: Db,
  srRef: string,
  type: 'ha_statefile' | 'redo_log',
  minimum: number,
): Promise<string | undefined> {
  const sr = await db.get('SR', srRef);
  const pbds = [];
  for (const p of sr.PBDs) {
    const pbd = await db.tryGet('PBD', p);
    if (pbd) pbds.push(pbd);
  }
  const connected = new Set(pbds.map((p) => p.host));
  if (connected.size < (await db.all('host')).length) throw new XapiError('SR_NO_PBDS', [srRef]);
  for (const p of pbds) if (!p.currently_attached) throw new XapiError('SR_NO_PBDS', [srRef]);
  for (const v of sr.VDIs) {
    const vdi = await db.tryGet('VDI', v);
    if (vdi && vdi.type === type && vdi.virtual_size >= minimum) return v;
  }
  // 4 MiB-rounded statefile and redo log must both fit.
  const round = (n: number) => Math.ceil(n / (4 * 1024 * 1024)) * 4 * 1024 * 1024;
  if (sr.physical_size - sr.physical_utilisation < round(MINIMUM_STATEFILE_SIZE) + round(MINIMUM_METADATA_VDI_SIZE)) {
    throw new XapiError('SR_SOURCE_SPACE_INSUFFICIENT', [srRef]);
  }
  return undefined;
}

async function canHostStatefile(db: Db, srRef: string): Promise<boolean> {
  try {
    await checkSrCanHostStatefile(db, srRef, 'ha_statefile', MINIMUM_STATEFILE_SIZE);
    await checkSrCanHostStatefile(db, srRef, 'redo_log', MINIMUM_METADATA_VDI_SIZE);
    return true;
  } catch (e) {
    if (e instanceof XapiError) return false;
    throw e;
  }
}

async function enableHa(call: Call, storage: Storage, heartbeatSrs: string[], configuration: Record<string, string>): Promise<void> {
  const db = call.db;
  const poolRef = call.host.poolRef;
  if (await poolHasDifferentVersions(db)) throw new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
  if ((await db.get('pool', poolRef)).ha_enabled) throw new XapiError('HA_IS_ENABLED', []);
  const unplugged = (await db.all('PIF')).filter(([, p]) => p.disallow_unplug && !p.currently_attached).map(([ref]) => ref);
  if (unplugged.length > 0) throw new XapiError('REQUIRED_PIF_IS_UNPLUGGED', unplugged);
  const allHosts = await db.all('host');
  for (const [ref, h] of allHosts) {
    const m = await db.tryGet('host_metrics', h.metrics);
    if (!m?.live) throw new XapiError('HOST_OFFLINE', [ref]);
  }
  await db.update('pool', poolRef, { ha_cluster_stack: 'xhad' });
  // The statefile and the metadata VDI on the first usable SR.
  let candidates = heartbeatSrs;
  if (candidates.length === 0) {
    candidates = [];
    for (const [ref] of await db.all('SR')) if (await canHostStatefile(db, ref)) candidates.push(ref);
  }
  const sr = candidates[0];
  if (!sr) throw new XapiError('CANNOT_CREATE_STATE_FILE', []);
  // each VDI reused when the SR has a fitting one, else made as xapi makes it
  const findOrCreate = async (type: 'ha_statefile' | 'redo_log', size: number, name_label: string, name_description: string) =>
    (await checkSrCanHostStatefile(db, sr, type, size)) ??
    (await createVdi(storage, call, sr, size, {
      name_label,
      name_description,
      type,
      sharable: true,
      read_only: false,
      other_config: {},
      xenstore_data: {},
      sm_config: { type: 'raw' },
      tags: [],
    }));
  const statefile = await findOrCreate('ha_statefile', MINIMUM_STATEFILE_SIZE, 'Statefile for HA', 'Used for storage heartbeating');
  const metadata = await findOrCreate('redo_log', MINIMUM_METADATA_VDI_SIZE, 'Metadata for HA', 'Used for master failover');
  await db.update('pool', poolRef, { ha_statefiles: [statefile], ha_configuration: configuration, ha_plan_exists_for: 0 });
  await updatePoolStatus(db);
  const generation = randomUUID();
  // The coordinator writes xhad.conf and initialises the statefile (ha_set_pool_state init).
  const config = await writeConfig(call.host, db, statefile, generation);
  await initStatefile(config.statefile, generation, allHosts.length);
  const hostRefs = allHosts.map(([ref]) => ref);
  const total = hostRefs.length * 3;
  let done = 0;
  const progress = () => call.setProgress(++done / total);
  try {
    for (const h of hostRefs) {
      await onHost(call, h, 'host.preconfigure_ha', [h, [statefile], metadata, generation], () =>
        preconfigure(call, [statefile], metadata, generation),
      );
      await progress();
    }
  } catch (e) {
    await disableInternal(call).catch((d) => call.host.log.error({ err: d }, 'disabling HA after a failed preconfigure'));
    throw e;
  }
  const joins = await Promise.allSettled(
    hostRefs.map(async (h) => {
      await onHost(call, h, 'host.ha_join_liveset', [h], () => joinLiveset(call.host));
      await progress();
    }),
  );
  const failed = joins.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await disableInternal(call).catch((d) => call.host.log.error({ err: d }, 'disabling HA after a failed join'));
    throw failed.reason;
  }
  await db.update('pool', poolRef, { ha_enabled: true });
  const d = daemonOf(call.host);
  if (d)
    await applyLiveset(
      call.host,
      d
        .query()
        .hosts.filter((x) => x.liveness)
        .map((x) => x.uuid),
    );
  // Everyone gets a fresh copy of the database.
  await Promise.allSettled(
    hostRefs.map(async (h) => {
      if (h !== call.host.hostRef) {
        const row = await db.get('host', h);
        await callOn(call.host, h, row.address, 'host.request_backup', [h, 0, true]).catch((e) =>
          call.host.log.warn({ err: e, host: h }, 'HA enable: request_backup failed'),
        );
      }
      await progress();
    }),
  );
}

// --- pool.disable_ha ---

async function disableInternal(call: Call): Promise<void> {
  const db = call.db;
  const poolRef = call.host.poolRef;
  const hostRefs = (await db.all('host')).map(([ref]) => ref);
  const mine = daemonOf(call.host);
  if (mine?.running && mine.hasStatefileAccessNow()) {
    // The clean path: INVALID in the statefile stops every daemon without fencing.
    await mine.setPoolState(PoolState.Invalid);
    await stopDaemon(call.host);
    await db.update('pool', poolRef, { ha_enabled: false });
    const waits = await Promise.allSettled(
      hostRefs.map((h) => onHost(call, h, 'host.ha_wait_for_shutdown_via_statefile', [h], () => waitForShutdown(call.host))),
    );
    for (const r of waits) if (r.status === 'rejected') call.host.log.warn({ err: r.reason }, 'HA disable: waiting for a daemon');
  } else {
    // Without the statefile: every host disarms and stops.
    await db.update('pool', poolRef, { ha_enabled: false });
    for (const h of hostRefs) {
      await onHost(call, h, 'host.ha_disarm_fencing', [h], () => disarmFencing(call.host)).catch((e) =>
        call.host.log.warn({ err: e, host: h }, 'HA disable: disarm failed'),
      );
    }
    for (const h of hostRefs) {
      await onHost(call, h, 'host.ha_stop_daemon', [h], () => stopDaemon(call.host)).catch((e) =>
        call.host.log.warn({ err: e, host: h }, 'HA disable: stop failed'),
      );
    }
  }
  for (const h of hostRefs) {
    await onHost(call, h, 'host.ha_release_resources', [h], () => releaseResources(call.host)).catch((e) =>
      call.host.log.warn({ err: e, host: h }, 'HA disable: release failed'),
    );
  }
}

// --- the planner's calls ---

async function setFailuresToTolerate(call: Call, self: string, value: number): Promise<void> {
  if (value < 0) throw new XapiError('INVALID_VALUE', ['ha_host_failures_to_tolerate', String(value)]);
  const pool = await call.db.get('pool', call.host.poolRef);
  if (pool.ha_plan_exists_for > 0) await assertChangePreservesPlan(call.db, { numFailures: value });
  await call.db.update('pool', self, { ha_host_failures_to_tolerate: value });
  await updatePoolStatus(call.db);
}

async function computeMaxAndRecord(call: Call): Promise<number> {
  const db = call.db;
  const n = await computeMaxFailures(db);
  const poolRef = call.host.poolRef;
  const pool = await db.get('pool', poolRef);
  if (pool.ha_enabled) {
    const wanted = pool.ha_host_failures_to_tolerate;
    const overcommitted = wanted > n;
    if (pool.ha_overcommitted !== overcommitted) await db.update('pool', poolRef, { ha_overcommitted: overcommitted });
    if (pool.ha_plan_exists_for !== n) await db.update('pool', poolRef, { ha_plan_exists_for: Math.min(wanted, n) });
  }
  return n;
}

async function hypotheticalMax(call: Call, configuration: Record<string, string>): Promise<number> {
  for (const p of Object.values(configuration)) {
    if (!HA_VALID_PRIORITIES.includes(p)) throw new XapiError('INVALID_VALUE', ['ha_restart_priority', p]);
  }
  const vms: Array<[string, Row<'VM'>]> = [];
  for (const [vm, p] of Object.entries(configuration)) {
    if (isProtected({ ha_always_run: true, ha_restart_priority: p })) vms.push([vm, await call.db.get('VM', vm)]);
  }
  return computeMaxFailures(call.db, vms);
}

async function failoverPlan(call: Call, failedHosts: string[], failedVms: string[]): Promise<Record<string, Record<string, string>>> {
  const db = call.db;
  const live = (await liveSet(db)).filter((h) => !failedHosts.includes(h));
  const result: Record<string, Record<string, string>> = {};
  for (const vm of failedVms) {
    try {
      await assertAgile(db, vm);
      result[vm] = { error_code: 'HOST_NOT_ENOUGH_FREE_MEMORY' };
    } catch (e) {
      if (!(e instanceof XapiError)) throw e;
      result[vm] = { error_code: e.code };
    }
  }
  // compute_evacuation_plan: the failed VMs packed onto the hosts left.
  const vms = [];
  for (const vm of failedVms) vms.push([vm, await db.get('VM', vm)] as const);
  const hostsFree: Array<[string, number]> = [];
  for (const h of live) hostsFree.push([h, await computeFreeMemory(db, h)]);
  const plan = biggestFitDecreasing(
    vms.map(([ref, v]) => [ref, plannedMemory(v)] as [string, number]),
    hostsFree,
  );
  for (const [vm, host] of plan) result[vm] = { host };
  return result;
}

// --- VM ---

async function setRestartPriority(call: Call, self: string, value: string): Promise<void> {
  const db = call.db;
  if (!HA_VALID_PRIORITIES.includes(value)) throw new XapiError('INVALID_VALUE', ['ha_restart_priority', value]);
  const vm = await db.get('VM', self);
  if (vm.ha_restart_priority !== HA_RESTART && value === HA_RESTART) {
    if (vm.power_state !== 'Halted') await assertChangePreservesPlan(db, { newVmsToProtect: [self] });
    const pool = await db.get('pool', call.host.poolRef);
    if (pool.ha_enabled) await updatePoolStatus(db);
  }
  if (vm.ha_restart_priority !== value) {
    await db.update('VM', self, { ha_restart_priority: value });
    if ((await db.get('VM', self)).power_state === 'Running') await db.update('VM', self, { ha_always_run: value === HA_RESTART });
  }
}

export function register(r: Registry, storage: Storage): void {
  r.implement('pool.enable_ha', (call, [srs, configuration]) =>
    withPoolOperation(call, call.host.poolRef, 'ha_enable', () => enableHa(call, storage, srs, configuration)),
  )
    .implement('pool.disable_ha', (call) =>
      withPoolOperation(call, call.host.poolRef, 'ha_disable', async () => {
        if (!(await call.db.get('pool', call.host.poolRef)).ha_enabled) throw new XapiError('HA_NOT_ENABLED', []);
        await disableInternal(call);
      }),
    )
    .implement('pool.ha_prevent_restarts_for', (call, [seconds]) => {
      haOf(call.host).preventRestartsUntil = call.host.now() + Number(seconds) * 1000;
    })
    .implement(
      'pool.ha_failover_plan_exists',
      async (call, [n]) => (await planForNFailures(call.db, await allProtectedVms(call.db), Number(n))) === 'all',
    )
    .implement('pool.ha_compute_max_host_failures_to_tolerate', (call) => computeMaxAndRecord(call))
    .implement('pool.ha_compute_hypothetical_max_host_failures_to_tolerate', (call, [configuration]) =>
      hypotheticalMax(call, configuration),
    )
    .implement('pool.ha_compute_vm_failover_plan', (call, [hs, vms]) => failoverPlan(call, hs, vms))
    .implement('pool.set_ha_host_failures_to_tolerate', (call, [self, value]) => setFailuresToTolerate(call, self, Number(value)))
    .implement('pool.ha_schedule_plan_recomputation', async (call) => {
      if ((await call.db.get('pool', call.host.poolRef)).ha_enabled) await updatePoolStatus(call.db);
    })
    .implement('host.preconfigure_ha', (call, [, statefiles, metadata, generation]) => preconfigure(call, statefiles, metadata, generation))
    .implement('host.ha_join_liveset', (call) => joinLiveset(call.host))
    .implement('host.ha_disarm_fencing', (call) => disarmFencing(call.host))
    .implement('host.ha_stop_daemon', (call) => stopDaemon(call.host))
    .implement('host.ha_wait_for_shutdown_via_statefile', (call) => waitForShutdown(call.host))
    .implement('host.ha_release_resources', (call) => releaseResources(call.host))
    .implement('host.ha_disable_failover_decisions', async (call) => {
      await mkdir(haDir(call.host), { recursive: true });
      await writeFile(join(haDir(call.host), 'disable_failover_decisions'), 'true');
    })
    .implement('host.ha_xapi_healthcheck', () => true)
    .implement('host.emergency_ha_disable', (call, [soft]) => emergencyDisable(call.host, soft))
    .implement('VM.set_ha_restart_priority', (call, [self, value]) => setRestartPriority(call, self, value))
    // Deprecated: true means "restart", false means "".
    .implement('VM.set_ha_always_run', (call, [self, value]) => setRestartPriority(call, self, value ? HA_RESTART : ''))
    .implement('VM.set_order', async (call, [self, value]) => {
      if (Number(value) < 0) throw new XapiError('INVALID_VALUE', ['order must be non-negative', String(value)]);
      await call.db.update('VM', self, { order: Number(value) });
    });
}
