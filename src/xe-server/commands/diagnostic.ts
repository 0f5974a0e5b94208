// diagnostic-* (cli_operations.ml diagnostic_license_status): what this project can answer from
// the API. diagnostic-license-status: one line per host (hostname, uuid's first 8 characters,
// the features its license_params grant as compact tags, edition, expiry, days left), nearest
// expiry first, hosts whose license cannot be read with dashes, then the pool's restrictions, in
// columns as wide as their widest cell. diagnostic-vdi-status: the VDI's sharing and locking
// fields, then its VBDs, the attached ones first.
import type { Rpc, RpcStruct } from '../../rpc/rpc.js';
import { lazyObj, objectByUuid, printRecord } from '../generic.js';
import { param } from '../parse.js';
import { fieldLookup, RefNames, safeGet } from '../records.js';
import type { CommandTable } from '../table.js';
import { record } from './util.js';

/**
 * xapi's features (features.ml), in its order: the license_params key, whether "true" grants the
 * feature (else it restricts it), and the tag the compact listing shows.
 */
const FEATURES: readonly [flag: string, positive: boolean, tag: string][] = [
  ['restrict_vlan', false, 'VLAN'],
  ['restrict_qos', false, 'QoS'],
  ['restrict_pool_attached_storage', false, 'SStorage'],
  ['restrict_netapp', false, 'NTAP'],
  ['restrict_equalogic', false, 'EQL'],
  ['restrict_pooling', false, 'Pool'],
  ['enable_xha', true, 'XHA'],
  ['restrict_marathon', false, 'MTC'],
  ['restrict_email_alerting', false, 'email'],
  ['restrict_historical_performance', false, 'perf'],
  ['restrict_wlb', false, 'WLB'],
  ['restrict_rbac', false, 'RBAC'],
  ['restrict_dmc', false, 'DMC'],
  ['restrict_checkpoint', false, 'chpt'],
  ['restrict_cpu_masking', false, 'Mask'],
  ['restrict_connection', false, 'Cnx'],
  ['platform_filter', false, 'Plat'],
  ['regular_nag_dialog', false, 'nonag'],
  ['restrict_vmpr', false, 'VMPR'],
  ['restrict_vmss', false, 'VMSS'],
  ['restrict_intellicache', false, 'IntelliCache'],
  ['restrict_gpu', false, 'GPU'],
  ['restrict_dr', false, 'DR'],
  ['restrict_vif_locking', false, 'VIFLock'],
  ['restrict_storage_xen_motion', false, 'SXM'],
  ['restrict_vgpu', false, 'vGPU'],
  ['restrict_integrated_gpu_passthrough', false, 'iGPU'],
  ['restrict_vss', false, 'VSS'],
  ['restrict_guest_agent_auto_update', false, 'GAAU'],
  ['restrict_pci_device_for_auto_update', false, 'PciAU'],
  ['restrict_xen_motion', false, 'Live_migration'],
  ['restrict_guest_ip_setting', false, 'GuestIP'],
  ['restrict_ad', false, 'AD'],
  ['restrict_nested_virt', false, 'Nested_virt'],
  ['restrict_live_patching', false, 'Live_patching'],
  ['restrict_set_vcpus_number_live', false, 'Live_set_vcpus'],
  ['restrict_pvs_proxy', false, 'PVS_proxy'],
  ['restrict_igmp_snooping', false, 'IGMP_snooping'],
  ['restrict_rpu', false, 'RPU'],
  ['restrict_pool_size', false, 'Pool_size'],
  ['restrict_cbt', false, 'CBT'],
  ['restrict_usb_passthrough', false, 'USB_passthrough'],
  ['restrict_network_sriov', false, 'Network_sriov'],
  ['restrict_corosync', false, 'Corosync'],
  ['restrict_cluster_address', false, 'Cluster_address'],
  ['restrict_zstd_export', false, 'Zstd_export'],
  ['restrict_pool_secret_rotation', false, 'Pool_secret_rotation'],
  ['restrict_certificate_verification', false, 'Certificate_verification'],
  ['restrict_updates', false, 'Upd'],
  ['restrict_internal_repo_access', false, 'Internal_repo_access'],
  ['restrict_vtpm', false, 'VTPM'],
  ['restrict_vm_groups', false, 'VM_groups'],
  ['restrict_vm_start', false, 'Start'],
  ['restrict_vm_appliance_start', false, 'Start'],
];

/** Features a license that does not mention them still grants (restricted only recently). */
const ENABLED_WHEN_UNKNOWN = new Set([
  'restrict_xen_motion',
  'restrict_ad',
  'restrict_updates',
  'restrict_vm_start',
  'restrict_vm_appliance_start',
]);

/** Features.of_assoc_list then to_compact_string: each granted feature's tag, blanks for the others. */
function compactFeatures(params: Record<string, string>): string {
  return FEATURES.map(([flag, positive, tag]) => {
    const v = params[flag];
    const b = v === 'true' ? true : v === 'false' ? false : undefined;
    const granted = b === undefined ? ENABLED_WHEN_UNKNOWN.has(flag) : positive ? b : !b;
    return granted ? tag : ' '.repeat(tag.length);
  }).join(' ');
}

/** Date.of_iso8601 of a license's expiry ("20300101T00:00:00Z" or RFC 3339): seconds since the epoch. */
function expirySeconds(text: string | undefined): number {
  if (text === undefined) return 0;
  const basic = /^(\d{4})(\d{2})(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/.exec(text);
  const ms = basic
    ? Date.UTC(+basic[1]!, +basic[2]! - 1, +basic[3]!, +basic[4]!, +basic[5]!, +basic[6]!)
    : Date.parse(/^\d{8}T/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text);
  if (Number.isNaN(ms)) throw new Error(`invalid expiry ${text}`);
  return ms / 1000;
}

/** Date.to_rfc3339 in UTC: 20300101T00:00:00Z. */
function rfc3339(seconds: number): string {
  const d = new Date(seconds * 1000);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getUTCFullYear(), 4)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}T${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}Z`;
}

export function addDiagnosticCommands(table: CommandTable): void {
  table.define('diagnostic-license-status', async (ctx) => {
    const hosts = Object.entries((await ctx.call('host.get_all_records')) as Record<string, RpcStruct>);
    const valid: { hostname: string; uuid: string; features: string; edition: string; expiry: number }[] = [];
    const invalid: string[][] = [];
    for (const [, h] of hosts) {
      const params = h.license_params as Record<string, string>;
      try {
        const expiry = expirySeconds(params.expiry);
        valid.push({
          hostname: String(h.hostname),
          uuid: String(h.uuid),
          features: compactFeatures(params),
          edition: String(h.edition),
          expiry,
        });
      } catch {
        invalid.push([String(h.hostname), String(h.uuid).slice(0, 8), '-', '-', '-', '-']);
      }
    }
    valid.sort((a, b) => a.expiry - b.expiry);
    const now = Date.now() / 1000;
    const rows = valid.map((h) => [
      h.hostname,
      h.uuid.slice(0, 8),
      h.features,
      h.edition,
      rfc3339(h.expiry),
      ((h.expiry - now) / 86400).toFixed(1),
    ]);
    const pools = Object.values((await ctx.call('pool.get_all_records')) as Record<string, RpcStruct>);
    const restrictions = (pools[0]?.restrictions ?? {}) as Record<string, Rpc>;
    const poolFeatures = compactFeatures(Object.fromEntries(Object.entries(restrictions).map(([k, v]) => [k, String(v)])));
    const divider = ['-', '-', '-', '-', '-', '-'];
    const lines = [
      ['Hostname', 'UUID', 'Features', 'Edition', 'Expiry', 'Days left'],
      divider,
      ...rows,
      ...invalid,
      divider,
      ['-', '-', poolFeatures, '-', '-', '-'],
    ];
    const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
    for (const l of lines) ctx.printer.msg(l.map((c, i) => c.padEnd(widths[i]!)).join(' '));
  });

  table.define('diagnostic-vdi-status', async (ctx) => {
    const vdi = await objectByUuid(ctx, 'vdi', param(ctx.params, 'uuid')!);
    ctx.printer.table([
      await printRecord(vdi.named(['uuid', 'name-label', 'sr-uuid', 'mode', 'read-only', 'sharable', 'storage-lock']), false),
    ]);
    const names = new RefNames(ctx);
    const vbds = ((await ctx.call('VDI.get_VBDs', vdi.ref)) as string[]).map((ref) =>
      lazyObj(ctx, 'vbd', ref, () => record(ctx, 'VBD', ref), names),
    );
    const attached = await Promise.all(vbds.map(async (v) => (await safeGet(fieldLookup(v.fields, 'currently-attached'))) === 'true'));
    const show = async (list: typeof vbds) => {
      for (const v of list)
        ctx.printer.table([await printRecord(v.named(['uuid', 'userdevice', 'device', 'empty', 'mode', 'type', 'storage-lock']), false)]);
    };
    const active = vbds.filter((_, i) => attached[i]);
    const inactive = vbds.filter((_, i) => !attached[i]);
    if (active.length === 0) ctx.printer.list(['no active VBDs.']);
    else {
      ctx.printer.list(['active VBDs:']);
      await show(active);
    }
    if (inactive.length > 0) {
      ctx.printer.list(['inactive VBDs:']);
      await show(inactive);
    }
  });
}
