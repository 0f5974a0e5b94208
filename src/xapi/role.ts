// role.* (xapi's xapi_role.ml): a role's permissions are the leaves of its subrole tree;
// permissions are themselves role records without subroles. As in xapi (rbac_static.ml), the
// roles and permissions are a static list made from the datamodel, not database rows: each one's
// ref is "OpaqueRef:" and its uuid, the same in every pool. The getters serve that list in
// xapi's order (permissions first); of where-expressions xapi understands only "subroles<>[]"
// (the roles) and "subroles=[]" (the permissions), any other giving every record. The list is
// made for each call (about 2,000 records, 8 ms measured): roles are rarely asked for,
// and a coordinator that kept them (as database rows, once) held a megabyte for nothing.
import { createHash } from 'node:crypto';
import type { Call, Registry } from '../api/context.js';
import { permissionsOfRoles } from '../api/rbac.js';
import type { Row } from '../db/interface.js';
import { XapiError } from '../rpc/errors.js';
import type { Ref } from '../schema/generated.js';
import type { Schema } from '../schema/schema.js';

/** The roles, highest first, as xapi lists them. */
const ROLE_ORDER = ['pool-admin', 'pool-operator', 'vm-power-admin', 'vm-admin', 'vm-operator', 'read-only'];
const POOL_ADMIN_ROLE_UUID = '0165f154-ba3e-034e-6b27-5d271af109ba';

type RoleRow = Row<'role'>;

interface StaticRoles {
  /** Permissions, then roles, by ref in that order. */
  byRef: Map<Ref<'role'>, RoleRow>;
  /** How many of byRef's entries are permissions (they come first). */
  permissionCount: number;
}

/** A stable UUID derived from a name (the shape xapi gives its static role records). */
function uuidFromName(name: string): string {
  const h = createHash('md5').update(name).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

const refOf = (uuid: string) => `OpaqueRef:${uuid}` as Ref<'role'>;

function staticRoles(schema: Schema): StaticRoles {
  const byRef = new Map<Ref<'role'>, RoleRow>();
  const permissionRefs = new Map<string, Ref<'role'>>();
  for (const p of permissionsOfRoles(schema, ROLE_ORDER)) {
    if (permissionRefs.has(p)) continue;
    const uuid = uuidFromName(p);
    permissionRefs.set(p, refOf(uuid));
    byRef.set(refOf(uuid), { uuid, name_label: p, name_description: '', subroles: [], is_internal: false } as RoleRow);
  }
  const permissionCount = byRef.size;
  for (const name of ROLE_ORDER) {
    const uuid = schema.roleUuids[name] ?? (name === 'pool-admin' ? POOL_ADMIN_ROLE_UUID : uuidFromName(name));
    const subroles = permissionsOfRoles(schema, [name]).map((p) => permissionRefs.get(p)!);
    byRef.set(refOf(uuid), { uuid, name_label: name, name_description: `The ${name} role`, subroles, is_internal: false } as RoleRow);
  }
  return { byRef, permissionCount };
}

function roleOf(roles: StaticRoles, ref: string): RoleRow {
  const row = roles.byRef.get(ref as Ref<'role'>);
  if (!row) throw new XapiError('HANDLE_INVALID', ['role', ref]);
  return row;
}

/** The permissions under `role` (itself excluded), depth first. */
function permissions(roles: StaticRoles, role: string): Ref<'role'>[] {
  const out = new Set<Ref<'role'>>();
  const walk = (ref: Ref<'role'>) => {
    const { subroles } = roleOf(roles, ref);
    if (subroles.length === 0 && ref !== role) out.add(ref);
    for (const s of subroles) if (!out.has(s)) walk(s);
  };
  walk(role as Ref<'role'>);
  return [...out];
}

function rolesWith(roles: StaticRoles, permission: string): Ref<'role'>[] {
  const out: Ref<'role'>[] = [];
  for (const [ref, row] of roles.byRef)
    if (row.subroles.length > 0 && permissions(roles, ref).includes(permission as Ref<'role'>)) out.push(ref);
  return out;
}

function where(roles: StaticRoles, expr: string): [Ref<'role'>, RoleRow][] {
  const all = [...roles.byRef];
  if (expr === 'subroles<>[]') return all.slice(roles.permissionCount);
  if (expr === 'subroles=[]') return all.slice(0, roles.permissionCount);
  return all;
}

export function register(r: Registry, schema: Schema): void {
  const roles = () => staticRoles(schema);
  const field =
    <K extends keyof RoleRow>(k: K) =>
    (_call: Call, [self]: [string]) =>
      roleOf(roles(), self)[k];
  r.implement('role.get_record', (_call, [self]) => roleOf(roles(), self))
    .implement('role.get_uuid', field('uuid'))
    .implement('role.get_name_label', field('name_label'))
    .implement('role.get_name_description', field('name_description'))
    .implement('role.get_subroles', field('subroles'))
    .implement('role.get_is_internal', field('is_internal'))
    .implement('role.get_by_uuid', (_call, [uuid]) => {
      const ref = refOf(uuid);
      if (!roles().byRef.has(ref)) throw new XapiError('UUID_INVALID', ['role', uuid]);
      return ref;
    })
    .implement('role.get_by_name_label', (_call, [label]) =>
      [...roles().byRef].filter(([, row]) => row.name_label === label).map(([ref]) => ref),
    )
    .implement('role.get_all', () => [...roles().byRef.keys()])
    .implement('role.get_all_records', () => Object.fromEntries(roles().byRef))
    .implement('role.get_all_where', (_call, [expr]) => where(roles(), expr).map(([ref]) => ref))
    .implement('role.get_all_records_where', (_call, [expr]) => Object.fromEntries(where(roles(), expr)));
  r.implement('role.get_permissions', (_call, [self]) => permissions(roles(), self))
    .implement('role.get_permissions_name_label', (_call, [self]) => {
      const all = roles();
      return permissions(all, self).map((p) => all.byRef.get(p)!.name_label);
    })
    .implement('role.get_by_permission', (_call, [permission]) => {
      const all = roles();
      roleOf(all, permission);
      return rolesWith(all, permission);
    })
    .implement('role.get_by_permission_name_label', (_call, [label]) => {
      const all = roles();
      const found = [...all.byRef].find(([, row]) => row.name_label === label);
      return found ? rolesWith(all, found[0]) : [];
    });
}
