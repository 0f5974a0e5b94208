// xapi's memory overhead model (xapi-idl memory/memory.ml, used by memory_check.ml), as pure
// functions in bytes: what a domain costs the host beyond its target — shadow page tables,
// per-vCPU hypervisor structures, the "extra" pages Xen and the device model keep, and for
// PV-in-PVH the shim. xapi uses it for VM.memory_overhead and host.compute_free_memory; the
// simulator uses the same numbers when it reserves memory with squeezed, so both sides agree.
//
// The model works in whole MiB, always rounding a requirement *up* (mib_of_bytes_used) so the
// host is never over-committed by rounding.
import type { DomainType } from './interface.js';

export const MiB = 1024 * 1024;
const PAGES_PER_MIB = 256; // 4 KiB pages
const ceilMibOfPages = (pages: number) => Math.ceil(pages / PAGES_PER_MIB);
/** mib_of_bytes_used: whole MiB, rounding up. */
export const mibOfBytesUsed = (bytes: number) => Math.ceil(bytes / MiB);

export interface OverheadInput {
  domainType: DomainType;
  /** memory_static_max, bytes. */
  staticMax: number;
  /** VCPUs_max. */
  vcpus: number;
  /** VM.HVM_shadow_multiplier; ignored for PV (the Linux model always uses 1.0). */
  shadowMultiplier?: number;
}

/** The per-domain-type constants of memory.ml (HVM_ / Linux_ / PVinPVH_memory_model_data). */
export interface MemoryModel {
  extraInternalMib: number;
  extraExternalMib: number;
  shimMib(staticMaxMib: number): number;
  /** Whether the VM's own multiplier applies (PV uses shadow_multiplier_default = 1.0). */
  usesVmMultiplier: boolean;
}

const HVM: MemoryModel = { extraInternalMib: 1, extraExternalMib: 1, shimMib: () => 0, usesVmMultiplier: true };
const LINUX_PV: MemoryModel = { extraInternalMib: 0, extraExternalMib: 1, shimMib: () => 0, usesVmMultiplier: false };
const PV_IN_PVH: MemoryModel = {
  extraInternalMib: 1,
  extraExternalMib: 1,
  // the PV shim is a small kernel of its own plus a page table share proportional to the guest
  shimMib: (staticMaxMib) => 23 + Math.floor(staticMaxMib / 90),
  usesVmMultiplier: true,
};

/** Which model xapi's memory_check picks: HVM and PVH guests share the HVM model. */
export function memoryModel(domainType: DomainType): MemoryModel {
  switch (domainType) {
    case 'pv':
      return LINUX_PV;
    case 'pv_in_pvh':
      return PV_IN_PVH;
    case 'hvm':
    case 'pvh':
      return HVM;
  }
}

function multiplierOf(i: OverheadInput): number {
  return memoryModel(i.domainType).usesVmMultiplier ? (i.shadowMultiplier ?? 1) || 1 : 1;
}

/**
 * shadow_mib: max 1 (mib_of_pages_used(256·vcpus + static_max_mib + static_max_mib) · multiplier)
 * — 256 pages per vCPU, plus one page per MiB of guest for the p2m map and one for shadow
 * residency. memory.ml truncates the multiplied value (Int64.of_float), so we do too.
 */
export function shadowMib(i: OverheadInput): number {
  const staticMaxMib = mibOfBytesUsed(i.staticMax);
  const totalMib = ceilMibOfPages(256 * i.vcpus + staticMaxMib + staticMaxMib);
  return Math.max(1, Math.floor(totalMib * multiplierOf(i)));
}

export function shadowBytes(i: OverheadInput): number {
  return shadowMib(i) * MiB;
}

/** overhead_mib: extra_internal + extra_external + shadow + per-vCPU structures (38 pages each) + shim. */
export function overheadMib(i: OverheadInput): number {
  const m = memoryModel(i.domainType);
  const staticMaxMib = mibOfBytesUsed(i.staticMax);
  return m.extraInternalMib + m.extraExternalMib + shadowMib(i) + ceilMibOfPages(38 * i.vcpus) + m.shimMib(staticMaxMib);
}

/** VM.memory_overhead, bytes. */
export function overheadBytes(i: OverheadInput): number {
  return overheadMib(i) * MiB;
}

/** footprint (required host free memory) for a target: target_mib + overhead_mib, bytes. */
export function footprintBytes(targetBytes: number, i: OverheadInput): number {
  return (mibOfBytesUsed(targetBytes) + overheadMib(i)) * MiB;
}

/**
 * The target a VM is started with for xapi's start check: dynamic_min, except PV-in-PVH guests
 * which cannot start ballooned down inside the shim and need static_max.
 */
export function startTargetBytes(vm: { domainType: DomainType; staticMax: number; dynamicMin: number }): number {
  return vm.domainType === 'pv_in_pvh' ? vm.staticMax : vm.dynamicMin;
}

/**
 * memory_check's vm_compute_required_memory: the footprint split into (main, shadow) bytes; a
 * start needs main + shadow free on the host.
 */
export function requiredMemory(targetBytes: number, i: OverheadInput): { main: number; shadow: number } {
  const shadow = shadowBytes(i);
  return { main: footprintBytes(targetBytes, i) - shadow, shadow };
}
