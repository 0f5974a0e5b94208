// VBD.* explicit messages (xapi's xapi_vbd.ml): creation with device numbering checks, hotplug
// on running VMs through the domain manager, CD insert/eject.
import { XapiError } from '../api/errors.js';
import type { Registry } from '../api/context.js';
import { genericImpl } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';
import { NULL_REF } from '../schema/types.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { hotplug } from './device-ops.js';

export function register(r: Registry, sync: XenopsSync, schema: Schema): void {
  const createVbd = genericImpl(schema, 'VBD.create');

  r.implement('VBD.create', async (call, [rec]) => {
    // A field the record lacks arrives undefined, and the checks refuse it.
    const vm = await call.db.get('VM', rec.VM!);
    const device = rec.userdevice!;
    if (device !== 'autodetect' && !/^\d+$/.test(device)) throw new XapiError('INVALID_DEVICE', [device]);
    if (rec.type === 'CD' && rec.mode !== 'RO') throw new XapiError('VBD_CDS_MUST_BE_READONLY', []);
    let userdevice = device;
    const used = new Set<string>();
    for (const other of vm.VBDs) used.add((await call.db.get('VBD', other)).userdevice);
    if (device === 'autodetect') userdevice = String([...Array(255).keys()].find((i) => !used.has(String(i))) ?? 0);
    else if (used.has(device)) throw new XapiError('DEVICE_ALREADY_EXISTS', [device]);
    const vdi = rec.VDI;
    const empty = vdi === NULL_REF || vdi === undefined;
    if (!empty) await call.db.get('VDI', vdi);
    return createVbd(call, [{ ...rec, userdevice, empty: empty ? true : rec.empty }]);
  })
    .implement('VBD.plug', (call, [self]) => hotplug(call, sync, 'VBD', self, 'plug'))
    .implement('VBD.unplug', (call, [self]) => hotplug(call, sync, 'VBD', self, 'unplug'))
    .implement('VBD.unplug_force', (call, [self]) => hotplug(call, sync, 'VBD', self, 'unplug_force'))
    .implement('VBD.insert', async (call, [self, vdi]) => {
    const vbd = await call.db.get('VBD', self);
    if (vbd.type !== 'CD') throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', [self]);
    if (vbd.empty !== true) throw new XapiError('VBD_NOT_EMPTY', [self]);
    await call.db.get('VDI', vdi);
    const vm = await call.db.get('VM', vbd.VM);
    if (vm.power_state === 'Suspended') throw new XapiError('VM_BAD_POWER_STATE', [vbd.VM, 'halted, running', 'suspended']);
    if (vm.power_state === 'Running' || vm.power_state === 'Paused') {
      try {
        await sync.backend.vbdInsert(vm.uuid, vbd.uuid, await sync.storage.attachPath(vdi, false));
      } catch (e) {
        throw xenopsError(vbd.VM, e);
      }
    }
    await call.db.update('VBD', self, { VDI: vdi, empty: false });
  }).implement('VBD.eject', async (call, [self]) => {
    const vbd = await call.db.get('VBD', self);
    if (vbd.type !== 'CD') throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', [self]);
    if (vbd.empty === true) throw new XapiError('VBD_IS_EMPTY', [self]);
    const vm = await call.db.get('VM', vbd.VM);
    if (vm.power_state === 'Suspended') throw new XapiError('VM_BAD_POWER_STATE', [vbd.VM, 'halted, running', 'suspended']);
    if (vm.power_state === 'Running' || vm.power_state === 'Paused') {
      try {
        await sync.backend.vbdEject(vm.uuid, vbd.uuid);
      } catch (e) {
        throw xenopsError(vbd.VM, e);
      }
    }
    await call.db.update('VBD', self, { VDI: NULL_REF, empty: true });
  });
}
