// The pool fields computed from its hosts, recomputed whenever the set of hosts or what they
// report changes (at every host start, when a host leaves by pool.eject or host.destroy):
// - pool.cpu_info (create_misc.ml create_pool_cpuinfo): the vendor, the CPU and socket counts
//   summed over the hosts, and the CPU features every host has (the intersection of the hosts'
//   featuresets, word by word), which is what a VM may be given and still move between them;
// - pool.restrictions (pool_features_helpers.ml update_pool_features): a feature is available in
//   the pool only if every host's license grants it.
// A joining host counts from its first start as a member; an ejected one stops counting at once.
import type { Db } from '../db/interface.js';
import type { host_record } from '../schema/generated.js';

/** xapi's feature flags (features.ml), in its order; `positive`: "true" grants the feature. */
const CORE_FEATURES: readonly { flag: string; positive?: true; enabledWhenUnknown?: true }[] = [
  { flag: 'restrict_vlan' },
  { flag: 'restrict_qos' },
  { flag: 'restrict_pool_attached_storage' },
  { flag: 'restrict_netapp' },
  { flag: 'restrict_equalogic' },
  { flag: 'restrict_pooling' },
  { flag: 'enable_xha', positive: true },
  { flag: 'restrict_marathon' },
  { flag: 'restrict_email_alerting' },
  { flag: 'restrict_historical_performance' },
  { flag: 'restrict_wlb' },
  { flag: 'restrict_rbac' },
  { flag: 'restrict_dmc' },
  { flag: 'restrict_checkpoint' },
  { flag: 'restrict_cpu_masking' },
  { flag: 'restrict_connection' },
  { flag: 'platform_filter' },
  { flag: 'regular_nag_dialog' },
  { flag: 'restrict_vmpr' },
  { flag: 'restrict_vmss' },
  { flag: 'restrict_intellicache' },
  { flag: 'restrict_gpu' },
  { flag: 'restrict_dr' },
  { flag: 'restrict_vif_locking' },
  { flag: 'restrict_storage_xen_motion' },
  { flag: 'restrict_vgpu' },
  { flag: 'restrict_integrated_gpu_passthrough' },
  { flag: 'restrict_vss' },
  { flag: 'restrict_guest_agent_auto_update' },
  { flag: 'restrict_pci_device_for_auto_update' },
  { flag: 'restrict_xen_motion', enabledWhenUnknown: true },
  { flag: 'restrict_guest_ip_setting' },
  { flag: 'restrict_ad', enabledWhenUnknown: true },
  { flag: 'restrict_nested_virt' },
  { flag: 'restrict_live_patching' },
  { flag: 'restrict_set_vcpus_number_live' },
  { flag: 'restrict_pvs_proxy' },
  { flag: 'restrict_igmp_snooping' },
  { flag: 'restrict_rpu' },
  { flag: 'restrict_pool_size' },
  { flag: 'restrict_cbt' },
  { flag: 'restrict_usb_passthrough' },
  { flag: 'restrict_network_sriov' },
  { flag: 'restrict_corosync' },
  { flag: 'restrict_cluster_address' },
  { flag: 'restrict_zstd_export' },
  { flag: 'restrict_pool_secret_rotation' },
  { flag: 'restrict_certificate_verification' },
  { flag: 'restrict_updates', enabledWhenUnknown: true },
  { flag: 'restrict_internal_repo_access' },
  { flag: 'restrict_vtpm' },
  { flag: 'restrict_vm_groups' },
  { flag: 'restrict_vm_start', enabledWhenUnknown: true },
  { flag: 'restrict_vm_appliance_start', enabledWhenUnknown: true },
];
const CORE_FLAGS = new Set(CORE_FEATURES.map((f) => f.flag));

/**
 * The flags XCP-ng's licensing daemon (xcp-featured) adds beyond xapi's own, every one granted
 * ("false": these all restrict when true).
 */
const XCP_NG_ADDITIONAL_FLAGS = [
  'restrict_vswitch_controller',
  'restrict_lab',
  'restrict_stage',
  'restrict_storagelink',
  'restrict_storagelink_site_recovery',
  'restrict_web_selfservice',
  'restrict_web_selfservice_manager',
  'restrict_hotfix_apply',
  'restrict_export_resource_data',
  'restrict_read_caching',
  'restrict_cifs',
  'restrict_health_check',
  'restrict_xcm',
  'restrict_vm_memory_introspection',
  'restrict_batch_hotfix_apply',
  'restrict_management_on_vlan',
  'restrict_ws_proxy',
  'restrict_cloud_management',
  'restrict_vtpm',
  'restrict_nrpe',
];

/** The flags of a set of granted core features, in xapi's order (Features.to_assoc_list). */
function coreFlags(granted: (flag: string) => boolean): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of CORE_FEATURES) out[f.flag] = String(granted(f.flag) === (f.positive === true));
  return out;
}

/**
 * A host's license_params as XCP-ng's licensing daemon sets them at every start (xapi's
 * copy_license_to_db): its additional flags, then xapi's own with every feature granted but
 * corosync clustering.
 */
export function xcpNgLicenseParams(): Record<string, string> {
  const additional = Object.fromEntries(XCP_NG_ADDITIONAL_FLAGS.map((flag) => [flag, 'false']));
  return { ...additional, ...coreFlags((flag) => flag !== 'restrict_corosync') };
}

/** Features.of_assoc_list: the core features one host's params grant (unknown values: the few granted by default). */
function grantedBy(params: Record<string, string>): Set<string> {
  const granted = new Set<string>();
  for (const f of CORE_FEATURES) {
    const v = params[f.flag];
    const on = v === 'true' || v === 'false' ? (v === 'true') === (f.positive === true) : f.enabledWhenUnknown === true;
    if (on) granted.add(f.flag);
  }
  return granted;
}

/**
 * update_pool_features' result: the coordinator's additional flags, each restricted if any host
 * restricts it or lacks it, then the core features every host grants.
 */
export function poolRestrictions(
  hosts: Pick<host_record, 'license_params'>[],
  coordinatorParams: Record<string, string>,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const flag of Object.keys(coordinatorParams)) {
    if (!flag.startsWith('restrict_') || CORE_FLAGS.has(flag)) continue;
    out[flag] = String(hosts.some((h) => h.license_params[flag] !== 'false'));
  }
  const granted = hosts.map((h) => grantedBy(h.license_params));
  return { ...out, ...coreFlags((flag) => granted.every((g) => g.has(flag))) };
}

/** A featureset as xapi writes it: 32-bit words in hex, joined by dashes ("" is none). */
function parseFeatures(text: string): bigint[] {
  return text === '' ? [] : text.split('-').map((w) => BigInt(`0x${w}`));
}
function formatFeatures(words: bigint[]): string {
  return words.map((w) => w.toString(16).padStart(8, '0')).join('-');
}

/**
 * Cpuid.intersect: the features in both sets, word by word, the shorter set zero-extended; an
 * empty set is no constraint, so folding from "" starts with the first host's.
 */
export function intersectFeatures(a: string, b: string): string {
  if (a === '') return b;
  if (b === '') return a;
  const x = parseFeatures(a);
  const y = parseFeatures(b);
  const n = Math.max(x.length, y.length);
  return formatFeatures(Array.from({ length: n }, (_, i) => (x[i] ?? 0n) & (y[i] ?? 0n)));
}

/**
 * create_pool_cpuinfo's fold over the hosts: the last host's vendor, the summed counts, the
 * intersected host featuresets (HVM ones only of hosts that can run HVM guests). A host whose
 * cpu_info lacks one of those keys is left out, as xapi does with hosts older than its format.
 */
export function poolCpuInfo(hosts: Pick<host_record, 'cpu_info' | 'capabilities'>[]): Record<string, string> {
  let vendor = '';
  let cpus = 0;
  let sockets = 0;
  let pv = '';
  let hvm = '';
  for (const { cpu_info: c, capabilities } of hosts) {
    const hvmCapable = capabilities.some((cap) => cap.includes('hvm'));
    const cpuCount = Number.parseInt(c.cpu_count ?? '', 10);
    const socketCount = Number.parseInt(c.socket_count ?? '', 10);
    if (c.vendor === undefined || c.features_pv_host === undefined || Number.isNaN(cpuCount) || Number.isNaN(socketCount)) continue;
    if (hvmCapable && c.features_hvm_host === undefined) continue;
    vendor = c.vendor;
    cpus += cpuCount;
    sockets += socketCount;
    pv = intersectFeatures(c.features_pv_host, pv);
    if (hvmCapable) hvm = intersectFeatures(c.features_hvm_host!, hvm);
  }
  // In the order xapi's fold leaves its keys (each one set is moved to the front).
  return { features_hvm_host: hvm, features_pv_host: pv, socket_count: String(sockets), cpu_count: String(cpus), vendor };
}

const sameMap = (a: Record<string, string>, b: Record<string, string>) => JSON.stringify(a) === JSON.stringify(b);

/** create_pool_cpuinfo: pool.cpu_info from the hosts now in the database (written if it changed). */
export async function refreshPoolCpuInfo(db: Db): Promise<void> {
  const [pool] = await db.all('pool');
  if (!pool) return;
  const cpuInfo = poolCpuInfo((await db.all('host')).map(([, h]) => h));
  if (!sameMap(cpuInfo, pool[1].cpu_info)) await db.update('pool', pool[0], { cpu_info: cpuInfo });
}

/** update_pool_features: pool.restrictions from the hosts now in the database (written if it changed). */
export async function refreshPoolRestrictions(db: Db): Promise<void> {
  const [pool] = await db.all('pool');
  if (!pool) return;
  const hosts = (await db.all('host')).map(([, h]) => h);
  const coordinator = await db.tryGet('host', pool[1].master);
  const restrictions = poolRestrictions(hosts, coordinator?.license_params ?? {});
  if (!sameMap(restrictions, pool[1].restrictions)) await db.update('pool', pool[0], { restrictions });
}

/** Both, as xapi does after a host's start and after a host's records are removed. */
export async function refreshPoolDerived(db: Db): Promise<void> {
  await refreshPoolCpuInfo(db);
  await refreshPoolRestrictions(db);
}
