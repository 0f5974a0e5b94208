// The pool's database backups (pool.md §2.3): what host.request_backup and pool.sync_database do,
// and the coordinator's loop that keeps every member's copy recent. The transfer itself (the
// coordinator's image, the member's atomic install) is src/db/backup.ts.
import { internalError } from '../rpc/errors.js';
import type { Call, HostContext, Registry } from '../api/context.js';
import { fetchBackup, storedGeneration } from '../db/backup.js';
import { Mutex } from '../util/mutex.js';
import { callOn, isForwardedHere, runOn } from './forward.js';

/** xapi_globs.pool_db_sync_interval: the coordinator's pause before each member's backup. */
export const POOL_DB_SYNC_INTERVAL_MS = 300_000;

export interface RequestBackupOptions {
  /** The host the call names, and this host: they must be the same (the call was forwarded here). */
  host: string;
  localHost: string;
  generation: number;
  force: boolean;
  /** This host's role: the coordinator makes its own store durable; a member downloads. */
  coordinator: { commit(): Promise<void> } | null;
  /** Where the coordinator is and how to reach it (a member's side). */
  coordinatorAddress: string;
  httpsPort: number;
  poolSecret: string;
  stateDir: string;
}

/**
 * host.request_backup(host, generation, force), run on `host`. On the coordinator: its store is
 * made durable, which is its own backup. On a member: the coordinator's database is downloaded
 * into <state-dir>/xapi.db, unless `force` is false and the copy there is already at
 * `generation` (xapi compares the generation it wrote with each backup file).
 */
export async function requestBackup(o: RequestBackupOptions): Promise<'flushed' | 'current' | 'fetched'> {
  if (o.host !== o.localHost) throw internalError('Forwarded to the wrong host');
  if (o.coordinator) {
    await o.coordinator.commit();
    return 'flushed';
  }
  if (!o.force && storedGeneration(o.stateDir) === o.generation) return 'current';
  await fetchBackup({ address: o.coordinatorAddress, port: o.httpsPort, poolSecret: o.poolSecret, stateDir: o.stateDir });
  return 'fetched';
}

/** pool.sync_database runs one at a time (xapi's sync_m). */
const syncLock = new Mutex();

/**
 * pool.sync_database, on the coordinator: host.request_backup(force=true) on every host (the
 * coordinator included) at once. As xapi's thread_iter, every request runs to its end and then
 * one failure, if any, is raised (the last to happen).
 */
export function syncDatabase(o: {
  hosts: string[];
  generation: number;
  requestBackup: (host: string, generation: number, force: boolean) => Promise<unknown>;
}): Promise<void> {
  return syncLock.run(async () => {
    let failure: { error: unknown } | undefined;
    await Promise.all(
      o.hosts.map((h) =>
        o.requestBackup(h, o.generation, true).then(
          () => undefined,
          (error: unknown) => {
            failure = { error };
          },
        ),
      ),
    );
    if (failure) throw failure.error;
  });
}

export interface BackupLoopOptions<M> {
  /** The members (not the coordinator itself), read afresh at every round. */
  members: () => M[] | Promise<M[]>;
  /** The coordinator's database generation, read at the start of every round. */
  generation: () => number;
  /** Asks one member to back up (host.request_backup(member, generation, force=false)). */
  push: (member: M, generation: number) => Promise<unknown>;
  intervalMs?: number;
  onError?: (member: M | undefined, error: unknown) => void;
}

/**
 * The coordinator's backup loop, as xapi's pool_db_backup_thread: for each member in turn, wait
 * the interval, then ask it to back up; an empty pool waits one interval per round. A member that
 * fails is reported and the loop goes on. stop() ends it (at once, even in a wait) and resolves
 * when the loop has finished (after the push in flight, if any).
 */
export function startBackupLoop<M>(o: BackupLoopOptions<M>): { stop(): Promise<void> } {
  const intervalMs = o.intervalMs ?? POOL_DB_SYNC_INTERVAL_MS;
  let stopped = false;
  let wakeUp: (() => void) | undefined;
  const pause = () =>
    new Promise<void>((resolve) => {
      if (stopped) return resolve();
      const timer = setTimeout(done, intervalMs);
      timer.unref();
      function done() {
        clearTimeout(timer);
        wakeUp = undefined;
        resolve();
      }
      wakeUp = done;
    });
  const loop = (async () => {
    while (!stopped) {
      let members: M[];
      let generation: number;
      try {
        members = await o.members();
        generation = o.generation();
      } catch (e) {
        o.onError?.(undefined, e);
        members = [];
        generation = 0;
      }
      if (members.length === 0) await pause();
      for (const m of members) {
        await pause();
        if (stopped) break;
        try {
          await o.push(m, generation);
        } catch (e) {
          o.onError?.(m, e);
        }
      }
    }
  })();
  return {
    stop() {
      stopped = true;
      wakeUp?.();
      return loop;
    },
  };
}

/** host.request_backup run here: this host's own backup (see requestBackup). */
function requestBackupHere(call: Call, hostRef: string, generation: number, force: boolean) {
  const host = call.host;
  return requestBackup({
    host: hostRef,
    localHost: host.hostRef,
    generation,
    force,
    coordinator: host.role.kind === 'master' ? { commit: () => host.db.commit() } : null,
    coordinatorAddress: host.role.kind === 'slave' ? host.role.master : host.config.address,
    httpsPort: host.config.httpsPort,
    poolSecret: host.poolSecrets()[0]!,
    stateDir: host.config.stateDir,
  });
}

/** host.request_backup on the coordinator: forwarded to the host it names. */
async function requestBackupOn(call: Call, hostRef: string, generation: number, force: boolean): Promise<void> {
  if (call.host.role.kind === 'master' && !isForwardedHere(call)) {
    await call.db.get('host', hostRef);
    await runOn(call, hostRef, 'host.request_backup', [hostRef, generation, force], () =>
      requestBackupHere(call, hostRef, generation, force),
    );
  } else await requestBackupHere(call, hostRef, generation, force);
}

export function register(r: Registry): void {
  r.implement('host.request_backup', (call, [hostRef, generation, force]) => requestBackupOn(call, hostRef, generation, force)).implement(
    'pool.sync_database',
    async (call) => {
      // xapi flushes to the HA metadata VDI first when HA is on; this build has no HA yet.
      const hosts = (await call.db.all('host')).map(([ref]) => ref);
      await syncDatabase({ hosts, generation: call.db.generation(), requestBackup: (h, g, f) => requestBackupOn(call, h, g, f) });
    },
  );
}

/**
 * The coordinator's backup loop over its members (every host but itself), each asked through
 * host.request_backup(force=false) under a pool session.
 */
export function startCoordinatorBackups(host: HostContext, intervalMs?: number): { stop(): Promise<void> } {
  return startBackupLoop<string>({
    members: async () => (await host.db.all('host')).map(([ref]) => ref).filter((ref) => ref !== host.hostRef),
    generation: () => host.db.generation(),
    push: async (ref, generation) => {
      const member = await host.db.tryGet('host', ref);
      if (!member) return;
      await callOn(host, ref, member.address, 'host.request_backup', [ref, generation, false]);
    },
    intervalMs,
    onError: (member, error) => host.log.warn({ err: error, host: member }, 'database backup to a member failed'),
  });
}
