// VM.snapshot, VM.checkpoint and VM.revert (xapi's xapi_vm_snapshot.ml). A snapshot is a
// template VM whose disks are VDI snapshots; a checkpoint also snapshots the memory image
// (the VM is suspended, snapshotted and resumed). Revert puts a VM back to a snapshot: the
// disks that were snapshotted are replaced by clones of their snapshots (SMAPIv1 has no
// in-place revert), the configuration and devices come back from the snapshot record, and the
// power state is the snapshot's.
import { randomUUID } from 'node:crypto';
import type { Call, Registry } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { newRef } from '../api/implicit.js';
import { pickFields } from '../db/interface.js';
import { NULL_REF } from '../schema/types.js';
import { destroyVdi, snapshotVdi } from './vdi.js';
import { cloneVm } from './vm-clone.js';
import { updateAllowedOperations, withVmOperation } from './vm-lifecycle.js';
import type { VmService } from './vm.js';
import { isForwardedHere } from './forward.js';
import { runOnAccessSrs, runOnHostSeeing, runOnResident, vmSrs } from './forward-to.js';

/** Fields revert does not take from the snapshot (xapi's do_not_copy list, in spirit). */
const KEEP = new Set([
  'uuid',
  'name_label',
  'is_a_snapshot',
  'is_a_template',
  'snapshot_of',
  'snapshots',
  'snapshot_time',
  'snapshot_info',
  'snapshot_metadata',
  'transportable_snapshot_id',
  'parent',
  'children',
  'suspend_VDI',
  'power_state',
  'resident_on',
  'affinity',
  'metrics',
  'guest_metrics',
  'VBDs',
  'VIFs',
  'consoles',
  'allowed_operations',
  'current_operations',
  'blocked_operations',
  'domid',
  'is_default_template',
  'tags',
  'attached_PCIs',
]);

export function register(r: Registry, svc: VmService): void {
  const storage = svc.sync.storage;

  // A snapshot, and a checkpoint of a VM that is not running, run on a live host that sees all
  // the VM's SRs; a running VM's checkpoint on its host (message_forwarding.ml).
  r.implement('VM.snapshot', (call, [vm, name, ignore]) =>
    withVmOperation(call, vm, 'snapshot', () =>
      runOnAccessSrs(call, vm, 'VM.snapshot', [vm, name, ignore ?? []], () =>
        cloneVm(storage, call, vm, { name, diskOp: 'snapshot', ignoreVdis: ignore ?? [] }),
      ),
    ),
  )
    .implement('VM.snapshot_with_quiesce', (_call, [vm]) => {
      throw new XapiError('VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED', [vm, 'the simulated guest has no VSS provider']);
    })
    .implement('VM.checkpoint', (call, [vm, name]) =>
      withVmOperation(call, vm, 'checkpoint', async () => {
        const work = () => checkpoint(svc, call, vm, name);
        if ((await call.db.get('VM', vm)).power_state === 'Running') return runOnResident(call, vm, 'VM.checkpoint', [vm, name], work);
        return runOnAccessSrs(call, vm, 'VM.checkpoint', [vm, name], work);
      }),
    )
    .implement('VM.revert', async (call, [snapshot]) => {
      const snap = await call.db.get('VM', snapshot);
      if (snap.is_a_snapshot !== true) throw new XapiError('ONLY_REVERT_SNAPSHOT', []);
      const vm = snap.snapshot_of;
      if (vm === NULL_REF || !(await call.db.tryGet('VM', vm))) {
        // xapi would recreate the VM from the snapshot's metadata here; we do not (yet).
        call.host.log.error({ vm, snapshot }, "VM.revert: the snapshot's VM no longer exists");
        throw revertFailed(snapshot, vm);
      }
      await withVmOperation(call, snapshot, 'revert', () =>
        withVmOperation(call, vm, 'reverting', () => revertOnSomeHost(svc, call, snapshot, vm), { strict: false }),
      );
    });
}

/**
 * Where a revert runs (message_forwarding.ml VM.revert): a running VM is first shut down on its
 * host, then the revert runs on a live host that sees the SRs of the VM's and the snapshot's
 * disks. The member's half of a forwarded revert runs here.
 */
async function revertOnSomeHost(svc: VmService, call: Call, snapshot: string, vm: string): Promise<void> {
  if (isForwardedHere(call)) return revert(svc, call, snapshot, vm);
  const row = await call.db.get('VM', vm);
  if (row.power_state === 'Running' || row.power_state === 'Paused') {
    await runOnResident(call, vm, 'VM.hard_shutdown', [vm], () => svc.hardShutdownNow(call, vm, row));
  }
  const srs = new Set([...(await vmSrs(call, vm)), ...(await vmSrs(call, snapshot))]);
  await runOnHostSeeing(call, [...srs], 'VM.revert', [snapshot], () => revert(svc, call, snapshot, vm));
}

/**
 * VM_REVERT_FAILED as xapi raises it: [snapshot, vm] (the datamodel's documentation says
 * [vm, snapshot], but xapi_vm_snapshot.ml puts the snapshot first). The error it replaces stays
 * attached as the cause.
 */
function revertFailed(snapshot: string, vm: string, cause?: unknown): XapiError {
  const err = new XapiError('VM_REVERT_FAILED', [snapshot, vm]);
  if (cause !== undefined) err.cause = cause;
  return err;
}

/**
 * VM.checkpoint: a running VM's disks need snapshot support on their SRs; the VM is
 * suspended (memory to a suspend VDI), disks and image snapshotted, then the VM resumed.
 */
async function checkpoint(svc: VmService, call: Call, ref: string, name: string): Promise<string> {
  const db = call.db;
  const vm = await db.get('VM', ref);
  if (vm.power_state !== 'Running') return cloneVm(svc.sync.storage, call, ref, { name, diskOp: 'checkpoint' });
  for (const vbdRef of vm.VBDs) {
    const vbd = await db.get('VBD', vbdRef);
    if (vbd.type === 'CD' || vbd.VDI === NULL_REF) continue;
    const sr = await db.get('SR', (await db.get('VDI', vbd.VDI)).SR);
    if (!svc.sync.storage.hasCap(sr, 'VDI_SNAPSHOT')) throw new XapiError('SR_OPERATION_NOT_SUPPORTED', [ref]);
  }
  try {
    await svc.suspendNow(call, ref);
  } catch (e) {
    if (e instanceof XapiError && e.code === 'OTHER_OPERATION_IN_PROGRESS') throw e;
    throw new XapiError('VM_CHECKPOINT_SUSPEND_FAILED', [ref]);
  }
  let snapshot: string;
  try {
    snapshot = await cloneVm(svc.sync.storage, call, ref, { name, diskOp: 'checkpoint' });
    await db.update('VM', snapshot, { snapshot_info: { 'disk-snapshot-type': 'crash_consistent', 'power-state-at-snapshot': 'Running' } });
  } catch (e) {
    // the VM is resumed whether or not the snapshot was taken; a failed resume is what the caller hears
    await resumeAfterCheckpoint(svc, call, ref);
    throw e;
  }
  await resumeAfterCheckpoint(svc, call, ref);
  return snapshot;
}

/** Resumes the VM checkpoint suspended; if it cannot, the VM stays suspended and the caller must know. */
async function resumeAfterCheckpoint(svc: VmService, call: Call, ref: string): Promise<void> {
  try {
    // on the host it was suspended from: the checkpoint runs on the VM's host
    await svc.resumeNow(call, ref, false, call.host.hostRef);
  } catch {
    throw new XapiError('VM_CHECKPOINT_RESUME_FAILED', [ref]);
  }
}

async function revert(svc: VmService, call: Call, snapshot: string, ref: string): Promise<void> {
  const db = call.db;
  const storage = svc.sync.storage;
  const snap = await db.get('VM', snapshot);
  const vm = await db.get('VM', ref);
  try {
    // The VM stops being what it was: its domain or suspended image goes.
    if (vm.power_state === 'Running' || vm.power_state === 'Paused') {
      await svc.sync.backend.shutdown(vm.uuid).catch(() => undefined);
      await svc.sync.refresh(ref);
    } else if (vm.power_state === 'Suspended') {
      await svc.discardSuspendImage(call, ref);
      await db.update('VM', ref, { power_state: 'Halted' });
      await svc.sync.backend.remove(vm.uuid).catch(() => undefined);
    }
    // Disks: the snapshotted ones are replaced by clones of their snapshots.
    const snapVbds = await Promise.all(snap.VBDs.map(async (r) => db.get('VBD', r)));
    const replaced = new Map<string, string>(); // old VDI -> its replacement
    for (const vbdRef of (await db.get('VM', ref)).VBDs) {
      const vbd = await db.get('VBD', vbdRef);
      await db.destroy('VBD', vbdRef);
      if (vbd.type === 'CD' || vbd.VDI === NULL_REF) continue;
      const snapDisk = await Promise.all(snapVbds.map(async (sv) => (sv.VDI !== NULL_REF ? db.tryGet('VDI', sv.VDI) : undefined)));
      if (snapDisk.some((d) => d?.snapshot_of === vbd.VDI)) replaced.set(vbd.VDI, '');
    }
    for (const sv of snapVbds) {
      let vdi = sv.VDI;
      if (sv.type !== 'CD' && vdi !== NULL_REF) {
        const snapVdi = await db.get('VDI', vdi);
        const clone = await snapshotVdi(storage, call, vdi, 'clone');
        await db.update('VDI', clone, { name_label: snapVdi.name_label });
        if (replaced.has(snapVdi.snapshot_of)) replaced.set(snapVdi.snapshot_of, clone);
        vdi = clone;
      }
      await db.create('VBD', newRef(), {
        ...sv,
        uuid: randomUUID(),
        VM: ref,
        VDI: vdi,
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
        other_config: { ...sv.other_config, ...(sv.type !== 'CD' ? { owner: 'true' } : {}) },
      });
    }
    // Other snapshots of the replaced disks now belong to the new disks; the old disks go.
    for (const [old, now] of replaced) {
      if (!now) continue;
      for (const [sib] of await db.find('VDI', { snapshot_of: old })) await db.update('VDI', sib, { snapshot_of: now });
      if (await db.tryGet('VDI', old)) await destroyVdi(storage, call, old);
    }
    // VIFs come back as the snapshot had them (same MACs).
    for (const vif of (await db.get('VM', ref)).VIFs) await db.destroy('VIF', vif);
    for (const vifRef of snap.VIFs) {
      const vif = await db.get('VIF', vifRef);
      await db.create('VIF', newRef(), {
        ...vif,
        uuid: randomUUID(),
        VM: ref,
        currently_attached: false,
        current_operations: {},
        allowed_operations: [],
        metrics: NULL_REF,
      });
    }
    // The configuration, and the power state the snapshot was taken in.
    const fields = pickFields(db.schema, 'VM', snap, (f) => f.qualifier !== 'RO/runtime' && !KEEP.has(f.name));
    let suspend = NULL_REF;
    if (snap.power_state === 'Suspended' && snap.suspend_VDI !== NULL_REF)
      suspend = await snapshotVdi(storage, call, snap.suspend_VDI, 'clone');
    await db.update('VM', ref, {
      ...fields,
      parent: snapshot,
      suspend_VDI: suspend,
      power_state: suspend !== NULL_REF ? 'Suspended' : 'Halted',
    });
    if (suspend !== NULL_REF) await svc.sync.backend.add(await svc.sync.config(ref));
    await updateAllowedOperations(db, ref);
  } catch (e) {
    // Out of space and a too-long chain reach the caller as they are; anything else becomes
    // VM_REVERT_FAILED, so the log must say what it was (with its stack and causes).
    call.host.log.error({ err: e, vm: ref, snapshot }, 'VM.revert failed');
    if (e instanceof XapiError && ['SR_BACKEND_FAILURE_44', 'SR_BACKEND_FAILURE_109', 'VDI_INCOMPATIBLE_TYPE'].includes(e.code)) throw e;
    throw revertFailed(snapshot, ref, e);
  }
}
