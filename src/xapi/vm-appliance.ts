// VM_appliance.create and VM_appliance.destroy (xapi's xapi_vm_appliance.ml): a new appliance
// has no VMs, so none of its operations is allowed yet; destroying one removes the row only (its
// VMs keep their now dangling reference, as in xapi). Both are the database actions here.
import type { Registry } from '../api/context.js';
import { genericImpl } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';

export function register(r: Registry, schema: Schema): void {
  r.implement('VM_appliance.create', genericImpl(schema, 'VM_appliance.create')).implement(
    'VM_appliance.destroy',
    genericImpl(schema, 'VM_appliance.destroy'),
  );
}
