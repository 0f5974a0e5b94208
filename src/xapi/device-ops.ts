// The rules and bookkeeping VBD and VIF operations share (xapi's valid_operations and
// with_device_operation): checks before a hotplug, and the device's current_operations entry
// for the duration of the operation, then the backend call whose outcome is re-read.
import { XapiError } from '../api/errors.js';
import type { Call } from '../api/context.js';
import type { Row } from '../db/interface.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { untilStored } from '../db/until-stored.js';

const s = (v: unknown) => v as string;
/** The VBD/VIF operation checks that apply before a hotplug (valid_operations). */
export function assertDeviceOp(cls: 'VBD' | 'VIF', ref: string, dev: Row, vm: Row, vmRef: string, op: 'plug' | 'unplug' | 'unplug_force'): void {
  const current = Object.entries(dev.current_operations as Record<string, string>);
  if (current.length > 0) throw new XapiError('OTHER_OPERATION_IN_PROGRESS', [cls, ref, current[0]![1], current[0]![0]]);
  if (cls === 'VBD' && op !== 'plug' && dev.unpluggable !== true) throw new XapiError('VBD_NOT_UNPLUGGABLE', [ref]);
  if (vm.power_state !== 'Running') throw new XapiError('VM_BAD_POWER_STATE', [vmRef, 'running', s(vm.power_state).toLowerCase()]);
  if (op === 'plug' && dev.currently_attached === true) throw new XapiError('DEVICE_ALREADY_ATTACHED', [ref]);
  if (op !== 'plug' && dev.currently_attached !== true) throw new XapiError('DEVICE_ALREADY_DETACHED', [ref]);
  const busy = Object.values(vm.current_operations as Record<string, string>);
  if (busy.some((o) => ['clean_shutdown', 'hard_shutdown', 'suspend', 'pause'].includes(o))) {
    throw new XapiError('OPERATION_NOT_ALLOWED', [`VM is performing ${busy.join(', ')}`]);
  }
}

export async function withDeviceOp<T>(call: Call, cls: 'VBD' | 'VIF', ref: string, op: string, fn: () => Promise<T>): Promise<T> {
  const dev = await call.db.get(cls, ref);
  await call.db.update(cls, ref, { current_operations: { ...(dev.current_operations as object), [call.task]: op } });
  try {
    return await fn();
  } finally {
    // the mark must come off even if the database refuses writes just now (a full disk)
    await untilStored(call.db, async () => {
      const now = await call.db.tryGet(cls, ref);
      if (now) {
        const ops = { ...(now.current_operations as Record<string, string>) };
        delete ops[call.task];
        await call.db.update(cls, ref, { current_operations: ops });
      }
    });
  }
}


/** plug / unplug / unplug_force of a VBD or VIF on a running VM, through the domain manager. */
export async function hotplug(call: Call, sync: XenopsSync, cls: 'VBD' | 'VIF', ref: string, op: 'plug' | 'unplug' | 'unplug_force'): Promise<void> {
  const dev = await call.db.get(cls, ref);
  const vmRef = s(dev.VM);
  const vm = await call.db.get('VM', vmRef);
  assertDeviceOp(cls, ref, dev, vm, vmRef, op);
  await withDeviceOp(call, cls, ref, op, async () => {
    try {
      if (op === 'plug') {
        const config = await sync.config(vmRef);
        if (cls === 'VBD') await sync.backend.vbdPlug(s(vm.uuid), config.vbds.find((v) => v.id === dev.uuid)!);
        else await sync.backend.vifPlug(s(vm.uuid), config.vifs.find((v) => v.id === dev.uuid)!);
      } else if (cls === 'VBD') await sync.backend.vbdUnplug(s(vm.uuid), s(dev.uuid), op === 'unplug_force');
      else await sync.backend.vifUnplug(s(vm.uuid), s(dev.uuid), op === 'unplug_force');
    } catch (e) {
      throw xenopsError(vmRef, e, ref);
    } finally {
      await sync.refresh(vmRef);
    }
  });
}
