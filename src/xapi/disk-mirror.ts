// One disk of a storage migration (storage_migrate.ml, SMAPIv1's mirror + copy): its content is
// copied to a new VDI while the VM runs, and while the copy runs every write the guest makes is
// mirrored there too, so at the switch (the guest paused, its writes all sent) the copy is the
// disk. The destination keeps the sectors a mirrored write gave whatever the bulk copy brings
// later for them (xapi composes the mirror's leaf over the copied parent to the same effect).
//
// The copy goes to the host whose SR receives the disk: written here when this host has the SR
// plugged, else over HTTPS straight to that host (PUT /services/SM/mirror/<new VDI's uuid>,
// migration-wire.ts's framing, authenticated by a session of the pool), never through the
// coordinator.
import { createHash } from 'node:crypto';
import type { HostContext } from '../api/context.js';
import type { OpenDisk } from '../storage/driver.js';
import { candidateChunks } from '../storage/copy.js';
import { type Mirror, MirroredSectors, SECTOR, startMirror } from '../storage/mirror.js';
import { Mutex } from '../util/mutex.js';
import { faultPoint } from '../util/fault-point.js';
import { XapiError } from '../rpc/errors.js';
import { Frame, FrameReader, FrameWriter, MigrationBroken, errorPayload, json, openMigration } from '../xenopsd/migration-wire.js';
import type { MigrationChannel } from '../xenopsd/interface.js';
import { destroyVdiRecord } from './sr-scan.js';
import type { Storage } from './storage.js';
import { openVdi } from './vdi.js';
import { NULL_REF } from '../schema/types.js';

/** The path a host receives migrating disks on (under it: the new VDI's uuid). */
export const DISK_MIRROR_PATH = '/services/SM/mirror/';

const CHUNK = 2 * 1024 * 1024;
/**
 * What one read and one frame carry: pieces below the hosts' malloc mmap threshold (128 KiB,
 * src/cli/host-process.ts), so no buffer on either side is a fresh mapping (a page fault per
 * 4 KiB: megabyte frames held the copy to a fraction of the link's rate).
 */
const PIECE = 32 * 1024;
const ZEROS = Buffer.alloc(PIECE);
/** The most received pieces waiting for the disk while the next are read. */
const WRITES_IN_FLIGHT = 4;

/** Where a disk's copy is written: the new VDI, here or on the host that has its SR. */
interface DiskTarget {
  copy(offset: number, data: Buffer): Promise<void>;
  mirror(offset: number, data: Buffer): Promise<void>;
  /** What was written so far made durable (the bulk copy's fsync before the switch, not in it). */
  sync(): Promise<void>;
  /**
   * All was sent: stored durably; the image's digest if `verify`. With `hold` (a cross-pool
   * migration) the connection stays open until `release`: the receiver keeps the copy only if
   * the migration claimed it by then.
   */
  end(verify: boolean, hold?: boolean): Promise<string | undefined>;
  /** Closes a held connection. */
  release(): void;
  /** Gives up (the connection closed, the disk closed). */
  abort(): Promise<void>;
}

/**
 * Whether the switch also compares both images' digests (reading each whole, with the guest
 * paused): a test's check, asked for by XAPI_TEST_VERIFY_MIRRORS=1 in the source host's
 * environment (as XAPI_TEST_FAULT_POINT, inert otherwise); the digests go to migrations.log.
 */
export function verifyMirrorsAtSwitch(): boolean {
  return process.env.XAPI_TEST_VERIFY_MIRRORS === '1';
}

/** The sha256 of a disk's whole image (for the check at the switch; reads every byte). */
async function digestOf(disk: OpenDisk): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < disk.size; off += CHUNK) h.update(await disk.read(off, Math.min(CHUNK, disk.size - off)));
  return h.digest('hex');
}

/** The new VDI opened on this host: copy and mirror writes applied one at a time, in order. */
class LocalTarget implements DiskTarget {
  private readonly mirrored: MirroredSectors;
  private readonly lock = new Mutex();
  constructor(private readonly disk: OpenDisk) {
    this.mirrored = new MirroredSectors(disk.size);
  }

  copy(offset: number, data: Buffer): Promise<void> {
    return this.lock.run(async () => {
      for (const piece of this.mirrored.unmirrored(offset, data.length)) {
        await this.disk.write(piece.offset, data.subarray(piece.offset - offset, piece.offset - offset + piece.length));
      }
    });
  }

  mirror(offset: number, data: Buffer): Promise<void> {
    return this.lock.run(async () => {
      this.mirrored.mark(offset, data.length);
      await this.disk.write(offset, data);
    });
  }

  sync(): Promise<void> {
    return this.lock.run(async () => {
      await this.disk.vhd?.sync();
    });
  }

  end(verify: boolean): Promise<string | undefined> {
    return this.lock.run(async () => {
      const digest = verify ? await digestOf(this.disk) : undefined;
      await this.disk.close();
      return digest;
    });
  }

  abort(): Promise<void> {
    return this.lock.run(() => this.disk.close().catch(() => undefined));
  }

  release(): void {}
}

/** The new VDI on another host: frames on one connection, sent one at a time. */
class RemoteTarget implements DiskTarget {
  private readonly lock = new Mutex();
  private constructor(
    private readonly channel: MigrationChannel & { close(): void },
    private readonly writer: FrameWriter,
    private readonly reader: FrameReader,
  ) {}

  static async open(url: string): Promise<RemoteTarget> {
    const channel = await openMigration({ url });
    return new RemoteTarget(channel, new FrameWriter(channel.output), new FrameReader(channel.input));
  }

  private frame(type: Frame, offset: number, data: Buffer): Promise<void> {
    return this.lock.run(async () => {
      const head = Buffer.alloc(8);
      head.writeBigUInt64BE(BigInt(offset));
      await this.writer.send(type, Buffer.concat([head, data]));
    });
  }

  copy(offset: number, data: Buffer): Promise<void> {
    return this.frame(Frame.Disk, offset, data);
  }

  mirror(offset: number, data: Buffer): Promise<void> {
    return this.frame(Frame.Mirrored, offset, data);
  }

  async sync(): Promise<void> {
    await this.lock.run(() => this.writer.send(Frame.DiskSync));
    await this.reader.expect(Frame.DiskSynced);
  }

  async end(verify: boolean, hold = false): Promise<string | undefined> {
    await this.lock.run(() => this.writer.send(Frame.DiskEnd, { verify, hold }));
    const { sha256 } = json<{ sha256?: string }>(await this.reader.expect(Frame.DiskDone));
    if (!hold) this.release();
    return sha256;
  }

  release(): void {
    this.writer.end();
    this.channel.close();
  }

  async abort(): Promise<void> {
    this.writer.end();
    this.channel.close();
  }
}

/** What one disk's copy did. */
export interface DiskCopyReport {
  vdi: string;
  to: string;
  virtualSize: number;
  /** Bytes of the bulk copy (pieces holding data). */
  bytes: number;
  copyMs: number;
  /** Of the copy's time: waiting for the source's reads, and for the pieces to be taken by the target. */
  readWaitMs: number;
  sendMs: number;
  /** Guest writes mirrored during the copy. */
  mirroredWrites: number;
  /** The images' digests at the switch, when checked: the source's and the copy's. */
  sourceSha256?: string;
  destinationSha256?: string;
}

/**
 * One disk on its way: `start` copies it (mirroring the guest's writes to `leaf`, the file its
 * domain writes, if given) and returns once the bulk copy is done; `finish`, with the guest
 * paused, ends the mirror and has the copy stored (and both images compared if `verify`).
 */
export class DiskMove {
  private target: DiskTarget | undefined;
  /** A cross-pool copy's connection, held open after the copy until the migration is settled. */
  private held: DiskTarget | undefined;
  private mirror: Mirror | undefined;
  private report: DiskCopyReport;

  constructor(
    private readonly storage: Storage,
    readonly vdi: string,
    readonly to: string,
    /** The host that has the new VDI's SR: undefined for this one, else the URL of its receiver. */
    private readonly remoteUrl: string | undefined,
    /** A copy in another pool: its connection is held until `release` (see RemoteTarget.end). */
    private readonly hold = false,
  ) {
    this.report = { vdi, to, virtualSize: 0, bytes: 0, copyMs: 0, readWaitMs: 0, sendMs: 0, mirroredWrites: 0 };
  }

  async start(leaf: string | undefined, progress: (f: number) => void, checkCancelled: () => Promise<void>): Promise<void> {
    try {
      await this.copy(leaf, progress, checkCancelled);
    } catch (e) {
      if (e instanceof XapiError) throw e;
      // the connection or a disk failed: the copy cannot be the disk's image
      this.storage.host.log.warn({ err: e, vdi: this.vdi }, 'copying a disk failed');
      throw this.mirrorFailed();
    }
  }

  private async copy(leaf: string | undefined, progress: (f: number) => void, checkCancelled: () => Promise<void>): Promise<void> {
    const t0 = performance.now();
    this.target = this.remoteUrl
      ? await RemoteTarget.open(this.remoteUrl)
      : new LocalTarget(await openVdi(this.storage, this.to, false, { deferSync: true }));
    const target = this.target;
    // The mirror first, then the source opened: whatever the copy reads is at least as new as
    // the moment the mirror began, and what the guest writes from then on goes both ways.
    if (leaf) this.mirror = await startMirror(leaf, { write: (offset, data) => target.mirror(offset, data) });
    const src = await openVdi(this.storage, this.vdi, true);
    try {
      this.report.virtualSize = src.size;
      // the blocks that may hold data, read and sent in pieces
      const chunks = candidateChunks(src).flatMap((c) =>
        Array.from({ length: Math.ceil(Math.min(CHUNK, src.size - c) / PIECE) }, (_, k) => c + k * PIECE),
      );
      const read = (i: number) => {
        const off = chunks[i]!;
        const p = src.read(off, Math.min(PIECE, src.size - off));
        p.catch(() => undefined); // awaited below, or dropped with the copy
        return p;
      };
      // each piece read while the one before is on its way
      let next = chunks.length > 0 ? read(0) : undefined;
      try {
        for (let i = 0; i < chunks.length; i++) {
          const t = performance.now();
          const data = await next!;
          this.report.readWaitMs += performance.now() - t;
          next = i + 1 < chunks.length ? read(i + 1) : undefined;
          if (!data.equals(ZEROS.subarray(0, data.length))) {
            const w = performance.now();
            await target.copy(chunks[i]!, data);
            this.report.sendMs += performance.now() - w;
            this.report.bytes += data.length;
            faultPoint('sxm.copy');
          }
          progress((i + 1) / chunks.length);
          if (i % 512 === 0) await checkCancelled();
          if (this.mirror?.failed) throw this.mirrorFailed();
        }
      } finally {
        await next?.catch(() => undefined);
      }
    } finally {
      await src.close();
    }
    await target.sync();
    this.report.copyMs = performance.now() - t0;
  }

  private mirrorFailed(): XapiError {
    return new XapiError('MIRROR_FAILED', [this.vdi]);
  }

  /** The guest is paused: the mirror ends and the copy is stored; with `verify`, both images compared. */
  async finish(verify: boolean): Promise<DiskCopyReport> {
    const target = this.target;
    if (!target) throw new Error('the disk was not copied');
    this.mirror?.stop();
    if (this.mirror?.failed) throw this.mirrorFailed();
    this.report.mirroredWrites = this.mirror?.writes ?? 0;
    const sourceSha = verify ? await this.sourceDigest() : undefined;
    const destSha = await target.end(verify, this.hold).catch((e: unknown) => {
      this.storage.host.log.warn({ err: e, vdi: this.vdi }, 'the copy of a disk could not be completed');
      throw this.mirrorFailed();
    });
    this.target = undefined;
    if (this.hold) this.held = target;
    if (verify && sourceSha !== destSha) throw this.mirrorFailed();
    this.report.sourceSha256 = sourceSha;
    this.report.destinationSha256 = destSha;
    return this.report;
  }

  private async sourceDigest(): Promise<string> {
    const src = await openVdi(this.storage, this.vdi, true);
    try {
      return await digestOf(src);
    } finally {
      await src.close();
    }
  }

  /** Gives up: the mirror stops, the connection or the new disk closes (the VDI is the caller's to destroy). */
  async abort(): Promise<void> {
    this.mirror?.stop();
    await this.target?.abort().catch(() => undefined);
    this.target = undefined;
    this.release();
  }

  /** Closes a held connection: the receiver keeps the copy if the migration claimed it, else removes it. */
  release(): void {
    this.held?.release();
    this.held = undefined;
  }
}

/**
 * The receiving host's end (src/host/mirror-receive.ts hands it the connection): the new VDI,
 * on an SR of this host and made for a migration (sm_config migrate_task), written from the
 * frames in order. A connection that ends before DISK_END is a sender gone: the half-copied VDI
 * is removed at once (its data and its record).
 */
export async function receiveDisk(storage: Storage, vdiRef: string, channel: MigrationChannel): Promise<void> {
  const mark = (await storage.host.db.tryGet('VDI', vdiRef))?.sm_config.migrate_task;
  const release = mark?.startsWith('xpool:') ? holdIncoming(storage.host, mark) : undefined;
  try {
    await receiveDiskFrames(storage, vdiRef, channel);
  } finally {
    release?.();
  }
}

async function receiveDiskFrames(storage: Storage, vdiRef: string, channel: MigrationChannel): Promise<void> {
  const reader = new FrameReader(channel.input);
  const writer = new FrameWriter(channel.output);
  const disk = await openVdi(storage, vdiRef, false, { deferSync: true });
  const target = new LocalTarget(disk);
  let ended = false;
  // Writes go to the disk in order (the target's lock) while the next frames are read, a few
  // at a time; the first failure stops the reception.
  const inFlight = new Set<Promise<void>>();
  let failed: unknown;
  try {
    for (;;) {
      const f = await reader.next();
      const payload = await reader.payload(f.length);
      if (failed) throw failed;
      if (f.type === Frame.Disk || f.type === Frame.Mirrored) {
        const offset = Number(payload.readBigUInt64BE(0));
        const data = payload.subarray(8);
        if (offset % SECTOR !== 0 || offset + data.length > disk.size) throw new MigrationBroken(`a write at ${offset} outside the disk`);
        const w: Promise<void> = (f.type === Frame.Disk ? target.copy(offset, data) : target.mirror(offset, data)).then(
          () => void inFlight.delete(w),
          (e: unknown) => {
            failed ??= e;
            inFlight.delete(w);
          },
        );
        inFlight.add(w);
        if (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
        faultPoint('sxm.receive');
      } else if (f.type === Frame.DiskSync) {
        await Promise.all(inFlight);
        if (failed) throw failed;
        await target.sync();
        await writer.send(Frame.DiskSynced);
      } else if (f.type === Frame.DiskEnd) {
        await Promise.all(inFlight);
        if (failed) throw failed;
        const { verify, hold } = json<{ verify?: boolean; hold?: boolean }>(payload);
        const sha256 = await target.end(verify === true);
        ended = true;
        await writer.send(Frame.DiskDone, sha256 ? { sha256 } : {});
        if (hold) await settleHeldCopy(storage, vdiRef, reader);
        else void settleCopy(storage, vdiRef);
        return;
      } else throw new MigrationBroken(`unexpected frame ${f.type}`);
    }
  } catch (e) {
    if (!ended) {
      await Promise.all(inFlight);
      await writer.send(Frame.Error, errorPayload(e)).catch(() => 0);
      await target.abort();
      await removeHalfCopied(storage, vdiRef);
    }
    throw e;
  } finally {
    writer.end();
  }
}

/** How often a whole copy waiting for its switch asks whether its migration is over. */
const SETTLE_POLL_MS = 1000;

/**
 * A whole copy waits for the switch, which removes its migrate_task. If the migration's task
 * ends without that (the sender died or gave up and could not destroy it), the copy goes: the
 * VM is still on its old disk.
 */
async function settleCopy(storage: Storage, vdiRef: string): Promise<void> {
  const db = storage.host.db;
  try {
    for (;;) {
      await new Promise((r) => setTimeout(r, SETTLE_POLL_MS).unref());
      const vdi = await db.tryGet('VDI', vdiRef);
      const task = vdi?.sm_config.migrate_task;
      if (task === undefined) return;
      if ((await db.tryGet('task', task))?.status === 'pending') continue;
      await removeHalfCopied(storage, vdiRef);
      return;
    }
  } catch {
    // the host is closing: its next start sweeps what is left (sweepUnfinishedMirrors)
  }
}

/**
 * A cross-pool copy (its migration's task is in the other pool): kept while the sender holds the
 * connection; once it closes, kept if the migration claimed it (migrate_task removed), else it
 * goes with everything else the migration brought in (abandonIncoming).
 */
async function settleHeldCopy(storage: Storage, vdiRef: string, reader: FrameReader): Promise<void> {
  await reader.closed();
  const mark = (await storage.host.db.tryGet('VDI', vdiRef))?.sm_config.migrate_task;
  if (mark !== undefined) await abandonIncoming(storage, mark);
}

/** Per host, the marks of migrations into this pool with a sender's connection open here, and how many. */
const connected = new WeakMap<HostContext, Map<string, number>>();

/** A sender's connection for `mark` is open here until the returned function is called. */
export function holdIncoming(host: HostContext, mark: string): () => void {
  const marks = connected.get(host) ?? new Map<string, number>();
  connected.set(host, marks);
  marks.set(mark, (marks.get(mark) ?? 0) + 1);
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    const n = (marks.get(mark) ?? 1) - 1;
    if (n > 0) marks.set(mark, n);
    else marks.delete(mark);
  };
}

/** How often the destination looks at a migration into this pool that holds no connection. */
const WATCH_MS = 1000;
/** The longest a sender leaves a migration without any connection here (between its import and its memory or its claim). */
const QUIET_MS = 15_000;

/**
 * After a migration's metadata import here: while what it made is unclaimed, some connection
 * of its sender should be open (a disk's copy, the memory). When none has been for QUIET_MS
 * the sender is taken to be gone (it died between the import and the claim, say, with no
 * disk whose connection would tell) and what the migration made goes (abandonIncoming). A
 * claim that comes later finds no VM and fails: the VM stays in the source pool.
 */
export function watchIncoming(storage: Storage, mark: string): void {
  const host = storage.host;
  void (async () => {
    let quietSince = Date.now();
    try {
      for (;;) {
        await new Promise((r) => setTimeout(r, WATCH_MS).unref());
        const waiting =
          (await host.db.all('VM')).some(([, vm]) => vm.other_config.migrate_task === mark && vm.resident_on === NULL_REF) ||
          (await host.db.all('VDI')).some(([, vdi]) => vdi.sm_config.migrate_task === mark);
        if (!waiting) return;
        if ((connected.get(host)?.get(mark) ?? 0) > 0) quietSince = Date.now();
        else if (Date.now() - quietSince >= QUIET_MS) {
          host.log.warn({ mark }, 'a migration into this pool went quiet before its claim: what it made goes');
          return await abandonIncoming(storage, mark);
        }
      }
    } catch {
      // the host is closing: its next start sweeps what is left (sweepUnfinishedMirrors)
    }
  })();
}

/**
 * A cross-pool migration into this pool that will not complete (its sender went, or this host
 * restarted): the VMs it imported and not yet claimed (other_config migrate_task = `mark`), their
 * devices, and the copies it filled on this host's SRs.
 */
export async function abandonIncoming(storage: Storage, mark: string): Promise<void> {
  const host = storage.host;
  const db = host.db;
  for (const [ref, vm] of await db.all('VM')) {
    if (vm.other_config.migrate_task !== mark || vm.resident_on !== NULL_REF) continue;
    for (const vbd of vm.VBDs) if (await db.tryGet('VBD', vbd)) await db.destroy('VBD', vbd);
    for (const vif of vm.VIFs) if (await db.tryGet('VIF', vif)) await db.destroy('VIF', vif);
    if (vm.metrics !== NULL_REF && (await db.tryGet('VM_metrics', vm.metrics))) await db.destroy('VM_metrics', vm.metrics);
    if (await db.tryGet('VM', ref)) await db.destroy('VM', ref);
    host.log.warn({ vm: ref }, 'removed a VM whose migration into this pool did not finish');
  }
  for (const [ref, vdi] of await db.all('VDI')) {
    if (vdi.sm_config.migrate_task !== mark) continue;
    if ((await db.find('PBD', { SR: vdi.SR, host: host.hostRef })).length === 0) continue;
    await removeHalfCopied(storage, ref);
  }
}

/** A half-copied VDI goes: its data on this host's SR, and its record. */
export async function removeHalfCopied(storage: Storage, vdiRef: string): Promise<void> {
  const host: HostContext = storage.host;
  const vdi = await host.db.tryGet('VDI', vdiRef);
  if (!vdi) return;
  try {
    const { driver, ctx } = await storage.context(vdi.SR);
    await driver.vdiDelete(ctx, vdi.location);
    storage.kickGc(vdi.SR);
  } catch (e) {
    host.log.warn({ err: e, vdi: vdiRef }, 'the data of a half-copied disk could not be deleted');
  }
  await destroyVdiRecord(host.db, vdiRef).catch(() => undefined);
  host.log.warn({ vdi: vdiRef }, 'removed a disk whose migration did not finish');
}
