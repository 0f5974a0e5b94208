// role.* explicit messages (xapi's xapi_role.ml): a role's permissions are the leaves of its
// subrole tree; permissions are themselves role records without subroles.
import type { Call, Registry } from '../api/context.js';

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

export function register(r: Registry): void {
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
