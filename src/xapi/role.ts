// role.* (xapi's xapi_role.ml): a role's permissions are the leaves of its subrole tree;
// permissions are themselves role records without subroles. xapi serves every role getter from
// its static list of roles and permissions (rbac_static.ml), which the role table holds here, so
// the getters read the table; what differs from the generic getters is the order (permissions
// first) and the where-queries, of which xapi understands only "subroles<>[]" (the roles) and
// "subroles=[]" (the permissions), any other expression giving every record.
import type { Call, Registry } from '../api/context.js';
import { genericImpl } from '../api/implicit.js';
import type { Row } from '../db/interface.js';
import type { Ref } from '../schema/generated.js';
import type { Schema } from '../schema/schema.js';

async function permissions(call: Call, role: string): Promise<string[]> {
  const out = new Set<string>();
  const walk = async (ref: string) => {
    const subroles = (await call.db.get('role', ref)).subroles;
    if (subroles.length === 0 && ref !== role) out.add(ref);
    for (const s of subroles) if (!out.has(s)) await walk(s);
  };
  await walk(role);
  return [...out];
}

async function rolesWith(call: Call, permission: string): Promise<string[]> {
  const out: string[] = [];
  for (const [ref, row] of await call.db.all('role')) {
    if (row.subroles.length > 0 && (await permissions(call, ref)).includes(permission)) out.push(ref);
  }
  return out;
}

/** The static list: permissions, then roles. */
async function staticRoles(call: Call, expr = ''): Promise<[Ref<'role'>, Row<'role'>][]> {
  const rows = await call.db.all('role');
  const permissions = rows.filter(([, row]) => row.subroles.length === 0);
  const roles = rows.filter(([, row]) => row.subroles.length > 0);
  if (expr === 'subroles<>[]') return roles;
  if (expr === 'subroles=[]') return permissions;
  return [...permissions, ...roles];
}

export function register(r: Registry, schema: Schema): void {
  for (const getter of [
    'role.get_record',
    'role.get_by_uuid',
    'role.get_by_name_label',
    'role.get_uuid',
    'role.get_name_label',
    'role.get_name_description',
    'role.get_subroles',
    'role.get_is_internal',
  ] as const) {
    r.implement(getter, genericImpl(schema, getter));
  }
  r.implement('role.get_all', async (call) => (await staticRoles(call)).map(([ref]) => ref))
    .implement('role.get_all_records', async (call) => Object.fromEntries(await staticRoles(call)))
    .implement('role.get_all_where', async (call, [expr]) => (await staticRoles(call, expr)).map(([ref]) => ref))
    .implement('role.get_all_records_where', async (call, [expr]) => Object.fromEntries(await staticRoles(call, expr)));
  r.implement('role.get_permissions', (call, [self]) => permissions(call, self))
    .implement('role.get_permissions_name_label', async (call, [self]) => {
      const refs = await permissions(call, self);
      return Promise.all(refs.map(async (p) => (await call.db.get('role', p)).name_label));
    })
    .implement('role.get_by_permission', async (call, [permission]) => {
      await call.db.get('role', permission);
      return rolesWith(call, permission);
    })
    .implement('role.get_by_permission_name_label', async (call, [label]) => {
      const [found] = await call.db.find('role', { name_label: label });
      return found ? rolesWith(call, found[0]) : [];
    });
}
