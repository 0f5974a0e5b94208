// Storage motion within a pool (xapi's Storage XenMotion): host.migrate_receive,
// VM.assert_can_migrate, VM.migrate_send and VDI.pool_migrate (message_forwarding.ml,
// xapi_vm_migrate.ml, xapi_host.ml migrate_receive). A running VM's disks move to other SRs
// while it runs: each disk is copied to a new VDI with the guest's writes mirrored to it
// (disk-mirror.ts), then the memory moves as VM.pool_migrate moves it (vm-migrate.ts), and the
// commit that makes the destination's domain the VM also puts its VBDs on the new VDIs. The old
// VDIs go afterwards. Before the commit any failure (or task.cancel) leaves the VM running on
// its source with its disks, and the new VDIs are destroyed; a process that dies leaves them
// marked (sm_config migrate_task), and the next start of the host that has their SR removes
// them (sweepUnfinishedMirrors).
//
// The destination is named by the map host.migrate_receive returns (its URLs carry the
// destination's address on the chosen network and a session there), so a migration to another
// pool can take the same path: only the intra-pool case is done here.
import type { Call, Registry } from '../api/context.js';
import type { Db, Row } from '../db/interface.js';
import type { XenopsSync } from './xenops-sync.js';
import { destroyVdiRecord } from './sr-scan.js';
import { XapiError } from '../rpc/errors.js';
import { untilStored } from '../db/until-stored.js';
import type { Rpc } from '../rpc/rpc.js';
import { NULL_REF } from '../schema/types.js';
import { setCancellable } from '../api/tasks.js';
import { faultPoint } from '../util/fault-point.js';
import { sendVmMessages } from './message-transfer.js';
import { CommitInDoubt } from '../xenopsd/interface.js';
import {
  abandonIncoming,
  DISK_MIRROR_PATH,
  type DiskCopyReport,
  DiskMove,
  removeHalfCopied,
  verifyMirrorsAtSwitch,
} from './disk-mirror.js';
import { callOn, isForwardedHere, runOn, seesSrs, srMaster } from './forward.js';
import { hostSeeing, runOnResident, vmSrs } from './forward-to.js';
import { withVmPlacedOnHost } from './host-operations.js';
import { createSession } from './session.js';
import type { Storage } from './storage.js';
import { createVdi, destroyVdi } from './vdi.js';
import type { VmService } from './vm.js';
import { withVmOperation } from './vm-lifecycle.js';
import { assertCpuCompatible, claimSettled, LatestProgress, migratedMessage, migrateHere } from './vm-migrate.js';
import { versionsNotDecreasing } from './rpu.js';
import {
  assertCanMigrateCrossPool,
  claimState,
  clearDeparture,
  inferVifMap,
  recordDeparture,
  RemotePool,
  settleDeparture,
  transferMetadata,
  vifsWithSnapshots,
} from './cross-pool.js';

/** The keys of the map host.migrate_receive returns (xapi_vm_migrate.ml _sm, _xenops...). */
const SM = 'SM';
const XENOPS = 'xenops';
const HOST = 'host';
const SESSION = 'session_id';
const MASTER = 'master';

/**
 * How the marks of what a migration to another pool makes there begin (sm_config / other_config
 * migrate_task): `xpool:<the source task's uuid>@<the destination host's ref there>`. The host
 * part says which host's connections and restart settle the mark (a copy on a shared SR is
 * seen by every host of that pool; only the destination may remove it).
 */
const CROSS_POOL_MARK = 'xpool:';

/** The destination host a cross-pool mark names (none in a mark of an older release). */
export function markHost(mark: string): string | undefined {
  const at = mark.indexOf('@');
  return mark.startsWith(CROSS_POOL_MARK) && at >= 0 ? mark.slice(at + 1) : undefined;
}

/** At most this many storage migrations run from one host at once (xapi's with_migrate). */
const STORAGE_MIGRATES = 3;
const running = new WeakMap<object, { n: number }>();

/** OCaml's bool_of_string on an option: "true"/"false", anything else counts as absent (false). */
const flag = (options: Record<string, string>, key: string) => options[key] === 'true';

/** List.assoc on the destination map: a missing key is xapi's Not_found. */
function destValue(dest: Record<string, string>, key: string): string {
  const v = dest[key];
  if (v === undefined) throw new XapiError('INTERNAL_ERROR', ['Not_found']);
  return v;
}

/** remote_of_dest: the destination host, its address (from the xenops URL) and the session there. */
interface Remote {
  host: string;
  address: string;
  /** The destination pool's coordinator (the master URL's address). */
  master: string;
  session: string;
  smUrl: string;
}

/** get_ip_from_url: the address a URL of the map names. */
function addressOf(url: string): string {
  try {
    return new URL(url).hostname.replace(/^\[(.*)\]$/, '$1');
  } catch {
    throw new XapiError('INTERNAL_ERROR', [`Cannot extract foreign IP address from: ${url}`]);
  }
}

function remoteOf(dest: Record<string, string>): Remote {
  const master = destValue(dest, MASTER);
  const xenops = destValue(dest, XENOPS);
  const session = destValue(dest, SESSION);
  const address = addressOf(xenops);
  return { host: destValue(dest, HOST), address, master: addressOf(master), session, smUrl: destValue(dest, SM) };
}

/** migration_type: within this pool (the destination host is a host of this database), or to another pool. */
async function isIntraPool(call: Call, remote: Remote): Promise<boolean> {
  return remote.host.startsWith('OpaqueRef:') && (await call.db.tryGet('host', remote.host)) !== undefined;
}

/** The other pool of a cross-pool migration, reached through the map's session. */
function remotePool(call: Call, remote: Remote): RemotePool {
  return new RemotePool(call, remote.host, remote.address, remote.master, remote.session);
}

// ---- host.migrate_receive ---------------------------------------------------------------------

/**
 * host.migrate_receive (xapi_host.ml): a session on the destination and its URLs on `network`:
 * the host's PIF there (HOST_CANNOT_ATTACH_NETWORK [host, network]) with an address
 * (PIF_HAS_NO_NETWORK_CONFIGURATION [pif] when it is not configured, else INTERFACE_HAS_NO_IP
 * [pif]). The URLs say http, as xapi's do: the sender decides to use HTTPS (here it always does).
 */
async function migrateReceive(call: Call, hostRef: string, networkRef: string): Promise<Record<string, string>> {
  const db = call.db;
  await db.get('host', hostRef);
  const network = await db.get('network', networkRef);
  const caller = call.session ? await db.tryGet('session', call.session.ref) : undefined;
  const session = await createSession(call.host, {
    pool: caller?.pool === true,
    userName: caller?.auth_user_name ?? '',
    originator: caller?.originator ?? '',
  });
  let pif: [string, Row<'PIF'>] | undefined;
  for (const ref of network.PIFs) {
    const row = await db.tryGet('PIF', ref);
    if (row?.host === hostRef) {
      pif = [ref, row];
      break;
    }
  }
  if (!pif) throw new XapiError('HOST_CANNOT_ATTACH_NETWORK', [hostRef, networkRef]);
  const [pifRef, row] = pif;
  const v6 = row.primary_address_type === 'IPv6';
  const ip = v6 ? (row.IPv6.find((a) => !a.toLowerCase().startsWith('fe80'))?.replace(/\/.*$/, '') ?? '') : row.IP;
  const mode = v6 ? row.ipv6_configuration_mode : row.ip_configuration_mode;
  if (ip === '') throw new XapiError(mode === 'None' ? 'PIF_HAS_NO_NETWORK_CONFIGURATION' : 'INTERFACE_HAS_NO_IP', [pifRef]);
  const port = call.host.config.httpPort;
  const at = (address: string) => `http://${address.includes(':') ? `[${address}]` : address}${port === 80 ? '' : `:${port}`}`;
  const role = call.host.role;
  const master = role.kind === 'slave' ? role.master : (await db.get('host', call.host.hostRef)).address;
  const query = `?session_id=${encodeURIComponent(session)}`;
  return {
    [SM]: `${at(ip)}/services/SM${query}`,
    [HOST]: hostRef,
    [XENOPS]: `${at(ip)}/services/xenops${query}`,
    [SESSION]: session,
    [MASTER]: at(master),
  };
}

// ---- the checks ---------------------------------------------------------------------------------

/** One disk of the VM (or of a snapshot, or a suspend image) that may move (get_vdi_mirror). */
interface DiskConf {
  vdi: string;
  row: Row<'VDI'>;
  /** Written by a running guest while it moves: its writes are mirrored. */
  mirror: boolean;
}

/** vdi_filter: the disks of these VBDs, empty drives and CDs left out. */
async function disksOf(db: Db, vbdRefs: string[], allowMirror: boolean): Promise<DiskConf[]> {
  const out: DiskConf[] = [];
  for (const ref of vbdRefs) {
    const vbd = await db.get('VBD', ref);
    if (vbd.empty === true || vbd.type === 'CD' || vbd.VDI === NULL_REF) continue;
    out.push({ vdi: vbd.VDI, row: await db.get('VDI', vbd.VDI), mirror: allowMirror && vbd.mode === 'RW' });
  }
  return out;
}

/** check_vdi_map: every disk of the VM is in the map (VDI_NOT_IN_MAP [vdi]). */
function checkVdiMap(disks: DiskConf[], vdiMap: Record<string, string>): void {
  for (const d of disks) if (!(d.vdi in vdiMap)) throw new XapiError('VDI_NOT_IN_MAP', [d.vdi]);
}

/** The SM features of SRs of this type, as SM.get_all_records filtered by type gives them (one SM or none). */
async function smFeaturesOf(call: Call, type: string): Promise<Set<string>> {
  const sms = (await call.db.all('SM')).filter(([, sm]) => sm.type === type);
  return new Set(sms.length === 1 ? Object.keys(sms[0]![1].features) : []);
}

/**
 * assert_sr_support_operations: a disk that changes SR leaves one that can snapshot and mirror
 * and goes to one that can snapshot and receive a mirror (VDI_MIRROR counts for VDI_MIRROR_IN):
 * SR_DOES_NOT_SUPPORT_MIGRATION [sr, the missing capabilities joined by ';'].
 */
async function assertSrSupport(
  call: Call,
  vdiMap: Record<string, string>,
  destFeatures: (sr: string) => Promise<Set<string>> = async (sr) => smFeaturesOf(call, (await call.db.get('SR', sr)).type),
): Promise<void> {
  const check = (sr: string, features: Set<string>, ops: string[]) => {
    const missing = ops.filter((op) => !features.has(op) && !(op === 'VDI_MIRROR_IN' && features.has('VDI_MIRROR')));
    if (missing.length > 0) throw new XapiError('SR_DOES_NOT_SUPPORT_MIGRATION', [sr, missing.join(';')]);
  };
  for (const [vdi, sr] of Object.entries(vdiMap)) {
    const source = (await call.db.get('VDI', vdi)).SR;
    if (source === sr) continue;
    check(source, await smFeaturesOf(call, (await call.db.get('SR', source)).type), ['VDI_SNAPSHOT', 'VDI_MIRROR']);
    check(sr, await destFeatures(sr), ['VDI_SNAPSHOT', 'VDI_MIRROR_IN']);
  }
}

/** assert_can_migrate_vdis: a disk that changes SR has no CBT (VDI_CBT_ENABLED) and no encryption (VDI_IS_ENCRYPTED). */
async function assertCanMigrateVdis(call: Call, vdiMap: Record<string, string>): Promise<void> {
  for (const [vdi, sr] of Object.entries(vdiMap)) {
    const row = await call.db.get('VDI', vdi);
    if (sr === row.SR) continue;
    if (row.cbt_enabled === true) throw new XapiError('VDI_CBT_ENABLED', [vdi]);
    if ('key_hash' in row.sm_config) throw new XapiError('VDI_IS_ENCRYPTED', [vdi]);
  }
}

/**
 * VM.assert_can_migrate within the pool, in xapi's order: the map of the destination, every
 * disk mapped (VDI_NOT_IN_MAP), the destination's versions not older than the source's
 * (NOT_SUPPORTED_DURING_UPGRADE), the SRs able to migrate (SR_DOES_NOT_SUPPORT_MIGRATION), the
 * destination able to run the VM but for its SRs (the CPU unless `force`, HOST_NOT_LIVE,
 * HOST_DISABLED, VM_REQUIRES_NET, HOST_NOT_ENOUGH_FREE_MEMORY...), no VIF map
 * (OPERATION_NOT_ALLOWED), and no moving disk with CBT or encryption.
 */
async function assertCanMigrate(
  call: Call,
  svc: VmService,
  vmRef: string,
  dest: Record<string, string>,
  vdiMap: Record<string, string>,
  vifMap: Record<string, string>,
  options: Record<string, string>,
): Promise<void> {
  const vm = await call.db.get('VM', vmRef);
  const remote = remoteOf(dest);
  const force = flag(options, 'force');
  checkVdiMap(await disksOf(call.db, vm.VBDs, true), vdiMap);
  if (!(await isIntraPool(call, remote))) {
    await assertCanMigrateCrossPool(call, vmRef, remotePool(call, remote), vifMap, { force, copy: flag(options, 'copy') }, (destFeatures) =>
      assertSrSupport(call, vdiMap, destFeatures),
    );
    await assertCanMigrateVdis(call, vdiMap);
    return;
  }
  // Never onto a host with older versions (host_versions_not_decreasing), upgrade or not.
  const source = vm.resident_on !== NULL_REF ? vm.resident_on : (await call.db.get('pool', call.host.poolRef)).master;
  if (!(await versionsNotDecreasing(call.db, source, remote.host))) throw new XapiError('NOT_SUPPORTED_DURING_UPGRADE', []);
  await assertSrSupport(call, vdiMap);
  if (!force) await assertCpuCompatible(call, vmRef, vm, remote.host);
  await svc.assertCanBootHere(call, vmRef, remote.host, true, false);
  if (Object.keys(vifMap).length > 0) {
    throw new XapiError('OPERATION_NOT_ALLOWED', [
      'VIF mapping is not allowed for intra-pool migration -all VIFs must be on the same network',
    ]);
  }
  await assertCanMigrateVdis(call, vdiMap);
}

// ---- VM.migrate_send ----------------------------------------------------------------------------

/**
 * VM.migrate_send on the coordinator (message_forwarding.ml): the VM's operation migrate_send,
 * the checks (assert_can_migrate), then for a running VM the destination reserved (host
 * operation vm_migrate, scheduled_to_be_resident_on) and the work forwarded to the VM's host;
 * a VM that does not run has its disks moved by a host that sees them. VM_MIGRATED after a live
 * migration.
 */
async function migrateSend(
  call: Call,
  svc: VmService,
  vmRef: string,
  dest: Record<string, string>,
  vdiMap: Record<string, string>,
  vifMap: Record<string, string>,
  options: Record<string, string>,
  args: Rpc[],
): Promise<string> {
  const storage = svc.sync.storage;
  if (isForwardedHere(call)) return sendHere(call, svc, storage, vmRef, dest, vdiMap, vifMap, options);
  const db = call.db;
  const vm = await db.get('VM', vmRef);
  const source = vm.resident_on;
  const hostRef = destValue(dest, HOST);
  const live = vm.power_state === 'Running' || vm.power_state === 'Paused';
  const crossPool = !(await isIntraPool(call, remoteOf(dest)));
  let result: string = vmRef;
  await withVmOperation(call, vmRef, 'migrate_send', async () => {
    await assertCanMigrate(call, svc, vmRef, dest, vdiMap, vifMap, options);
    const work = () => sendHere(call, svc, storage, vmRef, dest, vdiMap, vifMap, options);
    if (live && crossPool) {
      // the other pool reserves its host's memory itself, at the metadata import
      result = (await runOnResident(call, vmRef, 'VM.migrate_send', args, work)) as string;
    } else if (live) {
      const choose = async () => {
        await svc.assertCanBootHere(call, vmRef, hostRef, true, false);
        return hostRef;
      };
      await withVmPlacedOnHost(call, vmRef, choose, 'vm_migrate', () => runOnResident(call, vmRef, 'VM.migrate_send', args, work));
    } else {
      // forward_to_suitable_host: a host that can reach the VM's disks sends them
      result = (await runOn(call, await hostSeeing(call, await vmSrs(call, vmRef), true), 'VM.migrate_send', args, work)) as string;
    }
  });
  if (live && !crossPool) await migratedMessage(call, vmRef, source, hostRef);
  // to another pool: the VM's reference there
  return crossPool ? result : vmRef;
}

/** Runs on the SR's master: here, or forwarded there (a member's work reaches the other host itself). */
async function onSrMaster<T>(call: Call, srRef: string, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T> {
  if (!isForwardedHere(call)) return local();
  const master = await srMaster(call, srRef).catch(() => call.host.hostRef);
  if (master === call.host.hostRef) return local();
  const row = await call.db.get('host', master);
  return (await callOn(call.host, master, row.address, wire, args)) as T;
}

/** The new VDI a disk is copied into: like the source, marked as being filled by this task. */
async function createTarget(call: Call, storage: Storage, from: Row<'VDI'>, srRef: string): Promise<string> {
  const fields = {
    name_label: from.name_label,
    name_description: from.name_description,
    type: from.type,
    sharable: from.sharable === true,
    read_only: from.read_only === true,
    other_config: from.other_config,
    xenstore_data: from.xenstore_data,
    tags: from.tags,
    allow_caching: from.allow_caching,
    is_a_snapshot: from.is_a_snapshot,
    snapshot_time: from.snapshot_time,
    // a restart after a crash mid-copy removes it (sweepUnfinishedMirrors)
    sm_config: { migrate_task: call.task },
  };
  const record = { ...fields, SR: srRef, virtual_size: from.virtual_size } as unknown as Rpc;
  return onSrMaster(call, srRef, 'VDI.create', [record], () => createVdi(storage, call, srRef, from.virtual_size, fields));
}

/** Destroys a VDI on its SR's master, whoever runs this. */
function destroyAnywhere(call: Call, storage: Storage, vdiRef: string, srRef: string): Promise<void> {
  return onSrMaster(call, srRef, 'VDI.destroy', [vdiRef], () => destroyVdi(storage, call, vdiRef));
}

/** Where the copy of a disk for `srRef` is written: undefined for here, else the receiving host's URL. */
async function receiverUrl(call: Call, srRef: string, newVdi: string, remote: Remote): Promise<string | undefined> {
  if (await seesSrs(call, call.host.hostRef, [srRef])) return undefined;
  const on = (await seesSrs(call, remote.host, [srRef])) ? remote.host : await srMaster(call, srRef);
  const address = on === remote.host ? remote.address : (await call.db.get('host', on)).address;
  const uuid = (await call.db.get('VDI', newVdi)).uuid;
  const host = address.includes(':') ? `[${address}]` : address;
  return `https://${host}:${call.host.config.httpsPort}${DISK_MIRROR_PATH}${uuid}?session_id=${encodeURIComponent(remote.session)}`;
}

/**
 * migrate_send' on the VM's host (within the pool): the disks of the VM, of its snapshots and
 * the suspend images that need it are copied to their SRs (the VM's written disks mirrored),
 * the memory follows, and the commit switches the VM and its snapshots to the copies; then the
 * old VDIs go. TOO_MANY_STORAGE_MIGRATES ["3"] beyond three at once from this host.
 */
async function sendHere(
  call: Call,
  svc: VmService,
  storage: Storage,
  vmRef: string,
  dest: Record<string, string>,
  vdiMap: Record<string, string>,
  vifMap: Record<string, string>,
  options: Record<string, string>,
): Promise<string> {
  let count = running.get(call.host);
  if (!count) {
    count = { n: 0 };
    running.set(call.host, count);
  }
  if (count.n >= STORAGE_MIGRATES) throw new XapiError('TOO_MANY_STORAGE_MIGRATES', [String(STORAGE_MIGRATES)]);
  count.n++;
  try {
    return await moveDisks(call, svc, storage, vmRef, dest, vdiMap, vifMap, options);
  } finally {
    count.n--;
  }
}

async function moveDisks(
  call: Call,
  svc: VmService,
  storage: Storage,
  vmRef: string,
  dest: Record<string, string>,
  vdiMap: Record<string, string>,
  vifMap: Record<string, string>,
  options: Record<string, string>,
): Promise<string> {
  const db = call.db;
  const remote = remoteOf(dest);
  const intra = await isIntraPool(call, remote);
  const other = intra ? undefined : remotePool(call, remote);
  const copy = flag(options, 'copy');
  if (copy && intra) {
    throw new XapiError('OPERATION_NOT_ALLOWED', [
      'Copy mode is disallowed on intra pool storage migration, try efficient alternatives, for example, VM.copy/clone.',
    ]);
  }
  const vm = await db.get('VM', vmRef);
  const snapshots = vm.snapshots;
  const vmDisks = await disksOf(call.db, vm.VBDs, true);
  checkVdiMap(vmDisks, vdiMap);
  const vifs = other ? await inferVifMap(call, await vifsWithSnapshots(call, vmRef), vifMap) : new Map<string, string>();
  for (const d of vmDisks) {
    if (d.row.on_boot === 'reset') throw new XapiError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', [d.vdi]);
  }
  const snapshotVbds: string[] = [];
  for (const s of snapshots) snapshotVbds.push(...((await db.tryGet('VM', s))?.VBDs ?? []));
  const snapshotDisks = await disksOf(call.db, snapshotVbds, false);
  // suspend images of a suspended VM or checkpoint, unless the destination sees them already
  const suspendDisks: DiskConf[] = [];
  for (const ref of [vmRef, ...snapshots]) {
    const row = await db.tryGet('VM', ref);
    if (row?.power_state !== 'Suspended' || row.suspend_VDI === NULL_REF) continue;
    const vdi = await db.get('VDI', row.suspend_VDI);
    if (intra && (await seesSrs(call, remote.host, [vdi.SR]))) continue;
    suspendDisks.push({ vdi: row.suspend_VDI, row: vdi, mirror: false });
  }
  for (const d of suspendDisks) {
    if (!(await seesSrs(call, call.host.hostRef, [d.row.SR]))) throw new XapiError('SUSPEND_IMAGE_NOT_ACCESSIBLE', [d.vdi]);
  }
  // Where the disks not in the map go: with the disk they are a snapshot of, a suspend image to
  // the suspend SR, else the default SR (the destination pool's).
  let defaultSr: string;
  let suspendSr: string;
  if (other) {
    const [destPool] = (await other.call('pool.get_all')) as string[];
    defaultSr = (await other.call('pool.get_default_SR', destPool!)) as string;
    const poolSuspend = (await other.call('pool.get_suspend_image_SR', destPool!)) as string;
    suspendSr = poolSuspend !== NULL_REF ? poolSuspend : ((await other.call('host.get_suspend_image_sr', remote.host)) as string);
  } else {
    const [pool] = await db.all('pool');
    defaultSr = pool?.[1].default_SR ?? NULL_REF;
    if (defaultSr !== NULL_REF && !(await db.tryGet('SR', defaultSr))) defaultSr = NULL_REF;
    suspendSr =
      pool && pool[1].suspend_image_SR !== NULL_REF ? pool[1].suspend_image_SR : (await db.get('host', remote.host)).suspend_image_sr;
  }
  const fullMap = { ...vdiMap };
  for (const d of [...suspendDisks, ...snapshotDisks]) {
    if (d.vdi in vdiMap) continue;
    const isSuspend = suspendDisks.includes(d);
    const sr =
      d.row.snapshot_of in vdiMap
        ? vdiMap[d.row.snapshot_of]!
        : isSuspend && suspendSr !== NULL_REF
          ? suspendSr
          : defaultSr !== NULL_REF
            ? defaultSr
            : undefined;
    if (sr === undefined) throw new XapiError('VDI_NOT_IN_MAP', [d.vdi]);
    fullMap[d.vdi] = sr;
  }
  await assertCanMigrateVdis(call, fullMap);

  // Smaller disks first, older snapshots before newer ones.
  const all = [...vmDisks, ...suspendDisks, ...snapshotDisks].sort(
    (a, b) => a.row.virtual_size - b.row.virtual_size || a.row.snapshot_time.localeCompare(b.row.snapshot_time),
  );
  const unique = all.filter((d, i) => all.findIndex((x) => x.vdi === d.vdi) === i);
  const state = await svc.sync.backend.stat(vm.uuid).catch(() => undefined);
  const live = (vm.power_state === 'Running' || vm.power_state === 'Paused') && vm.resident_on === call.host.hostRef && !!state;
  const total = unique.reduce((n, d) => n + d.row.virtual_size, 0) || 1;
  const diskShare = live ? 0.9 : 1;
  const progress = new LatestProgress(call);
  /** old VDI -> new VDI, for every disk that moves. */
  const moved = new Map<string, string>();
  const moves: DiskMove[] = [];
  const made: [string, string][] = [];
  const reports: DiskCopyReport[] = [];
  // what a cross-pool migration makes in the other pool is marked as its own until claimed
  const mark = other ? `${CROSS_POOL_MARK}${(await db.tryGet('task', call.task))?.uuid ?? call.task}@${remote.host}` : undefined;
  /** The VM (and its snapshots) as imported into the other pool; the first is the VM. */
  let imported: string[] = [];
  let claimed = false;
  await setCancellable(db, call.task, true);
  try {
    let sofar = 0;
    for (const d of unique) {
      await call.checkCancelled();
      const sr = fullMap[d.vdi]!;
      if (intra && sr === d.row.SR) {
        sofar += d.row.virtual_size;
        continue;
      }
      const to = other ? await createRemoteTarget(other, d.row, sr, mark!) : await createTarget(call, storage, d.row, sr);
      made.push([to, sr]);
      moved.set(d.vdi, to);
      const url = other ? await remoteReceiverUrl(call, other, to) : await receiverUrl(call, sr, to, remote);
      const move = new DiskMove(storage, d.vdi, to, url, !!other);
      moves.push(move);
      const leaf = live && d.mirror ? await storage.attachPath(d.vdi, true) : undefined;
      const base = sofar;
      await move.start(
        leaf,
        (f) => progress.set((diskShare * (base + f * d.row.virtual_size)) / total),
        () => call.checkCancelled(),
      );
      sofar += d.row.virtual_size;
    }
    // The mirror's end-of-copy handshake (DISK_END, DISK_DONE) is what says the copy equals the
    // disk; reading both images whole at the switch is a test's check (it costs the guest seconds).
    const verify = verifyMirrorsAtSwitch();
    const finishAll = async () => {
      for (const m of moves) reports.push(await m.finish(verify));
    };
    if (other) {
      // The VM's records go to the other pool, its VDIs and VIFs on their copies and networks
      // (inter_pool_metadata_transfer); the import there reserves the destination's memory.
      await call.checkCancelled();
      imported = await transferMetadata(call, other, vmRef, {
        dryRun: false,
        copy,
        checkCpu: !flag(options, 'force') && vm.power_state !== 'Halted',
        maps: { vdis: moved, vifs },
        mark,
      });
      faultPoint('xpool.imported');
      const newVm = imported[0];
      if (newVm === undefined) throw new XapiError('INTERNAL_ERROR', ['the metadata import made no VM']);
      const complete = () => other.call('VM.pool_migrate_complete', newVm, remote.host);
      const claim = async () => {
        await complete();
        claimed = true;
      };
      const askClaimed = async () => {
        const state = await claimState(other.client, remote.session, { ref: newVm }, live);
        if (state === 'claimed') claimed = true;
        return state;
      };
      if (live) {
        await migrateHere(call, svc, vmRef, remote.host, options, {
          address: remote.address,
          vdiMap: {},
          beforeCommit: async () => {
            await call.checkCancelled();
            await finishAll();
          },
          commitWrites: () => [],
          progressFrom: diskShare,
          progress,
          report: () => reports.map(reportLine),
          crossPool: {
            session: remote.session,
            // a copy leaves the VM here whatever the other pool did: nothing to ask at a restart
            departing: async () => {
              if (!copy) await recordDeparture(call.host, { vm: vm.uuid, master: remote.master, session: remote.session });
            },
            claim,
            claimState: askClaimed,
            complete: async () => void (await complete()),
          },
        });
      } else {
        await finishAll();
        await call.checkCancelled();
        await claimSettled(call, claim, askClaimed);
      }
      for (const m of moves) m.release();
    } else {
      const switchWrites = await prepareSwitch(call, vmRef, snapshots, moved);
      if (live) {
        const vmMap = Object.fromEntries([...moved].filter(([old]) => vmDisks.some((d) => d.vdi === old)));
        await migrateHere(call, svc, vmRef, remote.host, options, {
          address: remote.address,
          vdiMap: vmMap,
          beforeCommit: async () => {
            await call.checkCancelled();
            await finishAll();
          },
          commitWrites: switchWrites,
          progressFrom: diskShare,
          progress,
          report: () => reports.map(reportLine),
        });
      } else {
        await finishAll();
        await call.checkCancelled();
        await Promise.all(switchWrites());
        await db.commit();
      }
    }
  } catch (e) {
    if (e instanceof CommitInDoubt) {
      // Whether the other pool took the VM is its record's to say: the VM waits here, halted, with
      // its disks; the copies' connections close (kept there if claimed); the departure settles it.
      for (const m of moves) m.release();
      const departure = { vm: vm.uuid, master: remote.master, session: remote.session, ...(live ? {} : { halted: true }) };
      if (!copy) void settleDeparture(call.host, departure, (ref) => forgetDeparted(storage, svc.sync, ref));
      throw new XapiError('INTERNAL_ERROR', [e.message]);
    }
    // after the switch (or the other pool's claim) the copies are the VM's disks, whatever failed after it
    const done = other ? claimed : await switched(call, vmRef, moved).catch(() => true);
    if (!done) {
      for (const m of moves) await m.abort();
      if (other) {
        await abandonRemote(call, other, imported, made);
        await clearDeparture(call.host, vm.uuid);
      }
      if (!other) {
        for (const [ref, sr] of made) {
          await destroyAnywhere(call, storage, ref, sr).catch((err: unknown) =>
            call.host.log.warn({ err, vdi: ref }, 'a copy of a disk could not be destroyed after a failed migration'),
          );
        }
      }
      throw e;
    }
    for (const m of moves) m.release();
    if (intra) throw e;
    call.host.log.warn({ err: e, vm: vmRef }, 'the migration to another pool was committed, then failed: the VM is there');
  }
  if (other) {
    // The VM is the other pool's: unless copied, it and its disks leave this pool. (A running
    // VM copied with `force` left its domain there: its record here says so.)
    if (!copy) {
      // its messages go with it (xapi: after the RRDs, before the VM's record goes)
      await sendVmMessages(call, remote.master, remote.session, vm.uuid).catch((err: unknown) =>
        call.host.log.warn({ err, vm: vmRef }, 'the messages of a VM migrated to another pool could not be sent'),
      );
      await forgetMigrated(call, svc, storage, vmRef, snapshots, moved);
    } else if (live) await untilStored(db, () => svc.sync.refresh(vmRef));
    await clearDeparture(call.host, vm.uuid);
    return imported[0]!;
  }
  // The VM runs on the copies: the old disks go, a suspend SR the destination cannot see is
  // forgotten (intra_pool_fix_suspend_sr).
  for (const [old] of moved) {
    const row = await db.tryGet('VDI', old);
    if (row)
      await destroyAnywhere(call, storage, old, row.SR).catch((err: unknown) =>
        call.host.log.warn({ err, vdi: old }, 'a migrated disk could not be destroyed'),
      );
  }
  for (const ref of [vmRef, ...snapshots]) {
    const row = await db.tryGet('VM', ref);
    if (row && row.suspend_SR !== NULL_REF && !(await seesSrs(call, remote.host, [row.suspend_SR])))
      await db.update('VM', ref, { suspend_SR: NULL_REF });
  }
  // a VM that moved to this same host builds on its new disks from now on
  if (live && remote.host === call.host.hostRef) await svc.sync.backend.add(await svc.sync.config(vmRef)).catch(() => undefined);
  return vmRef;
}

/** A disk's copy in the other pool: a VDI made there like the source, marked as the migration's. */
async function createRemoteTarget(other: RemotePool, from: Row<'VDI'>, srRef: string, mark: string): Promise<string> {
  return (await other.call('VDI.create', {
    name_label: from.name_label,
    name_description: from.name_description,
    SR: srRef,
    virtual_size: from.virtual_size,
    type: from.type,
    sharable: from.sharable === true,
    read_only: from.read_only === true,
    other_config: from.other_config,
    xenstore_data: from.xenstore_data,
    tags: from.tags,
    sm_config: { migrate_task: mark },
  } as unknown as Rpc)) as string;
}

/** The destination host's receiver for a copy in the other pool (its address in the map, the map's session). */
async function remoteReceiverUrl(call: Call, other: RemotePool, vdi: string): Promise<string> {
  const uuid = (await other.call('VDI.get_uuid', vdi)) as string;
  const host = other.address.includes(':') ? `[${other.address}]` : other.address;
  return `https://${host}:${call.host.config.httpsPort}${DISK_MIRROR_PATH}${uuid}?session_id=${encodeURIComponent(other.session)}`;
}

/**
 * A failed migration to another pool, before its claim: what it made there goes (the VMs
 * imported, by uuid as xapi finds them, and the copies). The receivers remove whatever is left
 * of it when the held connections close.
 */
async function abandonRemote(call: Call, other: RemotePool, imported: string[], made: [string, string][]): Promise<void> {
  const warn = (err: unknown, what: string) => call.host.log.warn({ err, what }, 'cleaning up a failed migration to another pool');
  for (const ref of imported) await other.call('VM.destroy', ref).catch((e: unknown) => warn(e, ref));
  for (const [ref] of made) await other.call('VDI.destroy', ref).catch((e: unknown) => warn(e, ref));
}

/**
 * After a migration to another pool: the VM and its snapshots leave this pool's database (with
 * their devices and metrics) and the disks that moved are destroyed (xapi: force_state_reset,
 * then the VBDs, the VMs; the VDIs by the storage's clean-up).
 */
async function forgetMigrated(
  call: Call,
  svc: VmService,
  storage: Storage,
  vmRef: string,
  snapshots: string[],
  moved: Map<string, string>,
): Promise<void> {
  await forgetRecords(call.db, svc.sync, [vmRef, ...snapshots]);
  for (const [old] of moved) {
    const row = await call.db.tryGet('VDI', old);
    if (row)
      await destroyAnywhere(call, storage, old, row.SR).catch((err: unknown) =>
        call.host.log.warn({ err, vdi: old }, 'a migrated disk could not be destroyed'),
      );
  }
  await call.db.commit();
}

/** The records of VMs gone to another pool: their VBDs, VIFs, consoles and metrics, and the VMs. */
async function forgetRecords(db: Db, sync: XenopsSync, vms: string[]): Promise<void> {
  for (const ref of vms) {
    const vm = await db.tryGet('VM', ref);
    if (!vm) continue;
    for (const [cls, list] of [
      ['VBD', vm.VBDs],
      ['VIF', vm.VIFs],
    ] as const) {
      for (const r of list) {
        const row = await db.tryGet(cls, r);
        if (!row) continue;
        const metricsCls = cls === 'VBD' ? 'VBD_metrics' : 'VIF_metrics';
        if (row.metrics !== NULL_REF && (await db.tryGet(metricsCls, row.metrics))) await db.destroy(metricsCls, row.metrics);
        await db.destroy(cls, r);
      }
    }
    for (const r of vm.consoles) if (await db.tryGet('console', r)) await db.destroy('console', r);
    if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) await db.destroy('VM_metrics', vm.metrics);
    if (vm.guest_metrics !== NULL_REF && (await db.tryGet('VM_guest_metrics', vm.guest_metrics)))
      await db.destroy('VM_guest_metrics', vm.guest_metrics);
    await db.destroy('VM', ref);
    sync.forget(ref);
  }
}

/**
 * A VM another pool claimed while this host's previous process was migrating it there
 * (settleDepartures, at start-up): it and its snapshots leave this pool, with the disks they had
 * here (on SRs this host has: the source had them attached).
 */
export async function forgetDeparted(storage: Storage, sync: XenopsSync, vmRef: string): Promise<void> {
  const db = storage.host.db;
  const vm = await db.get('VM', vmRef);
  const vms = [vmRef, ...vm.snapshots];
  const disks = new Set<string>();
  for (const ref of vms) {
    const row = await db.tryGet('VM', ref);
    if (!row) continue;
    if (row.suspend_VDI !== NULL_REF) disks.add(row.suspend_VDI);
    for (const d of await disksOf(db, row.VBDs, false)) disks.add(d.vdi);
  }
  await forgetRecords(db, sync, vms);
  for (const vdi of disks) {
    const row = await db.tryGet('VDI', vdi);
    if (!row) continue;
    try {
      const { driver, ctx } = await storage.context(row.SR);
      await driver.vdiDelete(ctx, row.location);
      storage.kickGc(row.SR);
    } catch (e) {
      storage.host.log.warn({ err: e, vdi }, 'the data of a disk migrated to another pool could not be deleted');
    }
    await destroyVdiRecord(db, vdi);
  }
  await db.commit();
}

/** A disk's figures as the migration log keeps them. */
function reportLine(r: DiskCopyReport): object {
  return {
    vdi: r.vdi,
    to: r.to,
    virtualSize: r.virtualSize,
    bytes: r.bytes,
    copyMs: Math.round(r.copyMs * 1000) / 1000,
    readWaitMs: Math.round(r.readWaitMs * 1000) / 1000,
    sendMs: Math.round(r.sendMs * 1000) / 1000,
    mirroredWrites: r.mirroredWrites,
    ...(r.sourceSha256 ? { sourceSha256: r.sourceSha256, destinationSha256: r.destinationSha256 } : {}),
  };
}

/**
 * The switch (intra_pool_vdi_remap, update_snapshot_info): the VBDs of the VM and of its
 * snapshots, and the suspend images, on the copies; the copies no longer marked as being filled
 * and linked as their originals were. What to write is read now; the writes are issued all at
 * once when the switch comes (so they travel with resident_on, in one batch and one commit).
 */
async function prepareSwitch(
  call: Call,
  vmRef: string,
  snapshots: string[],
  moved: Map<string, string>,
): Promise<() => Promise<unknown>[]> {
  const db = call.db;
  const writes: (() => Promise<unknown>)[] = [];
  for (const ref of [vmRef, ...snapshots]) {
    const vm = await db.tryGet('VM', ref);
    if (!vm) continue;
    for (const vbdRef of vm.VBDs) {
      const vbd = await db.tryGet('VBD', vbdRef);
      const to = vbd && moved.get(vbd.VDI);
      if (to) writes.push(() => db.update('VBD', vbdRef, { VDI: to }));
    }
    const suspend = moved.get(vm.suspend_VDI);
    if (suspend) writes.push(() => db.update('VM', ref, { suspend_VDI: suspend }));
  }
  for (const [old, to] of moved) {
    const row = await db.get('VDI', old);
    const snapshotOf = moved.get(row.snapshot_of) ?? row.snapshot_of;
    writes.push(() => db.mapRemove('VDI', to, 'sm_config', 'migrate_task'));
    if (row.is_a_snapshot === true) writes.push(() => db.update('VDI', to, { snapshot_of: snapshotOf }));
  }
  return () => writes.map((w) => w());
}

/** Whether the switch happened: a disk of the VM (or its suspend image) is on its copy. */
async function switched(call: Call, vmRef: string, moved: Map<string, string>): Promise<boolean> {
  const copies = new Set(moved.values());
  if (copies.size === 0) return true;
  const vm = await call.db.get('VM', vmRef);
  if (copies.has(vm.suspend_VDI)) return true;
  for (const ref of vm.VBDs) if (copies.has((await call.db.get('VBD', ref)).VDI)) return true;
  // only snapshots' disks moved: the switch wrote them with the rest
  for (const s of vm.snapshots) {
    for (const ref of (await call.db.tryGet('VM', s))?.VBDs ?? []) if (copies.has((await call.db.get('VBD', ref)).VDI)) return true;
  }
  return false;
}

// ---- VDI.pool_migrate ---------------------------------------------------------------------------

/**
 * VDI.pool_migrate on the coordinator (message_forwarding.ml): the VM the disk is attached to
 * (VDI_NEEDS_VM_FOR_MIGRATE [vdi] when none), its operation migrate_send, memory reserved on its
 * host, the VDI's operation mirror, then the work on that host.
 */
async function vdiPoolMigrate(call: Call, svc: VmService, vdiRef: string, srRef: string, options: Record<string, string>): Promise<string> {
  const db = call.db;
  if (isForwardedHere(call)) return vdiPoolMigrateHere(call, svc, vdiRef, srRef, options);
  const vbds = await db.find('VBD', { VDI: vdiRef });
  if (vbds.length === 0) throw new XapiError('VDI_NEEDS_VM_FOR_MIGRATE', [vdiRef]);
  const vmRef = vbds[0]![1].VM;
  const opts = { ...options, __internal__vm: vmRef };
  const args: Rpc[] = [vdiRef, srRef, opts];
  return withVmOperation(call, vmRef, 'migrate_send', async () => {
    const vm = await db.get('VM', vmRef);
    const live = vm.power_state === 'Running' || vm.power_state === 'Paused';
    const host = live ? vm.resident_on : vm.scheduled_to_be_resident_on !== NULL_REF ? vm.scheduled_to_be_resident_on : undefined;
    const choose = async () => {
      if (host) return host;
      const srs = [...new Set([...(await vmSrs(call, vmRef)), srRef])];
      return hostSeeing(call, srs);
    };
    return withVmPlacedOnHost(call, vmRef, choose, 'vm_migrate', (on) =>
      svc.sync.storage.withOp(
        call,
        { vdi: [vdiRef, 'mirror'] },
        async () => (await runOn(call, on, 'VDI.pool_migrate', args, () => vdiPoolMigrateHere(call, svc, vdiRef, srRef, opts))) as string,
      ),
    );
  });
}

/**
 * vdi_pool_migrate on the VM's host: the VDI's checks (VDI_INCOMPATIBLE_TYPE, VDI_CBT_ENABLED,
 * VBD_MISSING), a full map (this disk to `srRef`, the others where they are), a destination that
 * sees all those SRs (this host if it does), the management network's migrate_receive there,
 * then the checks and the storage migration; returns the disk's new VDI.
 */
async function vdiPoolMigrateHere(
  call: Call,
  svc: VmService,
  vdiRef: string,
  srRef: string,
  options: Record<string, string>,
): Promise<string> {
  const db = call.db;
  const vdi = await db.get('VDI', vdiRef);
  if (vdi.type === 'cbt_metadata') throw new XapiError('VDI_INCOMPATIBLE_TYPE', [vdiRef, 'cbt_metadata']);
  if (vdi.cbt_enabled === true) throw new XapiError('VDI_CBT_ENABLED', [vdiRef]);
  const vmRef = options.__internal__vm;
  if (vmRef === undefined) throw new XapiError('INTERNAL_ERROR', ['Not_found']);
  let vbdRef: string | undefined;
  for (const ref of vdi.VBDs) if ((await db.tryGet('VBD', ref))?.VM === vmRef) vbdRef ??= ref;
  if (!vbdRef) throw new XapiError('VBD_MISSING', []);
  const vm = await db.get('VM', vmRef);
  const vdiMap: Record<string, string> = {};
  for (const ref of vm.VBDs) {
    const vbd = await db.get('VBD', ref);
    if (vbd.empty === true || vbd.VDI === NULL_REF || vbd.VDI === vdiRef) continue;
    vdiMap[vbd.VDI] = (await db.get('VDI', vbd.VDI)).SR;
  }
  vdiMap[vdiRef] = srRef;
  const srs = [...new Set(Object.values(vdiMap))];
  const destHost = (await seesSrs(call, call.host.hostRef, srs)) ? call.host.hostRef : await hostSeeing(call, srs);
  const [management] = await db.find('PIF', { host: call.host.hostRef, management: true });
  if (!management) throw new XapiError('HOST_HAS_NO_MANAGEMENT_IP', []);
  const dest = await migrateReceive(call, destHost, management[1].network);
  await assertCanMigrate(call, svc, vmRef, dest, vdiMap, {}, {});
  await sendHere(call, svc, svc.sync.storage, vmRef, dest, vdiMap, {}, {});
  return (await db.get('VBD', vbdRef)).VDI;
}

export function register(r: Registry, svc: VmService): void {
  r.implement('host.migrate_receive', (call, [host, network]) => migrateReceive(call, host, network))
    .implement('VM.assert_can_migrate', async (call, [vm, dest, , vdiMap, vifMap, options]) => {
      await assertCanMigrate(call, svc, vm, dest, vdiMap, vifMap, options);
    })
    .implement('VM.migrate_send', (call, [vm, dest, live, vdiMap, vifMap, options, vgpuMap]) =>
      migrateSend(call, svc, vm, dest, vdiMap, vifMap, options, [vm, dest, live, vdiMap, vifMap, options, vgpuMap]),
    )
    .implement('VDI.pool_migrate', (call, [vdi, sr, options]) => vdiPoolMigrate(call, svc, vdi, sr, options));
}

/**
 * At start-up: the copies a storage migration was filling when a process died (sm_config
 * migrate_task naming a task no longer pending), on SRs this host has, are removed.
 */
export async function sweepUnfinishedMirrors(storage: Storage): Promise<void> {
  const host = storage.host;
  const db = host.db;
  // Migrations from another pool into this one: their sender's connections did not survive
  // this restart, so what they brought in and nobody claimed goes (abandonIncoming).
  const incoming = new Set<string>();
  for (const [, vm] of await db.all('VM')) {
    const mark = vm.other_config.migrate_task;
    if (mark === undefined || vm.resident_on !== NULL_REF) continue;
    // a running VM's reserved here; a halted one (perhaps without disks) named here by its mark
    if (vm.scheduled_to_be_resident_on === host.hostRef || markHost(mark) === host.hostRef) incoming.add(mark);
  }
  for (const [ref, vdi] of await db.all('VDI')) {
    const task = vdi.sm_config.migrate_task;
    if (task === undefined) continue;
    const sr = await db.tryGet('SR', vdi.SR);
    if (!sr) continue;
    // on an SR this host has (a shared one: every host that has it may remove the copy)
    if ((await db.find('PBD', { SR: vdi.SR, host: host.hostRef })).length === 0) continue;
    if (task.startsWith(CROSS_POOL_MARK)) {
      // another host's incoming migration (a shared SR): its connections or its restart settle it
      const to = markHost(task);
      if (to === undefined || to === host.hostRef || !(await db.tryGet('host', to))) incoming.add(task);
      continue;
    }
    const row = task.startsWith('OpaqueRef:') ? await db.tryGet('task', task) : undefined;
    if (row?.status === 'pending') continue;
    await removeHalfCopied(storage, ref);
  }
  for (const mark of incoming) await abandonIncoming(storage, mark);
}
