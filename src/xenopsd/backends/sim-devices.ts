// xenopsd's rules for a VM's devices, as the simulator applies them: positions (one device per
// position, the lowest free disk number), removable media, and a device's state as reported.
import { DomainError, type DeviceState, type VbdConfig, type VmConfig } from '../interface.js';
import type { Vm } from './sim-model.js';

/** `list` with `item` in place of the entry of the same id, or added at the end. */
export function upsert<T extends { id: string }>(list: T[], item: T): T[] {
  return list.some((x) => x.id === item.id) ? list.map((x) => (x.id === item.id ? item : x)) : [...list, item];
}

/** xenopsd's VBD.add / VIF.add refuse two devices at one position. */
export function assertNoDuplicates(c: VmConfig): void {
  const seen = new Set<string>();
  for (const v of c.vbds) {
    if (v.position === undefined) continue;
    if (seen.has(v.position)) throw new DomainError('Already_exists', ['VBD', v.position]);
    seen.add(v.position);
  }
  const vifs = new Set<number>();
  for (const v of c.vifs) {
    if (vifs.has(v.position)) throw new DomainError('Already_exists', ['VIF', String(v.position)]);
    vifs.add(v.position);
  }
}

/** The lowest disk number no VBD of the VM uses (configured or plugged). */
export function freeVbdPosition(vm: Vm): string {
  const used = new Set<string>();
  for (const v of vm.config.vbds) if (v.position !== undefined) used.add(v.position);
  for (const v of Object.values(vm.domain?.vbds ?? {})) used.add(v.position);
  let n = 0;
  while (used.has(String(n))) n++;
  return String(n);
}

/** Records `vbd` in the VM's configuration (replacing its previous entry). */
export function storeVbd(vm: Vm, vbd: VbdConfig): void {
  vm.config = { ...vm.config, vbds: upsert(vm.config.vbds, vbd) };
}

/** A removable-media VBD of the VM, and its live state if plugged. */
export function removableVbd(vm: Vm, vbd: string): { config: VbdConfig; plugged?: { position: string; backend?: string } } {
  const config = vm.config.vbds.find((v) => v.id === vbd);
  if (!config) throw new DomainError('Does_not_exist', ['VBD', vbd]);
  if (config.type === 'Disk') throw new DomainError('Media_not_ejectable', [vbd]);
  const plugged = vm.domain?.vbds[vbd];
  if (vm.domain && !plugged) throw new DomainError('Device_not_connected', [vbd]);
  return { config, plugged };
}

/** The state of device `id` (a VBD or VIF, configured or plugged) of VM `vmId`. */
export function deviceStateOf(vmId: string, vm: Vm, id: string): DeviceState {
  const vbd = vm.config.vbds.find((v) => v.id === id);
  const vif = vm.config.vifs.find((v) => v.id === id);
  const liveVbd = vm.domain?.vbds[id];
  const liveVif = vm.domain?.vifs[id];
  if (!vbd && !vif && !liveVbd && !liveVif) throw new DomainError('Does_not_exist', ['device', id]);
  if (vbd || liveVbd) {
    return {
      vm: vmId,
      id,
      plugged: !!liveVbd,
      position: liveVbd?.position ?? vbd?.position,
      backend: liveVbd ? liveVbd.backend : vbd?.backend,
    };
  }
  return { vm: vmId, id, plugged: !!liveVif, position: String(liveVif?.position ?? vif!.position) };
}
