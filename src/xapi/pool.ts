// pool.* explicit messages (xapi's xapi_pool.ml, xapi_pool_license.ml, license_check.ml).
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import { callOn } from './forward.js';
import type { Liveness } from './liveness.js';
import { join } from './pool-join.js';
import { nextRole } from './pool-transition.js';
import { formatDateTime, parseDateTime } from '../schema/types.js';

/**
 * The editions the licensing daemon offers, with their rank. XCP-ng's daemon offers one,
 * "xcp-ng", with every feature (it is what hosts here report as their edition).
 */
export const EDITIONS: Record<string, number> = { 'xcp-ng': 100 };

/** license_check.ml's "never": an expiry of exactly 2100-01-01 is written as no expiry. */
const NEVER = Date.UTC(2100, 0, 1);

/**
 * pool.get_license_state: the lowest edition among the hosts (of those the daemon knows), and
 * the earliest expiry among the hosts of that edition ("never" when none expires).
 */
async function licenseState(call: Call): Promise<Record<string, string>> {
  const hosts = (await call.db.all('host')).map(([, h]) => h);
  const ranked = hosts.filter((h) => h.edition in EDITIONS).sort((a, b) => EDITIONS[a.edition]! - EDITIONS[b.edition]!);
  // xapi takes the head of an empty list when no host has a known edition.
  if (ranked.length === 0) throw new XapiError('INTERNAL_ERROR', ['Failure("hd")']);
  const edition = ranked[0]!.edition;
  const expiries = hosts
    .filter((h) => h.edition === edition)
    .map((h) => {
      const text = h.license_params.expiry;
      if (text === undefined || text === 'never') return undefined;
      const date = parseDateTime(text);
      if (!date) throw new XapiError('INTERNAL_ERROR', [`Invalid_argument("Clock__Date.of_iso8601: ${text}")`]);
      return date.getTime();
    });
  const earliest = expiries.reduce<number | undefined>(
    (min, t) => (t === undefined ? min : min === undefined || t < min ? t : min),
    undefined,
  );
  const expiry = earliest === undefined || earliest === NEVER ? 'never' : formatDateTime(new Date(earliest));
  return { edition, expiry };
}

/**
 * pool.hello, on the coordinator: a member that (re)started says who it is. The coordinator
 * checks it can call the member back, takes the host as live (without HA) but disabled until the
 * member enables itself, and forgets what it had on that host's behalf: the tasks that ran there,
 * a shutdown it announced; its heartbeat timer starts afresh (xapi_pool.ml hello).
 */
async function hello(call: Call, liveness: Liveness, uuid: string, address: string): Promise<string> {
  const db = call.db;
  const hostRef = await db.refByUuid('host', uuid);
  if (!hostRef) return 'unknown_host';
  if ((await db.get('host', hostRef)).address !== address) await db.update('host', hostRef, { address });
  try {
    await callOn(call.host, hostRef, address, 'pool.is_slave', [hostRef]);
  } catch (e) {
    call.host.log.warn({ err: e, host: hostRef }, 'pool.hello: cannot call the member back');
    return 'cannot_talk_back';
  }
  await db.update('host', hostRef, { enabled: false });
  const pool = await db.get('pool', call.host.poolRef);
  if (!pool.ha_enabled) await db.update('host_metrics', (await db.get('host', hostRef)).metrics, { live: true });
  await liveness.hello(db, hostRef);
  return 'ok';
}

export function register(r: Registry, liveness: Liveness): void {
  // The pool argument is not even looked at by xapi.
  r.implement('pool.get_license_state', (call) => licenseState(call))
    .implement('pool.hello', (call, [uuid, address]) => hello(call, liveness, uuid, address))
    // The secret goes to whoever may call it (pool-operator and above), as xapi's does.
    .implement('pool.initial_auth', (call) => call.host.poolSecrets()[0]!)
    // By the role written for the next start: a coordinator that committed to another host is
    // already that host's member for whoever asks (pool-transition.ts). The coordinator asking
    // is also the sign it is back: a member's database calls waiting to retry try again now.
    .implement('pool.is_slave', (call) => {
      call.host.coordinatorContacted?.();
      return nextRole(call.host).kind !== 'master';
    })
    .implement('pool.join', (call, [address, user, password]) => join(call, address, user, password, false))
    .implement('pool.join_force', (call, [address, user, password]) => join(call, address, user, password, true));
}
