// What pool.join and pool.join_force check before anything changes (xapi's xapi_pool.ml
// pre_join_checks): the joining host J reads its own database, and the coordinator C of the pool
// it joins through C's API, with the session J opened there. The checks run in xapi's order,
// each raising xapi's error with its parameters; join_force skips only the homogeneity check.
//
// Checks with nothing to check in this project pass, as they do on XCP-ng with the same state:
// - the pool-size licence restriction (first check): XCP-ng's licensing daemon restricts
//   nothing, so a pool of any size is allowed;
// - the CA and trusted certificate conflicts: this project never creates Certificate records,
//   so both sides have none.
// The clustering, SR-IOV, SDN controller, update and edition checks do run: they read tables
// that stay empty here, which is what they find on a host that uses none of it.
import { XapiError } from '../rpc/errors.js';
import type { Db } from '../db/interface.js';
import { NULL_REF } from '../schema/types.js';
import { EDITIONS } from './pool.js';

/**
 * The API of the remote coordinator, logged in already: `params` are those after the session
 * (the caller adds it). A result is a wire value, as the JSON-RPC client or an in-process
 * dispatcher gives it (ints as numbers, bigints or strings); a XenAPI error is a thrown
 * XapiError.
 */
export interface RemoteApi {
  call(method: string, params: unknown[]): Promise<unknown>;
}

type Wire = Record<string, unknown>;

const str = (v: unknown): string => (typeof v === 'string' ? v : String(v ?? ''));
const int = (v: unknown): number => Number(v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const struct = (v: unknown): Wire => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Wire) : {});
/** A map field's value as pairs (a wire struct, or [key, value] pairs). */
const entries = (v: unknown): [string, unknown][] => (Array.isArray(v) ? (v as [string, unknown][]) : Object.entries(struct(v)));
const fail = (code: string, params: string[] = []): never => {
  throw new XapiError(code, params);
};
/** OCaml's List.assoc on a missing key: xapi's catch-all turns Not_found into this. */
const notFound = (): never => fail('INTERNAL_ERROR', ['Not_found']);

/** The remote pool and its coordinator, fetched once (xapi asks again for every check). */
class Remote {
  private poolRef?: string;
  private masterRef?: string;
  constructor(readonly api: RemoteApi) {}
  call(method: string, ...params: unknown[]): Promise<unknown> {
    return this.api.call(method, params);
  }
  async pool(): Promise<string> {
    if (this.poolRef) return this.poolRef;
    const pools = list(await this.call('pool.get_all')).map(str);
    if (pools.length === 0) fail('INTERNAL_ERROR', ['Remote host does not belong to a pool.']);
    if (pools.length > 1) fail('INTERNAL_ERROR', [`Should get only one pool, but got ${pools.length}: ${pools.join(',')}`]);
    this.poolRef = pools[0]!;
    return this.poolRef;
  }
  async master(): Promise<string> {
    this.masterRef ??= str(await this.call('pool.get_master', await this.pool()));
    return this.masterRef;
  }
  /** host.get_management_interface of the coordinator, read through a query every server answers. */
  async managementPif(): Promise<[string, Wire]> {
    const master = await this.master();
    const expr = `field "host"="${master}" and field "management"="true"`;
    const found = entries(await this.call('PIF.get_all_records_where', expr));
    if (found.length === 0) notFound();
    const [ref, rec] = found[0]!;
    return [ref, struct(rec)];
  }
}

/** Runs xapi's pre-join checks for `localHost` (J) joining the pool `remote` is logged in to. */
export async function preJoinChecks(local: Db, localHost: string, remote: RemoteApi, force: boolean): Promise<void> {
  const r = new Remote(remote);
  await r.pool();
  const [poolEntry] = await local.all('pool');
  if (!poolEntry) return fail('INTERNAL_ERROR', ['no pool in the local database']);
  const pool = poolEntry[1];
  const me = await local.get('host', localHost);
  const managementPif = async () => (await local.find('PIF', { host: localHost, management: true }))[0];

  // assert_management_interface_exists
  const mgmt = await managementPif();
  if (!mgmt) fail('HOST_STILL_BOOTING');
  const [, myMgmtPif] = mgmt!;

  // ha_is_not_enable_on_me
  if (pool.ha_enabled) fail('HA_IS_ENABLED');

  // clustering_is_not_enabled_on_me
  const [clusterHost] = await local.find('Cluster_host', { host: localHost });
  if (clusterHost?.[1].enabled) fail('CLUSTERING_ENABLED', [clusterHost[0]]);

  // one_ip_configured_on_joining_cluster_network
  await checkClusterNetwork(local, localHost, r);

  // ha_is_not_enable_on_the_distant_pool
  if ((await r.call('pool.get_ha_enabled', await r.pool())) === true) fail('HA_IS_ENABLED');

  // assert_not_joining_myself
  if (str(await r.call('host.get_uuid', await r.master())) === me.uuid) {
    const hosts = await local.count('host');
    fail('OPERATION_NOT_ALLOWED', [hosts > 1 ? 'Host is already part of a pool' : 'Host cannot become slave of itself']);
  }

  // assert_i_know_of_no_other_hosts
  if ((await local.count('host')) > 1) fail('JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS');

  const vms = await local.all('VM');
  // assert_no_running_vms_on_me: Paused and Suspended VMs are let through, as in xapi.
  for (const [ref, vm] of vms) {
    if (vm.power_state === 'Running' && !(await isDomainZero(local, ref, vm))) fail('JOINING_HOST_CANNOT_HAVE_RUNNING_VMS');
  }
  // assert_no_vms_with_current_ops
  if (vms.some(([, vm]) => Object.keys(vm.current_operations).length > 0)) fail('JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS');

  // assert_no_host_pending_mandatory_guidance: J, then C's coordinator
  if (me.pending_guidances.length > 0) fail('HOST_PENDING_MANDATORY_GUIDANCE_NOT_EMPTY', [localHost]);
  if (list(await r.call('host.get_pending_guidances', await r.master())).length > 0) {
    fail('HOST_PENDING_MANDATORY_GUIDANCE_NOT_EMPTY', [await r.master()]);
  }

  // assert_hosts_compatible
  const masterRecord = struct(await r.call('host.get_record', await r.master()));
  const masterSw = Object.fromEntries(entries(masterRecord.software_version).map(([k, v]) => [k, str(v)]));
  const mySw = me.software_version;
  const compat = (sw: Record<string, string>) => [sw.platform_version, compatibilityName(sw)];
  const [cv, cn] = compat(masterSw);
  const [jv, jn] = compat(mySw);
  if (cv !== jv || cn !== jn) fail('HOSTS_NOT_COMPATIBLE');

  // assert_hosts_homogeneous (join only; join_force skips it)
  if (!force) {
    const fields = (sw: Record<string, string>) =>
      [sw.xapi ?? '', compatibilityName(sw) ?? '', sw.git_id ?? '', 'xs:linux' in sw ? 'installed' : 'not present'].join('\0');
    if (fields(mySw) !== fields(masterSw)) fail('HOSTS_NOT_HOMOGENEOUS', ['Software version differs']);
    const myVendor = me.cpu_info.vendor ?? notFound();
    const poolCpu = Object.fromEntries(entries(await r.call('pool.get_cpu_info', await r.pool())));
    const poolVendor = 'vendor' in poolCpu ? str(poolCpu.vendor) : notFound();
    if (myVendor !== poolVendor) fail('HOSTS_NOT_HOMOGENEOUS', ['CPUs differ']);
  }

  // assert_no_shared_srs_on_me (the tools SR is shared everywhere and does not count)
  if ((await local.all('SR')).some(([, sr]) => sr.shared && !sr.is_tools_sr)) fail('JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS');

  // assert_no_bonds_on_me, assert_no_tunnels_on_me, assert_no_network_sriovs_on_me
  if ((await local.count('Bond')) > 0) fail('POOL_JOINING_HOST_HAS_BONDS');
  if ((await local.count('tunnel')) > 0) fail('POOL_JOINING_HOST_HAS_TUNNELS');
  if ((await local.count('network_sriov')) > 0) fail('POOL_JOINING_HOST_HAS_NETWORK_SRIOVS');

  // assert_no_non_management_vlans_on_me
  for (const [, vlan] of await local.all('VLAN')) {
    const untagged = await local.get('PIF', vlan.untagged_PIF);
    if (!untagged.management) fail('POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS');
  }

  // assert_management_vlan_are_same
  const [, remoteMgmtPif] = await r.managementPif();
  const remoteTag = int(remoteMgmtPif.VLAN);
  if (myMgmtPif.VLAN !== remoteTag) {
    fail('POOL_JOINING_HOST_MANAGEMENT_VLAN_DOES_NOT_MATCH', [String(myMgmtPif.VLAN), String(remoteTag)]);
  }

  // assert_external_auth_matches
  const master = await r.master();
  const cAuthType = str(await r.call('host.get_external_auth_type', master));
  const cAuthName = str(await r.call('host.get_external_auth_service_name', master));
  if (me.external_auth_type !== cAuthType || me.external_auth_service_name.toLowerCase() !== cAuthName.toLowerCase()) {
    fail('POOL_JOINING_EXTERNAL_AUTH_MISMATCH');
  }

  // assert_restrictions_match
  const editions = entries(await r.call('host.get_all_records')).map(([, h]) => str(struct(h).edition));
  checkEditions(me.edition, editions);

  // assert_homogeneous_vswitch_configuration
  const myBackend = mySw.network_backend ?? 'bridge';
  const remoteBackend = 'network_backend' in masterSw ? masterSw.network_backend : 'bridge';
  if (myBackend !== remoteBackend) fail('OPERATION_NOT_ALLOWED', ['Network backends differ']);
  if (myBackend === 'openvswitch') await checkSdnControllers(local, r);

  // assert_api_version_matches
  const cMajor = int(await r.call('host.get_API_version_major', master));
  const cMinor = int(await r.call('host.get_API_version_minor', master));
  if (cMajor !== me.API_version_major || cMinor !== me.API_version_minor) {
    fail('POOL_JOINING_HOST_MUST_HAVE_SAME_API_VERSION', [`${me.API_version_major}.${me.API_version_minor}`, `${cMajor}.${cMinor}`]);
  }

  // assert_db_schema_matches: empty on either side fails too
  const cSchema = Object.fromEntries(entries(await r.call('host.get_software_version', master))).db_schema;
  const cDbSchema = cSchema === undefined ? '' : str(cSchema);
  const jDbSchema = mySw.db_schema ?? '';
  if (cDbSchema === '' || jDbSchema === '' || cDbSchema !== jDbSchema) {
    fail('POOL_JOINING_HOST_MUST_HAVE_SAME_DB_SCHEMA', [jDbSchema, cDbSchema]);
  }

  // assert_homogeneous_updates: the updates flagged enforce_homogeneity on J and C's coordinator
  const mine = new Set<string>();
  for (const u of me.updates) {
    const update = await local.tryGet('pool_update', u);
    if (update?.enforce_homogeneity) mine.add(update.uuid);
  }
  const theirs = new Set<string>();
  for (const u of list(await r.call('host.get_updates', master))) {
    const update = struct(await r.call('pool_update.get_record', u));
    if (update.enforce_homogeneity === true) theirs.add(str(update.uuid));
  }
  if (mine.size !== theirs.size || [...mine].some((u) => !theirs.has(u))) {
    const cName = str(await r.call('host.get_name_label', master));
    fail('HOSTS_NOT_HOMOGENEOUS', [`Updates on local host ${me.name_label} and pool host ${cName} differ`]);
  }

  // assert_homogeneous_primary_address_type
  const [, cMgmt] = await r.managementPif();
  if (myMgmtPif.primary_address_type !== str(cMgmt.primary_address_type)) fail('OPERATION_NOT_ALLOWED', ['Primary address type differs']);

  // assert_compatible_network_purpose: the first nbd-ish purpose on each side must agree
  const nbdish = (p: unknown) => p === 'nbd' || p === 'insecure_nbd';
  const myNbd = (await local.all('network')).flatMap(([, n]) => n.purpose).find(nbdish);
  if (myNbd !== undefined) {
    const purposes = entries(await r.call('network.get_all_records')).flatMap(([, n]) => list(struct(n).purpose).map(str));
    const theirNbd = purposes.find(nbdish);
    if (theirNbd !== undefined && theirNbd !== myNbd) {
      fail('OPERATION_NOT_ALLOWED', ['Incompatible network purposes: nbd and insecure_nbd']);
    }
  }

  // assert_tls_verification_matches
  if ((await r.call('pool.get_tls_verification_enabled', await r.pool())) !== pool.tls_verification_enabled) {
    fail('POOL_JOINING_HOST_TLS_VERIFICATION_MISMATCH');
  }

  // (assert_legacy_ca_certificates_compatible, assert_trusted_certificates_compatible: see the top)

  // assert_not_in_updating_on_me, assert_no_hosts_in_updating
  if (Object.values(pool.current_operations).includes('apply_updates')) fail('NOT_SUPPORTED_DURING_UPGRADE');
  const cOps = entries(await r.call('pool.get_current_operations', await r.pool())).map(([, op]) => str(op));
  if (cOps.includes('apply_updates')) fail('NOT_SUPPORTED_DURING_UPGRADE');

  // assert_sm_features_compatible
  await checkSmFeatures(local, r);
}

/** PRODUCT_BRAND when present, else PLATFORM_NAME: what tells XCP and XenServer apart. */
function compatibilityName(sw: Record<string, string>): string | undefined {
  return 'product_brand' in sw ? sw.product_brand : sw.platform_name;
}

/** Helpers.is_domain_zero: a control domain that is its resident host's control_domain. */
async function isDomainZero(db: Db, ref: string, vm: { is_control_domain: boolean; resident_on: string }): Promise<boolean> {
  if (!vm.is_control_domain || vm.resident_on === NULL_REF) return false;
  const host = await db.tryGet('host', vm.resident_on);
  return host?.control_domain === ref;
}

async function checkClusterNetwork(local: Db, localHost: string, r: Remote): Promise<void> {
  const clusterHosts = list(await r.call('Cluster_host.get_all')).map(str);
  if (clusterHosts.length === 0) return;
  const ch = clusterHosts[0]!;
  const cluster = str(await r.call('Cluster_host.get_cluster', ch));
  if ((await r.call('Cluster.get_pool_auto_join', cluster)) !== true) return;
  const pif = str(await r.call('Cluster_host.get_PIF', ch));
  if (pif === NULL_REF) return;
  const vlan = int(await r.call('PIF.get_VLAN', pif));
  const management = (await r.call('PIF.get_management', pif)) === true;
  if (vlan > 0 && !management) fail('POOL_JOINING_POOL_CANNOT_ENABLE_CLUSTERING_ON_VLAN_NETWORK', [String(vlan)]);
  const bonds = list(await r.call('PIF.get_bond_master_of', pif)).map(str);
  const pifs = bonds.length === 0 ? [pif] : (await Promise.all(bonds.map(async (b) => list(await r.call('Bond.get_slaves', b))))).flat();
  const bridges: string[] = [];
  for (const p of pifs) bridges.push(str(await r.call('network.get_bridge', await r.call('PIF.get_network', p))));
  let withIp = 0;
  for (const [, p] of await local.find('PIF', { host: localHost })) {
    const network = await local.tryGet('network', p.network);
    if (network && bridges.includes(network.bridge) && p.IP !== '') withIp++;
  }
  if (withIp !== 1) fail('POOL_JOINING_HOST_MUST_HAVE_ONLY_ONE_IP_ON_CLUSTERING_NETWORK');
}

/**
 * assert_restrictions_match: identical edition strings pass; otherwise J's edition must rank
 * as the pool's lowest, by the licensing daemon's order (an edition it does not know fails).
 */
function checkEditions(mine: string, pool: string[]): void {
  if (pool.every((e) => e === mine)) return;
  const rank = (e: string): number =>
    e in EDITIONS ? EDITIONS[e]! : fail('LICENSE_HOST_POOL_MISMATCH', [`Edition "${e}" from pool is not known to v6d.`]);
  let lowest = pool[0]!;
  for (const e of pool) if (rank(e) < rank(lowest)) lowest = e;
  if (rank(lowest) !== rank(mine)) {
    fail('LICENSE_HOST_POOL_MISMATCH', [`host edition = "${mine}"`, `pool edition = "${lowest}"`]);
  }
}

/** With openvswitch, J's SDN controller (if any) must be C's (protocol, address, port). */
async function checkSdnControllers(local: Db, r: Remote): Promise<void> {
  const remote = list(await r.call('SDN_controller.get_all')).map(str);
  const [mine] = await local.all('SDN_controller');
  if (!mine) return;
  if (remote.length === 0) fail('OPERATION_NOT_ALLOWED', ['SDN controller differs']);
  const c = remote[0]!;
  const protocol = str(await r.call('SDN_controller.get_protocol', c));
  const address = str(await r.call('SDN_controller.get_address', c));
  const port = int(await r.call('SDN_controller.get_port', c));
  const m = mine[1];
  if (m.protocol !== protocol || m.address !== address || m.port !== port) fail('OPERATION_NOT_ALLOWED', ['SDN controller differs']);
}

/**
 * Every SM type of C's must exist exactly once on J, with each of C's features at a version
 * at least C's (Smint.Feature.compat_features giving back C's list).
 */
async function checkSmFeatures(local: Db, r: Remote): Promise<void> {
  for (const [ref, rec] of entries(await r.call('SM.get_all_records'))) {
    const sm = struct(rec);
    const candidates = await local.find('SM', { type: str(sm.type) });
    if (candidates.length !== 1) fail('POOL_JOINING_SM_FEATURES_INCOMPATIBLE', [ref, '']);
    const [mineRef, mine] = candidates[0]!;
    const compatible = entries(sm.features).every(([f, v]) => f in mine.features && mine.features[f]! >= int(v));
    if (!compatible) fail('POOL_JOINING_SM_FEATURES_INCOMPATIBLE', [ref, mineRef]);
  }
}
