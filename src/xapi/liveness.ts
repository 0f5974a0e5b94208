// Host liveness without HA (xapi's db_gc.ml, xapi_host.ml, cancel_tasks.ml; pool.md §4), the
// coordinator's side. Members call host.tickle_heartbeat every 30 s; the coordinator keeps, in
// memory only, when it last heard from each host. Its database GC pass (check()) marks a member
// not live once the dead interval has passed without a heartbeat, and live again when heartbeats
// come back. A member that says it is shutting down is marked dead at once and stays dead until
// its next pool.hello, whatever heartbeats follow. The table starts empty at every coordinator
// start, so every member gets a whole interval before it can be taken for dead.
//
// Recovery calls for a dead host: host.declare_dead (its VMs Halted, the host disabled) and
// host.destroy (the host's records go); VM.power_state_reset (src/xapi/vm.ts) refuses a VM
// whose host is alive, which is asked of the host itself (isHostAlive), not just read.
import { randomUUID } from 'node:crypto';
import type { Call, HostContext, Registry } from '../api/context.js';
import { newRef } from '../api/implicit.js';
import type { Db } from '../db/interface.js';
import { XapiClient } from '../rpc/client.js';
import { XapiError } from '../rpc/errors.js';
import { formatDateTime } from '../schema/types.js';
import { updateVbdAllowedOperations, updateVifAllowedOperations } from './device-checks.js';
import { updateHostAllowedOperations } from './host-operations.js';
import { removeHostRecords } from './pool-eject.js';
import { gateOf, withGlobalLock } from './retry.js';
import { updateSrAllowedOperations, updateVdiAllowedOperations } from './storage-operations.js';
import { updateAllowedOperations as updateVmAllowedOperations } from './vm-lifecycle.js';

/** xapi_globs: a member's heartbeat period, and how long without one makes it dead (10 min). */
export const HOST_HEARTBEAT_INTERVAL_MS = 30_000;
export const HOST_ASSUMED_DEAD_INTERVAL_MS = 600_000;
/** A clock further than this from the coordinator's is reported once (xapi_globs max_clock_skew). */
export const MAX_CLOCK_SKEW_S = 300;
/** How long the coordinator waits for a host it asks whether it is alive (xapi warns at 10 s). */
export const IS_ALIVE_TIMEOUT_MS = 10_000;

/** The keys of host.tickle_heartbeat's `stuff`. */
export const HEARTBEAT_TIME = 'time';
export const HEARTBEAT_SHUTTING_DOWN = 'shutting-down';

export interface LivenessOptions {
  /** How long without a heartbeat makes a member dead (default 10 min). */
  deadIntervalMs?: number;
}

export class Liveness {
  readonly deadIntervalMs: number;
  /** Host ref → when its last heartbeat came (this process's clock). */
  private readonly lastHeard = new Map<string, number>();
  /** Host ref → |coordinator time − member time| at its last heartbeat, in seconds. */
  private readonly skew = new Map<string, number>();
  /** Hosts whose clock skew has been reported (re-armed when the skew falls to half the limit). */
  private readonly skewReported = new Set<string>();
  /** Hosts that said they are going down: dead until their next pool.hello. */
  private readonly shuttingDown = new Set<string>();

  constructor(
    private readonly host: HostContext,
    opts: LivenessOptions = {},
  ) {
    this.deadIntervalMs = opts.deadIntervalMs ?? HOST_ASSUMED_DEAD_INTERVAL_MS;
  }

  /** host.tickle_heartbeat: a member is alive, or (shutting-down) about to stop. */
  async heartbeat(db: Db, hostRef: string, stuff: Record<string, string>): Promise<void> {
    if (HEARTBEAT_SHUTTING_DOWN in stuff) {
      this.skew.delete(hostRef);
      await this.markDead(db, hostRef);
      return;
    }
    const now = this.host.now();
    this.lastHeard.set(hostRef, now);
    const theirs = Number(stuff[HEARTBEAT_TIME]);
    if (stuff[HEARTBEAT_TIME] !== undefined && Number.isFinite(theirs)) this.skew.set(hostRef, Math.abs(now / 1000 - theirs));
  }

  /**
   * pool.hello's part (the member restarted): it may be live again, what ran on its behalf is
   * over, and its timer starts afresh.
   */
  async hello(db: Db, hostRef: string): Promise<void> {
    await cancelTasksOnHost(this.host, db, hostRef);
    this.shuttingDown.delete(hostRef);
    this.lastHeard.set(hostRef, this.host.now());
  }

  /** mark_host_as_dead: a host going down cleanly is dead from now until its next hello. */
  async markDead(db: Db, hostRef: string): Promise<void> {
    if (this.shuttingDown.has(hostRef)) return;
    this.shuttingDown.add(hostRef);
    const row = await db.tryGet('host', hostRef);
    if (!row) return;
    this.host.log.info({ host: hostRef }, 'a member is shutting down: it is not live until it says hello again');
    if (await db.tryGet('host_metrics', row.metrics)) await db.update('host_metrics', row.metrics, { live: false });
    await updateHostAllowedOperations(db, hostRef);
  }

  /** check_host_liveness, one pass (run by the database GC on the coordinator). */
  async check(db: Db): Promise<void> {
    // With HA on, liveness is the HA daemon's liveset (src/xapi/ha.ts), not heartbeats.
    const [pool] = await db.all('pool');
    if (pool?.[1].ha_enabled) return;
    const now = this.host.now();
    for (const [ref, row] of await db.all('host')) {
      if (ref === this.host.hostRef) continue;
      try {
        const metrics = await db.tryGet('host_metrics', row.metrics);
        if (!metrics) continue;
        let heard = this.lastHeard.get(ref);
        if (heard === undefined) {
          heard = now;
          this.lastHeard.set(ref, now);
        }
        const expired = now - heard >= this.deadIntervalMs;
        if (!expired && !metrics.live && !this.shuttingDown.has(ref)) {
          this.host.log.info({ host: ref }, 'heartbeats again: the host is live');
          await db.update('host_metrics', row.metrics, { live: true });
          await updateHostAllowedOperations(db, ref);
        } else if (expired && metrics.live) {
          this.host.log.warn({ host: ref, silentMs: now - heard }, 'no heartbeat for the dead interval: the host is taken for dead');
          await db.update('host_metrics', row.metrics, { live: false });
          await updateHostAllowedOperations(db, ref);
        }
        await this.checkSkew(db, ref, row.uuid, row.name_label);
      } catch (e) {
        this.host.log.warn({ err: e, host: ref }, 'liveness check of a host failed');
      }
    }
  }

  /** Forgets a host whose record is gone (host.destroy). */
  forget(hostRef: string): void {
    this.lastHeard.delete(hostRef);
    this.skew.delete(hostRef);
    this.skewReported.delete(hostRef);
    this.shuttingDown.delete(hostRef);
  }

  /** detect_clock_skew: one HOST_CLOCK_SKEW_DETECTED message per episode of skew. */
  private async checkSkew(db: Db, ref: string, uuid: string, name: string): Promise<void> {
    const skew = this.skew.get(ref) ?? 0;
    if (skew > MAX_CLOCK_SKEW_S && !this.skewReported.has(ref)) {
      this.skewReported.add(ref);
      this.host.log.error({ host: ref, skewS: skew }, 'clock skew with a member above the limit');
      const [pool] = await db.all('pool');
      await db.create('message', newRef(), {
        uuid: randomUUID(),
        name: 'HOST_CLOCK_SKEW_DETECTED',
        priority: 3,
        cls: 'Host',
        obj_uuid: uuid,
        timestamp: formatDateTime(new Date(this.host.now())),
        body: `The clock of server '${name}' differs from the clock of the coordinator of pool '${pool?.[1].name_label ?? ''}' by ${Math.round(skew)} s. VM lifecycle operations and the times of archived performance data may be wrong until the clocks agree.`,
      });
    }
    if (skew < MAX_CLOCK_SKEW_S / 2) this.skewReported.delete(ref);
  }
}

/**
 * cancel_tasks_on_host (at the member's pool.hello): the tasks that ran there are over, since
 * the member restarted; the operations they marked are cleared from every object and the
 * tasks destroyed.
 */
export async function cancelTasksOnHost(host: HostContext, db: Db, hostRef: string): Promise<void> {
  const tasks = new Set<string>();
  for (const [ref, row] of await db.find('task', { resident_on: hostRef })) {
    if (row.status === 'pending' || row.status === 'cancelling') tasks.add(ref);
  }
  if (tasks.size > 0) {
    host.log.info({ host: hostRef, tasks: [...tasks] }, 'cancelling the tasks a restarted member left');
    await withGlobalLock(host, async () => {
      const unmark = async <C extends 'VM' | 'VBD' | 'VIF' | 'VDI' | 'SR' | 'host'>(
        cls: C,
        update: (db: Db, ref: string) => Promise<void>,
      ) => {
        for (const [ref, row] of await db.all(cls)) {
          const current = row.current_operations as Record<string, string>;
          if (!Object.keys(current).some((t) => tasks.has(t))) continue;
          const kept = Object.fromEntries(Object.entries(current).filter(([t]) => !tasks.has(t)));
          await db.update(cls as 'VM', ref, { current_operations: kept as Record<string, never> });
          await update(db, ref);
        }
      };
      await unmark('VM', updateVmAllowedOperations);
      await unmark('VBD', updateVbdAllowedOperations);
      await unmark('VIF', updateVifAllowedOperations);
      await unmark('VDI', updateVdiAllowedOperations);
      await unmark('SR', updateSrAllowedOperations);
      await unmark('host', updateHostAllowedOperations);
    });
    gateOf(host).broadcast();
    for (const task of tasks) if (await db.tryGet('task', task)) await db.destroy('task', task);
  }
  await updateHostAllowedOperations(db, hostRef);
}

/**
 * is_host_alive: a host marked dead is taken at its word; one marked live is asked (pool.is_slave,
 * under a local session made with the pool secret) and is dead if it does not answer in time.
 */
export async function isHostAlive(host: HostContext, db: Db, hostRef: string): Promise<boolean> {
  const row = await db.tryGet('host', hostRef);
  const metrics = row ? await db.tryGet('host_metrics', row.metrics) : undefined;
  if (metrics && !metrics.live) return false;
  if (!row) return false;
  if (hostRef === host.hostRef) return true;
  const client = new XapiClient(`https://${row.address}:${host.config.httpsPort}`, { idleTimeoutMs: IS_ALIVE_TIMEOUT_MS });
  const deadline = new Promise<never>((_, reject) => {
    const t = setTimeout(() => reject(new Error('no answer in time')), IS_ALIVE_TIMEOUT_MS);
    t.unref();
  });
  try {
    await Promise.race([
      (async () => {
        const session = await client.call('session.slave_local_login', [host.poolSecrets()[0]!]);
        try {
          await client.call('pool.is_slave', [session, hostRef]);
        } finally {
          await client.call('session.local_logout', [session]).catch(() => undefined);
        }
      })(),
      deadline,
    ]);
    return true;
  } catch (e) {
    host.log.warn({ err: e, host: hostRef }, 'a host marked live does not answer: taking it for dead');
    return false;
  } finally {
    client.close();
  }
}

/** precheck_destroy_declare_dead: the host must not answer, and must not be this one. */
async function assertHostDead(call: Call, hostRef: string): Promise<void> {
  await call.db.get('host', hostRef);
  if (await isHostAlive(call.host, call.db, hostRef)) throw new XapiError('HOST_IS_LIVE', [hostRef]);
  if (hostRef === call.host.hostRef) throw new XapiError('HOST_IS_LIVE', [hostRef]);
}

/** The VMs resident on a host, control domains apart from the others. */
async function residentVms(db: Db, hostRef: string): Promise<{ control: string[]; guests: string[] }> {
  const control: string[] = [];
  const guests: string[] = [];
  for (const [ref, vm] of await db.find('VM', { resident_on: hostRef })) (vm.is_control_domain ? control : guests).push(ref);
  return { control, guests };
}

/** host.declare_dead: the operator says the host is gone; what ran there is Halted. */
async function declareDead(call: Call, hostRef: string, resetVm: (vm: string) => Promise<void>): Promise<void> {
  await assertHostDead(call, hostRef);
  const { guests } = await residentVms(call.db, hostRef);
  for (const vm of guests) await resetVm(vm);
  await call.db.update('host', hostRef, { enabled: false });
  await updateHostAllowedOperations(call.db, hostRef);
}

/** host.destroy (CLI host-forget): a dead host with no guests left leaves the pool's database. */
async function destroyHost(call: Call, liveness: Liveness, hostRef: string): Promise<void> {
  await assertHostDead(call, hostRef);
  const [pool] = await call.db.all('pool');
  if (pool?.[1].ha_enabled) throw new XapiError('HA_IS_ENABLED', []);
  const { guests } = await residentVms(call.db, hostRef);
  if (guests.length > 0) throw new XapiError('HOST_HAS_RESIDENT_VMS', [hostRef]);
  // The host, its control domain, and what the database GC removes after it (metrics, CPUs,
  // PIFs, PBDs, other rows naming the host). Its SRs and their disks stay, as in xapi.
  await removeHostRecords(call.db, hostRef, { forgetLocalSrs: false });
  liveness.forget(hostRef);
}

/**
 * host.tickle_heartbeat, host.declare_dead, host.destroy. declare_dead resets each VM with
 * VM.power_state_reset's implementation, as xapi calls it through the API for each VM.
 */
export function register(r: Registry, liveness: Liveness): void {
  const resetVm = async (call: Call, vm: string) => {
    await r.get('VM.power_state_reset')!(call, [vm]);
  };
  r.implement('host.tickle_heartbeat', async (call, [host, stuff]) => {
    await liveness.heartbeat(call.db, host, stuff);
    return {};
  })
    .implement('host.declare_dead', (call, [host]) => declareDead(call, host, (vm) => resetVm(call, vm)))
    .implement('host.destroy', (call, [self]) => destroyHost(call, liveness, self));
}
