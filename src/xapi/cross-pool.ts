// What a VM migration to another pool adds to storage motion (xapi_vm_migrate.ml's cross_pool
// branches): the other pool reached through the map its host.migrate_receive returned (its
// coordinator's address, a session there), assert_can_migrate's remote checks, the VIF map
// inferred, and the VM's metadata sent to the destination host's /import_metadata with its VDIs
// and VIFs remapped (Importexport.remote_metadata_export_import).
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Call, HostContext } from '../api/context.js';
import { writeFileAtomic } from '../util/files.js';
import { XapiError } from '../rpc/errors.js';
import { ConnectionFailed, type XapiClient } from '../rpc/client.js';
import type { Rpc } from '../rpc/rpc.js';
import { writeMetadataTar } from '../storage/xva/index.js';
import { NULL_REF } from '../schema/types.js';
import { peer } from './forward.js';
import { softwareVersionsNotDecreasing } from './rpu.js';
import { exportHeader, exportObjects, type MigrationMaps } from './vm-export.js';
import { request } from 'node:https';

/** The destination pool of a cross-pool migration, through the session its migrate_receive made. */
export class RemotePool {
  readonly client: XapiClient;
  constructor(
    call: Call,
    /** The destination host's ref there. */
    readonly host: string,
    /** The destination host's address (the xenops URL's). */
    readonly address: string,
    /** The destination pool's coordinator's address (the master URL's). */
    readonly master: string,
    readonly session: string,
  ) {
    this.client = peer(call.host, master);
  }

  /** A call on the other pool's coordinator with the map's session. */
  call(method: string, ...params: Rpc[]): Promise<Rpc> {
    return this.client.call(method, [this.session, ...params]);
  }
}

/**
 * infer_vif_map: each VIF (of the VM and of its snapshots) to the network of the other pool
 * it goes on: the map's, else that of a mapped VIF with the same MAC; else VIF_NOT_IN_MAP [vif].
 */
export async function inferVifMap(call: Call, vifs: string[], vifMap: Record<string, string>): Promise<Map<string, string>> {
  const macs = new Map<string, string>();
  for (const [vif, net] of Object.entries(vifMap)) {
    const row = await call.db.tryGet('VIF', vif);
    if (row) macs.set(row.MAC, net);
  }
  const out = new Map<string, string>();
  for (const vif of vifs) {
    const given = vifMap[vif];
    const net = given ?? macs.get((await call.db.get('VIF', vif)).MAC);
    if (net === undefined) throw new XapiError('VIF_NOT_IN_MAP', [vif]);
    out.set(vif, net);
  }
  return out;
}

/** The VIFs of the VM and of its snapshots. */
export async function vifsWithSnapshots(call: Call, vmRef: string): Promise<string[]> {
  const vm = await call.db.get('VM', vmRef);
  const out = [...vm.VIFs];
  for (const s of vm.snapshots) out.push(...((await call.db.tryGet('VM', s))?.VIFs ?? []));
  return out;
}

/**
 * assert_can_migrate's cross-pool half, in xapi's order: the destination's versions not older
 * (VM_HOST_INCOMPATIBLE_VERSION_MIGRATE [vm, host]); the SRs able to migrate (the destination's
 * SMs asked of the other pool); `copy` only of a halted VM unless `force` (VM_BAD_POWER_STATE [vm,
 * halted, actual]); the VM's virtual hardware platform version among the host's; the host
 * enabled (HOST_DISABLED [host]) and with enough pCPUs (HOST_NOT_ENOUGH_PCPUS [vcpus, pcpus]); every
 * VIF mapped (VIF_NOT_IN_MAP [vif]); then the metadata import tried as a dry run on the
 * destination (its memory, its CPU, a VM of the same uuid there...).
 */
export async function assertCanMigrateCrossPool(
  call: Call,
  vmRef: string,
  remote: RemotePool,
  vifMap: Record<string, string>,
  options: { force: boolean; copy: boolean },
  assertSrSupport: (destFeatures: (sr: string) => Promise<Set<string>>) => Promise<void>,
): Promise<void> {
  const db = call.db;
  const vm = await db.get('VM', vmRef);
  const source = vm.resident_on !== NULL_REF ? vm.resident_on : (await db.get('pool', call.host.poolRef)).master;
  const from = (await db.get('host', source)).software_version;
  const to = (await remote.call('host.get_software_version', remote.host)) as Record<string, string>;
  if (!softwareVersionsNotDecreasing(from, to)) throw new XapiError('VM_HOST_INCOMPATIBLE_VERSION_MIGRATE', [vmRef, remote.host]);
  // the destination SR's SM, as the other pool lists them (one SM of its type, else no features)
  type Sms = Record<string, { type: string; features: Record<string, number> }>;
  let sms: Sms | undefined;
  await assertSrSupport(async (sr) => {
    const type = (await remote.call('SR.get_type', sr)) as string;
    sms ??= (await remote.call('SM.get_all_records')) as unknown as Sms;
    const matching = Object.values(sms!).filter((sm) => sm.type === type);
    return new Set(matching.length === 1 ? Object.keys(matching[0]!.features) : []);
  });
  if (!options.force && options.copy && vm.power_state !== 'Halted')
    throw new XapiError('VM_BAD_POWER_STATE', [vmRef, 'halted', vm.power_state.toLowerCase()]);
  const versions = ((await remote.call('host.get_virtual_hardware_platform_versions', remote.host)) as number[]).map(Number);
  if (!versions.includes(vm.hardware_platform_version))
    throw new XapiError('VM_HOST_INCOMPATIBLE_VIRTUAL_HARDWARE_PLATFORM_VERSION', [
      remote.host,
      `[${versions.join('; ')}]`,
      vmRef,
      String(vm.hardware_platform_version),
    ]);
  if ((await remote.call('host.get_enabled', remote.host)) !== true) throw new XapiError('HOST_DISABLED', [remote.host]);
  const cpuInfo = (await remote.call('host.get_cpu_info', remote.host)) as Record<string, string>;
  const pcpus = Number.parseInt(cpuInfo.cpu_count ?? '0', 10) || 0;
  const unrestricted = ['true', '1'].includes(vm.platform['vcpu-unrestricted']?.toLowerCase() ?? '');
  if (vm.VCPUs_max > pcpus && !unrestricted) throw new XapiError('HOST_NOT_ENOUGH_PCPUS', [String(vm.VCPUs_max), String(pcpus)]);
  const vifs = await inferVifMap(call, await vifsWithSnapshots(call, vmRef), vifMap);
  try {
    const made = await transferMetadata(call, remote, vmRef, {
      dryRun: true,
      copy: options.copy,
      checkCpu: !options.force && vm.power_state !== 'Halted',
      maps: { vdis: new Map(), vifs },
    });
    if (made.length > 0)
      throw new XapiError('INTERNAL_ERROR', ['assert_can_migrate: inter_pool_metadata_transfer returned a nonempty list']);
  } catch (e) {
    if (e instanceof ConnectionFailed) throw new XapiError('CANNOT_CONTACT_HOST', [remote.address]);
    throw e;
  }
}

/** How often the sender asks the other pool whether its metadata import is over. */
const IMPORT_POLL_MS = 50;

/**
 * inter_pool_metadata_transfer: the VM's metadata (with its snapshots unless `copy`) exported
 * with the maps written in (other_config maps_to on each VDI and VIF), PUT to the destination
 * host's /import_metadata under a task of the other pool, whose outcome is the result: the VMs
 * made there (none for a dry run), or its error. `mark` tags what a live import makes, so the
 * destination can tell the migration's objects until the commit claims them: written, as the
 * maps are, into the export (each VM's other_config migrate_task), not a query parameter xapi's
 * /import_metadata lacks.
 */
export async function transferMetadata(
  call: Call,
  remote: RemotePool,
  vmRef: string,
  o: { dryRun: boolean; copy: boolean; checkCpu: boolean; maps: MigrationMaps; mark?: string },
): Promise<string[]> {
  const maps = { ...o.maps, ...(o.mark ? { mark: o.mark } : {}) };
  const { objects } = await exportObjects(call, vmRef, { withSuspendImage: true, snapshots: !o.copy, maps });
  const chunks: Buffer[] = [];
  for await (const c of writeMetadataTar(exportHeader(call), objects)) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  const task = (await remote.call('task.create', 'VM metadata import', '')) as string;
  try {
    const query = new URLSearchParams({
      restore: String(!o.copy),
      live: 'true',
      dry_run: String(o.dryRun),
      export_snapshots: String(!o.copy),
      check_cpu: String(o.checkCpu),
      session_id: remote.session,
      task_id: task,
    });
    const host = remote.address.includes(':') ? `[${remote.address}]` : remote.address;
    await put(`https://${host}:${call.host.config.httpsPort}/import_metadata?${query}`, body);
    for (;;) {
      const status = (await remote.call('task.get_status', task)) as string;
      if (status === 'success') {
        const result = (await remote.call('task.get_result', task)) as string;
        return result.match(/OpaqueRef:[0-9a-fA-F-]+/g) ?? [];
      }
      if (status === 'failure') {
        const [code, ...params] = (await remote.call('task.get_error_info', task)) as string[];
        throw new XapiError(code ?? 'INTERNAL_ERROR', code ? params : ['VM metadata import failed']);
      }
      if (status === 'cancelling' || status === 'cancelled') throw new XapiError('TASK_CANCELLED', [task]);
      await new Promise((r) => setTimeout(r, IMPORT_POLL_MS));
    }
  } finally {
    await remote.call('task.destroy', task).catch(() => undefined);
  }
}

/** One PUT of a small body over HTTPS (certificate not verified, as between xapi hosts); the status is the task's to tell. */
function put(url: string, body: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'PUT', rejectUnauthorized: false, headers: { 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => resolve());
      res.on('error', (e) => reject(new ConnectionFailed(url, e)));
    });
    req.on('error', (e) => reject(new ConnectionFailed(url, e)));
    req.end(body);
  });
}

// ---- departures: the source's record of a VM handed over to another pool ----------------------

/** Where a host keeps, one file per VM, the migrations to another pool it committed to. */
const DEPARTURES = 'xpool-departures';

/** What the source needs to ask the other pool whether it claimed the VM. */
export interface Departure {
  vm: string;
  master: string;
  session: string;
  /** A halted VM's migration: claimed there means unmarked, not resident. */
  halted?: boolean;
}

const departurePath = (host: HostContext, uuid: string) => join(host.config.stateDir, DEPARTURES, `${uuid}.json`);

/**
 * Written (durably) before the source lets go of a VM migrating to another pool: if this process
 * dies before it hears whether the other pool claimed the VM, its next start asks that pool
 * (settleDepartures) instead of keeping a VM that may be running there.
 */
export async function recordDeparture(host: HostContext, d: Departure): Promise<void> {
  await mkdir(join(host.config.stateDir, DEPARTURES), { recursive: true });
  await writeFileAtomic(departurePath(host, d.vm), JSON.stringify(d));
}

export async function clearDeparture(host: HostContext, uuid: string): Promise<void> {
  await rm(departurePath(host, uuid), { force: true });
}

/** How often a start-up asks an unreachable other pool again about a VM it may have claimed. */
const DEPARTURE_RETRY_MS = 5_000;
/** ... for ten minutes; then the file stays for the next start. */
const DEPARTURE_TRIES = 120;

/**
 * At start-up, for each migration to another pool this host's previous process committed to
 * without hearing the outcome: the other pool is asked for the VM (by uuid, with the map's
 * session). Claimed there (resident on a host, no migrate_task), it leaves this pool's database
 * with the disks it was copied from (`forget`); not there or not claimed, it stays here, halted
 * with its disks. An unreachable pool is asked again until it answers.
 */
export async function settleDepartures(host: HostContext, forget: (vmRef: string) => Promise<void>): Promise<void> {
  const dir = join(host.config.stateDir, DEPARTURES);
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    let d: Departure;
    try {
      d = JSON.parse(await readFile(join(dir, name), 'utf8')) as Departure;
    } catch (e) {
      // written atomically, so only ever whole: one that does not parse is not ours to act on
      host.log.warn({ err: e, file: name }, 'an unreadable departure record: ignored');
      continue;
    }
    void settleDeparture(host, d, forget);
  }
}

/**
 * One departure settled (see settleDepartures): also what a running source does when the other
 * pool's answer to its claim was lost and asking did not tell (the VM is halted here meanwhile).
 */
export async function settleDeparture(host: HostContext, d: Departure, forget: (vmRef: string) => Promise<void>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      const ref = await host.db.refByUuid('VM', d.vm);
      const row = ref ? await host.db.tryGet('VM', ref) : undefined;
      if (ref && row && row.resident_on === NULL_REF) {
        if ((await claimState(peer(host, d.master), d.session, { uuid: d.vm }, !d.halted)) === 'claimed') {
          await forget(ref);
          host.log.info({ vm: d.vm }, 'a VM this host migrated to another pool was claimed there: it leaves this pool');
        }
      }
      await clearDeparture(host, d.vm);
      return;
    } catch (e) {
      // the session there is gone: nobody can tell any more; the VM stays here, halted
      if (e instanceof XapiError && e.code === 'SESSION_INVALID') return clearDeparture(host, d.vm);
      host.log.warn({ err: e, vm: d.vm }, 'cannot ask the other pool about a VM migrated there: trying again');
      if (attempt >= DEPARTURE_TRIES) return;
      await new Promise((r) => setTimeout(r, DEPARTURE_RETRY_MS).unref());
    }
  }
}

/**
 * Whether the other pool claimed a VM migrating there, from its record (by uuid, or by its ref
 * there): claimed (its migrate_task gone and, for a running VM, resident on a host), unclaimed
 * (still marked), or gone (not there).
 */
export async function claimState(
  client: XapiClient,
  session: string,
  vm: { uuid: string } | { ref: string },
  running = true,
): Promise<'claimed' | 'unclaimed' | 'gone'> {
  const missing = (code: string) => (e: unknown) => {
    if (e instanceof XapiError && e.code === code) return undefined;
    throw e;
  };
  const there =
    'ref' in vm ? vm.ref : ((await client.call('VM.get_by_uuid', [session, vm.uuid]).catch(missing('UUID_INVALID'))) as string | undefined);
  const rec = there
    ? ((await client.call('VM.get_record', [session, there]).catch(missing('HANDLE_INVALID'))) as Record<string, Rpc> | undefined)
    : undefined;
  if (!rec) return 'gone';
  const marked = 'migrate_task' in (rec.other_config as object);
  return !marked && (!running || rec.resident_on !== NULL_REF) ? 'claimed' : 'unclaimed';
}
