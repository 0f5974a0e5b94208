// Live migration of a simulated guest between two hosts' simulators (xenopsd's VM_migrate and
// VM_receive_memory over migration-wire.ts), with iterative pre-copy as libxc's save does it:
//
// - The guest writes its memory while it runs, at the VM's dirty rate (bytes/s), each write a
//   page picked at random in a working set (a quarter of its memory): GuestWrites keeps a
//   version per page and the set of pages written since the last round.
// - Round 1 sends every page; each later round sends the pages written during the previous one.
//   The live rounds stop once fewer than DIRTY_THRESHOLD pages are dirty, and after
//   MAX_LIVE_ROUNDS (libxc migration v2: 5 iterations, 50 pages) unless they are still
//   converging: then they go on while each leaves at most CONVERGING of the pages the one before
//   sent, within MAX_ROUNDS and MAX_FACTOR times the memory in all (libxc v1's 29 iterations and
//   3x), since every page less in the last round is downtime saved. Then the guest is paused,
//   the pages still dirty and the device state go in a last frame (the downtime starts here).
// - A page on the wire is 4 KiB: its number and version in the first 8 bytes, the rest filler.
//   Both sides keep a running digest of (page, version) over all pages; the destination builds
//   the domain only if every page arrived and its digest is the source's at the pause.
// - The destination keeps the received domain paused (Vm.incoming) until the source has
//   committed the move (xapi's resident_on, durably), then unpauses it: the downtime ends.
//   The source destroys its copy and forgets the VM. Before the commit any failure leaves the
//   guest running on the source; after it, the VM is the destination's.
//
// A process that dies half way leaves a paused domain to be settled (resolveMigration): the
// source's, paused for the last copy, or the destination's whole image; xapi says which host
// the VM belongs to (its resident_on), because only the commit decided it.
import { createHash, randomBytes } from 'node:crypto';
import {
  CommitInDoubt,
  DomainError,
  type MigrationChannel,
  type MigrationReport,
  type MigrationSendHooks,
  type MigrationTarget,
  type VmConfig,
} from '../interface.js';
import type { Squeezed } from '../squeezed.js';
import { faultPoint } from '../../util/fault-point.js';
import { FrameReader, FrameWriter, Frame, MigrationBroken, PAGE_SIZE, errorPayload, json, openMigration } from '../migration-wire.js';
import { domainMemory, type Arrival, type Domain, type Reason, type Vm } from './sim-model.js';

const PAGE = PAGE_SIZE;
/** Pages per memory frame (1 MiB). */
const CHUNK_PAGES = 256;
/** libxc migration v2: at most 5 live iterations, stopping early below 50 dirty pages. */
export const MAX_LIVE_ROUNDS = 5;
export const DIRTY_THRESHOLD = 50;
/** Beyond MAX_LIVE_ROUNDS: a round must leave at most this share of the pages of the one before. */
const CONVERGING = 0.75;
/** libxc v1: at most 29 iterations, at most 3 times the memory sent. */
const MAX_ROUNDS = 29;
const MAX_FACTOR = 3;
/** A guest's memory write rate when its VM names none: an idle server's few MiB/s. */
export const DEFAULT_DIRTY_RATE = 4 * 1024 * 1024;

/**
 * What a page carries besides its number and version: one random megabyte, shared, made at the
 * first migration (made at load, it was a resident megabyte in every host that never migrates).
 */
let filler: Buffer | undefined;
const fillerBytes = () => (filler ??= randomBytes(CHUNK_PAGES * PAGE));

/** Two independent 32-bit hashes of (page, version), summed over the pages: the memory's digest. */
function mix(page: number, version: number, key: number): number {
  let h = Math.imul(page ^ key, 0x9e3779b1) ^ Math.imul((version + key) | 0, 0x85ebca6b);
  h ^= h >>> 15;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 13)) >>> 0;
}
const K1 = 0x2545f491;
const K2 = 0x6c8e9cf5;

/** The digest of `pages` pages all at version 0. */
function initialDigest(pages: number): [number, number] {
  let a = 0;
  let b = 0;
  for (let p = 0; p < pages; p++) {
    a = (a + mix(p, 0, K1)) >>> 0;
    b = (b + mix(p, 0, K2)) >>> 0;
  }
  return [a, b];
}

/** Page versions with their running digest, as both ends keep them. */
class PageVersions {
  readonly versions: Uint32Array;
  digest: [number, number];
  constructor(readonly pages: number) {
    this.versions = new Uint32Array(pages);
    this.digest = initialDigest(pages);
  }

  set(page: number, version: number): void {
    const old = this.versions[page]!;
    if (old === version) return;
    this.versions[page] = version;
    this.digest[0] = (((this.digest[0] + mix(page, version, K1)) >>> 0) - mix(page, old, K1)) >>> 0;
    this.digest[1] = (((this.digest[1] + mix(page, version, K2)) >>> 0) - mix(page, old, K2)) >>> 0;
  }
}

/**
 * The guest writing its memory while it runs: `rate` bytes/s, each write one page of a working
 * set, so a fast writer keeps hitting the same pages as real workloads do.
 */
export class GuestWrites {
  readonly memory: PageVersions;
  private readonly dirty: Uint8Array;
  private dirtyList: number[] = [];
  private carry = 0;
  private seed: number;
  private readonly setBase: number;
  private readonly setSize: number;

  constructor(
    pages: number,
    private readonly rate: number,
    private last: number,
  ) {
    this.memory = new PageVersions(pages);
    this.dirty = new Uint8Array(pages);
    this.seed = (randomBytes(4).readUInt32LE(0) | 1) >>> 0;
    this.setSize = Math.max(Math.min(pages, 256), Math.floor(pages / 4));
    this.setBase = Math.floor(this.random() * (pages - this.setSize + 1));
  }

  /** xorshift32, in [0, 1). */
  private random(): number {
    let x = this.seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.seed = x >>> 0;
    return this.seed / 0x1_0000_0000;
  }

  /** The guest ran from the last call until `now` (ms), writing as it goes. */
  advance(now: number): void {
    const writes = ((now - this.last) / 1000) * (this.rate / PAGE) + this.carry;
    this.last = now;
    const n = Math.floor(writes);
    this.carry = writes - n;
    const m = this.memory;
    for (let i = 0; i < n; i++) {
      const p = this.setBase + Math.floor(this.random() * this.setSize);
      m.set(p, m.versions[p]! + 1);
      if (!this.dirty[p]) {
        this.dirty[p] = 1;
        this.dirtyList.push(p);
      }
    }
  }

  get dirtyCount(): number {
    return this.dirtyList.length;
  }

  /** The pages written since the last call, which start clean again (a new round). */
  takeDirty(): number[] {
    const list = this.dirtyList;
    this.dirtyList = [];
    for (const p of list) this.dirty[p] = 0;
    return list;
  }
}

/**
 * The memory frames' buffers, used in turn: each holds the filler already, so a frame costs
 * only the stamps of its pages, and no fresh memory (whose first touch costs a page fault per
 * 4 KiB) is taken per megabyte sent.
 */
class FrameBuffers {
  private readonly free: Buffer[] = [];
  private waiting: (() => void) | undefined;
  constructor(count: number) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.from(fillerBytes()));
  }

  /** A free buffer; MigrationBroken if the stream breaks while all are on their way. */
  async take(broken: Promise<MigrationBroken>): Promise<Buffer> {
    while (this.free.length === 0) {
      const e = await Promise.race([new Promise<void>((r) => (this.waiting = r)), broken]);
      if (e) throw e;
    }
    return this.free.pop()!;
  }

  give(b: Buffer): void {
    this.free.push(b);
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }
}

/** Stamps pages pageAt(from) .. pageAt(to - 1) with their numbers and versions into `buf`. */
function stampPages(buf: Buffer, pageAt: (i: number) => number, from: number, to: number, versions: Uint32Array): Buffer {
  const n = to - from;
  for (let i = 0; i < n; i++) {
    const p = pageAt(from + i);
    buf.writeUInt32LE(p, i * PAGE);
    buf.writeUInt32LE(versions[p]!, i * PAGE + 4);
  }
  return buf.subarray(0, n * PAGE);
}

/** What of a domain goes to the destination besides its memory (its device and guest state). */
interface CarriedState extends Arrival {
  vcpus: number;
  memoryTarget: number;
  memoryActual: number;
  startTime: number;
  bootCount: number;
  osUp: boolean;
  guestAgent?: Domain['guestAgent'];
  xenstore?: Record<string, string>;
  vbds: Record<string, { position: string }>;
  vifs: Record<string, { position: number }>;
  request?: Domain['request'];
  acked?: boolean;
  identity: string;
  digest: [number, number];
}

interface Hello {
  vm: string;
  memory: number;
  pages: number;
}

/** What the simulator lends its migrations (the records, squeezed, saving, the guest's life). */
export interface SimMigrationCore {
  readonly squeezed: Squeezed;
  /** squeezed's client name for this domain manager. */
  readonly client: string;
  readonly defaultDirtyRate: number;
  vm(id: string): Vm | undefined;
  /** The VM's record for an incoming migration: made from `config` (created), or given it if it has no domain. */
  adopt(config: VmConfig): { vm: Vm; created: boolean };
  allocateDomid(): number;
  /** A new domain of `vm` exists (its id is taken). */
  registerDomain(vm: Vm, d: Domain): void;
  /** A domain goes quietly (moved away, or a copy dropped): its memory back, updates told. */
  dropDomain(vm: Vm, d: Domain): void;
  /** The VM left this host: its record goes. */
  forget(id: string): void;
  /** Marks the VM's state for saving and tells the updates feed. */
  changed(vm: Vm): void;
  save(): Promise<void>;
  /** The guest runs (unpaused): its OS comes up, or carries on. */
  run(vm: Vm): void;
  scheduleOsUp(vm: Vm, ms: number): void;
  scheduleHalt(vm: Vm, reason: Reason, ms: number): void;
  setBalloon(vm: Vm): void;
  /** Sleeps `ms` (fails if the backend closes meanwhile). */
  sleep(ms: number): Promise<void>;
  /** Resolves once the paused domain's disk write under way is done (its disks are still from then on). */
  diskIdle(d: Domain): Promise<void>;
}

/** The identity of the memory a migration carries: what it was, and what was written to it. */
function nextIdentity(base: string, digest: [number, number]): string {
  return createHash('sha256').update(`${base}/${digest[0]}/${digest[1]}`).digest('hex').slice(0, 32);
}

const identityOf = (vm: Vm, d: Domain) => d.memoryIdentity ?? `${vm.config.id}/${d.bootCount}`;

/** The sender's side; runs in the VM's queue. */
export async function sendMigration(
  core: SimMigrationCore,
  vm: Vm,
  target: MigrationTarget,
  hooks: MigrationSendHooks,
): Promise<MigrationReport> {
  const id = vm.config.id;
  const d = vm.domain;
  if (!d) throw new DomainError('Bad_power_state', [vm.status.suspended ? 'Suspended' : 'Halted', 'Running']);
  if (!d.built) throw new DomainError('Domain_not_built', []);
  const gone = () => vm.domain !== d;
  const wentAway = () => new DomainError('Cancelled', [id, 'the domain went away during the migration']);
  const started = performance.now();
  const rate = vm.config.simDirtyRate ?? core.defaultDirtyRate;
  const pages = Math.ceil(d.memoryActual / PAGE);
  const wasPaused = d.paused;

  const channel = await openMigration(target);
  const reader = new FrameReader(channel.input);
  const writer = new FrameWriter(channel.output);
  const rounds: MigrationReport['rounds'] = [];
  let bytes = 0;
  let committed = false;
  let pausedAt = 0;
  let lastProgress = -1;
  const progress = (f: number) => {
    if (f - lastProgress < 0.01 && f < 1) return;
    lastProgress = f;
    hooks.progress?.(f);
  };
  d.migratingOut = true;
  try {
    bytes += await writer.send(Frame.Hello, { vm: id, memory: d.memoryActual, pages } satisfies Hello);
    await reader.expect(Frame.Ready);
    const guest = new GuestWrites(pages, wasPaused ? 0 : rate, performance.now());
    const buffers = new FrameBuffers(4);
    /** Sends `count` pages, pageAt(0) .. pageAt(count - 1), as one round. */
    const round = async (count: number, pageAt: (i: number) => number, final: boolean, share: [number, number]) => {
      const t0 = performance.now();
      let roundBytes = 0;
      for (let from = 0; from < count; from += CHUNK_PAGES) {
        if (gone()) throw wentAway();
        if (!final) guest.advance(performance.now());
        const to = Math.min(count, from + CHUNK_PAGES);
        const buf = await buffers.take(writer.broken);
        roundBytes += await writer.send(Frame.Pages, stampPages(buf, pageAt, from, to, guest.memory.versions), () => buffers.give(buf));
        progress(share[0] + ((share[1] - share[0]) * to) / count);
      }
      bytes += roundBytes;
      rounds.push({ pages: count, bytes: roundBytes, ms: performance.now() - t0, final });
    };
    const dirtyRound = (list: number[], final: boolean, share: [number, number]) => round(list.length, (i) => list[i]!, final, share);
    await round(pages, (i) => i, false, [0, 0.9]);
    for (;;) {
      guest.advance(performance.now());
      const dirty = guest.dirtyCount;
      if (dirty <= DIRTY_THRESHOLD) break;
      const n = rounds.length;
      const converging = dirty <= CONVERGING * rounds[n - 1]!.pages && bytes + dirty * PAGE <= MAX_FACTOR * pages * PAGE;
      if (n >= MAX_ROUNDS || (n >= MAX_LIVE_ROUNDS && !converging)) break;
      await dirtyRound(guest.takeDirty(), false, [Math.min(0.97, 0.9 + 0.02 * (n - 1)), Math.min(0.97, 0.9 + 0.02 * n)]);
    }

    // Stop and copy: the guest is paused, what it wrote since goes with its device state.
    if (gone()) throw wentAway();
    guest.advance(performance.now());
    pausedAt = performance.now();
    d.paused = true;
    d.osUpAt = undefined;
    await core.diskIdle(d);
    await dirtyRound(guest.takeDirty(), true, [0.98, 0.99]);
    const now = Date.now();
    const identity = nextIdentity(identityOf(vm, d), guest.memory.digest);
    const carried: CarriedState = {
      vcpus: d.vcpus,
      memoryTarget: d.memoryTarget,
      memoryActual: d.memoryActual,
      startTime: d.startTime,
      bootCount: d.bootCount,
      osUp: d.osUp,
      osUpInMs: d.osUpAt !== undefined ? Math.max(0, d.osUpAt - now) : undefined,
      paused: wasPaused,
      guestAgent: d.guestAgent,
      xenstore: d.xenstore,
      vbds: Object.fromEntries(Object.entries(d.vbds).map(([k, v]) => [k, { position: v.position }])),
      vifs: d.vifs,
      request: d.request,
      acked: d.acked,
      haltInMs: d.haltAt !== undefined ? Math.max(0, d.haltAt - now) : undefined,
      haltReason: d.haltReason,
      status: { lastStartTime: vm.status.lastStartTime, bootCount: vm.status.bootCount, faults: vm.status.faults },
      identity,
      digest: guest.memory.digest,
    };
    bytes += await writer.send(Frame.Final, carried);
    const { domid } = json<{ domid: number }>(await reader.expect(Frame.Received));
    if (gone()) throw wentAway();

    // The commit: stored paused first, so a restart finds it paused and asks xapi where it belongs.
    d.pausedForMigration = true;
    core.changed(vm);
    await core.save();
    try {
      await hooks.commit(domid);
    } catch (e) {
      if (e instanceof CommitInDoubt) {
        // neither GO nor ABORT: the destination asks its own side whether the VM is its
        committed = true;
        throw e;
      }
      await writer.send(Frame.Abort, { reason: e instanceof Error ? e.message : String(e) }).catch(() => 0);
      throw e;
    }
    committed = true;
    faultPoint('migrate.committed');
    await writer.send(Frame.Go);
    await reader.expect(Frame.Done);
    const downtimeMs = performance.now() - pausedAt;
    progress(1);
    return {
      rounds,
      bytes,
      memoryBytes: d.memoryActual,
      dirtyRate: rate,
      downtimeMs,
      totalMs: performance.now() - started,
      destinationDomid: domid,
    };
  } catch (e) {
    if (!committed) {
      // the guest stays here: it carries on as it was
      if (!gone()) {
        d.migratingOut = undefined;
        d.pausedForMigration = undefined;
        if (!wasPaused && d.paused) core.run(vm);
        core.changed(vm);
      }
      // the connection ended under us, whatever the socket said (xapi tries again on this)
      if (e instanceof MigrationBroken) throw new DomainError('Internal_error', ['End_of_file']);
      throw e;
    }
    // Committed: the VM is the destination's even if it did not confirm (it finds its paused
    // copy owned when it asks, or at its next start).
    if (e instanceof CommitInDoubt) throw e;
    throw new DomainError('Internal_error', [`the destination did not confirm the migration: ${e instanceof Error ? e.message : e}`]);
  } finally {
    writer.end();
    channel.close();
    if (committed) leave(core, vm, d);
  }
}

/** The VM moved away: its domain here goes, and, unless it moved to this same host, its record. */
function leave(core: SimMigrationCore, vm: Vm, d: Domain): void {
  if (vm.domain === d) core.dropDomain(vm, d);
  if (!vm.domain && !vm.incoming) core.forget(vm.config.id);
}

/** The receiver's side: one sender on `channel`. */
export async function receiveMigration(
  core: SimMigrationCore,
  config: VmConfig,
  channel: MigrationChannel,
  owned: (domid: number) => Promise<boolean | undefined>,
  receiving: Set<string>,
): Promise<void> {
  const reader = new FrameReader(channel.input);
  const writer = new FrameWriter(channel.output);
  const id = config.id;
  let reservation: string | undefined;
  let vm: Vm | undefined;
  let created = false;
  let incoming: Domain | undefined;
  /** The sender was told the image is whole: from then on only the owner question settles it. */
  let whole = false;
  let mine = false;
  try {
    const hello = json<Hello>(await reader.expect(Frame.Hello));
    if (hello.vm !== id) throw new DomainError('Internal_error', [`the sender migrates VM ${hello.vm}, not ${id}`]);
    if (receiving.has(id)) throw new DomainError('Already_exists', ['migration', id]);
    receiving.add(id);
    mine = true;
    const existing = core.vm(id);
    if (existing?.incoming) throw new DomainError('Already_exists', ['migration', id]);
    // a domain here is only allowed if it is the one leaving (a migration to this same host)
    if (existing?.domain && !existing.domain.migratingOut) throw new DomainError('Already_exists', ['domain', id]);
    const mem = domainMemory(config);
    const needed = hello.memory + mem.overhead;
    reservation = core.squeezed.reserveMemoryRange(core.client, needed, needed).id;
    const memory = new PageVersions(hello.pages);
    const seen = new Uint8Array(hello.pages);
    let seenCount = 0;
    await writer.send(Frame.Ready);

    let carried: CarriedState | undefined;
    const page = (buf: Buffer, off: number) => {
      const p = buf.readUInt32LE(off);
      if (p >= hello.pages) throw new DomainError('Internal_error', [`page ${p} beyond the memory's ${hello.pages}`]);
      memory.set(p, buf.readUInt32LE(off + 4));
      if (!seen[p]) {
        seen[p] = 1;
        seenCount++;
      }
    };
    while (!carried) {
      const f = await reader.next();
      if (f.type === Frame.Pages) {
        await reader.pages(f.length, page);
        faultPoint('migrate.receive-pages');
      } else if (f.type === Frame.Final) carried = json<CarriedState>(await reader.payload(f.length));
      else if (f.type === Frame.Abort) throw new MigrationBroken('the sender gave up');
      else throw new MigrationBroken(`unexpected frame ${f.type}`);
    }
    if (seenCount !== hello.pages) throw new DomainError('Internal_error', [`${hello.pages - seenCount} pages never arrived`]);
    if (memory.digest[0] !== carried.digest[0] || memory.digest[1] !== carried.digest[1])
      throw new DomainError('Internal_error', ['the memory received differs from the memory sent']);

    // The whole image: a paused domain, stored before the sender hears of it.
    ({ vm, created } = core.adopt(config));
    const domid = core.allocateDomid();
    core.squeezed.transferReservationToDomain(core.client, reservation, domid, mem, carried.memoryActual);
    reservation = undefined;
    incoming = {
      domid,
      built: true,
      paused: true,
      vcpus: carried.vcpus,
      memory: mem,
      memoryTarget: carried.memoryTarget,
      memoryActual: carried.memoryActual,
      startTime: carried.startTime,
      bootCount: carried.bootCount,
      osUp: carried.osUp,
      vbds: Object.fromEntries(
        Object.entries(carried.vbds).map(([vbd, v]) => [
          vbd,
          { position: v.position, backend: config.vbds.find((c) => c.id === vbd)?.backend },
        ]),
      ),
      vifs: carried.vifs,
      xenstore: carried.xenstore,
      guestAgent: carried.guestAgent,
      request: carried.request,
      acked: carried.acked,
      memoryIdentity: carried.identity,
      arrival: {
        paused: carried.paused,
        osUpInMs: carried.osUpInMs,
        haltInMs: carried.haltInMs,
        haltReason: carried.haltReason,
        status: carried.status,
      },
    };
    vm.incoming = incoming;
    core.registerDomain(vm, incoming);
    core.changed(vm);
    await core.save();
    await writer.send(Frame.Received, { domid });
    whole = true;
    faultPoint('migrate.received');

    const f = await reader.next().catch((e: unknown) => {
      if (e instanceof MigrationBroken) return undefined;
      throw e;
    });
    if (f) await reader.payload(f.length).catch(() => undefined);
    if (vm.incoming !== incoming) return; // settled meanwhile (resolveMigration)
    if (f?.type === Frame.Go) {
      faultPoint('migrate.go');
      install(core, vm);
      await core.save();
      await writer.send(Frame.Done).catch(() => 0);
      return;
    }
    if (f?.type === Frame.Abort) {
      discard(core, vm);
      if (created) core.forget(id);
      await core.save();
      return;
    }
    // The sender went away with the image here: whether it committed is xapi's to say.
    for (;;) {
      const answer = await owned(incoming.domid).catch(() => undefined);
      if (vm.incoming !== incoming) return;
      if (answer !== undefined) {
        if (answer) install(core, vm);
        else {
          discard(core, vm);
          if (created) core.forget(id);
        }
        await core.save();
        return;
      }
      await core.sleep(1000);
    }
  } catch (e) {
    if (reservation) core.squeezed.deleteReservation(core.client, reservation);
    // Before the sender heard the image was whole it cannot have committed: the copy goes. After,
    // a failure here (the backend closing) leaves it on disk for the next start to settle.
    if (vm && incoming && vm.incoming === incoming && !whole) {
      discard(core, vm);
      if (created) core.forget(id);
      await core.save().catch(() => undefined);
    }
    if (!(e instanceof MigrationBroken)) await writer.send(Frame.Error, errorPayload(e)).catch(() => 0);
  } finally {
    writer.end();
    if (mine) receiving.delete(id);
  }
}

/**
 * The incoming domain becomes the VM's domain here and carries on as it was on the source (the
 * domain it replaces, in a migration to this same host, goes).
 */
export function install(core: SimMigrationCore, vm: Vm): void {
  const d = vm.incoming;
  if (!d) return;
  if (vm.domain) core.dropDomain(vm, vm.domain);
  vm.incoming = undefined;
  vm.domain = d;
  const a = d.arrival;
  d.arrival = undefined;
  if (a) {
    vm.status.lastStartTime = a.status.lastStartTime;
    vm.status.bootCount = Math.max(vm.status.bootCount, a.status.bootCount);
    vm.status.faults = a.status.faults;
  }
  vm.status.suspended = false;
  vm.status.lastShutdownReason = undefined;
  if (!a?.paused) {
    if (!d.osUp && a?.osUpInMs !== undefined) {
      d.paused = false;
      core.scheduleOsUp(vm, a.osUpInMs);
    } else core.run(vm);
  }
  if (a?.haltInMs !== undefined) core.scheduleHalt(vm, a.haltReason ?? 'halt', a.haltInMs);
  core.setBalloon(vm);
  core.changed(vm);
}

/** The incoming domain goes (the VM stays where it was). */
export function discard(core: SimMigrationCore, vm: Vm): void {
  const d = vm.incoming;
  if (!d) return;
  vm.incoming = undefined;
  core.dropDomain(vm, d);
  core.changed(vm);
}
