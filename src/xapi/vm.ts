// VM.* explicit messages (xapi's xapi_vm.ml, message_forwarding.ml): the lifecycle through the
// domain manager, memory and VCPU settings with their constraint checks, placement checks and
// device numbering. Every power operation runs under withVmOperation, and its outcome is what
// the backend reports afterwards (XenopsSync.refresh), not what was asked for.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../api/errors.js';
import type { Call, Registry } from '../api/context.js';
import { implicitImpl, newRef } from '../api/implicit.js';
import type { Row } from '../db/interface.js';
import type { Schema } from '../schema/schema.js';
import { NULL_REF } from '../schema/types.js';
import { isDefaultTemplate, operationError, updateAllowedOperations, withVmOperation } from './vm-lifecycle.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { assertEnoughMemory, assertMemoryConstraints, vmOverhead } from './memory.js';
import { parseDisksXml } from '../host/templates.js';
import { createVdi, destroyVdi } from './vdi.js';
import { cloneVm } from './vm-clone.js';

const s = (v: unknown) => v as string;

export class VmService {
  constructor(readonly sync: XenopsSync) {}

  private async backend<T>(vmRef: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw xenopsError(vmRef, e);
    } finally {
      await this.sync.refresh(vmRef);
    }
  }

  /** VCPU and memory settings a VM must satisfy to boot (xapi's validate_basic_parameters). */
  private static validateForBoot(ref: string, vm: Row): void {
    if ((vm.VCPUs_max as number) < 1) throw new XapiError('INVALID_VALUE', ['VCPUs_max', String(vm.VCPUs_max)]);
    if ((vm.VCPUs_at_startup as number) < 1) throw new XapiError('INVALID_VALUE', ['VCPUs_at_startup', String(vm.VCPUs_at_startup)]);
    if ((vm.VCPUs_at_startup as number) > (vm.VCPUs_max as number)) {
      throw new XapiError('VALUE_NOT_SUPPORTED', ['VCPUs_at_startup', String(vm.VCPUs_at_startup), 'value greater than VCPUs_max']);
    }
    assertMemoryConstraints(vm);
  }

  /** assert_can_boot_here, for the checks this host can make. */
  async assertCanBootHere(call: Call, ref: string, hostRef: string): Promise<void> {
    const db = call.db;
    const vm = await db.get('VM', ref);
    VmService.validateForBoot(ref, vm);
    const host = await db.get('host', hostRef);
    const metrics = await db.tryGet('host_metrics', s(host.metrics));
    if (!metrics || metrics.live !== true) throw new XapiError('HOST_NOT_LIVE', []);
    if (host.enabled !== true && vm.is_control_domain !== true) throw new XapiError('HOST_DISABLED', [hostRef]);
    for (const vbdRef of vm.VBDs as string[]) {
      const vbd = await db.get('VBD', vbdRef);
      const vdi = vbd.empty === true || vbd.VDI === NULL_REF ? undefined : await db.tryGet('VDI', s(vbd.VDI));
      if (!vdi) continue;
      const pbds = await db.find('PBD', { SR: s(vdi.SR), host: hostRef });
      if (!pbds.some(([, p]) => p.currently_attached === true)) throw new XapiError('VM_REQUIRES_SR', [ref, s(vdi.SR)]);
    }
    for (const vifRef of vm.VIFs as string[]) {
      const vif = await db.get('VIF', vifRef);
      const network = await db.get('network', s(vif.network));
      const pifs = await Promise.all((network.PIFs as string[]).map((p) => db.get('PIF', p)));
      const internal = (network.PIFs as string[]).length === 0;
      if (!internal && !pifs.some((p) => p.host === hostRef)) throw new XapiError('VM_REQUIRES_NET', [ref, s(vif.network)]);
    }
    const cpus = (host.host_CPUs as string[]).length;
    const platform = vm.platform as Record<string, string>;
    if ((vm.VCPUs_max as number) > cpus && platform['vcpu-unrestricted'] !== 'true') {
      throw new XapiError('HOST_NOT_ENOUGH_PCPUS', [String(vm.VCPUs_max), String(cpus)]);
    }
    await assertEnoughMemory(call, ref, vm, hostRef);
  }

  /** choose_host_for_vm: affinity first, then any host that passes assert_can_boot_here. */
  async chooseHost(call: Call, ref: string): Promise<string> {
    const vm = await call.db.get('VM', ref);
    const hosts = (await call.db.all('host')).map(([h]) => h);
    const ordered = vm.affinity !== NULL_REF && hosts.includes(s(vm.affinity)) ? [s(vm.affinity), ...hosts.filter((h) => h !== vm.affinity)] : hosts;
    let lastError: unknown;
    for (const h of ordered) {
      try {
        await this.assertCanBootHere(call, ref, h);
        return h;
      } catch (e) {
        lastError = e;
      }
    }
    // One host: its reason is the useful answer. Several: xapi's generic one.
    if (hosts.length === 1 && lastError) throw lastError;
    throw new XapiError('NO_HOSTS_AVAILABLE', []);
  }

  async start(call: Call, ref: string, paused: boolean, on?: string, op = 'start'): Promise<void> {
    await withVmOperation(call, ref, op, async () => {
      const hostRef = on ?? (await this.chooseHost(call, ref));
      if (on) await this.assertCanBootHere(call, ref, hostRef);
      if (hostRef !== call.host.hostRef) throw new XapiError('CANNOT_CONTACT_HOST', [hostRef]);
      const vm = await call.db.get('VM', ref);
      // A fresh boot: the old guest metrics go, the overhead is recomputed (xapi's start).
      if (vm.guest_metrics !== NULL_REF && (await call.db.tryGet('VM_guest_metrics', s(vm.guest_metrics)))) {
        await call.db.destroy('VM_guest_metrics', s(vm.guest_metrics));
      }
      await call.db.update('VM', ref, { guest_metrics: NULL_REF, scheduled_to_be_resident_on: hostRef, memory_overhead: vmOverhead(vm) });
      // Disks that reset on boot start from their saved content (the attach does it in xapi).
      for (const vbd of vm.VBDs as string[]) {
        const disk = (await call.db.get('VBD', vbd)).VDI as string;
        if (disk !== NULL_REF) await this.sync.storage.resetOnBoot(disk);
      }
      await call.db.commit();
      await this.backend(ref, async () => {
        await this.sync.backend.add(await this.sync.config(ref));
        await this.sync.backend.start(s(vm.uuid), { paused });
      });
      await this.assertPowerState(call, ref, paused ? 'Paused' : 'Running');
    });
  }

  private async assertPowerState(call: Call, ref: string, expected: string): Promise<void> {
    const actual = (await call.db.get('VM', ref)).power_state as string;
    if (actual !== expected) throw new XapiError('VM_BAD_POWER_STATE', [ref, expected.toLowerCase(), actual.toLowerCase()]);
  }

  async simple(call: Call, ref: string, op: string, run: (uuid: string) => Promise<void>, expect: string): Promise<void> {
    await withVmOperation(call, ref, op, async () => {
      const vm = await call.db.get('VM', ref);
      await this.backend(ref, () => run(s(vm.uuid)));
      await this.assertPowerState(call, ref, expect);
    });
  }

  /** hard_shutdown also works on a Suspended VM: its memory image is discarded. */
  async hardShutdown(call: Call, ref: string, op = 'hard_shutdown'): Promise<void> {
    await withVmOperation(call, ref, op, async () => {
      const vm = await call.db.get('VM', ref);
      if (vm.power_state === 'Suspended') {
        await this.discardSuspendImage(call, ref);
        await call.db.update('VM', ref, { power_state: 'Halted' });
        await this.sync.backend.remove(s(vm.uuid)).catch(() => undefined);
        await this.sync.refresh(ref);
        return;
      }
      await this.backend(ref, () => this.sync.backend.shutdown(s(vm.uuid)));
      await this.assertPowerState(call, ref, 'Halted');
    });
  }

  async shutdown(call: Call, ref: string): Promise<void> {
    // xapi's VM.shutdown: clean, falling back to hard
    const vm = await call.db.get('VM', ref);
    const err = operationError(ref, vm, 'shutdown');
    if (err) throw err;
    if (vm.power_state === 'Running') {
      try {
        await this.simple(call, ref, 'clean_shutdown', (u) => this.sync.backend.shutdown(u, this.cleanTimeout(vm)), 'Halted');
        return;
      } catch (e) {
        if (e instanceof XapiError && e.code === 'OTHER_OPERATION_IN_PROGRESS') throw e;
      }
    }
    await this.hardShutdown(call, ref);
  }

  cleanTimeout(vm: Row): number {
    const delay = vm.shutdown_delay as number;
    return (delay > 0 ? delay : 1200) * 1000;
  }

  async resume(call: Call, ref: string, paused: boolean, on?: string, op = 'resume'): Promise<void> {
    await withVmOperation(call, ref, op, () => this.resumeNow(call, ref, paused, on));
  }

  /** The work of resume, for callers already holding a VM operation (checkpoint). */
  async resumeNow(call: Call, ref: string, paused: boolean, on?: string): Promise<void> {
    {
      const hostRef = on ?? (await this.chooseHost(call, ref));
      if (on) await this.assertCanBootHere(call, ref, hostRef);
      const vm = await call.db.get('VM', ref);
      await call.db.update('VM', ref, { scheduled_to_be_resident_on: hostRef });
      await this.backend(ref, async () => {
        await this.sync.backend.add(await this.sync.config(ref));
        await this.sync.backend.resume(s(vm.uuid), { paused });
      });
      await this.assertPowerState(call, ref, paused ? 'Paused' : 'Running');
      await this.discardSuspendImage(call, ref);
    }
  }

  /**
   * VM.suspend (xapi_xenops.ml suspend): a "Suspend image" VDI on the suspend SR (the VM's,
   * the pool's, then the host's), sized for the memory with xapi's margin, becomes the VM's
   * suspend_VDI; the domain manager writes the image into it. On failure the VDI goes again.
   */
  async suspend(call: Call, ref: string): Promise<void> {
    await withVmOperation(call, ref, 'suspend', () => this.suspendNow(call, ref));
  }

  /** The work of suspend, for callers already holding a VM operation (checkpoint). */
  async suspendNow(call: Call, ref: string): Promise<void> {
    {
      const vm = await call.db.get('VM', ref);
      const sr = await this.chooseSuspendSr(call, ref, vm);
      const space = Math.floor(Number(vm.memory_static_max) * 1.2 * 1.05) + 104857600;
      let vdi: string;
      try {
        vdi = await createVdi(this.sync.storage, call, sr, space, {
          name_label: 'Suspend image', name_description: 'Suspend image', type: 'suspend', sharable: false, read_only: false,
          other_config: {}, xenstore_data: {}, sm_config: { vmhint: s(vm.uuid), initial_allocation: String(space) }, tags: [],
        });
      } catch (e) {
        if (e instanceof XapiError && (e.code === 'SR_FULL' || e.code === 'SR_BACKEND_FAILURE_44')) throw new XapiError('SR_SUSPEND_SPACE_INSUFFICIENT', [sr]);
        throw e;
      }
      await call.db.update('VM', ref, { suspend_VDI: vdi });
      try {
        await this.backend(ref, async () => {
          await this.sync.backend.add(await this.sync.config(ref));
          await this.sync.backend.suspend(s(vm.uuid));
        });
        await this.assertPowerState(call, ref, 'Suspended');
      } catch (e) {
        if ((await call.db.get('VM', ref)).power_state !== 'Suspended') await this.discardSuspendImage(call, ref);
        throw e;
      }
    }
  }

  private async chooseSuspendSr(call: Call, ref: string, vm: Row): Promise<string> {
    const pool = (await call.db.all('pool'))[0]![1];
    const host = await call.db.tryGet('host', s(vm.resident_on));
    for (const sr of [s(vm.suspend_SR), s(pool.suspend_image_SR), s(host?.suspend_image_sr ?? NULL_REF)]) {
      if (sr === NULL_REF || !(await call.db.tryGet('SR', sr))) continue;
      const pbds = await call.db.find('PBD', { SR: sr, host: s(vm.resident_on) });
      if (pbds.some(([, p]) => p.currently_attached === true)) return sr;
    }
    throw new XapiError('VM_NO_SUSPEND_SR', [ref]);
  }

  /** The suspend image is no longer needed (resumed, or discarded): its VDI goes. */
  async discardSuspendImage(call: Call, ref: string): Promise<void> {
    const vm = await call.db.get('VM', ref);
    const vdi = s(vm.suspend_VDI);
    await call.db.update('VM', ref, { suspend_VDI: NULL_REF });
    if (vdi !== NULL_REF && (await call.db.tryGet('VDI', vdi))) {
      await destroyVdi(this.sync.storage, call, vdi).catch((e) => call.host.log.warn({ err: e, vdi }, 'suspend image VDI not destroyed'));
    }
  }

  async destroy(call: Call, ref: string): Promise<void> {
    const db = call.db;
    const vm = await db.get('VM', ref);
    if (vm.is_a_template === true && isDefaultTemplate(vm)) throw new XapiError('VM_CANNOT_DELETE_DEFAULT_TEMPLATE', [ref]);
    const err = operationError(ref, vm, 'destroy');
    if (err) throw err;
    if (vm.power_state === 'Suspended') await this.discardSuspendImage(call, ref);
    await this.sync.backend.remove(s(vm.uuid)).catch(() => undefined);
    for (const r of vm.VBDs as string[]) await db.destroy('VBD', r);
    for (const r of vm.VIFs as string[]) await db.destroy('VIF', r);
    for (const r of vm.consoles as string[]) await db.destroy('console', r);
    for (const [cls, field] of [['VM_metrics', 'metrics'], ['VM_guest_metrics', 'guest_metrics']] as const) {
      if (vm[field] !== NULL_REF && (await db.tryGet(cls, s(vm[field])))) await db.destroy(cls, s(vm[field]));
    }
    await db.destroy('VM', ref);
    this.sync.forget(ref);
  }

  /** VM.create: the generic constructor, plus the metrics record xapi gives every VM. */
  async create(call: Call, record: Record<string, unknown>, createGeneric: (c: Call, a: unknown[]) => Promise<unknown>): Promise<string> {
    // Checked before anything is written, so a refused VM leaves nothing behind; a record
    // missing fields is the constructor's to refuse (Dispatcher_FieldNotFound), as in xapi.
    const memory = ['memory_static_min', 'memory_dynamic_min', 'memory_dynamic_max', 'memory_static_max'];
    if (memory.every((f) => typeof record[f] === 'number')) assertMemoryConstraints(record);
    const ref = s(await createGeneric(call, [record]));
    const vm = await call.db.get('VM', ref);
    const metrics = newRef();
    await call.db.create('VM_metrics', metrics, { uuid: randomUUID(), other_config: {}, VCPUs_number: 0 });
    await call.db.update('VM', ref, { metrics, domid: -1, memory_overhead: vmOverhead(vm) });
    await updateAllowedOperations(call.db, ref);
    return ref;
  }

  /**
   * VM.provision: a template clone becomes a VM; the disks its other_config "disks" asks for are
   * created on the named SR (or the pool's default SR) and attached, then the provisioning keys go.
   */
  async provision(call: Call, ref: string): Promise<void> {
    await withVmOperation(call, ref, 'provision', async () => {
      const db = call.db;
      const vm = await db.get('VM', ref);
      const other = { ...(vm.other_config as Record<string, string>) };
      const disks = other.disks ? parseDisksXml(other.disks) : [];
      const pool = (await db.all('pool'))[0]![1];
      for (const d of disks) {
        const sr = (d.sr ? await db.refByUuid('SR', d.sr) : undefined) ?? s(pool.default_SR);
        await db.get('SR', sr);
        const vdi = await createVdi(this.sync.storage, call, sr, d.size, {
          name_label: `${s(vm.name_label)} ${d.device}`, name_description: 'Created by template provisioner', type: d.type || 'system',
          sharable: false, read_only: false, other_config: {}, xenstore_data: {}, sm_config: {}, tags: [],
        });
        await db.create('VBD', newRef(), {
          uuid: randomUUID(), VM: ref, VDI: vdi, userdevice: d.device, bootable: d.bootable, mode: 'RW', type: 'Disk',
          unpluggable: false, empty: false, other_config: { owner: 'true' }, qos_algorithm_type: '', qos_algorithm_params: {},
        });
      }
      delete other.disks;
      await db.update('VM', ref, { is_a_template: false, other_config: other });
    });
  }

  /** VM.clone / VM.copy: a new VM with the same configuration, new identity, new MACs, its own disks. */
  async clone(call: Call, ref: string, name: string, op: 'clone' | 'copy' = 'clone', sr?: string): Promise<string> {
    return withVmOperation(call, ref, op, () => cloneVm(this.sync.storage, call, ref, { name, diskOp: op, sr }));
  }
}

/** VM.get_allowed_VBD_devices / VIF devices: numbers not used by any of the VM's devices. */
async function freeDevices(call: Call, ref: string, cls: 'VBD' | 'VIF', count: number): Promise<string[]> {
  const vm = await call.db.get('VM', ref);
  const used = new Set<string>();
  for (const d of vm[cls === 'VBD' ? 'VBDs' : 'VIFs'] as string[]) {
    const row = await call.db.get(cls, d);
    used.add(s(row.device));
    if (cls === 'VBD') used.add(s(row.userdevice));
  }
  return Array.from({ length: count }, (_, i) => String(i)).filter((d) => !used.has(d));
}

export function register(r: Registry, svc: VmService, schema: Schema): void {
  const sync = svc.sync;
  const genericCreate = implicitImpl(schema.messages.get('VM.create')!)!;
  r.implement('VM.create', (call, [record]) => svc.create(call, record as Record<string, unknown>, async (c, a) => genericCreate(c, a)))
    .implement('VM.destroy', (call, [self]) => svc.destroy(call, s(self)))
    .implement('VM.start', (call, [vm, paused]) => svc.start(call, s(vm), paused === true))
    .implement('VM.start_on', (call, [vm, host, paused]) => svc.start(call, s(vm), paused === true, s(host), 'start_on'))
    .implement('VM.pause', (call, [vm]) => svc.simple(call, s(vm), 'pause', (u) => sync.backend.pause(u), 'Paused'))
    .implement('VM.unpause', (call, [vm]) => svc.simple(call, s(vm), 'unpause', (u) => sync.backend.unpause(u), 'Running'))
    .implement('VM.clean_shutdown', async (call, [vm]) => {
      const row = await call.db.get('VM', s(vm));
      await svc.simple(call, s(vm), 'clean_shutdown', (u) => sync.backend.shutdown(u, svc.cleanTimeout(row)), 'Halted');
    })
    .implement('VM.hard_shutdown', (call, [vm]) => svc.hardShutdown(call, s(vm)))
    .implement('VM.shutdown', (call, [vm]) => svc.shutdown(call, s(vm)))
    .implement('VM.clean_reboot', async (call, [vm]) => {
      const row = await call.db.get('VM', s(vm));
      await svc.simple(call, s(vm), 'clean_reboot', (u) => sync.withSuppressed(s(vm), () => sync.backend.reboot(u, svc.cleanTimeout(row))), 'Running');
    })
    .implement('VM.hard_reboot', (call, [vm]) =>
      svc.simple(call, s(vm), 'hard_reboot', (u) => sync.withSuppressed(s(vm), () => sync.backend.reboot(u)), 'Running'),
    )
    .implement('VM.suspend', (call, [vm]) => svc.suspend(call, s(vm)))
    .implement('VM.resume', (call, [vm, paused]) => svc.resume(call, s(vm), paused === true))
    .implement('VM.resume_on', (call, [vm, host, paused]) => svc.resume(call, s(vm), paused === true, s(host), 'resume_on'))
    .implement('VM.clone', (call, [vm, name]) => svc.clone(call, s(vm), s(name)))
    .implement('VM.provision', (call, [vm]) => svc.provision(call, s(vm)))
    .implement('VM.copy', (call, [vm, name, sr]) => svc.clone(call, s(vm), s(name), 'copy', s(sr)))
    .implement('VM.assert_can_boot_here', (call, [vm, host]) => svc.assertCanBootHere(call, s(vm), s(host)))
    .implement('VM.get_possible_hosts', async (call, [vm]) => {
      const out: string[] = [];
      for (const [h] of await call.db.all('host')) {
        try {
          await svc.assertCanBootHere(call, s(vm), h);
          out.push(h);
        } catch {
          /* not possible there */
        }
      }
      return out;
    })
    .implement('VM.assert_operation_valid', async (call, [vm, op]) => {
      const err = operationError(s(vm), await call.db.get('VM', s(vm)), s(op));
      if (err) throw err;
    })
    .implement('VM.update_allowed_operations', (call, [vm]) => updateAllowedOperations(call.db, s(vm)))
    .implement('VM.get_allowed_VBD_devices', (call, [vm]) => freeDevices(call, s(vm), 'VBD', 255))
    .implement('VM.get_allowed_VIF_devices', (call, [vm]) => freeDevices(call, s(vm), 'VIF', 16))
    .implement('VM.compute_memory_overhead', async (call, [vm]) => vmOverhead(await call.db.get('VM', s(vm))))
    .implement('VM.power_state_reset', async (call, [vm]) => {
      const row = await call.db.get('VM', s(vm));
      if (row.is_control_domain === true) throw new XapiError('CANNOT_RESET_CONTROL_DOMAIN', [s(vm)]);
      const state = await sync.stat(row);
      if (state && state.powerState !== 'Halted') throw new XapiError('DOMAIN_EXISTS', [s(vm), String(state.domid)]);
      await call.db.update('VM', s(vm), { power_state: 'Halted' });
      await sync.refresh(s(vm));
    });
}
