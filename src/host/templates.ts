// The default templates a fresh host offers: the guest-templates catalogue a XCP-ng 8.3 /
// XenServer 8 host installs at first boot (guest-templates-json 2.0.x plus XCP-ng's additions),
// PV-only templates excepted (they are in a separate package that is not installed by default).
//
// How the catalogue turns its entries into VM records (facts of guest-templates-json's
// generator, reproduced here in our own structure):
// - an entry has a minimum memory m: memory_static_min = m and static_max = dynamic_min =
//   dynamic_max = 2m;
// - other_config: mac_seed, install-methods, "disks" as a <provision> document (one disk per
//   entry, device "0", sr "", type "system"; bootable except on Windows, whose installer boots
//   from the CD), linux_template for Linux, install-arch for SUSE;
// - platform: nx/acpi/apic/pae/hpet defaults plus the layer's own keys (a UEFI layer drops
//   device-model and sets secureboot "auto");
// - recommendations: the <restrictions> document clients read for limits and capabilities;
// - has_vendor_device is only a recommendation: the generator never sets the field itself.
// Each template keeps the uuid the catalogue gives it, so it is the same on every host and
// across restarts; mac_seed (random on a real host) is derived from the reference label.
import { createHash } from 'node:crypto';
import type { VM_record } from '../schema/generated.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export interface TemplateSpec {
  uuid: string;
  fields: Partial<VM_record>;
}

/** The layers catalogue entries derive from. */
type Kind =
  | 'linux-bios' // BIOS HVM Linux (base-hvmlinux; base-el-7 = the same with 2 GiB and a 10 GiB disk)
  | 'linux-uefi' // UEFI HVM Linux with Secure Boot allowed
  | 'sle-bios' // SUSE 12 (BIOS, its own description, install-arch)
  | 'windows' // Windows, UEFI with Secure Boot allowed
  | 'other'; // "Other install media"

interface Entry {
  ref: string; // reference_label
  uuid: string; // the catalogue's uuid
  name: string;
  kind: Kind;
  minMemory: number; // bytes
  diskSize?: number; // bytes; no disk when absent
  description?: string;
  vcpus?: number; // VCPUs_max = VCPUs_at_startup when not the layer's
  platform?: Record<string, string>;
  otherConfig?: Record<string, string>;
  networkSriov?: boolean; // allow-network-sriov on a layer that does not already allow it
  supportsBios?: boolean; // when not the layer's
}

const LINUX_DESCRIPTION =
  'To use this template from the CLI, install your VM using vm-install, then set other-config-install-repository ' +
  'to the path to your network repository, e.g. http://<server>/<path> or nfs:server:/<path>';
const SLE_DESCRIPTION =
  'Template that allows VM installation from SLES-based distros. To use this template from the CLI, install your VM ' +
  'using vm-install, then watch the virtual display in XenCenter, and fill in the prompts.';
const windowsDescription = (name: string) =>
  'Clones of this template will automatically provision their storage when first booted and then reconfigure ' +
  `themselves with the optimal settings for ${name}.`;

const el7 = { kind: 'linux-bios', minMemory: 2 * GiB, diskSize: 10 * GiB } as const;
const uefi2G = { kind: 'linux-uefi', minMemory: 2 * GiB } as const;

// prettier-ignore
const CATALOGUE: Entry[] = [
  // Debian
  {
    ref: 'debian-10',
    uuid: 'bac315b4-66fd-4488-82f5-9808e927b4b9',
    name: 'Debian Buster 10 (deprecated)',
    kind: 'linux-bios',
    minMemory: 512 * MiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'debian-11',
    uuid: 'acfeecf4-4007-412b-8f13-6d61a6aee5bd',
    name: 'Debian Bullseye 11',
    kind: 'linux-bios',
    minMemory: 512 * MiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'debian-12',
    uuid: '07d91aaa-43f7-430a-bf84-0edb6714df0f',
    name: 'Debian Bookworm 12',
    kind: 'linux-uefi',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'debian-13',
    uuid: '0f690a2c-2bf3-4bde-b5b6-3fd236adbc88',
    name: 'Debian Trixie 13',
    kind: 'linux-uefi',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  // Ubuntu
  {
    ref: 'ubuntu-20.04',
    uuid: '2cf37285-57bc-4633-a24f-0c6c825dda66',
    name: 'Ubuntu Focal Fossa 20.04 (deprecated)',
    kind: 'linux-uefi',
    minMemory: 512 * MiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'ubuntu-22.04',
    uuid: 'df1a0e64-3799-482b-aa9f-1ed713c7dac5',
    name: 'Ubuntu Jammy Jellyfish 22.04',
    kind: 'linux-uefi',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'ubuntu-24.04',
    uuid: 'ff1f3e17-84d9-4d72-962d-571c4ceb527b',
    name: 'Ubuntu Noble Numbat 24.04',
    kind: 'linux-uefi',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  // Enterprise Linux and rebuilds
  { ref: 'centos-7', uuid: '11fd3dc9-96cc-49af-b091-a2ca7e94c589', name: 'CentOS 7 (deprecated)', ...el7 },
  { ref: 'centos-stream-8', uuid: '6de5fcb6-aad9-42b6-8dce-865ae9b933f9', name: 'CentOS Stream 8', ...el7, diskSize: 15 * GiB },
  { ref: 'centos-9', uuid: 'a3d70e4d-c5ac-4dfb-999b-30a0a7efe546', name: 'CentOS Stream 9', ...el7 },
  { ref: 'centos-10', uuid: '203103c5-f257-4ef6-ac59-f3e7184c8b1b', name: 'CentOS Stream 10', ...uefi2G, diskSize: 10 * GiB },
  { ref: 'rhel-7', uuid: '03d30863-86a2-428e-94c8-88ddfcb8cd29', name: 'Red Hat Enterprise Linux 7 (deprecated)', ...el7 },
  { ref: 'rhel-8', uuid: '612863ed-900d-456d-b4b7-38b70915fd1f', name: 'Red Hat Enterprise Linux 8', ...uefi2G, diskSize: 10 * GiB },
  { ref: 'rhel-9', uuid: '6c91b878-5095-421e-a914-224b3bb1088c', name: 'Red Hat Enterprise Linux 9', ...uefi2G, diskSize: 10 * GiB },
  {
    ref: 'rhel-10',
    uuid: '7375046a-c05e-435b-9f04-5314a64e6a5e',
    name: 'Red Hat Enterprise Linux 10 (preview)',
    ...uefi2G,
    diskSize: 10 * GiB,
  },
  { ref: 'rocky-8', uuid: '6ce77bf9-ab30-4a1a-a757-011b52d89997', name: 'Rocky Linux 8', ...uefi2G, diskSize: 10 * GiB },
  { ref: 'rocky-9', uuid: '1a647cf9-99c1-4e9c-b3b4-6b9989c530be', name: 'Rocky Linux 9', ...uefi2G, diskSize: 15 * GiB },
  { ref: 'rocky-10', uuid: '651760be-61eb-42d2-b49b-6df2521266c5', name: 'Rocky Linux 10', ...uefi2G, diskSize: 15 * GiB },
  { ref: 'almalinux-8', uuid: '7aa32be8-a06c-4ade-8a1d-49e51e03e9d2', name: 'AlmaLinux 8', ...el7 },
  { ref: 'almalinux-9', uuid: '09d6b4cc-dd4b-4619-aacb-01576ccd5b0f', name: 'AlmaLinux 9', ...el7, diskSize: 15 * GiB },
  { ref: 'almalinux-10', uuid: '1d1fef56-2e79-49cb-97bb-ec5401096b0b', name: 'AlmaLinux 10', ...uefi2G, diskSize: 15 * GiB },
  { ref: 'oel-7', uuid: 'f873abe0-b138-4995-8f6f-498b423d234d', name: 'Oracle Linux 7 (deprecated)', ...el7 },
  { ref: 'oel-8', uuid: '6959dfe8-534c-4c58-8a8c-3c3792293543', name: 'Oracle Linux 8', ...uefi2G, diskSize: 10 * GiB, vcpus: 2 },
  { ref: 'oel-9', uuid: '609d03e9-d7aa-448b-b9bf-9a3f7c613506', name: 'Oracle Linux 9', ...el7, diskSize: 15 * GiB },
  { ref: 'oel-10', uuid: '64310f80-396d-4096-bfae-3d2bdbb6e8b2', name: 'Oracle Linux 10', ...uefi2G, diskSize: 15 * GiB },
  { ref: 'sl-7', uuid: '4b116889-af64-42af-ba86-75dcb3cb7828', name: 'Scientific Linux 7 (deprecated)', ...el7 },
  // SUSE
  {
    ref: 'sles-12-sp5-64bit',
    uuid: '110ecfa7-0fe4-4b35-a247-0b0141a738ba',
    name: 'SUSE Linux Enterprise Server 12 SP5 (64-bit)',
    kind: 'sle-bios',
    minMemory: 1 * GiB,
    diskSize: 8 * GiB,
  },
  {
    ref: 'sle-15-64bit',
    uuid: 'b5915805-d800-459d-826a-322dc9cf07e2',
    name: 'SUSE Linux Enterprise 15 (64-bit)',
    kind: 'linux-uefi',
    minMemory: 1 * GiB,
    diskSize: 8 * GiB,
    otherConfig: { 'install-arch': 'x86_64' },
  },
  // Others
  {
    ref: 'gooroom-2',
    uuid: '9340090e-90ca-11ea-ab10-2e858157d830',
    name: 'Gooroom Platform 2.0',
    kind: 'linux-bios',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'kylin-server-7',
    uuid: '7279a78a-4756-4fc3-99f0-3e7694c0319e',
    name: 'NeoKylin Linux Server 7',
    kind: 'linux-bios',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'generic-linux-bios',
    uuid: 'dfbd1201-329f-4c87-9f0c-78a6f5270ba0',
    name: 'Generic Linux BIOS',
    kind: 'linux-bios',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  {
    ref: 'generic-linux-uefi',
    uuid: 'b73b736f-8dee-4bbe-9380-30d1e1854958',
    name: 'Generic Linux UEFI',
    kind: 'linux-uefi',
    minMemory: 1 * GiB,
    diskSize: 10 * GiB,
  },
  // Windows
  {
    ref: 'windows-10-64bit',
    uuid: '7774689b-4ca1-4dea-8545-dddd6b64c17f',
    name: 'Windows 10 (64-bit)',
    kind: 'windows',
    minMemory: 2 * GiB,
    diskSize: 32 * GiB,
    platform: { acpi_laptop_slate: '1' },
  },
  {
    ref: 'windows-11',
    uuid: '1f8728f9-6354-4a68-adc3-222c34f2bb94',
    name: 'Windows 11',
    kind: 'windows',
    minMemory: 4 * GiB,
    diskSize: 64 * GiB,
    platform: { acpi_laptop_slate: '1', vtpm: 'true' },
    supportsBios: false,
  },
  {
    ref: 'windows-server-2016-64bit',
    uuid: 'c15fab79-6cce-4e1f-916f-a64b98ff9e7d',
    name: 'Windows Server 2016 (64-bit)',
    kind: 'windows',
    minMemory: 1 * GiB,
    diskSize: 32 * GiB,
    networkSriov: true,
  },
  {
    ref: 'windows-server-2019-64bit',
    uuid: 'd986ea98-09fa-4e9a-9ee6-e6c78119496f',
    name: 'Windows Server 2019 (64-bit)',
    kind: 'windows',
    minMemory: 1 * GiB,
    diskSize: 32 * GiB,
    networkSriov: true,
  },
  {
    ref: 'windows-server-2022-64bit',
    uuid: '1c33af1c-e919-418c-ad45-85d7d6fb604a',
    name: 'Windows Server 2022 (64-bit)',
    kind: 'windows',
    minMemory: 1 * GiB,
    diskSize: 32 * GiB,
    networkSriov: true,
  },
  {
    ref: 'windows-server-2025',
    uuid: '905ab443-e415-4d52-bfef-e14b147eac4e',
    name: 'Windows Server 2025',
    kind: 'windows',
    minMemory: 2 * GiB,
    diskSize: 64 * GiB,
    networkSriov: true,
    supportsBios: false,
  },
  // Anything else
  {
    ref: 'other-install-media',
    uuid: '552bce37-51b2-445d-84f2-5f33fa112d7e',
    name: 'Other install media',
    kind: 'other',
    minMemory: 128 * MiB,
    description: 'Template which allows VM installation from install media',
  },
];

/** Per-layer settings. */
interface Layer {
  description: string;
  vcpus: number;
  vcpusMin?: number;
  maxMemory: number;
  firmware: 'bios' | 'uefi';
  bootOrder: string;
  installMethods: string;
  linux: boolean;
  windows: boolean;
  platform: Record<string, string>;
  gpu: boolean; // allow-gpu-passthrough / allow-vgpu
  networkSriov: boolean;
  supportsBios: boolean;
  supportsUefi: boolean;
  supportsSecureBoot: boolean;
}

const PLATFORM_DEFAULTS = { nx: 'true', acpi: '1', apic: 'true', pae: 'true', hpet: 'true' };
const LINUX_BIOS_PLATFORM = {
  ...PLATFORM_DEFAULTS,
  vga: 'std',
  videoram: '8',
  viridian: 'false',
  device_id: '0001',
  'device-model': 'qemu-upstream-compat',
  secureboot: 'false',
};
const { 'device-model': _dm, ...LINUX_UEFI_PLATFORM_BASE } = LINUX_BIOS_PLATFORM;

const linuxBios: Layer = {
  description: LINUX_DESCRIPTION,
  vcpus: 1,
  maxMemory: 1536 * GiB,
  firmware: 'bios',
  bootOrder: 'cdn',
  installMethods: 'cdrom,nfs,http,ftp',
  linux: true,
  windows: false,
  platform: LINUX_BIOS_PLATFORM,
  gpu: true,
  networkSriov: true,
  supportsBios: true,
  supportsUefi: false,
  supportsSecureBoot: false,
};

const LAYERS: Record<Kind, Layer> = {
  'linux-bios': linuxBios,
  'linux-uefi': {
    ...linuxBios,
    firmware: 'uefi',
    platform: { ...LINUX_UEFI_PLATFORM_BASE, secureboot: 'auto' },
    supportsUefi: true,
    supportsSecureBoot: true,
  },
  'sle-bios': { ...linuxBios, description: SLE_DESCRIPTION },
  windows: {
    description: '',
    vcpus: 2,
    vcpusMin: 2,
    maxMemory: 1536 * GiB,
    firmware: 'uefi',
    bootOrder: 'cd',
    installMethods: 'cdrom',
    linux: false,
    windows: true,
    platform: {
      ...PLATFORM_DEFAULTS,
      'cores-per-socket': '2',
      device_id: '0002',
      viridian: 'true',
      viridian_time_ref_count: 'true',
      viridian_reference_tsc: 'true',
      viridian_apic_assist: 'true',
      viridian_crash_ctl: 'true',
      viridian_stimer: 'true',
      secureboot: 'auto',
      vga: 'std',
      videoram: '8',
    },
    gpu: false,
    networkSriov: false,
    supportsBios: true,
    supportsUefi: true,
    supportsSecureBoot: true,
  },
  other: {
    description: '',
    vcpus: 1,
    maxMemory: 128 * GiB,
    firmware: 'bios',
    bootOrder: 'cd',
    installMethods: 'cdrom',
    linux: false,
    windows: false,
    platform: { ...PLATFORM_DEFAULTS, viridian: 'true', secureboot: 'false' },
    gpu: false,
    networkSriov: false,
    supportsBios: true,
    supportsUefi: true,
    supportsSecureBoot: true,
  },
};

/** The most vCPUs the catalogue recommends for HVM guests. */
const VCPUS_MAX_RECOMMENDED = 64;
const MAX_VBDS = 255;
const MAX_VIFS = 7;

/** A name-based UUID (SHA-1, version 5 layout) in a namespace of our own. */
export function nameBasedUuid(name: string): string {
  const h = createHash('sha1').update(`xapi-ts/templates/${name}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

const yesNo = (b: boolean) => (b ? 'yes' : 'no');

function recommendations(layer: Layer, e: Entry): string {
  const r: string[] = [];
  const field = (name: string, attr: string, value: string | number) => r.push(`<restriction field="${name}" ${attr}="${value}"/>`);
  field('memory-static-max', 'max', layer.maxMemory);
  if (layer.vcpusMin !== undefined) field('vcpus-min', 'min', layer.vcpusMin);
  field('vcpus-max', 'max', VCPUS_MAX_RECOMMENDED);
  field('has-vendor-device', 'value', String(layer.windows));
  if (layer.gpu) {
    field('allow-gpu-passthrough', 'value', '1');
    field('allow-vgpu', 'value', '1');
  }
  if (layer.networkSriov || e.networkSriov) field('allow-network-sriov', 'value', '1');
  field('supports-bios', 'value', yesNo(e.supportsBios ?? layer.supportsBios));
  field('supports-uefi', 'value', yesNo(layer.supportsUefi));
  field('supports-secure-boot', 'value', yesNo(layer.supportsSecureBoot));
  r.push(`<restriction property="number-of-vbds" max="${MAX_VBDS}"/>`);
  r.push(`<restriction property="number-of-vifs" max="${MAX_VIFS}"/>`);
  return `<restrictions>${r.join('')}</restrictions>`;
}

/** other_config "disks" for one disk, attributes in the order the catalogue writes them. */
function disksXml(size: number, bootable: boolean): string {
  return `<provision><disk size="${size}" sr="" bootable="${bootable}" type="system" device="0"/></provision>`;
}

function build(e: Entry): TemplateSpec {
  const layer = LAYERS[e.kind];
  const vcpus = e.vcpus ?? layer.vcpus;
  const other: Record<string, string> = {
    mac_seed: nameBasedUuid(`mac_seed/${e.ref}`),
    'install-methods': layer.installMethods,
    ...(layer.linux ? { linux_template: 'true' } : {}),
    ...(e.kind === 'sle-bios' ? { 'install-arch': 'x86_64' } : {}),
    ...e.otherConfig,
    default_template: 'true',
  };
  if (e.diskSize !== undefined) other.disks = disksXml(e.diskSize, !layer.windows);
  return {
    uuid: e.uuid,
    fields: {
      name_label: e.name,
      name_description: e.description ?? (layer.windows ? windowsDescription(e.name) : layer.description),
      is_a_template: true,
      is_default_template: true,
      user_version: 1,
      memory_static_min: e.minMemory,
      memory_dynamic_min: 2 * e.minMemory,
      memory_dynamic_max: 2 * e.minMemory,
      memory_static_max: 2 * e.minMemory,
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
      HVM_boot_params: { firmware: layer.firmware, order: layer.bootOrder },
      HVM_shadow_multiplier: 1,
      platform: { ...layer.platform, ...e.platform },
      PCI_bus: '',
      other_config: other,
      domarch: '',
      is_control_domain: false,
      recommendations: recommendations(layer, e),
      xenstore_data: {},
      generation_id: layer.windows ? '0:0' : '',
      has_vendor_device: false,
      reference_label: e.ref,
      domain_type: 'hvm',
    },
  };
}

/** The default templates, freshly built (callers may mutate what they get). */
export function defaultTemplates(): TemplateSpec[] {
  return CATALOGUE.map(build);
}

/** Memory a template sets for a guest of the given minimum (the catalogue's rule). */
export function templateMemoryDefaults(minMemory: number): {
  memory_static_min: number;
  memory_dynamic_min: number;
  memory_dynamic_max: number;
  memory_static_max: number;
} {
  const m = 2 * minMemory;
  return { memory_static_min: minMemory, memory_dynamic_min: m, memory_dynamic_max: m, memory_static_max: m };
}
