// A pool member's start-up (xapi.ml's slave path; pool.md §2.4). The member serves only the
// emergency calls while it asks its coordinator to take it back: a local login with the pool
// secret, then pool.hello, in which the coordinator calls it back. Until that works the member
// answers every other call with what went wrong (xapi's emergency errors, retried after 5 s or,
// for a coordinator that does not know it, 60 s). Then it brings its own records up to date in
// the coordinator's database, plugs its storage, reconciles its domains and enables itself.
import { setTimeout as sleep } from 'node:timers/promises';
import type { HostContext } from '../api/context.js';
import type { RemoteDb } from '../db/remote.js';
import type { Schema } from '../schema/schema.js';
import { XapiError } from '../rpc/errors.js';
import type { Storage } from '../xapi/storage.js';
import type { XenopsSync } from '../xapi/xenops-sync.js';
import { peer } from '../xapi/forward.js';
import { fetchBackup } from '../db/backup.js';
import { compareXapiMajorMinor, releaseVersions } from '../xapi/version.js';
import { syncDatabase, type HostIdentity } from './dbsync.js';
import { plugLocalPbds } from './local-storage.js';
import { forgetDeparted, sweepUnfinishedMirrors } from '../xapi/storage-motion.js';
import { settleDepartures } from '../xapi/cross-pool.js';
import { startHeartbeat, type Heartbeat } from './heartbeat.js';
import { updateHostAllowedOperations } from '../xapi/host-operations.js';

/** xapi's waits between attempts to be taken back: 5 s, or 60 s when the coordinator does not know this host. */
export const HELLO_RETRY_MS = 5_000;
export const UNKNOWN_RETRY_MS = 60_000;
/** How long a stopping member waits for its start-up to notice. */
const STOP_WAIT_MS = 2_000;

export interface MemberStart {
  host: HostContext;
  identity: HostIdentity;
  schema: Schema;
  xenops: XenopsSync;
  storage: Storage;
  poolSecret: string;
  master: string;
  remote: RemoteDb;
  /** Every start's network sync (its PIFs against networkd, the needed ones brought up). */
  startNetworking(): Promise<void>;
  /** Between two heartbeats (default xapi's 30 s). */
  heartbeatIntervalMs?: number;
}

export function startMember(o: MemberStart): { stop(): Promise<void> } {
  const { host } = o;
  const stopping = new AbortController();
  let heartbeat: Heartbeat | undefined;
  const run = (async () => {
    await helloUntilTakenBack(o, stopping.signal);
    o.remote.wake();
    const { hostRef, poolRef } = await syncDatabase(host.db, o.schema, o.identity, 'slave');
    host.hostRef = hostRef;
    host.poolRef = poolRef;
    if (stopping.signal.aborted) return;
    // Heartbeats from here on: the coordinator took this host back at hello and knows its ref.
    heartbeat = startHeartbeat({
      host,
      master: o.master,
      poolSecret: o.poolSecret,
      intervalMs: o.heartbeatIntervalMs,
      onCoordinatorBack: () => o.remote.wake(),
    });
    await o.startNetworking();
    await plugLocalPbds(o.storage);
    await sweepUnfinishedMirrors(o.storage);
    await o.xenops.resync();
    void settleDepartures(host, (vm) => forgetDeparted(o.storage, o.xenops, vm)).catch((e: unknown) =>
      host.log.warn({ err: e }, 'settling the migrations to other pools failed'),
    );
    o.xenops.start();
    // Serving before the host says it may run VMs: whoever sees it enabled can call it.
    host.emergency = undefined;
    // xapi's consider_enabling_host: storage and domains are in order, so VMs may start here.
    await host.db.update('host', hostRef, { enabled: true });
    await updateHostAllowedOperations(host.db, hostRef); // no shutdown or reboot while enabled
    await host.db.commit();
    host.log.info({ coordinator: o.master }, 'member of the pool: serving');
    // The copy of the pool's database this member would start from as coordinator.
    await fetchBackup({ address: o.master, port: host.config.httpsPort, poolSecret: o.poolSecret, stateDir: host.config.stateDir }).catch(
      (e: unknown) => host.log.warn({ err: e }, 'fetching the database backup failed'),
    );
  })().catch((e: unknown) => {
    if (!stopping.signal.aborted) host.log.error({ err: e }, 'member start-up failed');
  });
  return {
    // A clean stop: the coordinator is told (the last heartbeat says shutting-down).
    async stop() {
      stopping.abort();
      await heartbeat?.stop(true);
      // A start-up still waiting for its coordinator (database calls retried for ever) must not
      // hold the host's close: it fails at its next call once the host closes its RemoteDb.
      await Promise.race([run, sleep(STOP_WAIT_MS, undefined, { ref: false })]);
    },
  };
}

/** Logs in to the coordinator with the pool secret and says hello, until it answers ok. */
async function helloUntilTakenBack(o: MemberStart, signal: AbortSignal): Promise<void> {
  const { host } = o;
  const coordinator = peer(host, o.master);
  let alerted = false;
  for (;;) {
    let retryMs = HELLO_RETRY_MS;
    try {
      const session = await coordinator.call('session.slave_local_login', [o.poolSecret]);
      let answer: unknown;
      let tooNew: string | undefined;
      try {
        answer = await coordinator.call('pool.hello', [session, o.identity.uuid, o.identity.address]);
        if (answer === 'ok') {
          tooNew = await newerThanCoordinator(host, o.identity.uuid);
          // the pool is told once (a message on this host) why the member does not come up
          if (tooNew !== undefined && !alerted) {
            await coordinator.call('message.create', [session, VERSION_HIGHER_MESSAGE, 2, 'Host', o.identity.uuid, tooNew]);
            alerted = true;
          }
        }
      } finally {
        await coordinator.call('session.local_logout', [session]).catch(() => undefined);
      }
      if (answer === 'ok' && tooNew === undefined) return;
      if (tooNew !== undefined) {
        // Permanent: this member waits for its coordinator to be upgraded (retried, just in case).
        host.log.error(tooNew);
        host.emergency = { code: 'HOST_XAPI_VERSION_HIGHER_THAN_COORDINATOR', params: [myXapiVersion(host)] };
        retryMs = UNKNOWN_RETRY_MS;
      } else if (answer === 'cannot_talk_back') host.emergency = { code: 'HOST_MASTER_CANNOT_TALK_BACK', params: [o.identity.address] };
      else {
        host.emergency = { code: 'HOST_UNKNOWN_TO_MASTER', params: [o.identity.uuid] };
        retryMs = UNKNOWN_RETRY_MS;
      }
    } catch (e) {
      if (e instanceof XapiError && e.code === 'SESSION_AUTHENTICATION_FAILED') {
        // a coordinator with another secret: this host is not (or no longer) in its pool
        host.emergency = { code: 'HOST_UNKNOWN_TO_MASTER', params: [o.identity.uuid] };
        retryMs = UNKNOWN_RETRY_MS;
      } else if (e instanceof XapiError) host.emergency = { code: e.code, params: e.params };
      else host.emergency = { code: 'INTERNAL_ERROR', params: [e instanceof Error ? e.message : String(e)] };
    }
    host.log.warn({ emergency: host.emergency, retryMs }, 'the coordinator has not taken this member back yet');
    await sleep(retryMs, undefined, { signal }).catch(() => undefined);
    if (signal.aborted) throw new Error('stopped');
  }
}

/** The message a member too new for its coordinator leaves on itself (xapi's, priority 2). */
const VERSION_HIGHER_MESSAGE = 'XAPI_STARTUP_BLOCKED_AS_VERSION_HIGHER_THAN_COORDINATOR';

const myXapiVersion = (host: HostContext) => releaseVersions(host.config.platformVersion).xapi;

/**
 * xapi's check once the coordinator has taken a member back: a member whose xapi is newer (by
 * major.minor) than the coordinator's, as the coordinator's host record says, must not run in the
 * pool: the coordinator is upgraded first. Returns why, or undefined when it may start.
 */
async function newerThanCoordinator(host: HostContext, myUuid: string): Promise<string | undefined> {
  const [pool] = await host.db.all('pool');
  if (!pool) return undefined;
  const theirs = (await host.db.get('host', pool[1].master)).software_version.xapi_build ?? '0.0.0';
  const mine = myXapiVersion(host);
  if (compareXapiMajorMinor(mine, theirs) <= 0) return undefined;
  const myRef = await host.db.refByUuid('host', myUuid);
  const name = myRef ? (await host.db.get('host', myRef)).name_label : '';
  return `Xapi startup in pool member ${name} is blocked as its xapi version (${mine}) is higher than xapi version in pool coordinator.`;
}
