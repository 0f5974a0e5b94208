// VBD.* explicit messages (xapi's xapi_vbd.ml): creation with device numbering checks, hotplug
// on running VMs through the domain manager, CD insert/eject.
import { XapiError } from '../api/errors.js';
import type { Registry } from '../api/context.js';
import { genericImpl } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';
import { NULL_REF } from '../schema/types.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { hotplug } from './device-ops.js';

const s = (v: unknown) => v as string;

export function register(r: Registry, sync: XenopsSync, schema: Schema): void {
  const createVbd = genericImpl(schema, 'VBD.create');

  r.implement('VBD.create', async (call, [rec]) => {
    const vm = await call.db.get('VM', s(rec.VM));
    const device = s(rec.userdevice);
    if (device !== 'autodetect' && !/^\d+$/.test(device)) throw new XapiError('INVALID_DEVICE', [device]);
    if (rec.type === 'CD' && rec.mode !== 'RO') throw new XapiError('VBD_CDS_MUST_BE_READONLY', []);
    let userdevice = device;
    const used = new Set<string>();
    for (const other of vm.VBDs as string[]) used.add(s((await call.db.get('VBD', other)).userdevice));
    if (device === 'autodetect') userdevice = String([...Array(255).keys()].find((i) => !used.has(String(i))) ?? 0);
    else if (used.has(device)) throw new XapiError('DEVICE_ALREADY_EXISTS', [device]);
    const empty = rec.VDI === NULL_REF || rec.VDI === undefined;
    if (!empty) await call.db.get('VDI', s(rec.VDI));
    return createVbd(call, [{ ...rec, userdevice, empty: empty ? true : rec.empty }]);
  })
    .implement('VBD.plug', (call, [self]) => hotplug(call, sync, 'VBD', s(self), 'plug'))
    .implement('VBD.unplug', (call, [self]) => hotplug(call, sync, 'VBD', s(self), 'unplug'))
    .implement('VBD.unplug_force', (call, [self]) => hotplug(call, sync, 'VBD', s(self), 'unplug_force'))
    .implement('VBD.insert', async (call, [self, vdi]) => {
    const vbd = await call.db.get('VBD', s(self));
    if (vbd.type !== 'CD') throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', [s(self)]);
    if (vbd.empty !== true) throw new XapiError('VBD_NOT_EMPTY', [s(self)]);
    await call.db.get('VDI', s(vdi));
    const vm = await call.db.get('VM', s(vbd.VM));
    if (vm.power_state === 'Suspended') throw new XapiError('VM_BAD_POWER_STATE', [s(vbd.VM), 'halted, running', 'suspended']);
    if (vm.power_state === 'Running' || vm.power_state === 'Paused') {
      try {
        await sync.backend.vbdInsert(s(vm.uuid), s(vbd.uuid), await sync.storage.attachPath(s(vdi), false));
      } catch (e) {
        throw xenopsError(s(vbd.VM), e);
      }
    }
    await call.db.update('VBD', s(self), { VDI: s(vdi), empty: false });
  }).implement('VBD.eject', async (call, [self]) => {
    const vbd = await call.db.get('VBD', s(self));
    if (vbd.type !== 'CD') throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', [s(self)]);
    if (vbd.empty === true) throw new XapiError('VBD_IS_EMPTY', [s(self)]);
    const vm = await call.db.get('VM', s(vbd.VM));
    if (vm.power_state === 'Suspended') throw new XapiError('VM_BAD_POWER_STATE', [s(vbd.VM), 'halted, running', 'suspended']);
    if (vm.power_state === 'Running' || vm.power_state === 'Paused') {
      try {
        await sync.backend.vbdEject(s(vm.uuid), s(vbd.uuid));
      } catch (e) {
        throw xenopsError(s(vbd.VM), e);
      }
    }
    await call.db.update('VBD', s(self), { VDI: NULL_REF, empty: true });
  });
}
