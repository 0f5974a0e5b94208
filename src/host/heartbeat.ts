// A member's heartbeat (xapi's db_gc.ml heartbeat thread; pool.md §4): every interval it tells
// the coordinator it is alive with host.tickle_heartbeat, under a local session the coordinator
// gives for the pool secret (never a database session: it must work whatever the database does).
// A coordinator that refuses the secret is not this member's coordinator any more, so the member
// restarts (xapi exits with its restart code) and asks again with pool.hello. When the member
// stops cleanly its last heartbeat says so, and the coordinator takes it for dead at once.
import { setTimeout as sleep } from 'node:timers/promises';
import type { HostContext } from '../api/context.js';
import { XapiClient } from '../rpc/client.js';
import { XapiError } from '../rpc/errors.js';
import { HEARTBEAT_SHUTTING_DOWN, HEARTBEAT_TIME, HOST_HEARTBEAT_INTERVAL_MS } from '../xapi/liveness.js';

/** A heartbeat call that stays silent this long is abandoned (the next one tries again). */
export const HEARTBEAT_CALL_TIMEOUT_MS = 20_000;
/** How long a stopping member waits for its last heartbeat to be taken. */
export const LAST_HEARTBEAT_TIMEOUT_MS = 5_000;

export interface HeartbeatOptions {
  host: HostContext;
  /** The coordinator's address (all hosts of a pool share the HTTPS port). */
  master: string;
  poolSecret: string;
  /** Between two heartbeats (default 30 s, xapi's host_heartbeat_interval). */
  intervalMs?: number;
  /** Told when heartbeats get through again after failing: the coordinator is back. */
  onCoordinatorBack?: () => void;
}

export interface Heartbeat {
  /** Ends the heartbeats; `shuttingDown` sends the last one that says the member is going. */
  stop(shuttingDown: boolean): Promise<void>;
}

export function startHeartbeat(o: HeartbeatOptions): Heartbeat {
  const { host } = o;
  const intervalMs = o.intervalMs ?? HOST_HEARTBEAT_INTERVAL_MS;
  // A new connection for each heartbeat, as xapi's (each call of call_emergency_mode_functions
  // opens its own): kept alive between heartbeats, 63 members' idle connections held ~4 MiB of a
  // coordinator's RSS; a connection per heartbeat costs a resumed TLS handshake every 30 s.
  const client = new XapiClient(`https://${o.master}:${host.config.httpsPort}`, {
    idleTimeoutMs: HEARTBEAT_CALL_TIMEOUT_MS,
    keepAlive: false,
  });
  const stopping = new AbortController();
  let session: string | undefined;

  const login = async (): Promise<string> => {
    session ??= (await client.call('session.slave_local_login', [o.poolSecret])) as string;
    return session;
  };
  const tickle = async (shuttingDown: boolean): Promise<void> => {
    const stuff: Record<string, string> = { [HEARTBEAT_TIME]: String(host.now() / 1000) };
    if (shuttingDown) stuff[HEARTBEAT_SHUTTING_DOWN] = 'true';
    try {
      await client.call('host.tickle_heartbeat', [await login(), host.hostRef, stuff]);
    } catch (e) {
      // The coordinator restarted and lost its local sessions: log in again at once.
      if (!(e instanceof XapiError && e.code === 'SESSION_INVALID')) throw e;
      session = undefined;
      await client.call('host.tickle_heartbeat', [await login(), host.hostRef, stuff]);
    }
  };

  const run = (async () => {
    let failing = false;
    while (!stopping.signal.aborted) {
      try {
        await tickle(false);
        if (failing) {
          failing = false;
          host.log.info({ coordinator: o.master }, 'heartbeats reach the coordinator again');
          o.onCoordinatorBack?.();
        }
      } catch (e) {
        if (stopping.signal.aborted) break;
        if (e instanceof XapiError && e.code === 'SESSION_AUTHENTICATION_FAILED') {
          host.log.error({ coordinator: o.master }, 'the coordinator refuses the pool secret: restarting to ask it again');
          host.requestRestart('the coordinator does not know this host');
          return;
        }
        if (!failing) host.log.warn({ err: e, coordinator: o.master }, 'a heartbeat did not reach the coordinator: still trying');
        failing = true;
      }
      await sleep(intervalMs, undefined, { signal: stopping.signal }).catch(() => undefined);
    }
  })();

  return {
    async stop(shuttingDown) {
      stopping.abort();
      if (shuttingDown) {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, LAST_HEARTBEAT_TIMEOUT_MS);
        });
        await Promise.race([
          tickle(true).catch((e: unknown) => host.log.warn({ err: e }, 'the last heartbeat did not reach the coordinator')),
          late,
        ]);
        clearTimeout(timer);
      }
      const last = session;
      if (last !== undefined) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          client.call('session.local_logout', [last]).catch(() => undefined),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, LAST_HEARTBEAT_TIMEOUT_MS);
          }),
        ]);
        clearTimeout(timer);
      }
      client.close();
      // Bounded too: a call still waiting for a silent coordinator (a stopped process answers
      // no TLS handshake) must not hold the host's close; it fails once the client is gone.
      await Promise.race([run, sleep(LAST_HEARTBEAT_TIMEOUT_MS, undefined, { ref: false })]);
    },
  };
}
