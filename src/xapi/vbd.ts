// VBD.* (xapi's xapi_vbd.ml, xapi_vbd_helpers.ml, message_forwarding.ml): creation with xapi's
// checks and device numbering, destruction of unplugged VBDs only, hotplug on running VMs through
// the domain manager, CD insert/eject; each operation checked and marked as xapi does
// (device-ops.ts, device-checks.ts).
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import { constructorArgs, newRef } from '../api/implicit.js';
import type { Ref, VBD_record, vdi_type } from '../schema/generated.js';
import { EPOCH, NULL_REF } from '../schema/types.js';
import { Mutex } from '../util/mutex.js';
import type { XenopsSync } from './xenops-sync.js';
import { onDomain, withVbdMarked } from './device-ops.js';
import { assertVbdOperation, updateVbdAllowedOperations, sortedOperations } from './device-checks.js';
import { candidateDevices, linuxDeviceName, possibleDevices, sameDevice, validUserdevice, type DeviceNumber } from './device-number.js';
import { runOnVmHost } from './forward.js';

/** VDI types a VBD may point at (VDI_INCOMPATIBLE_TYPE otherwise). */
const ATTACHABLE_VDI_TYPES = new Set<vdi_type>(['system', 'user', 'ephemeral', 'suspend', 'crashdump', 'metadata', 'rrd', 'pvs_cache']);

/** xapi_globs.vbd_backend_key: a VDI's sm_config entry copied into its VBDs' other_config. */
const VBD_BACKEND_KEY = 'backend-kind';

/** Device numbers in use by a VM's VBDs, every reading of each device and userdevice. */
async function usedDevices(call: Call, vm: Ref<'VM'>): Promise<DeviceNumber[]> {
  const used: DeviceNumber[] = [];
  for (const ref of (await call.db.get('VM', vm)).VBDs) {
    const vbd = await call.db.get('VBD', ref);
    used.push(...possibleDevices(vbd.device), ...possibleDevices(vbd.userdevice));
  }
  return used;
}

/**
 * allowed_VBD_devices: the devices a new VBD of `type` could take on the VM; for a floppy on a
 * guest without an emulator, none is possible.
 */
export async function allowedVbdDevices(
  call: Call,
  vmRef: Ref<'VM'>,
  type: VBD_record['type'],
): Promise<DeviceNumber[] | 'floppy-unsupported'> {
  const vm = await call.db.get('VM', vmRef);
  const candidates = candidateDevices(type, vm.domain_type === 'hvm', vm.is_control_domain);
  if (candidates === 'floppy-unsupported') return candidates;
  const used = await usedDevices(call, vmRef);
  return candidates.filter((d) => !used.some((u) => sameDevice(u, d)));
}

/** Two creations resolving "autodetect" on one VM must not pick the same device. */
const autodetect = new Mutex();

async function createVbd(call: Call, record: Partial<VBD_record>): Promise<Ref<'VBD'>> {
  const db = call.db;
  const rec = constructorArgs(db.schema, 'VBD', record);
  const vm = await db.get('VM', rec.VM);
  // Only a suspended VM's VBD may be created attached (its domain will come back with it).
  const suspended = vm.power_state === 'Suspended';
  if (!rec.empty) {
    const type = (await db.get('VDI', rec.VDI)).type;
    if (!ATTACHABLE_VDI_TYPES.has(type)) throw new XapiError('VDI_INCOMPATIBLE_TYPE', [rec.VDI, type]);
  }
  if (rec.type === 'CD' && rec.mode !== 'RO') throw new XapiError('VBD_CDS_MUST_BE_READONLY', []);
  if (rec.type !== 'CD' && rec.empty) throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', ['in constructor']);
  if (rec.mode === 'RW' && (await db.get('VDI', rec.VDI)).read_only) throw new XapiError('VDI_READONLY', [rec.VDI]);
  const migrating = sortedOperations(vm.current_operations).find(([, op]) => op === 'migrate_send' || op === 'pool_migrate');
  if (migrating) throw new XapiError('OTHER_OPERATION_IN_PROGRESS', ['VM', rec.VM, migrating[1], migrating[0]]);

  return autodetect.run(async () => {
    const free = await allowedVbdDevices(call, rec.VM, rec.type);
    if (free === 'floppy-unsupported') throw new XapiError('NOT_IMPLEMENTED', ["VBD of type 'floppy' is not supported on PV domain"]);
    const invalid = () => new XapiError('INVALID_DEVICE', [rec.userdevice]);
    if (!validUserdevice(rec.userdevice, rec.type)) throw invalid();
    let userdevice = rec.userdevice;
    if (userdevice === 'autodetect') {
      const first = free[0];
      if (!first) throw invalid();
      userdevice = rec.type === 'Floppy' ? linuxDeviceName(first) : String(first.disk);
    }
    const used = await usedDevices(call, rec.VM);
    if (possibleDevices(userdevice).some((d) => used.some((u) => sameDevice(u, d)))) {
      throw new XapiError('DEVICE_ALREADY_EXISTS', [userdevice]);
    }
    const metrics = newRef();
    await db.create('VBD_metrics', metrics, { uuid: randomUUID(), io_read_kbs: 0, io_write_kbs: 0, last_updated: EPOCH, other_config: {} });
    const vdi = rec.empty ? undefined : await db.tryGet('VDI', rec.VDI);
    const backendKind = vdi?.sm_config[VBD_BACKEND_KEY];
    const ref = newRef();
    await db.create('VBD', ref, {
      uuid: randomUUID(),
      VM: rec.VM,
      VDI: rec.VDI,
      userdevice,
      device: suspended ? rec.device : '',
      bootable: rec.bootable,
      mode: rec.mode,
      type: rec.type,
      unpluggable: rec.unpluggable,
      empty: rec.empty,
      other_config: backendKind === undefined ? rec.other_config : { ...rec.other_config, [VBD_BACKEND_KEY]: backendKind },
      currently_attached: suspended ? rec.currently_attached : false,
      qos_algorithm_type: rec.qos_algorithm_type,
      qos_algorithm_params: rec.qos_algorithm_params,
      metrics,
    });
    await updateVbdAllowedOperations(db, ref);
    return ref;
  });
}

/** VBD.destroy: only a VBD nothing has attached; its metrics go with it. */
async function destroyVbd(call: Call, ref: Ref<'VBD'>): Promise<void> {
  const vbd = await call.db.get('VBD', ref);
  if (vbd.currently_attached) {
    const vm = await call.db.get('VM', vbd.VM);
    throw new XapiError('OPERATION_NOT_ALLOWED', [`VBD '${vbd.uuid}' still attached to '${vm.uuid}'`]);
  }
  if (await call.db.tryGet('VBD_metrics', vbd.metrics)) await call.db.destroy('VBD_metrics', vbd.metrics);
  await call.db.destroy('VBD', ref);
}

/** The VM's power state refuses a CD change while it is suspended (assert_not_suspended). */
function assertNotSuspended(vmRef: Ref<'VM'>, powerState: string): void {
  if (powerState === 'Suspended') throw new XapiError('VM_BAD_POWER_STATE', [vmRef, 'halted, running', 'suspended']);
}

export function register(r: Registry, sync: XenopsSync): void {
  const hotplug = (call: Call, ref: Ref<'VBD'>, op: 'plug' | 'unplug' | 'unplug_force') =>
    withVbdMarked(call, ref, op, async () => {
      const vbd = await call.db.get('VBD', ref);
      await runOnVmHost(call, vbd.VM, `VBD.${op}`, [ref], () => hotplugHere(call, ref, op));
    });
  const hotplugHere = async (call: Call, ref: Ref<'VBD'>, op: 'plug' | 'unplug' | 'unplug_force') => {
    {
      const vbd = await call.db.get('VBD', ref);
      const vm = await call.db.get('VM', vbd.VM);
      if (op === 'plug') {
        // An emulated disk cannot be read-only (CA-83260).
        const metrics = await call.db.tryGet('VM_metrics', vm.metrics);
        if (metrics?.current_domain_type === 'hvm' && vbd.type !== 'CD' && vbd.mode === 'RO') {
          throw new XapiError('DISK_VBD_MUST_BE_READWRITE_FOR_HVM', [ref]);
        }
      }
      await onDomain(sync, vbd.VM, ref, async () => {
        if (op === 'plug') {
          const config = await sync.config(vbd.VM);
          await sync.backend.vbdPlug(vm.uuid, config.vbds.find((v) => v.id === vbd.uuid)!);
        } else await sync.backend.vbdUnplug(vm.uuid, vbd.uuid, op === 'unplug_force');
      });
    }
  };

  r.implement('VBD.create', (call, [record]) => createVbd(call, record))
    .implement('VBD.destroy', (call, [self]) => destroyVbd(call, self))
    .implement('VBD.plug', (call, [self]) => hotplug(call, self, 'plug'))
    .implement('VBD.unplug', (call, [self]) => hotplug(call, self, 'unplug'))
    .implement('VBD.unplug_force', (call, [self]) => hotplug(call, self, 'unplug_force'))
    .implement('VBD.assert_attachable', (call, [self]) => assertVbdOperation(call.db, self, 'attach'))
    .implement('VBD.insert', (call, [self, vdi]) =>
      withVbdMarked(call, self, 'insert', async () =>
        runOnVmHost(call, (await call.db.get('VBD', self)).VM, 'VBD.insert', [self, vdi], async () => {
          const vbd = await call.db.get('VBD', self);
          const vm = await call.db.get('VM', vbd.VM);
          assertNotSuspended(vbd.VM, vm.power_state);
          if (vbd.type !== 'CD') throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', [self]);
          if (!vbd.empty) throw new XapiError('VBD_NOT_EMPTY', [self]);
          if (!(await call.db.get('VDI', vdi)).managed) throw new XapiError('VDI_NOT_MANAGED', [vdi]);
          if (vm.power_state !== 'Halted') {
            await onDomain(sync, vbd.VM, self, async () =>
              sync.backend.vbdInsert(vm.uuid, vbd.uuid, await sync.storage.attachPath(vdi, false)),
            );
          }
          await call.db.update('VBD', self, { VDI: vdi, empty: false });
        }),
      ),
    )
    .implement('VBD.eject', (call, [self]) =>
      withVbdMarked(call, self, 'eject', async () =>
        runOnVmHost(call, (await call.db.get('VBD', self)).VM, 'VBD.eject', [self], async () => {
          const vbd = await call.db.get('VBD', self);
          const vm = await call.db.get('VM', vbd.VM);
          if (vbd.type !== 'CD') throw new XapiError('VBD_NOT_REMOVABLE_MEDIA', [self]);
          if (vbd.empty) throw new XapiError('VBD_IS_EMPTY', [self]);
          assertNotSuspended(vbd.VM, vm.power_state);
          if (vm.power_state !== 'Halted') await onDomain(sync, vbd.VM, self, () => sync.backend.vbdEject(vm.uuid, vbd.uuid));
          await call.db.update('VBD', self, { VDI: NULL_REF, empty: true });
        }),
      ),
    );
}
