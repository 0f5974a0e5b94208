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

/** VDI.create's record: a user disk of `size` bytes on `sr`, every other field empty. */
export function vdiRecord(sr: string, size: number, name: string): Record<string, unknown> {
  return {
    SR: sr,
    virtual_size: size,
    name_label: name,
    name_description: '',
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: {},
    xenstore_data: {},
    sm_config: {},
    tags: [],
  };
}

/** VBD.create's record: `vdi` as the VM's bootable read-write disk at position 0. */
export function vbdRecord(vm: string, vdi: string): Record<string, unknown> {
  return {
    VM: vm,
    VDI: vdi,
    userdevice: '0',
    bootable: true,
    mode: 'RW',
    type: 'Disk',
    unpluggable: false,
    empty: false,
    other_config: {},
    qos_algorithm_type: '',
    qos_algorithm_params: {},
  };
}

/** VIF.create's record: the VM's first interface, on `network`, its MAC chosen by the server. */
export function vifRecord(vm: string, network: string): Record<string, unknown> {
  return { device: '0', network, VM: vm, MAC: '', MTU: 1500, other_config: {}, qos_algorithm_type: '', qos_algorithm_params: {} };
}
