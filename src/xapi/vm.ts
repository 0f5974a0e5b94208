// VM.* explicit messages (xapi's xapi_vm.ml, message_forwarding.ml): the lifecycle through the
// domain manager, memory and VCPU settings with their constraint checks, placement checks and
// device numbering. Every power operation runs under withVmOperation, and its outcome is what
// the backend reports afterwards (XenopsSync.refresh), not what was asked for.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Impl, MessageImpl, Registry } from '../api/context.js';
import { genericImpl, newRef } from '../api/implicit.js';
import type { Row } from '../db/interface.js';
import type { Ref, VM_record, vm_operations, vm_power_state } from '../schema/generated.js';
import type { Schema } from '../schema/schema.js';
import type { Rpc } from '../rpc/rpc.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { forceStateReset, isDefaultTemplate, operationError, updateAllowedOperations, withVmOperation } from './vm-lifecycle.js';
import { withVmPlacedOnHost } from './host-operations.js';
import { chooseHostForVm } from './vm-placement.js';
import { HA_RESTART, assertVmPreservesPlan } from './ha-plan.js';
import { isForwardedHere, runOn } from './forward.js';
import { runOnAccessSrs, runOnHostSeeing, runOnResident } from './forward-to.js';
import { updateVmDisksAllowedOperations } from './storage-operations.js';
import { xenopsError, type XenopsSync } from './xenops-sync.js';
import { assertEnoughMemory, assertMemoryConstraints, vmOverhead, type MemoryConstraints } from './memory.js';
import { parseDisksXml } from './provision-disks.js';
import { createVdi, destroyVdi } from './vdi.js';
import { cloneVm } from './vm-clone.js';
import { allowedVbdDevices } from './vbd.js';
import { untilStored } from '../db/until-stored.js';
import { isHostAlive } from './liveness.js';
import {
  assertHostHasHighestVersion,
  assertHostVersionsSameAsCoordinator,
  hostHasHighestVersion,
  rollingUpgradeInProgress,
} from './rpu.js';

export class VmService {
  constructor(readonly sync: XenopsSync) {}

  /**
   * Backend calls of an operation: the update loop stays off the VM meanwhile, the outcome is
   * re-read after. An operation whose task was cancelled meanwhile (a hard shutdown cancels
   * the clean ones it overtakes) ends as cancelled; then the backend's error, if any; then, with
   * `expect`, a VM not left in that power state fails (VM_BAD_POWER_STATE). `known`, the VM's
   * row as the caller last read it (see XenopsSync.refresh).
   */
  private async backend<T>(call: Call, vmRef: string, fn: () => Promise<T>, expect?: vm_power_state, known?: Row<'VM'>): Promise<T> {
    let outcome: { ok: true; value: T } | { ok: false; error: unknown };
    try {
      outcome = { ok: true, value: await this.sync.whileOperating(vmRef, fn, true) };
    } catch (e) {
      outcome = { ok: false, error: e };
    }
    // What the domain did must reach the database even if it refuses writes just now (a full
    // disk): the update loop left this VM to the operation meanwhile.
    await untilStored(call.db, () => this.sync.refresh(vmRef, known));
    // The task and the VM read together (on a pool member: one request to the coordinator).
    const [cancelled, vm] = await Promise.allSettled([call.checkCancelled(), expect && call.db.get('VM', vmRef)]);
    if (cancelled.status === 'rejected') throw cancelled.reason;
    if (!outcome.ok) throw xenopsError(vmRef, outcome.error);
    if (vm.status === 'rejected') throw vm.reason;
    if (vm.value && expect) VmService.checkPowerState(vmRef, vm.value, expect);
    return outcome.value;
  }

  /**
   * What a hard shutdown or reboot does first (message_forwarding.ml cancel): the operations it
   * overtakes are asked to stop through their tasks. xapi then waits for them, because xenopsd
   * interrupts them; the domain manager here cannot be interrupted, so they notice once the
   * hard operation has taken the domain away.
   */
  private async cancelOperations(call: Call, ref: string, ops: vm_operations[]): Promise<void> {
    for (const [task, op] of Object.entries((await call.db.get('VM', ref)).current_operations)) {
      if (ops.includes(op) && (await call.db.tryGet('task', task)))
        await call.db.update('task', task, { current_operations: { [call.task]: 'cancel' } });
    }
  }

  /** VCPU and memory settings a VM must satisfy to boot (xapi's validate_basic_parameters). */
  private static validateForBoot(vm: Row<'VM'>): void {
    if (vm.VCPUs_max < 1) throw new XapiError('INVALID_VALUE', ['VCPUs_max', String(vm.VCPUs_max)]);
    if (vm.VCPUs_at_startup < 1) throw new XapiError('INVALID_VALUE', ['VCPUs_at_startup', String(vm.VCPUs_at_startup)]);
    if (vm.VCPUs_at_startup > vm.VCPUs_max) {
      throw new XapiError('VALUE_NOT_SUPPORTED', ['VCPUs_at_startup', String(vm.VCPUs_at_startup), 'value greater than VCPUs_max']);
    }
    assertMemoryConstraints(vm);
  }

  /**
   * assert_can_boot_here, for the checks this implementation can make; every host is judged by
   * its own records (liveness, PBDs, PIFs, CPUs, free memory), whichever host asks.
   */
  async assertCanBootHere(call: Call, ref: string, hostRef: string, memoryCheck = true, srCheck = true): Promise<void> {
    const db = call.db;
    const vm = await db.get('VM', ref);
    VmService.validateForBoot(vm);
    const host = await db.get('host', hostRef);
    const metrics = await db.tryGet('host_metrics', host.metrics);
    if (metrics?.live !== true) throw new XapiError('HOST_NOT_LIVE', []);
    // a VM migrating to the host it runs on may (a live migration to the same host)
    const localLiveMigration = vm.power_state === 'Running' && vm.resident_on === hostRef;
    if (host.enabled !== true && vm.is_control_domain !== true && !localLiveMigration) throw new XapiError('HOST_DISABLED', [hostRef]);
    // a storage migration checks without the SRs (do_sr_check:false): its disks are moving
    for (const vbdRef of srCheck ? vm.VBDs : []) {
      const vbd = await db.get('VBD', vbdRef);
      const vdi = vbd.empty === true || vbd.VDI === NULL_REF ? undefined : await db.tryGet('VDI', vbd.VDI);
      if (!vdi) continue;
      const pbds = await db.find('PBD', { SR: vdi.SR, host: hostRef });
      if (!pbds.some(([, p]) => p.currently_attached === true)) throw new XapiError('VM_REQUIRES_SR', [ref, vdi.SR]);
    }
    for (const vifRef of vm.VIFs) {
      const vif = await db.get('VIF', vifRef);
      const network = await db.get('network', vif.network);
      const pifs = await Promise.all(network.PIFs.map((p) => db.get('PIF', p)));
      const internal = network.PIFs.length === 0;
      if (!internal && !pifs.some((p) => p.host === hostRef)) throw new XapiError('VM_REQUIRES_NET', [ref, vif.network]);
    }
    if (memoryCheck) await assertEnoughMemory(call, ref, vm, hostRef);
    const cpus = host.host_CPUs.length;
    const platform = vm.platform;
    if (vm.VCPUs_max > cpus && platform['vcpu-unrestricted'] !== 'true') {
      throw new XapiError('HOST_NOT_ENOUGH_PCPUS', [String(vm.VCPUs_max), String(cpus)]);
    }
  }

  /**
   * vm_can_run_on_host: during a rolling upgrade one of the newest hosts, enabled (a control
   * domain may start on a disabled host), live, not being evacuated, and assert_can_boot_here.
   */
  private async canRunOn(call: Call, ref: string, hostRef: string, memoryCheck: boolean): Promise<boolean> {
    try {
      if ((await rollingUpgradeInProgress(call.db)) && !(await hostHasHighestVersion(call.db, hostRef))) return false;
      const host = await call.db.get('host', hostRef);
      if (Object.values(host.current_operations).includes('evacuate')) return false;
      await this.assertCanBootHere(call, ref, hostRef, memoryCheck);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * choose_host_for_vm (vm-placement.ts). On a host alone its own refusal is the answer, which
   * says more than NO_HOSTS_AVAILABLE.
   */
  async chooseHost(call: Call, ref: string): Promise<string> {
    const hosts = await call.db.all('host');
    if (hosts.length === 1) {
      await this.assertCanBootHere(call, ref, hosts[0]![0]);
      return hosts[0]![0];
    }
    return chooseHostForVm(call, ref, (h, memoryCheck) => this.canRunOn(call, ref, h, memoryCheck));
  }

  /**
   * Where a start or resume goes (forward_to_suitable_host / reserve_memory_for_vm): the host
   * named (checked with assert_can_boot_here), else the one already reserved, else one chosen.
   */
  private placement(call: Call, ref: string, on: string | undefined): () => Promise<string> {
    return async () => {
      if (on) {
        await this.assertCanBootHere(call, ref, on);
        await assertVmPreservesPlan(call.db, ref, on);
        return on;
      }
      const scheduled = (await call.db.get('VM', ref)).scheduled_to_be_resident_on;
      if (scheduled !== NULL_REF && (await call.db.tryGet('host', scheduled))) return scheduled;
      const chosen = await this.chooseHost(call, ref);
      // HA: a start may not break the failover plan (check_vm_preserves_ha_plan)
      await assertVmPreservesPlan(call.db, ref, chosen);
      return chosen;
    };
  }

  /**
   * VM.start / start_on. On the coordinator: the VM's operation marked, a host chosen and
   * reserved, then the start runs there (forwarded as VM.start). The member's half (a forwarded
   * VM.start) starts the VM here, the coordinator having checked, marked and chosen.
   */
  async start(call: Call, ref: string, paused: boolean, on?: string, op: vm_operations = 'start'): Promise<void> {
    if (isForwardedHere(call)) return this.startHere(call, ref, call.host.hostRef, paused);
    await withVmOperation(call, ref, op, async () => {
      await withVmPlacedOnHost(call, ref, this.placement(call, ref, on), 'vm_start', (hostRef) =>
        runOn(call, hostRef, 'VM.start', [ref, paused, false], () => this.startHere(call, ref, hostRef, paused)),
      );
    });
  }

  /** The start itself, on this host, once it is chosen and marked. */
  private async startHere(call: Call, ref: string, hostRef: string, paused: boolean): Promise<void> {
    {
      const vm = await call.db.get('VM', ref);
      // read at once, written at once: on a pool member, a request to the coordinator for each
      const [guest, vbds] = await Promise.all([
        vm.guest_metrics !== NULL_REF ? call.db.tryGet('VM_guest_metrics', vm.guest_metrics) : undefined,
        Promise.all(vm.VBDs.map((vbd) => call.db.get('VBD', vbd))),
      ]);
      // A fresh boot: the old guest metrics go, the overhead is recomputed (xapi's start).
      await Promise.all([
        guest ? call.db.destroy('VM_guest_metrics', vm.guest_metrics) : undefined,
        call.db.update('VM', ref, {
          guest_metrics: NULL_REF,
          scheduled_to_be_resident_on: hostRef,
          memory_overhead: vmOverhead(vm),
          // a VM started with priority "restart" is protected by HA from now on (xapi's start)
          ...(vm.ha_restart_priority === HA_RESTART ? { ha_always_run: true } : {}),
        }),
      ]);
      // Disks that reset on boot start from their saved content (the attach does it in xapi).
      for (const { VDI: disk } of vbds) {
        if (disk !== NULL_REF) await this.sync.storage.resetOnBoot(disk);
      }
      await call.db.commit();
      await this.backend(
        call,
        ref,
        async () => {
          await this.sync.backend.add(await this.sync.config(ref, vm));
          await this.sync.backend.start(vm.uuid, { paused });
        },
        paused ? 'Paused' : 'Running',
        { ...vm, guest_metrics: NULL_REF },
      );
    }
  }

  private async assertPowerState(call: Call, ref: string, expected: vm_power_state): Promise<void> {
    VmService.checkPowerState(ref, await call.db.get('VM', ref), expected);
  }

  private static checkPowerState(ref: string, vm: Row<'VM'>, expected: vm_power_state): void {
    const actual = vm.power_state;
    if (actual !== expected) throw new XapiError('VM_BAD_POWER_STATE', [ref, expected.toLowerCase(), actual.toLowerCase()]);
  }

  /**
   * forward_vm_op: an operation on a Running or Paused VM runs on the host it is resident on
   * (the same message, forwarded); on a VM that is not running, here. A forwarded call runs here.
   */
  private async onResident(call: Call, ref: string, wire: string, args: Rpc[], local: () => Promise<void>): Promise<void> {
    if (isForwardedHere(call)) return local();
    const vm = await call.db.get('VM', ref);
    if (vm.power_state !== 'Running' && vm.power_state !== 'Paused') return local();
    await runOn(call, vm.resident_on, wire, [ref, ...args], local);
  }

  async simple(call: Call, ref: string, op: vm_operations, run: (uuid: string) => Promise<void>, expect: vm_power_state): Promise<void> {
    await withVmOperation(call, ref, op, () =>
      this.onResident(call, ref, `VM.${op}`, [], async () => {
        const vm = await call.db.get('VM', ref);
        await this.backend(call, ref, () => run(vm.uuid), expect, vm);
      }),
    );
  }

  async hardReboot(call: Call, ref: string): Promise<void> {
    await withVmOperation(call, ref, 'hard_reboot', async () => {
      if (!isForwardedHere(call)) {
        await this.cancelOperations(call, ref, ['clean_shutdown', 'clean_reboot', 'pool_migrate', 'call_plugin', 'suspend']);
      }
      await this.onResident(call, ref, 'VM.hard_reboot', [], async () => {
        const vm = await call.db.get('VM', ref);
        await this.backend(call, ref, () => this.sync.backend.reboot(vm.uuid), 'Running');
      });
    });
  }

  /** hard_shutdown also works on a Suspended VM: its memory image is discarded. */
  async hardShutdown(call: Call, ref: string, op: vm_operations = 'hard_shutdown'): Promise<void> {
    await withVmOperation(call, ref, op, async () => {
      if (isForwardedHere(call)) return this.hardShutdownNow(call, ref, await call.db.get('VM', ref));
      await this.cancelOperations(call, ref, [
        'clean_shutdown',
        'clean_reboot',
        'hard_reboot',
        'pool_migrate',
        'call_plugin',
        'shutdown',
        'suspend',
      ]);
      const local = async () => this.hardShutdownNow(call, ref, await call.db.get('VM', ref));
      // a Suspended VM has no host: its image is dropped by a live host that sees its disks
      const vm = await call.db.get('VM', ref);
      if (vm.power_state === 'Suspended') await runOnHostSeeing(call, await diskSrs(call, vm), 'VM.hard_shutdown', [ref], local);
      else await this.onResident(call, ref, 'VM.hard_shutdown', [], local);
    });
  }

  /** hard_shutdown's work: a suspended VM loses its image, a live one its domain. */
  async hardShutdownNow(call: Call, ref: string, vm: Row<'VM'>): Promise<void> {
    // shut down on purpose: HA no longer keeps it running
    await call.db.update('VM', ref, { ha_always_run: false });
    if (vm.power_state === 'Suspended') {
      // the update loop kept off the VM: a refresh it began on the backend's removal event
      // would otherwise write back the Suspended it read before the reset
      await this.sync.whileOperating(ref, async () => {
        await this.discardSuspendImage(call, ref);
        await this.sync.backend.remove(vm.uuid).catch(() => undefined);
        // as xapi: force_state_reset, which also clears current_operations
        await forceStateReset(call.db, ref, 'Halted');
      });
      return;
    }
    if (vm.power_state === 'Halted') return;
    await this.backend(call, ref, () => this.sync.backend.shutdown(vm.uuid), 'Halted', vm);
  }

  /** VM.shutdown: one `shutdown` operation; clean (within shutdown_delay) if it can, else hard. */
  async shutdown(call: Call, ref: string): Promise<void> {
    await withVmOperation(call, ref, 'shutdown', () => this.onResident(call, ref, 'VM.shutdown', [], () => this.shutdownHere(call, ref)));
  }

  private async shutdownHere(call: Call, ref: string): Promise<void> {
    {
      const vm = await call.db.get('VM', ref);
      if (vm.power_state === 'Running') {
        try {
          await this.backend(call, ref, () => this.sync.backend.shutdown(vm.uuid, this.cleanTimeout(vm)), 'Halted', vm);
          return;
        } catch (e) {
          call.host.log.warn({ err: e, vm: ref }, 'clean shutdown failed; shutting down hard');
        }
      }
      await this.hardShutdownNow(call, ref, await call.db.get('VM', ref));
    }
  }

  cleanTimeout(vm: Row<'VM'>): number {
    const delay = vm.shutdown_delay;
    return (delay > 0 ? delay : 1200) * 1000;
  }

  async resume(call: Call, ref: string, paused: boolean, on?: string, op: vm_operations = 'resume'): Promise<void> {
    if (isForwardedHere(call)) return this.resumeHere(call, ref, call.host.hostRef, paused);
    await withVmOperation(call, ref, op, () => this.resumeNow(call, ref, paused, on));
  }

  /** The work of resume, for callers already holding a VM operation (checkpoint). */
  async resumeNow(call: Call, ref: string, paused: boolean, on?: string): Promise<void> {
    // the member's half of a forwarded call (a running checkpoint): the VM resumes where it was
    if (isForwardedHere(call)) return this.resumeHere(call, ref, call.host.hostRef, paused);
    await withVmPlacedOnHost(call, ref, this.placement(call, ref, on), 'vm_resume', (hostRef) =>
      runOn(call, hostRef, 'VM.resume', [ref, paused, false], () => this.resumeHere(call, ref, hostRef, paused)),
    );
  }

  /** The resume itself, on the host chosen and reserved for it. */
  private async resumeHere(call: Call, ref: string, hostRef: string, paused: boolean): Promise<void> {
    const vm = await call.db.get('VM', ref);
    await call.db.update('VM', ref, {
      scheduled_to_be_resident_on: hostRef,
      ...(vm.ha_restart_priority === HA_RESTART ? { ha_always_run: true } : {}),
    });
    await this.backend(call, ref, async () => {
      await this.sync.backend.add(await this.sync.config(ref));
      await this.sync.backend.resume(vm.uuid, { paused });
    });
    await this.assertPowerState(call, ref, paused ? 'Paused' : 'Running');
    await this.discardSuspendImage(call, ref);
  }

  /**
   * VM.suspend (xapi_xenops.ml suspend): a "Suspend image" VDI on the suspend SR (the VM's,
   * the pool's, then the host's), sized for the memory with xapi's margin, becomes the VM's
   * suspend_VDI; the domain manager writes the image into it. On failure the VDI goes again.
   */
  async suspend(call: Call, ref: string): Promise<void> {
    await withVmOperation(call, ref, 'suspend', () => this.onResident(call, ref, 'VM.suspend', [], () => this.suspendNow(call, ref)));
  }

  /** The work of suspend, for callers already holding a VM operation (checkpoint). */
  async suspendNow(call: Call, ref: string): Promise<void> {
    await call.db.update('VM', ref, { ha_always_run: false });
    {
      const vm = await call.db.get('VM', ref);
      const sr = await this.chooseSuspendSr(call, ref, vm);
      const space = Math.floor(vm.memory_static_max * 1.2 * 1.05) + 104857600;
      let vdi: string;
      try {
        vdi = await createVdi(this.sync.storage, call, sr, space, {
          name_label: 'Suspend image',
          name_description: 'Suspend image',
          type: 'suspend',
          sharable: false,
          read_only: false,
          other_config: {},
          xenstore_data: {},
          sm_config: { vmhint: vm.uuid, initial_allocation: String(space) },
          tags: [],
        });
      } catch (e) {
        if (e instanceof XapiError && (e.code === 'SR_FULL' || e.code === 'SR_BACKEND_FAILURE_44'))
          throw new XapiError('SR_SUSPEND_SPACE_INSUFFICIENT', [sr]);
        throw e;
      }
      await call.db.update('VM', ref, { suspend_VDI: vdi });
      try {
        await this.backend(call, ref, async () => {
          await this.sync.backend.add(await this.sync.config(ref));
          await this.sync.backend.suspend(vm.uuid);
        });
        await this.assertPowerState(call, ref, 'Suspended');
      } catch (e) {
        if ((await call.db.get('VM', ref)).power_state !== 'Suspended') await this.discardSuspendImage(call, ref);
        throw e;
      }
    }
  }

  private async chooseSuspendSr(call: Call, ref: string, vm: Row<'VM'>): Promise<string> {
    const pool = (await call.db.all('pool'))[0]![1];
    const host = await call.db.tryGet('host', vm.resident_on);
    for (const sr of [vm.suspend_SR, pool.suspend_image_SR, host?.suspend_image_sr ?? NULL_REF]) {
      if (sr === NULL_REF || !(await call.db.tryGet('SR', sr))) continue;
      const pbds = await call.db.find('PBD', { SR: sr, host: vm.resident_on });
      if (pbds.some(([, p]) => p.currently_attached === true)) return sr;
    }
    throw new XapiError('VM_NO_SUSPEND_SR', [ref]);
  }

  /** The suspend image is no longer needed (resumed, or discarded): its VDI goes. */
  async discardSuspendImage(call: Call, ref: string): Promise<void> {
    const vm = await call.db.get('VM', ref);
    const vdi = vm.suspend_VDI;
    await call.db.update('VM', ref, { suspend_VDI: NULL_REF });
    if (vdi !== NULL_REF && (await call.db.tryGet('VDI', vdi))) {
      await destroyVdi(this.sync.storage, call, vdi).catch((e) => call.host.log.warn({ err: e, vdi }, 'suspend image VDI not destroyed'));
    }
  }

  async destroy(call: Call, ref: string): Promise<void> {
    const db = call.db;
    const vm = await db.get('VM', ref);
    if (vm.is_a_template === true && isDefaultTemplate(vm)) throw new XapiError('VM_CANNOT_DELETE_DEFAULT_TEMPLATE', [ref]);
    const err = await operationError(db, ref, 'destroy');
    if (err) throw err;
    if (vm.power_state === 'Suspended') await this.discardSuspendImage(call, ref);
    await this.sync.backend.remove(vm.uuid).catch(() => undefined);
    for (const r of vm.VBDs) {
      const metrics = (await db.get('VBD', r)).metrics;
      if (await db.tryGet('VBD_metrics', metrics)) await db.destroy('VBD_metrics', metrics);
      await db.destroy('VBD', r);
    }
    for (const r of vm.VIFs) {
      const metrics = (await db.get('VIF', r)).metrics;
      if (await db.tryGet('VIF_metrics', metrics)) await db.destroy('VIF_metrics', metrics);
      await db.destroy('VIF', r);
    }
    for (const r of vm.consoles) await db.destroy('console', r);
    for (const [cls, field] of [
      ['VM_metrics', 'metrics'],
      ['VM_guest_metrics', 'guest_metrics'],
    ] as const) {
      if (vm[field] !== NULL_REF && (await db.tryGet(cls, vm[field]))) await db.destroy(cls, vm[field]);
    }
    await db.destroy('VM', ref);
    this.sync.forget(ref);
    // its archived RRD goes too (remove_rrd)
    await this.sync.rrdd
      ?.vmDestroyed(vm.uuid)
      .catch((e: unknown) => call.host.log.warn({ err: e, vm: ref }, 'removing the RRD of a destroyed VM failed'));
  }

  /** VM.create: the generic constructor, plus the metrics record xapi gives every VM. */
  async create(call: Call, record: Partial<VM_record>, createGeneric: MessageImpl<'VM.create'>): Promise<string> {
    // Checked before anything is written, so a refused VM leaves nothing behind; a record
    // missing fields is the constructor's to refuse (Dispatcher_FieldNotFound), as in xapi.
    const setsMemory = (r: Partial<VM_record>): r is Partial<VM_record> & MemoryConstraints =>
      (['memory_static_min', 'memory_dynamic_min', 'memory_dynamic_max', 'memory_static_max'] as const).every(
        (f) => typeof r[f] === 'number',
      );
    if (setsMemory(record)) assertMemoryConstraints(record);
    // Every VM gets a seed its VIFs' MACs derive from, unless the caller brings one.
    if (record.other_config && record.other_config.mac_seed === undefined) {
      record = { ...record, other_config: { ...record.other_config, mac_seed: randomUUID() } };
    }
    const ref = await createGeneric(call, [record]);
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
      const other = { ...vm.other_config };
      const disks = other.disks ? parseDisksXml(other.disks) : [];
      const pool = (await db.all('pool'))[0]![1];
      for (const d of disks) {
        const sr = (d.sr ? await db.refByUuid('SR', d.sr) : undefined) ?? pool.default_SR;
        await db.get('SR', sr);
        const vdi = await createVdi(this.sync.storage, call, sr, d.size, {
          name_label: `${vm.name_label} ${d.device}`,
          name_description: 'Created by template provisioner',
          type: d.type || 'system',
          sharable: false,
          read_only: false,
          other_config: {},
          xenstore_data: {},
          sm_config: {},
          tags: [],
        });
        await db.create('VBD', newRef(), {
          uuid: randomUUID(),
          VM: ref,
          VDI: vdi,
          userdevice: d.device,
          bootable: d.bootable,
          mode: 'RW',
          type: 'Disk',
          unpluggable: false,
          empty: false,
          other_config: { owner: 'true' },
          qos_algorithm_type: '',
          qos_algorithm_params: {},
        });
      }
      delete other.disks;
      await db.update('VM', ref, { is_a_template: false, other_config: other });
    });
  }

  /** VM.clone / VM.copy: a new VM with the same configuration, new identity, new MACs, its own disks. */
  async clone(call: Call, ref: string, name: string, op: 'clone' | 'copy' = 'clone', sr?: string): Promise<string> {
    const work = () => cloneVm(this.sync.storage, call, ref, { name, diskOp: op, sr });
    // a clone runs on a live host seeing all the VM's SRs; a copy on the coordinator, each
    // VDI.copy going where it can (message_forwarding.ml)
    return withVmOperation(call, ref, op, () => (op === 'clone' ? runOnAccessSrs(call, ref, 'VM.clone', [ref, name], work) : work()));
  }
}

/** VM.get_allowed_VIF_devices: 0..15 but those the VM's VIFs use. */
async function freeVifDevices(call: Call, ref: Ref<'VM'>): Promise<string[]> {
  const used = new Set<string>();
  for (const vif of (await call.db.get('VM', ref)).VIFs) used.add((await call.db.get('VIF', vif)).device);
  return Array.from({ length: 16 }, (_, i) => String(i)).filter((d) => !used.has(d));
}

/** VM.set_xenstore_data: recorded, and pushed into a running domain's xenstore. */
async function setXenstoreData(call: Call, sync: XenopsSync, ref: Ref<'VM'>, value: Record<string, string>): Promise<void> {
  if (!isForwardedHere(call)) await call.db.update('VM', ref, { xenstore_data: value });
  const vm = await call.db.get('VM', ref);
  if (vm.power_state !== 'Running') return;
  // the running domain's xenstore is on the host it runs on
  await runOnResident(call, ref, 'VM.set_xenstore_data', [ref, value], async () => {
    try {
      await sync.backend.setXenstoreData(vm.uuid, value);
    } catch (e) {
      throw xenopsError(ref, e);
    }
  });
}

/** The SRs of a VM's disks (compute_required_SRs_for_shutting_down_suspended_domains). */
async function diskSrs(call: Call, vm: Row<'VM'>): Promise<string[]> {
  const srs = new Set<string>();
  for (const ref of vm.VBDs) {
    const vbd = await call.db.get('VBD', ref);
    if (vbd.empty === true || vbd.VDI === NULL_REF) continue;
    const vdi = await call.db.tryGet('VDI', vbd.VDI);
    if (vdi) srs.add(vdi.SR);
  }
  return [...srs];
}

export function register(r: Registry, svc: VmService, schema: Schema): void {
  const sync = svc.sync;
  const genericCreate = genericImpl(schema, 'VM.create');
  r.implement('VM.create', (call, [record]) => svc.create(call, record, genericCreate))
    .implement('VM.destroy', (call, [self]) => svc.destroy(call, self))
    .implement('VM.start', (call, [vm, paused]) => svc.start(call, vm, paused === true))
    .implement('VM.start_on', async (call, [vm, host, paused]) => {
      // during a rolling upgrade, only on one of the newest hosts
      if (await rollingUpgradeInProgress(call.db)) await assertHostHasHighestVersion(call.db, host);
      // no VM starts on a host being evacuated
      const evacuating = Object.values((await call.db.get('host', host)).current_operations).includes('evacuate');
      if (evacuating) throw new XapiError('HOST_EVACUATE_IN_PROGRESS', [host]);
      await svc.start(call, vm, paused === true, host, 'start_on');
    })
    .implement('VM.pause', (call, [vm]) => svc.simple(call, vm, 'pause', (u) => sync.backend.pause(u), 'Paused'))
    .implement('VM.unpause', (call, [vm]) => svc.simple(call, vm, 'unpause', (u) => sync.backend.unpause(u), 'Running'))
    .implement('VM.clean_shutdown', async (call, [vm]) => {
      const row = await call.db.get('VM', vm);
      await svc.simple(
        call,
        vm,
        'clean_shutdown',
        async (u) => {
          await call.db.update('VM', vm, { ha_always_run: false });
          await sync.backend.shutdown(u, svc.cleanTimeout(row));
        },
        'Halted',
      );
    })
    .implement('VM.hard_shutdown', (call, [vm]) => svc.hardShutdown(call, vm))
    .implement('VM.shutdown', (call, [vm]) => svc.shutdown(call, vm))
    .implement('VM.clean_reboot', async (call, [vm]) => {
      const row = await call.db.get('VM', vm);
      await svc.simple(call, vm, 'clean_reboot', (u) => sync.backend.reboot(u, svc.cleanTimeout(row)), 'Running');
    })
    .implement('VM.hard_reboot', (call, [vm]) => svc.hardReboot(call, vm))
    .implement('VM.suspend', (call, [vm]) => svc.suspend(call, vm))
    .implement('VM.resume', (call, [vm, paused]) => svc.resume(call, vm, paused === true))
    .implement('VM.resume_on', async (call, [vm, host, paused]) => {
      if (!isForwardedHere(call) && (await rollingUpgradeInProgress(call.db))) await assertHostHasHighestVersion(call.db, host);
      await svc.resume(call, vm, paused === true, host, 'resume_on');
    })
    .implement('VM.clone', (call, [vm, name]) => svc.clone(call, vm, name))
    .implement('VM.provision', (call, [vm]) => svc.provision(call, vm))
    .implement('VM.copy', (call, [vm, name, sr]) => svc.clone(call, vm, name, 'copy', sr))
    .implement('VM.assert_can_boot_here', async (call, [vm, host]) => {
      // during a rolling upgrade, a host of another release than the coordinator's is refused
      if (await rollingUpgradeInProgress(call.db)) await assertHostVersionsSameAsCoordinator(call.db, host, vm);
      await svc.assertCanBootHere(call, vm, host);
    })
    .implement('VM.get_possible_hosts', async (call, [vm]) => {
      // a VM already reserved on a host can only go there (get_possible_hosts_for_vm)
      const scheduled = (await call.db.get('VM', vm)).scheduled_to_be_resident_on;
      if (scheduled !== NULL_REF) return [scheduled];
      const out: string[] = [];
      for (const [h] of await call.db.all('host')) {
        try {
          await svc.assertCanBootHere(call, vm, h);
          out.push(h);
        } catch {
          /* not possible there */
        }
      }
      return out;
    })
    .implement('VM.assert_operation_valid', async (call, [vm, op]) => {
      const err = await operationError(call.db, vm, op);
      if (err) throw err;
    })
    // xapi recomputes the VM's devices too (the disks' VDIs here; VBDs and VIFs follow the VM's)
    .implement('VM.update_allowed_operations', async (call, [vm]) => {
      await updateVmDisksAllowedOperations(call.db, await call.db.get('VM', vm));
      await updateAllowedOperations(call.db, vm);
    })
    .implement('VM.get_allowed_VBD_devices', async (call, [vm]) => {
      const free = await allowedVbdDevices(call, vm, 'Disk');
      return free === 'floppy-unsupported' ? [] : free.map((d) => String(d.disk));
    })
    .implement('VM.get_allowed_VIF_devices', (call, [vm]) => freeVifDevices(call, vm))
    .implement('VM.set_xenstore_data', (call, [vm, value]) => setXenstoreData(call, sync, vm, value))
    .implement('VM.compute_memory_overhead', async (call, [vm]) => vmOverhead(await call.db.get('VM', vm)))
    .implement('VM.power_state_reset', (call, [vm]) => powerStateReset(call, sync, vm))
    .implement('VM.set_is_a_template', (call, [self, value]) => setIsATemplate(call, self, value));

  // Setters of fields the operation checks read: the generic write, then allowed_operations
  // recomputed (xapi does it for blocked_operations; the others are kept current here too).
  const recomputing = [
    'VM.set_blocked_operations',
    'VM.add_to_blocked_operations',
    'VM.remove_from_blocked_operations',
    'VM.set_other_config',
    'VM.add_to_other_config',
    'VM.remove_from_other_config',
    'VM.set_platform',
    'VM.add_to_platform',
    'VM.remove_from_platform',
    'VM.set_appliance',
  ] as const;
  for (const wire of recomputing) {
    const generic = genericImpl(schema, wire) as Impl;
    r.implementAny(wire, async (call, args) => {
      const result = await generic(call, args);
      await updateAllowedOperations(call.db, args[0] as string);
      return result;
    });
  }
}

/**
 * VM.power_state_reset (xapi_vm.ml): for when the database thinks a VM runs and it does not.
 * Refused for a control domain; for a live VM placed here, refused if the domain manager says
 * it runs (DOMAIN_EXISTS, with the VM only), otherwise the backend forgets it; placed on another
 * host that is alive (marked live and answering when asked), refused (HOST_IS_LIVE). Then the VM
 * is Halted, whatever its state.
 */
async function powerStateReset(call: Call, sync: XenopsSync, ref: string): Promise<void> {
  const db = call.db;
  const vm = await db.get('VM', ref);
  if (vm.is_control_domain) throw new XapiError('CANNOT_RESET_CONTROL_DOMAIN', [ref]);
  if (vm.power_state === 'Running' || vm.power_state === 'Paused') {
    if (vm.resident_on === call.host.hostRef) {
      const state = await sync.stat(vm).catch(() => undefined);
      if (state?.powerState === 'Running') throw new XapiError('DOMAIN_EXISTS', [ref]);
      await sync.backend.remove(vm.uuid).catch(() => undefined);
    } else if (await isHostAlive(call.host, db, vm.resident_on)) {
      throw new XapiError('HOST_IS_LIVE', [vm.resident_on]);
    }
  }
  await forceStateReset(db, ref, 'Halted');
}

/**
 * VM.set_is_a_template (message_forwarding.ml, xapi_vm_helpers.ml). Making a template is the
 * make_into_template operation: a Halted VM only (VM_BAD_POWER_STATE otherwise), not one in an
 * appliance or under a protection policy or snapshot schedule; the template loses its
 * ha_always_run, its VUSBs and PVS proxies, and its metrics record. Turning a template back
 * into a VM records the install time in its metrics, if it has any.
 */
async function setIsATemplate(call: Call, ref: string, value: boolean): Promise<void> {
  const db = call.db;
  if (!value) {
    const vm = await db.get('VM', ref);
    if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) {
      await db.update('VM_metrics', vm.metrics, { install_time: formatDateTime(new Date(call.host.now())) });
    }
    await db.update('VM', ref, { is_a_template: false });
    // (xapi leaves allowed_operations as they were here; they are recomputed so that a VM
    // made from a template advertises what it can do at once.)
    await updateAllowedOperations(db, ref);
    return;
  }
  await withVmOperation(call, ref, 'make_into_template', async () => {
    const vm = await db.get('VM', ref);
    const [pool] = await db.all('pool');
    const protectedByHa = vm.ha_always_run && vm.ha_restart_priority === 'restart';
    if (pool?.[1].ha_enabled && protectedByHa) throw new XapiError('VM_IS_PROTECTED', [ref]);
    await db.update('VM', ref, { ha_always_run: false });
    for (const vusb of vm.VUSBs) if (await db.tryGet('VUSB', vusb)) await db.destroy('VUSB', vusb);
    for (const vif of vm.VIFs) {
      for (const [proxy] of await db.find('PVS_proxy', { VIF: vif })) await db.destroy('PVS_proxy', proxy);
    }
    if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) await db.destroy('VM_metrics', vm.metrics);
    await db.update('VM', ref, { metrics: NULL_REF, is_a_template: true });
  });
}
