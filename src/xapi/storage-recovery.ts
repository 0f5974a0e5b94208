// What start-up clears away after a process that died mid-work: operation marks it left on SRs
// and VDIs, and the disks (and VMs) an import or copy of it was filling.
import type { HostContext } from '../api/context.js';
import { NULL_REF } from '../schema/types.js';
import { destroyVdiRecord } from './sr-scan.js';
import type { Storage } from './storage.js';
import { updateSrAllowedOperations, updateVdiAllowedOperations } from './storage-operations.js';

/**
 * Operations marked on SRs and VDIs by a process that died with them are not running any more
 * (xapi's cancel_tasks at dbsync); left marked they would block the objects.
 */
export async function clearStaleOperations(host: HostContext): Promise<void> {
  for (const cls of ['SR', 'VDI'] as const) {
    for (const [ref, row] of await host.db.all(cls)) {
      if (Object.keys(row.current_operations).length === 0) continue;
      await host.db.update(cls, ref, { current_operations: {} });
      if (cls === 'SR') await updateSrAllowedOperations(host.db, ref);
      else await updateVdiAllowedOperations(host.db, ref);
    }
  }
}

/**
 * Disks (and VMs) an import or copy was filling when the process died. They carry xapi's
 * `import_task` key (VDI sm_config, VM other_config) naming a task that was still pending, so
 * is cancelled now; a half-written disk is not worth keeping.
 */
export async function sweepUnfinishedImports(storage: Storage, cancelled: Set<string>): Promise<void> {
  const host = storage.host;
  const db = host.db;
  for (const [ref, vm] of await db.all('VM')) {
    if (!cancelled.has(vm.other_config.import_task ?? '')) continue;
    for (const vbd of vm.VBDs) if (await db.tryGet('VBD', vbd)) await db.destroy('VBD', vbd);
    for (const vif of vm.VIFs) if (await db.tryGet('VIF', vif)) await db.destroy('VIF', vif);
    if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) await db.destroy('VM_metrics', vm.metrics);
    await db.destroy('VM', ref);
    host.log.warn({ vm: ref }, 'removed a VM whose import did not finish');
  }
  for (const [ref, vdi] of await db.all('VDI')) {
    if (!cancelled.has(vdi.sm_config.import_task ?? '')) continue;
    try {
      const { driver, ctx } = await storage.context(vdi.SR);
      await driver.vdiDelete(ctx, vdi.location);
      storage.kickGc(vdi.SR);
    } catch (e) {
      host.log.warn({ err: e, vdi: ref }, 'the data of an unfinished import could not be deleted');
    }
    await destroyVdiRecord(db, ref);
    host.log.warn({ vdi: ref }, 'removed a disk whose import did not finish');
  }
}
