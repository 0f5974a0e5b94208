// The record VM.create takes, for tests and benchmarks: an HVM guest with `memory` bytes (all four
// memory limits) and `vcpus` vCPUs, every other field at the value a client sends for "nothing".
// `vmRecord` is JSON-shaped (for a real process over the wire), `vmStruct` the in-process wire
// tree (int64 as bigint, maps as structs).
import { newStruct, type Rpc, type RpcStruct } from '../src/rpc/rpc.js';

export interface VmShape {
  memory: number;
  vcpus?: number;
}

export function vmRecord(name: string, { memory, vcpus = 1 }: VmShape, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name_label: name,
    name_description: '',
    user_version: 1,
    is_a_template: false,
    affinity: 'OpaqueRef:NULL',
    memory_static_max: memory,
    memory_dynamic_max: memory,
    memory_dynamic_min: memory,
    memory_static_min: memory,
    VCPUs_params: {},
    VCPUs_max: vcpus,
    VCPUs_at_startup: vcpus,
    actions_after_shutdown: 'destroy',
    actions_after_reboot: 'restart',
    actions_after_crash: 'restart',
    PV_bootloader: '',
    PV_kernel: '',
    PV_ramdisk: '',
    PV_args: '',
    PV_bootloader_args: '',
    PV_legacy_args: '',
    HVM_boot_policy: 'BIOS order',
    HVM_boot_params: {},
    platform: {},
    PCI_bus: '',
    other_config: {},
    recommendations: '',
    domain_type: 'hvm',
    ...extra,
  };
}

/** The same record as the in-process dispatcher takes it; `extra` is already wire values. */
export function vmStruct(name: string, shape: VmShape, extra: Record<string, Rpc> = {}): RpcStruct {
  const fields: Record<string, Rpc> = {};
  for (const [k, v] of Object.entries(vmRecord(name, shape))) {
    fields[k] = typeof v === 'number' ? BigInt(v) : typeof v === 'object' ? newStruct() : (v as Rpc);
  }
  return Object.assign(newStruct(), fields, extra);
}
