// The default templates a fresh host offers, like a XenServer 8 / XCP-ng 8.3 host's guest
// template catalogue: memory and disk recommendations per OS, plus "Other install media".
// Their uuids are derived from their reference labels, so they are the same on every host and
// across restarts.
import { createHash } from 'node:crypto';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

interface Spec {
  label: string;
  ref: string;
  windows?: boolean;
  uefi?: boolean;
  minMiB: number;
  memMiB: number;
  maxGiB: number;
  diskGiB: number;
  vcpusMax?: number;
  installMethods?: string;
}

// name, reference label, static_min / default memory, max memory, disk size: as the catalogue.
const CATALOGUE: Spec[] = [
  { label: 'Debian Bookworm 12', ref: 'debian-12', minMiB: 512, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Debian Bullseye 11', ref: 'debian-11', minMiB: 512, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Ubuntu Noble Numbat 24.04', ref: 'ubuntu-24.04', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10 },
  { label: 'Ubuntu Jammy Jellyfish 22.04', ref: 'ubuntu-22.04', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10 },
  { label: 'CentOS Stream 9', ref: 'centos-stream-9', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Rocky Linux 9', ref: 'rocky-9', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'AlmaLinux 9', ref: 'almalinux-9', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Red Hat Enterprise Linux 9', ref: 'rhel-9', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Red Hat Enterprise Linux 8', ref: 'rhel-8', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Oracle Linux 9', ref: 'oel-9', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'SUSE Linux Enterprise Server 15 (64-bit)', ref: 'sles-15', minMiB: 1024, memMiB: 2048, maxGiB: 512, diskGiB: 10, installMethods: 'cdrom,nfs,http,ftp' },
  { label: 'Generic Linux UEFI', ref: 'generic-linux-uefi', uefi: true, minMiB: 512, memMiB: 1024, maxGiB: 512, diskGiB: 10 },
  { label: 'Generic Linux BIOS', ref: 'generic-linux-bios', minMiB: 512, memMiB: 1024, maxGiB: 512, diskGiB: 10 },
  { label: 'Windows 10 (64-bit)', ref: 'windows-10', windows: true, minMiB: 2048, memMiB: 4096, maxGiB: 1536, diskGiB: 32 },
  { label: 'Windows 11', ref: 'windows-11', windows: true, uefi: true, minMiB: 4096, memMiB: 4096, maxGiB: 1536, diskGiB: 64, vcpusMax: 64 },
  { label: 'Windows Server 2019 (64-bit)', ref: 'windows-server-2019', windows: true, minMiB: 2048, memMiB: 4096, maxGiB: 1536, diskGiB: 32 },
  { label: 'Windows Server 2022 (64-bit)', ref: 'windows-server-2022', windows: true, uefi: true, minMiB: 2048, memMiB: 4096, maxGiB: 1536, diskGiB: 32 },
  { label: 'Windows Server 2025 (64-bit)', ref: 'windows-server-2025', windows: true, uefi: true, minMiB: 2048, memMiB: 4096, maxGiB: 1536, diskGiB: 32, vcpusMax: 64 },
];

/** A name-based UUID (SHA-1, version 5 layout) in a namespace of our own. */
function templateUuid(ref: string): string {
  const h = createHash('sha1').update(`xapi-ts default template/${ref}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

const disksXml = (bytes: number) =>
  bytes === 0 ? '' : `<provision><disk device="0" size="${bytes}" sr="" bootable="true" type="system"/></provision>`;

function template(spec: Spec): { uuid: string; fields: Record<string, unknown> } {
  const mem = spec.memMiB * MiB;
  const platform = spec.windows
    ? { viridian: 'true', acpi: '1', apic: 'true', pae: 'true', nx: 'true', hpet: 'true', device_id: '0002', secureboot: spec.uefi ? 'auto' : 'false' }
    : { acpi: '1', apic: 'true', pae: 'true', nx: 'true', viridian: 'false', hpet: 'true', secureboot: 'false' };
  const other: Record<string, string> = {
    default_template: 'true',
    'install-methods': spec.installMethods ?? 'cdrom',
    base_template_name: spec.label,
  };
  const disks = disksXml(spec.diskGiB * GiB);
  if (disks) other.disks = disks;
  if (!spec.windows && spec.ref !== 'other-install-media') other.linux_template = 'true';
  return {
    uuid: templateUuid(spec.ref),
    fields: {
      name_label: spec.label,
      name_description: spec.ref === 'other-install-media' ? 'Template which allows VM installation from install media' : `Template for ${spec.label}`,
      is_a_template: true,
      is_default_template: true,
      user_version: 1,
      memory_static_min: spec.minMiB * MiB,
      memory_dynamic_min: mem,
      memory_dynamic_max: mem,
      memory_static_max: mem,
      VCPUs_max: 1,
      VCPUs_at_startup: 1,
      actions_after_shutdown: 'destroy',
      actions_after_reboot: 'restart',
      actions_after_crash: 'restart',
      HVM_boot_policy: 'BIOS order',
      HVM_boot_params: { order: 'cdn', firmware: spec.uefi ? 'uefi' : 'bios' },
      HVM_shadow_multiplier: 1,
      platform,
      other_config: other,
      recommendations:
        `<restrictions><restriction field="memory-static-max" max="${spec.maxGiB * GiB}"/>` +
        `<restriction field="vcpus-max" max="${spec.vcpusMax ?? 32}"/>` +
        `<restriction property="number-of-vbds" max="255"/><restriction property="number-of-vifs" max="7"/>` +
        (spec.windows ? '<restriction field="has-vendor-device" value="true"/>' : '') +
        '</restrictions>',
      domain_type: 'hvm',
      has_vendor_device: spec.windows === true,
      reference_label: spec.ref,
    },
  };
}

export function defaultTemplates(): { uuid: string; fields: Record<string, unknown> }[] {
  return [
    ...CATALOGUE.map(template),
    template({ label: 'Other install media', ref: 'other-install-media', minMiB: 256, memMiB: 512, maxGiB: 1536, diskGiB: 0 }),
  ];
}

export interface ProvisionDisk {
  device: string;
  size: number;
  sr: string;
  bootable: boolean;
  type: string;
}

/** The `disks` key of a template's other_config: `<provision><disk .../>...</provision>`. */
export function parseDisksXml(xml: string): ProvisionDisk[] {
  const text = xml.trim();
  if (text === '') return [];
  if (!/^<provision>[\s\S]*<\/provision>$/.test(text) && !/^<provision\s*\/>$/.test(text)) {
    throw new Error(`other_config:disks is not a <provision> document: ${JSON.stringify(text.slice(0, 80))}`);
  }
  const out: ProvisionDisk[] = [];
  for (const m of text.matchAll(/<disk\s([^>]*?)\/?>/g)) {
    const attrs = Object.fromEntries([...m[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!]));
    const size = Number(attrs.size);
    if (attrs.device === undefined || !Number.isInteger(size) || size < 0) throw new Error(`bad <disk> in other_config:disks: ${m[0]}`);
    out.push({ device: attrs.device, size, sr: attrs.sr ?? '', bootable: attrs.bootable === 'true', type: attrs.type ?? 'system' });
  }
  return out;
}
