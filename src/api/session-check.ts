// The check every session-taking call goes through (xapi's session_check.ml): the session must
// exist; its last_active is refreshed only when older than threshold_last_active, so a busy
// client does not turn every read into a database write.
import { XapiError } from '../rpc/errors.js';
import { WriteRefused } from '../db/interface.js';
import type { HostContext, SessionInfo } from './context.js';
import type { Rpc } from '../rpc/rpc.js';
import type { Row } from '../db/interface.js';
import { typeError } from './marshal.js';
import { formatDateTime, parseDateTime } from '../schema/types.js';

export const THRESHOLD_LAST_ACTIVE_S = 600;

// Rows are immutable, so a row's parsed last_active can be remembered with the row.
const lastActiveMs = new WeakMap<Row<'session'>, number>();
function lastActive(row: Row<'session'>): number {
  let ms = lastActiveMs.get(row);
  if (ms === undefined) {
    ms = parseDateTime(row.last_active)?.getTime() ?? 0;
    lastActiveMs.set(row, ms);
  }
  return ms;
}

/**
 * The session a call or an HTTP handler presents. On a pool member (xapi's session_check.ml)
 * only pool sessions (host to host) and this host's local sessions pass a call's check: a
 * client's session belongs on the coordinator, so it gets HOST_IS_SLAVE [coordinator address].
 * HTTP handlers take any valid session of the pool (`anyPoolSession`): members serve transfers.
 */
export async function checkSession(host: HostContext, param: Rpc, opts: { anyPoolSession?: boolean } = {}): Promise<SessionInfo> {
  // The session is a ref parameter like any other: it must unmarshal as a string first.
  if (typeof param !== 'string') throw typeError('string', param);
  const ref = param;
  const local = host.localSessions.get(ref);
  if (local) {
    // Kept fresh like a database session, so the session GC ends only idle local sessions.
    const now = host.now();
    if (now - lastActive(local) <= THRESHOLD_LAST_ACTIVE_S * 1000) return { ref, row: local };
    const fresh = { ...local, last_active: formatDateTime(new Date(now)) };
    host.localSessions.set(ref, fresh);
    return { ref, row: fresh };
  }
  const row = await host.db.tryGet('session', ref);
  if (!row) throw new XapiError('SESSION_INVALID', [ref]);
  if (host.role.kind !== 'master') {
    if (!row.pool && !opts.anyPoolSession) throw new XapiError('HOST_IS_SLAVE', [await coordinatorAddress(host)]);
    return { ref, row };
  }
  const last = lastActive(row);
  const now = host.now();
  if (now - last > THRESHOLD_LAST_ACTIVE_S * 1000) {
    // Bookkeeping: a database refusing writes (a full disk) must not refuse the call with it.
    await host.db.update('session', ref, { last_active: formatDateTime(new Date(now)) }).catch((e: unknown) => {
      if (!(e instanceof WriteRefused)) throw e;
    });
  }
  return { ref, row };
}

/** The coordinator's address as the pool database has it (Host.address of Pool.master). */
async function coordinatorAddress(host: HostContext): Promise<string> {
  const pool = await host.db.get('pool', host.poolRef);
  return (await host.db.get('host', pool.master)).address;
}
