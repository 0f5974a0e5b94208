// session.* : login, logout and the pool's own logins (xapi's xapi_session.ml). Only the local
// superuser exists without external authentication, so a successful password login is root.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { XapiError } from '../rpc/errors.js';
import type { Call, HostContext, Registry } from '../api/context.js';
import { newRef } from '../api/implicit.js';
import { NULL_REF, formatDateTime, parseDateTime } from '../schema/types.js';
import type { Row } from '../db/interface.js';
import type { Messages } from '../schema/generated.js';

/** Failed logins are answered late, as xapi does, to slow down password guessing. */
export const AUTH_FAILURE_DELAY_MS = 5000;

export const MAX_SESSIONS_PER_GROUP = 400;
export const MAX_SESSIONS_PER_ORIGINATOR = 500;
export const INACTIVE_SESSION_TIMEOUT_S = 86400;

interface NewSession {
  pool: boolean;
  userName: string;
  originator: string;
  parent?: string;
}

export async function createSession(host: HostContext, s: NewSession): Promise<string> {
  const ref = newRef();
  const now = formatDateTime(new Date(host.now()));
  await host.db.create('session', ref, {
    uuid: randomUUID(),
    this_host: host.hostRef,
    this_user: NULL_REF,
    last_active: now,
    pool: s.pool,
    other_config: {},
    is_local_superuser: true,
    subject: NULL_REF,
    validation_time: now,
    auth_user_sid: '',
    auth_user_name: s.userName,
    rbac_permissions: [],
    parent: s.parent ?? NULL_REF,
    originator: s.originator,
    client_certificate: false,
  });
  return ref;
}

type Params<W extends keyof Messages> = Messages[W]['params'];

async function loginWithPassword(call: Call, [uname, pwd, , originator]: Params<'session.login_with_password'>): Promise<string> {
  const host = call.host;
  // Clients log in to the coordinator; a member names it (xapi_session.ml, before any password check).
  if (host.role.kind === 'slave') throw new XapiError('HOST_IS_SLAVE', [host.role.master]);
  if (!(await host.verifyLocalPassword(uname, pwd))) {
    await sleep(host.authFailureDelayMs);
    throw new XapiError('SESSION_AUTHENTICATION_FAILED', [uname, 'Authentication failure']);
  }
  return createSession(host, { pool: false, userName: uname, originator });
}

async function slaveLogin(call: Call, [hostRef, secret]: Params<'session.slave_login'>): Promise<string> {
  if (!call.host.poolSecrets().includes(secret)) {
    await sleep(call.host.authFailureDelayMs);
    throw new XapiError('SESSION_AUTHENTICATION_FAILED', [hostRef, 'Pool credentials invalid']);
  }
  return createSession(call.host, { pool: true, userName: hostRef, originator: '' });
}

/**
 * session.change_password (xapi_session.ml): the local superuser's session changes root's
 * password. xapi does not check old_pwd (CA-13567: holding such a session is proof enough), so
 * neither does this; any other session is refused.
 */
async function changePassword(call: Call, [, newPwd]: Params<'session.change_password'>, setPassword: SetPassword): Promise<void> {
  if (!call.session!.row.is_local_superuser) {
    throw new XapiError('USER_IS_NOT_LOCAL_SUPERUSER', ['Failed to change password for user root']);
  }
  await setPassword('root', newPwd);
}

/** A session kept only in this host's memory (emergency mode: the coordinator is unreachable). */
function createLocalSession(host: HostContext, userName: string, pool: boolean): string {
  const ref = newRef();
  const now = formatDateTime(new Date(host.now()));
  // A whole row, as the database would hold it (the fields not set here at their defaults).
  host.localSessions.set(ref, {
    uuid: randomUUID(),
    this_host: host.hostRef,
    this_user: NULL_REF,
    last_active: now,
    validation_time: now,
    pool,
    other_config: {},
    is_local_superuser: true,
    subject: NULL_REF,
    auth_user_name: userName,
    auth_user_sid: '',
    rbac_permissions: [],
    tasks: [],
    parent: NULL_REF,
    originator: '',
    client_certificate: false,
  });
  return ref;
}

export type SetPassword = (user: string, password: string) => Promise<void>;

export function register(r: Registry, setPassword: SetPassword): void {
  r.implement('session.login_with_password', loginWithPassword)
    .implement('session.slave_login', slaveLogin)
    .implement('session.slave_local_login', async (call, [secret]) => {
      if (!call.host.poolSecrets().includes(secret)) {
        await sleep(call.host.authFailureDelayMs);
        throw new XapiError('SESSION_AUTHENTICATION_FAILED', ['', 'Pool credentials invalid']);
      }
      return createLocalSession(call.host, '', true); // xapi: a pool session
    })
    .implement('session.slave_local_login_with_password', async (call, [uname, pwd]) => {
      if (uname !== 'root' || !(await call.host.verifyLocalPassword('root', pwd))) {
        await sleep(call.host.authFailureDelayMs);
        throw new XapiError('SESSION_AUTHENTICATION_FAILED', [uname, 'Authentication failure']);
      }
      return createLocalSession(call.host, 'root', false);
    })
    .implement('session.local_logout', (call) => {
      call.host.localSessions.delete(call.session!.ref);
    })
    .implement('session.logout', async (call) => {
      await call.db.destroy('session', call.session!.ref);
    })
    .implement('session.change_password', (call, args) => changePassword(call, args, setPassword))
    .implement('session.get_all_subject_identifiers', async (call) => {
      const sids = new Set<string>();
      for (const [, row] of await call.db.all('session')) if (row.auth_user_sid) sids.add(row.auth_user_sid);
      return [...sids];
    })
    .implement('session.logout_subject_identifier', async (call, [sid]) => {
      for (const [ref] of await call.db.find('session', { auth_user_sid: sid })) {
        if (ref !== call.session!.ref) await call.db.destroy('session', ref);
      }
    });
}

async function hasUnfinishedTasks(host: HostContext, tasks: string[]): Promise<boolean> {
  for (const t of tasks ?? []) {
    const row = await host.db.tryGet('task', t);
    if (row && (row.status === 'pending' || row.status === 'cancelling')) return true;
  }
  return false;
}

/** The group a session counts against for the limits of the session GC. */
function gcGroup(row: Row<'session'>): string {
  const user = row.auth_user_name;
  if (row.pool) return 'internal';
  if (user === '' || user === 'root') return row.originator === '' ? 'external' : `originator:${row.originator}`;
  return `user:${user}`;
}

/**
 * Which sessions of one kind (database or local) a GC pass removes: those idle for a day, then
 * the least recently active above each group's limit.
 */
function sessionsToCollect(now: number, sessions: { ref: string; row: Row<'session'> }[]): string[] {
  const out: string[] = [];
  const groups = new Map<string, { ref: string; last: number }[]>();
  for (const { ref, row } of sessions) {
    const last = parseDateTime(row.last_active)?.getTime() ?? 0;
    if ((now - last) / 1000 > INACTIVE_SESSION_TIMEOUT_S) {
      out.push(ref);
      continue;
    }
    const key = gcGroup(row);
    const list = groups.get(key) ?? [];
    list.push({ ref, last });
    groups.set(key, list);
  }
  for (const [key, list] of groups) {
    const limit = key === 'internal' || key === 'external' ? MAX_SESSIONS_PER_GROUP : MAX_SESSIONS_PER_ORIGINATOR;
    if (list.length <= limit) continue;
    list.sort((a, b) => a.last - b.last);
    for (const s of list.slice(0, list.length - limit)) out.push(s.ref);
  }
  return out;
}

/**
 * One pass of xapi's session GC: sessions idle for a day go, then the least recently active
 * above each group's limit. Sessions with unfinished tasks are kept (not disposable).
 * Local sessions (slave_local_login*) get the same treatment, counted on their own: xapi never
 * collects them, so a client that logs in locally in a loop would grow its table without end.
 */
export async function sessionGc(host: HostContext): Promise<void> {
  const now = host.now();
  // Local sessions first: collecting them needs no database write.
  const local: { ref: string; row: Row<'session'> }[] = [];
  const pending = new Set<string>();
  for (const status of ['pending', 'cancelling'] as const) {
    for (const [, task] of await host.db.find('task', { status })) pending.add(task.session);
  }
  for (const [ref, row] of host.localSessions) if (!pending.has(ref)) local.push({ ref, row });
  for (const ref of sessionsToCollect(now, local)) host.localSessions.delete(ref);

  const disposable: { ref: string; row: Row<'session'> }[] = [];
  for (const [ref, row] of await host.db.all('session')) {
    if (!(await hasUnfinishedTasks(host, row.tasks))) disposable.push({ ref, row });
  }
  for (const ref of sessionsToCollect(now, disposable)) await host.db.destroy('session', ref);
}
