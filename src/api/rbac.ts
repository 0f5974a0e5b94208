// Role-based access control from the datamodel's roles (xapi's rbac.ml). A permission is the
// lower-cased sync wire name; map keys with their own roles add `/key:<key>`. The local
// superuser (root, pool sessions) bypasses the check, as in xapi.
import { XapiError } from '../rpc/errors.js';
import type { HostContext, SessionInfo } from './context.js';
import type { Row } from '../db/interface.js';
import type { MessageDef, Schema } from '../schema/schema.js';
import { fieldOp } from './implicit.js';

const permissionSets = new WeakMap<Row<'session'>, Set<string>>();

function permissionsOf(row: Row<'session'>): Set<string> {
  let s = permissionSets.get(row);
  if (!s) {
    s = new Set(row.rbac_permissions ?? []);
    permissionSets.set(row, s);
  }
  return s;
}

function deny(permission: string, roles: string[]): XapiError {
  return new XapiError('RBAC_PERMISSION_DENIED', [
    permission,
    `No permission in user session. (Roles with this permission: ${roles.join(', ')})`,
  ]);
}

export function checkPermission(
  host: HostContext,
  session: SessionInfo,
  wire: string,
  roles: string[],
  msg?: MessageDef,
  args?: unknown[],
): void {
  if (session.row.is_local_superuser === true) return;
  const have = permissionsOf(session.row);
  const permission = wire.toLowerCase();
  if (!have.has(permission)) throw deny(permission, roles);
  if (!msg || !args) return;
  // Writes to map keys that the datamodel protects with their own roles.
  const op = fieldOp(msg.cls, msg.name);
  if (!op || (op.kind !== 'add_to' && op.kind !== 'remove_from')) return;
  const keyRoles = host.schema.mapKeysRoles[`${msg.cls.name}.${op.field.name}`];
  if (!keyRoles) return;
  const key = String(args[1]);
  for (const [pattern, allowed] of Object.entries(keyRoles)) {
    const matches = pattern.endsWith('*') ? key.startsWith(pattern.slice(0, -1)) : key === pattern;
    if (!matches) continue;
    const keyPermission = `${permission}/key:${pattern.toLowerCase()}`;
    if (!have.has(keyPermission)) throw deny(keyPermission, allowed);
  }
}

/** Every permission a role grants: the lower-cased wire names of messages it may call. */
export function permissionsOfRoles(schema: Schema, roles: string[]): string[] {
  const want = new Set(roles);
  const out: string[] = [];
  for (const m of schema.messages.values()) {
    if (m.roles.some((r) => want.has(r))) out.push(m.wire.toLowerCase());
  }
  for (const [field, keys] of Object.entries(schema.mapKeysRoles)) {
    const [cls, name] = field.split('.');
    for (const [key, allowed] of Object.entries(keys)) {
      if (!allowed.some((r) => want.has(r))) continue;
      for (const op of ['add_to', 'remove_from']) out.push(`${cls}.${op}_${name}/key:${key}`.toLowerCase());
    }
  }
  for (const p of schema.extraPermissions) if (p.roles.some((r) => want.has(r))) out.push(p.name);
  return out;
}

/** The roles holding the permission of an HTTP action, `http/<action>` (datamodel http_actions). */
export function httpActionRoles(schema: Schema, action: string): string[] {
  const name = `http/${action}`;
  const p = schema.extraPermissions.find((x) => x.name === name);
  if (!p) throw new Error(`no http action ${action} in the schema`);
  return p.roles;
}
