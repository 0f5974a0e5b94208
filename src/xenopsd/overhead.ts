// xapi's memory overhead model (xapi-idl memory.ml), in bytes: what a domain costs the host
// beyond its target — shadow page tables, per-vCPU structures, device-model and shim extras.
import type { DomainType } from './interface.js';

const MiB = 1024 * 1024;
const PAGES_PER_MIB = 256;
const ceilMibOfPages = (pages: number) => Math.ceil(pages / PAGES_PER_MIB);

export interface OverheadInput {
  domainType: DomainType;
  staticMax: number;
  vcpus: number;
  shadowMultiplier: number;
}

/** Shadow memory in MiB: max 1 (ceil_mib_of_pages(256·vcpus + 2·static_max_mib) · multiplier). */
export function shadowMib(i: OverheadInput): number {
  const staticMaxMib = Math.ceil(i.staticMax / MiB);
  const multiplier = i.domainType === 'pv' ? 1 : i.shadowMultiplier;
  return Math.max(1, Math.ceil(ceilMibOfPages(256 * i.vcpus + 2 * staticMaxMib) * multiplier));
}

/** The overhead in bytes for a VM's static_max, vCPUs and domain type. */
export function overheadBytes(i: OverheadInput): number {
  const staticMaxMib = Math.ceil(i.staticMax / MiB);
  const [extraInternal, extraExternal, shim] =
    i.domainType === 'pv' ? [0, 1, 0] : i.domainType === 'pv_in_pvh' ? [1, 1, 23 + Math.ceil(staticMaxMib / 90)] : [1, 1, 0];
  return (extraInternal + extraExternal + shadowMib(i) + ceilMibOfPages(38 * i.vcpus) + shim) * MiB;
}
