// VM.pool_migrate: live migration of a running VM to another host of the pool (xapi's
// message_forwarding.ml VM.pool_migrate, xapi_vm_migrate.ml pool_migrate and
// pool_migrate_complete). The coordinator checks and marks, reserves the destination and hands
// the work to the source host, whose domain manager streams the memory straight to the
// destination's (src/host/migrate-receive.ts serves that end); the coordinator never carries it.
//
// What decides where the VM is: the source writes resident_on (and the new domid) once the
// destination holds the whole image, paused, and before it unpauses it. Before that write any
// failure leaves the VM running on the source; after it the VM is the destination's, even if a
// process dies before the end (each host's next start settles its paused copy by the database,
// XenopsSync.resync; a destination whose sender vanished asks the database until the
// coordinator's operation is over). event.from never sees the VM Halted or on two hosts:
// resident_on changes once.
import { randomUUID } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Call, HostContext, Registry } from '../api/context.js';
import { newRef } from '../api/implicit.js';
import { XapiError } from '../rpc/errors.js';
import type { Row } from '../db/interface.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { faultPoint } from '../util/fault-point.js';
import { MIGRATE_TASK } from './vm-object-import.js';
import { abandonIncoming, holdIncoming } from './disk-mirror.js';
import { untilStored } from '../db/until-stored.js';
import { CommitInDoubt, DomainError, type MigrationChannel, type MigrationReport } from '../xenopsd/interface.js';
import { ConnectionFailed } from '../rpc/client.js';
import { MIGRATION_PATH } from '../xenopsd/migration-wire.js';
import { withVmOperation } from './vm-lifecycle.js';
import { withVmPlacedOnHost } from './host-operations.js';
import { callOn, isForwardedHere, runOn } from './forward.js';
import { runOnResident } from './forward-to.js';
import { xenopsError } from './xenops-sync.js';
import { assertMigrationDirection } from './rpu.js';
import type { VmService } from './vm.js';

/** xapi's bool_of_string on an option: "true"/"false" only; anything else is false. */
const option = (options: Record<string, string>, key: string) => options[key] === 'true';

/** How many times the source tries a migration the guest interrupted (xapi's migrate_with_retry). */
const MIGRATE_TRIES = 3;

/** The file each host appends its migrations' figures to, one JSON line each (the benchmark reads it). */
export const MIGRATION_LOG = 'migrations.log';

/**
 * Cpuid_helpers.assert_vm_is_compatible, for a VM that is not Halted: the CPU it last booted on
 * (VM.last_boot_CPU_flags) against the host's (cpu_info): the same vendor, and its features a
 * subset of the host's for the VM's domain type. xapi fails when the host lacks the leveling
 * keys altogether; hosts here report none yet, and domains report no featureset, so the
 * features are compared only when both sides have them.
 */
export async function assertCpuCompatible(call: Call, vmRef: string, vm: Row<'VM'>, hostRef: string): Promise<void> {
  if (vm.power_state === 'Halted') return;
  const host = await call.db.get('host', hostRef);
  const fail = (why: string) => new XapiError('VM_INCOMPATIBLE_WITH_THIS_HOST', [vmRef, hostRef, why]);
  const flags = vm.last_boot_CPU_flags;
  if (flags.vendor !== undefined && flags.vendor !== host.cpu_info.vendor)
    throw fail('VM last booted on a host which had a CPU from a different vendor.');
  const hostFeatures = host.cpu_info[vm.domain_type === 'pv' ? 'features_pv' : 'features_hvm'];
  if (flags.features !== undefined && hostFeatures !== undefined && !featuresWithin(flags.features, hostFeatures))
    throw fail("VM last booted on a CPU with features this host's CPU does not have.");
}

/** CPU policies as xapi writes them (hex words joined by '-'): is every bit of `a` in `b`? */
function featuresWithin(a: string, b: string): boolean {
  const words = (s: string) => s.split('-').map((w) => Number.parseInt(w, 16) >>> 0);
  const [wa, wb] = [words(a), words(b)];
  return wa.every((w, i) => (w & ~(wb[i] ?? 0)) >>> 0 === 0);
}

/**
 * VM.pool_migrate on the coordinator, in xapi's order: the CPU check (unless `force`), the VM's
 * operation (VM_BAD_POWER_STATE, OTHER_OPERATION_IN_PROGRESS... strict unless `force`), a
 * rolling upgrade's direction, the destination reserved under the lock with assert_can_boot_here
 * (HOST_NOT_LIVE, HOST_DISABLED, VM_REQUIRES_SR/NET, HOST_NOT_ENOUGH_FREE_MEMORY...) and its
 * host operation vm_migrate, then the work forwarded to the source (HOST_OFFLINE if it is not
 * live). The member's half (the forwarded call) migrates.
 */
export async function poolMigrate(
  call: Call,
  svc: VmService,
  vmRef: string,
  hostRef: string,
  options: Record<string, string>,
): Promise<void> {
  if (isForwardedHere(call)) return migrateHere(call, svc, vmRef, hostRef, options);
  const db = call.db;
  const vm = await db.get('VM', vmRef);
  await db.get('host', hostRef);
  const force = option(options, 'force');
  if (!force) await assertCpuCompatible(call, vmRef, vm, hostRef);
  const source = vm.resident_on;
  await withVmOperation(
    call,
    vmRef,
    'pool_migrate',
    async () => {
      await assertMigrationDirection(db, (await db.get('VM', vmRef)).resident_on, hostRef);
      // reserve_memory_for_vm: the destination checked and reserved under the lock, so two
      // migrations (or a start) cannot both count on the same free memory
      const choose = async () => {
        await svc.assertCanBootHere(call, vmRef, hostRef);
        return hostRef;
      };
      await withVmPlacedOnHost(call, vmRef, choose, 'vm_migrate', () =>
        runOnResident(call, vmRef, 'VM.pool_migrate', [vmRef, hostRef, options], () => migrateHere(call, svc, vmRef, hostRef, options)),
      );
    },
    { strict: !force },
  );
  await migratedMessage(call, vmRef, source, hostRef);
}

/** The VM_MIGRATED message (priority 5) xapi leaves on the VM. */
export async function migratedMessage(call: Call, vmRef: string, from: string, to: string): Promise<void> {
  const vm = await call.db.get('VM', vmRef);
  const a = await call.db.tryGet('host', from);
  const b = await call.db.tryGet('host', to);
  const body = `VM '${vm.name_label}' (uuid: ${vm.uuid}) migrated from host '${a?.name_label ?? ''}' (uuid: ${a?.uuid ?? ''}) to host '${b?.name_label ?? ''}' (uuid: ${b?.uuid ?? ''})`;
  await call.db.create('message', newRef(), {
    uuid: randomUUID(),
    name: 'VM_MIGRATED',
    priority: 5,
    cls: 'VM',
    obj_uuid: vm.uuid,
    timestamp: formatDateTime(new Date(call.host.now())),
    body,
  });
}

/** What a storage migration (VM.migrate_send, storage-motion.ts) adds to the memory's move. */
export interface DiskSwitch {
  /** The destination's address (the network host.migrate_receive named). */
  address: string;
  /** The VDIs the disks are on at the destination (old ref -> new), for the domain built there. */
  vdiMap: Record<string, string>;
  /** The guest is paused here and whole there: the disks' mirrors end, their copies stored. */
  beforeCommit(): Promise<void>;
  /** The writes that go with resident_on, in the same batch (the VBDs on their new VDIs). */
  commitWrites(): Promise<unknown>[];
  /** The task's progress is the disks' up to this share; the memory has the rest. */
  progressFrom: number;
  /** The task's progress writer the disks used (one writer, so the values land in order). */
  progress: LatestProgress;
  /** What the disks' copies did, for the migration's log line. */
  report(): object[];
  /** A migration to another pool: where the VM goes there, and how it is handed over. */
  crossPool?: CrossPoolSwitch;
}

/**
 * A migration to another pool: the destination is not a host of this database, its receivers
 * take the session its migrate_receive made, and the commit is the other pool's: `claim`, with
 * the guest paused here and whole there, makes the VM imported there resident on its host
 * (durably, in that pool's database); `complete`, after, brings its records up to date.
 */
export interface CrossPoolSwitch {
  session: string;
  /** Before this pool lets go of the VM: what its next start needs to ask the other pool (recordDeparture). */
  departing(): Promise<void>;
  /** VM.pool_migrate_complete there: the claim, which a VM already claimed answers again. */
  claim(domid: number): Promise<void>;
  /** Whether the other pool holds the VM claimed, from its record (claimState). */
  claimState(): Promise<'claimed' | 'unclaimed' | 'gone'>;
  complete(): Promise<void>;
}

/**
 * The source's work (xapi_vm_migrate.ml pool_migrate): the domain manager migrates the domain
 * straight to the destination's, the commit writing resident_on there; tried again if the
 * guest interrupted it; then the destination brings its records up to date
 * (VM.pool_migrate_complete). With `disks` (a storage migration) the domain there is built on
 * the disks' copies, which the commit makes the VM's.
 */
export async function migrateHere(
  call: Call,
  svc: VmService,
  vmRef: string,
  hostRef: string,
  options: Record<string, string>,
  disks?: DiskSwitch,
): Promise<void> {
  const { sync } = svc;
  const db = call.db;
  const vm = await db.get('VM', vmRef);
  const cross = disks?.crossPool;
  const dest = cross ? undefined : await db.get('host', hostRef);
  const address = disks ? disks.address : options.network === undefined ? dest!.address : await addressOn(call, options.network, hostRef);
  const session = cross ? cross.session : (call.session?.ref ?? '');
  const vdiQuery = disks && Object.keys(disks.vdiMap).length > 0 ? `&vdi_map=${encodeURIComponent(JSON.stringify(disks.vdiMap))}` : '';
  const url = `https://${address}:${call.host.config.httpsPort}${MIGRATION_PATH}${vm.uuid}?session_id=${encodeURIComponent(session)}${vdiQuery}`;
  const from = disks?.progressFrom ?? 0;
  let switching = false;
  const progress = disks?.progress ?? new LatestProgress(call);
  let report: MigrationReport | undefined;
  for (let attempt = 1; !report; attempt++) {
    try {
      report = await sync.whileOperating(vmRef, async () => {
        await sync.backend.add(await sync.config(vmRef));
        return sync.backend.migrateSend(
          vm.uuid,
          { url },
          {
            commit: async (domid) => {
              switching = true;
              await disks?.beforeCommit();
              if (cross) return claimElsewhere(call, vmRef, vm.resident_on, cross, domid);
              // the move itself: once stored, the VM is the destination's
              await Promise.all([db.update('VM', vmRef, { resident_on: hostRef, domid }), ...(disks?.commitWrites() ?? [])]);
              await db.commit();
            },
            progress: (f) => progress.set(from + (1 - from) * f),
          },
        );
      });
    } catch (e) {
      // CA-86347: a guest rebooting mid-migration interrupts it once or twice; then try again
      const interrupted =
        e instanceof DomainError && (e.kind === 'Cancelled' || (e.kind === 'Internal_error' && e.args[0] === 'End_of_file'));
      const cancelling = await call.checkCancelled().then(
        () => false,
        () => true,
      );
      // a storage migration whose mirrors ended at the pause cannot go again
      if (interrupted && !cancelling && attempt < MIGRATE_TRIES && !switching) {
        call.host.log.warn({ err: e, vm: vmRef, attempt }, 'migration interrupted: trying again');
        continue;
      }
      await untilStored(db, () => sync.refresh(vmRef));
      if (e instanceof CommitInDoubt) throw e;
      throw xenopsError(vmRef, e);
    }
  }
  logMigration(call.host, vmRef, vm.uuid, hostRef, report, disks?.report());
  // the VM's RRD follows it (migrate_rrd)
  if (!cross) void sync.rrdd?.vmMigrated(vm.uuid, address);
  if (cross) return cross.complete();
  await untilStored(db, () => sync.refresh(vmRef));
  if (hostRef === call.host.hostRef) await completeHere(call, svc, vmRef);
  else await callOn(call.host, hostRef, dest!.address, 'VM.pool_migrate_complete', [vmRef, hostRef]);
}

/**
 * The commit of a migration to another pool. This pool first stops counting the VM as running
 * here (resident_on null, stored), so that if this process dies from now on its next start lets
 * the paused domain go rather than run it beside the other pool's; then the other pool claims
 * the VM. If the other pool refuses the claim the VM is put back here and the guest carries on.
 * If its answer is lost (claimSettled could not tell either), the guest does not resume here:
 * CommitInDoubt, the VM stays halted here and the other pool's record decides (settleDeparture).
 */
async function claimElsewhere(call: Call, vmRef: string, source: string, cross: CrossPoolSwitch, domid: number): Promise<void> {
  const db = call.db;
  await cross.departing();
  await db.update('VM', vmRef, { resident_on: NULL_REF });
  await db.commit();
  faultPoint('xpool.leaving');
  try {
    await claimSettled(
      call,
      () => cross.claim(domid),
      () => cross.claimState(),
    );
  } catch (e) {
    if (e instanceof CommitInDoubt) throw e;
    await untilStored(db, () => db.update('VM', vmRef, { resident_on: source }));
    throw e;
  }
  faultPoint('xpool.claimed');
}

/** How often, and for how long, a source whose claim's answer was lost asks the other pool about it. */
const CLAIM_ASK_MS = 1000;
const CLAIM_ASKS = 120;

/** A failure that says nothing of whether the claim happened: the connection broke, or the other pool's coordinator lost its host's answer. */
const answerLost = (e: unknown) => e instanceof ConnectionFailed || (e instanceof XapiError && e.code === 'CANNOT_CONTACT_HOST');

/**
 * The claim, settled: returns once the other pool holds the VM claimed, throws its refusal, or
 * CommitInDoubt. When the answer is lost the other pool's record says whether the claim
 * happened (claimed: done; still marked: the claim again, which is idempotent; gone: refused),
 * asked every second for two minutes while it cannot be reached; the guest stays paused
 * meanwhile. Resuming the guest here on a lost answer would run it in both pools.
 */
export async function claimSettled(
  call: Call,
  claim: () => Promise<void>,
  claimState: () => Promise<'claimed' | 'unclaimed' | 'gone'>,
): Promise<void> {
  let lost: unknown;
  for (let ask = 1; ; ask++) {
    if (lost === undefined) {
      try {
        return await claim();
      } catch (e) {
        if (!answerLost(e)) throw e;
        lost = e;
        call.host.log.warn({ err: e }, 'the answer to a cross-pool claim was lost: asking the other pool');
        faultPoint('xpool.claim-lost');
      }
    }
    const state = await claimState().catch((e: unknown) => {
      call.host.log.warn({ err: e }, 'cannot ask the other pool whether it claimed the VM');
      return undefined;
    });
    if (state === 'claimed') return;
    if (state === 'gone') throw lost;
    if (state === 'unclaimed') lost = undefined; // the claim again, after the pause
    if (ask >= CLAIM_ASKS) throw new CommitInDoubt(`the other pool did not say whether it claimed the VM: ${String(lost)}`);
    await new Promise((r) => setTimeout(r, CLAIM_ASK_MS));
  }
}

/**
 * The task's progress, written one value at a time and at most every PROGRESS_EVERY_MS (the
 * last value always): the copy reports faster than database writes are worth (each one a
 * commit on the coordinator), and a member's writes in flight together may land in any order.
 */
export class LatestProgress {
  private writing = false;
  private next: number | undefined;
  private last = 0;
  constructor(private readonly call: Call) {}

  set(f: number): void {
    this.next = f;
    if (!this.writing) void this.flush();
  }

  private async flush(): Promise<void> {
    this.writing = true;
    while (this.next !== undefined) {
      const wait = this.last + PROGRESS_EVERY_MS - Date.now();
      if (wait > 0 && this.next < 1) await new Promise((r) => setTimeout(r, wait));
      const f = this.next;
      this.next = undefined;
      this.last = Date.now();
      await this.call.setProgress(f).catch(() => undefined);
    }
    this.writing = false;
  }
}

/** The shortest time between two progress writes of a migration. */
const PROGRESS_EVERY_MS = 250;

/**
 * options:network (assert_valid_ip_configuration_on_network_for_host): the memory goes to the
 * destination's address on that network: its PIF there (PIF_NOT_PRESENT [host, network]),
 * plugged (REQUIRED_PIF_IS_UNPLUGGED [pif]), with an address (INTERFACE_HAS_NO_IP [pif]).
 */
export async function addressOn(call: Call, network: string, hostRef: string): Promise<string> {
  const [pif] = await call.db.find('PIF', { network, host: hostRef });
  if (!pif) throw new XapiError('PIF_NOT_PRESENT', [hostRef, network]);
  const [ref, row] = pif;
  if (!row.currently_attached) throw new XapiError('REQUIRED_PIF_IS_UNPLUGGED', [ref]);
  const ip = row.primary_address_type === 'IPv6' ? row.IPv6.find((a) => !a.toLowerCase().startsWith('fe80')) : row.IP || undefined;
  if (!ip) throw new XapiError('INTERFACE_HAS_NO_IP', [ref]);
  // an IPv6 address with its prefix length ("addr/64") as PIF.IPv6 holds it
  return row.primary_address_type === 'IPv6' ? `[${ip.replace(/\/.*$/, '')}]` : ip;
}

/** Each migration's rounds, bytes and downtime: in the host's log, and a line in migrations.log. */
function logMigration(host: HostContext, vmRef: string, uuid: string, to: string, r: MigrationReport, disks?: object[]): void {
  const line = {
    time: new Date(host.now()).toISOString(),
    vm: uuid,
    from: host.hostRef,
    to,
    memoryBytes: r.memoryBytes,
    dirtyRate: r.dirtyRate,
    rounds: r.rounds.map((x) => ({ pages: x.pages, bytes: x.bytes, ms: Math.round(x.ms * 1000) / 1000, final: x.final })),
    bytes: r.bytes,
    downtimeMs: Math.round(r.downtimeMs * 1000) / 1000,
    totalMs: Math.round(r.totalMs * 1000) / 1000,
    ...(disks ? { disks } : {}),
  };
  host.log.info({ vm: vmRef, migration: line }, 'VM migrated');
  try {
    appendFileSync(join(host.config.stateDir, MIGRATION_LOG), JSON.stringify(line) + '\n');
  } catch (e) {
    host.log.warn({ err: e }, 'the migration log could not be written');
  }
}

/**
 * pool_migrate_complete on the destination: the VM is resident here, its records are brought
 * up to date from this host's domain manager (consoles, devices, memory).
 */
async function completeHere(call: Call, svc: VmService, vmRef: string): Promise<void> {
  const vm = await call.db.get('VM', vmRef);
  const mark = vm.other_config[MIGRATE_TASK];
  if (mark !== undefined && vm.resident_on === NULL_REF) return claimHere(call, svc, vmRef, vm, mark);
  if (vm.resident_on !== call.host.hostRef) return;
  // a claim asked again (its first answer lost) while the image still waits for GO: nothing to refresh yet
  if ((await svc.sync.backend.stat(vm.uuid).catch(() => undefined))?.migration?.incoming === vm.domid) return;
  await untilStored(call.db, () => svc.sync.refresh(vmRef));
}

/**
 * The destination's half of a cross-pool commit (VM.pool_migrate_complete on a VM a migration
 * into this pool imported and has not claimed yet): for a live migration the whole image must be
 * here, paused (else INTERNAL_ERROR: its copy was given up); then in one commit the VM becomes
 * resident here on that domain and it and the disks copied for it lose the migration's mark, so
 * nothing removes them when the sender's connections close. A halted VM's claim is the marks'
 * removal alone.
 */
async function claimHere(call: Call, svc: VmService, vmRef: string, vm: Row<'VM'>, mark: string): Promise<void> {
  const db = call.db;
  const writes: Promise<unknown>[] = [];
  if (vm.scheduled_to_be_resident_on === call.host.hostRef) {
    const state = await svc.sync.backend.stat(vm.uuid).catch(() => undefined);
    const domid = state?.migration?.incoming;
    if (domid === undefined) throw new XapiError('INTERNAL_ERROR', [`the migrating VM ${vm.uuid} has no image here`]);
    writes.push(
      db.update('VM', vmRef, { resident_on: call.host.hostRef, domid, power_state: 'Running', scheduled_to_be_resident_on: NULL_REF }),
    );
  }
  writes.push(db.mapRemove('VM', vmRef, 'other_config', MIGRATE_TASK));
  for (const [ref, vdi] of await db.all('VDI'))
    if (vdi.sm_config.migrate_task === mark) writes.push(db.mapRemove('VDI', ref, 'sm_config', 'migrate_task'));
  for (const s of vm.snapshots)
    if ((await db.tryGet('VM', s))?.other_config[MIGRATE_TASK] === mark) writes.push(db.mapRemove('VM', s, 'other_config', MIGRATE_TASK));
  await Promise.all(writes);
  await db.commit();
  faultPoint('xpool.claim-committed');
}

/**
 * The destination's end of a migration (src/host/migrate-receive.ts hands it the connection):
 * this host's configuration of the VM (its disks attached here) and the question the domain
 * manager asks if the sender vanishes with the image here: the domain is the VM once resident_on
 * and domid say so; it is not once the coordinator's operation is over without that.
 */
export async function receiveMigration(
  host: HostContext,
  svc: VmService,
  vmUuid: string,
  channel: MigrationChannel,
  vdiMap: Record<string, string> = {},
): Promise<void> {
  const vmRef = await host.db.refByUuid('VM', vmUuid);
  if (!vmRef) throw new XapiError('UUID_INVALID', ['VM', vmUuid]);
  const config = await svc.sync.config(vmRef, undefined, vdiMap);
  let abandoned: string | undefined;
  // a migration from another pool: its memory's connection counts as its sender's (watchIncoming)
  const mark = (await host.db.get('VM', vmRef)).other_config[MIGRATE_TASK];
  const release = mark !== undefined ? holdIncoming(host, mark) : undefined;
  try {
    await receiveFrom(host, svc, vmRef, config, channel, (m) => {
      abandoned = m;
    });
  } finally {
    release?.();
  }
  if (abandoned !== undefined) await abandonIncoming(svc.sync.storage, abandoned);
}

async function receiveFrom(
  host: HostContext,
  svc: VmService,
  vmRef: string,
  config: Awaited<ReturnType<VmService['sync']['config']>>,
  channel: MigrationChannel,
  abandon: (mark: string) => void,
): Promise<void> {
  await svc.sync.backend.migrateReceive(config, channel, {
    owned: async (domid) => {
      const vm = await host.db.tryGet('VM', vmRef);
      if (!vm) return false;
      if (vm.resident_on === host.hostRef && vm.domid === domid) return true;
      // from another pool and not claimed: its sender is gone, so the claim will not come
      const mark = vm.other_config[MIGRATE_TASK];
      if (mark !== undefined && vm.resident_on === NULL_REF) {
        abandon(mark);
        return false;
      }
      if (vm.scheduled_to_be_resident_on === host.hostRef) return undefined;
      return false;
    },
  });
}

export function register(r: Registry, svc: VmService): void {
  r.implement('VM.pool_migrate', (call, [vm, host, options]) => poolMigrate(call, svc, vm, host, options)).implement(
    'VM.pool_migrate_complete',
    async (call, [vm, host]) => {
      await call.db.get('VM', vm);
      if (isForwardedHere(call)) return completeHere(call, svc, vm);
      await runOn(call, host, 'VM.pool_migrate_complete', [vm, host], () => completeHere(call, svc, vm));
    },
  );
}
