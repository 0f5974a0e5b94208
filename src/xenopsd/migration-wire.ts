// The wire of a live migration between two hosts' domain managers, whatever the backend: one
// HTTPS connection the source opens to the destination (xenopsd's /migrate/vm/<id>; real
// xenopsd opens a second one for the memory, here both travel on this one), a PUT whose request
// body carries what the source sends and whose response body carries the destination's replies,
// both streamed at once. Each direction is a sequence of frames:
//
//   u8 type | 3 bytes zero | u32 length (big-endian) | payload
//
// Control frames carry JSON; memory frames carry raw pages. The conversation (the backend
// decides what the JSON holds and what a page carries):
//
//   source                              destination
//   HELLO {vm, memory...}        ->
//                                <-     READY {}            (memory reserved)   | ERROR {kind, args}
//   PAGES (pre-copy rounds)...   ->
//   (guest paused)
//   PAGES (the last dirty ones)  ->
//   FINAL {device state...}      ->
//                                <-     RECEIVED {domid}    (whole image, paused) | ERROR
//   (the source commits)
//   GO {}                        ->                            | ABORT {reason}
//                                <-     DONE {}             (running there)
//
// A connection that breaks is the other side gone: each side knows from where it was what to do.
//
// A storage migration's disks travel on connections of the same framing, one per disk, to the
// host whose SR receives it (src/xapi/disk-mirror.ts; SM's DATA.MIRROR and its copy):
//
//   DISK {u64 offset, data}      ->     the bulk copy (sectors a mirrored write gave are kept)
//   MIRRORED {u64 offset, data}  ->     a guest write during the copy
//   DISK_SYNC {}                 ->     (the bulk copy is over: stored now, not at the switch)
//                                <-     DISK_SYNCED {}
//   DISK_END {verify}            ->     (the guest paused, its writes all sent)
//                                <-     DISK_DONE {sha256?}  (stored; the image's digest if asked) | ERROR
import { request } from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { Readable, Writable } from 'node:stream';
import { DomainError, type MigrationChannel, type MigrationTarget } from './interface.js';

export const Frame = {
  Hello: 1,
  Ready: 2,
  Error: 3,
  Pages: 4,
  Final: 5,
  Received: 6,
  Go: 7,
  Done: 8,
  Abort: 9,
  Disk: 10,
  Mirrored: 11,
  DiskEnd: 12,
  DiskDone: 13,
  DiskSync: 14,
  DiskSynced: 15,
} as const;
export type Frame = (typeof Frame)[keyof typeof Frame];

const HEADER = 8;
/** The most written to the connection at once (below glibc's 128 KiB mmap threshold). */
const WRITE_SLICE = 64 * 1024;
/** Memory travels in pages of this size. */
export const PAGE_SIZE = 4096;
/** No frame is larger: a control frame is small, a memory frame a few MiB. */
export const MAX_FRAME = 64 * 1024 * 1024;

/** The path a destination serves migrations on (under it: the VM's uuid). */
export const MIGRATION_PATH = '/services/xenops/migrate/vm/';

export function frameHeader(type: Frame, length: number): Buffer {
  const h = Buffer.alloc(HEADER);
  h[0] = type;
  h.writeUInt32BE(length, 4);
  return h;
}

/** The connection broke, or the other side said something out of turn (or nothing for too long). */
export class MigrationBroken extends Error {}

/**
 * How long either side waits for the other to read or to answer: a host that stopped (frozen,
 * or its network gone) must not hold the VM's migration, and its operation, for ever.
 */
export const IDLE_TIMEOUT_MS = 60_000;

/** Resolves after `ms` (not keeping the process alive), with `cancel` to stop the timer. */
function idle(ms: number): { elapsed: Promise<'idle'>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const elapsed = new Promise<'idle'>((r) => {
    timer = setTimeout(() => r('idle'), ms);
    timer.unref();
  });
  return { elapsed, cancel: () => clearTimeout(timer) };
}

/** Writes frames, waiting whenever the stream asks to (backpressure); fails once it is broken. */
export class FrameWriter {
  private failed: Error | undefined;
  /** Settles (with the failure) once the stream broke. */
  readonly broken: Promise<MigrationBroken>;

  constructor(private readonly out: Writable) {
    let broke!: (e: MigrationBroken) => void;
    this.broken = new Promise((r) => (broke = r));
    out.on('error', (e) => {
      this.failed ??= e;
      broke(new MigrationBroken(e.message));
    });
    out.on('close', () => {
      this.failed ??= new MigrationBroken('connection closed');
      broke(new MigrationBroken(this.failed.message));
    });
  }

  /**
   * Sends one frame. `written` is called once the stream is done with a binary payload (so its
   * buffer may be filled again): a large payload is not copied on its way out.
   */
  async send(type: Frame, payload: Buffer | object = Buffer.alloc(0), written?: () => void): Promise<number> {
    if (this.failed) throw new MigrationBroken(this.failed.message);
    const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload));
    this.out.write(frameHeader(type, body.length));
    if (body.length <= WRITE_SLICE) {
      if (!this.out.write(body, written && (() => written()))) await this.drained();
      return HEADER + body.length;
    }
    // A large payload in slices, each handed over before the next is written: writes queued
    // together are encrypted together, into one buffer of their total size, which with the
    // hosts' malloc settings (src/cli/host-process.ts) is memory mapped and unmapped again
    // each time, a page fault per 4 KiB: that halved the rate.
    for (let off = 0; off < body.length; off += WRITE_SLICE) {
      const slice = body.subarray(off, Math.min(body.length, off + WRITE_SLICE));
      await this.flushed(slice);
    }
    written?.();
    return HEADER + body.length;
  }

  /** Writes `chunk` and waits until the stream has handed it on. */
  private async flushed(chunk: Buffer): Promise<void> {
    if (this.failed) throw new MigrationBroken(this.failed.message);
    const timeout = idle(IDLE_TIMEOUT_MS);
    let done!: (e?: Error | null) => void;
    const handed = new Promise<Error | null | undefined>((r) => (done = r));
    this.out.write(chunk, done);
    const onClose = () => done(new MigrationBroken('connection closed'));
    this.out.once('close', onClose);
    try {
      const outcome = await Promise.race([handed, timeout.elapsed]);
      if (outcome === 'idle') throw new MigrationBroken('the other side stopped reading');
      if (outcome || this.failed) throw new MigrationBroken((outcome ?? this.failed)!.message);
    } finally {
      timeout.cancel();
      this.out.off('close', onClose);
    }
  }

  private async drained(): Promise<void> {
    const timeout = idle(IDLE_TIMEOUT_MS);
    let done!: () => void;
    const drained = new Promise<void>((r) => (done = r));
    this.out.on('drain', done);
    this.out.on('close', done);
    try {
      if ((await Promise.race([drained, timeout.elapsed])) === 'idle') throw new MigrationBroken('the other side stopped reading');
      if (this.failed) throw new MigrationBroken(this.failed.message);
    } finally {
      timeout.cancel();
      this.out.off('drain', done);
      this.out.off('close', done);
    }
  }

  end(): void {
    if (!this.out.writableEnded) this.out.end();
  }
}

/** Bytes buffered unread before the reader pauses the stream (and after which it resumes it). */
const READ_HIGH = 4 * 1024 * 1024;
const READ_LOW = 1024 * 1024;

/**
 * Reads frames off a stream, taking its chunks as they come (never joining them into frames:
 * a memory frame's pages are handed over where they lie, so megabytes pass without a copy).
 */
export class FrameReader {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private over: Error | undefined;
  private wake: (() => void) | undefined;
  private readonly scratch = Buffer.alloc(PAGE_SIZE);

  constructor(private readonly input: Readable) {
    input.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.queued += chunk.length;
      if (this.queued > READ_HIGH) input.pause();
      this.poke();
    });
    const stop = (why: string) => () => {
      this.over ??= new MigrationBroken(why);
      this.poke();
    };
    input.on('end', stop('End_of_file'));
    input.on('close', stop('End_of_file'));
    input.on('error', (e) => stop(e.message)());
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Resolves once the stream is over (ended, closed or failed), however long the other side holds it. */
  async closed(): Promise<void> {
    while (!this.over) {
      await new Promise<void>((r) => {
        this.wake = r;
      });
    }
  }

  /** Waits for at least one byte; MigrationBroken once the stream is over. */
  private async ready(): Promise<void> {
    while (this.queued === 0) {
      if (this.over) throw this.over;
      const timeout = idle(IDLE_TIMEOUT_MS);
      const woken = new Promise<void>((r) => {
        this.wake = r;
      });
      const what = await Promise.race([woken, timeout.elapsed]);
      timeout.cancel();
      if (what === 'idle') throw new MigrationBroken('the other side said nothing for too long');
    }
  }

  /** Up to `max` bytes from the front, as they lie in the chunk they came in. */
  private shift(max: number): Buffer {
    const first = this.queue[0]!;
    let piece: Buffer;
    if (first.length <= max) {
      piece = first;
      this.queue.shift();
    } else {
      piece = first.subarray(0, max);
      this.queue[0] = first.subarray(max);
    }
    this.queued -= piece.length;
    if (this.queued < READ_LOW && this.input.isPaused()) this.input.resume();
    return piece;
  }

  /** Exactly `n` bytes (a header, a control frame): joined when they came in pieces. */
  private async bytes(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      await this.ready();
      const piece = this.shift(n - got);
      parts.push(piece);
      got += piece.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** The next frame's type and length; its payload is read with payload() or pages(). */
  async next(): Promise<{ type: Frame; length: number }> {
    const head = await this.bytes(HEADER);
    const length = head.readUInt32BE(4);
    if (length > MAX_FRAME) throw new MigrationBroken(`a frame of ${length} bytes`);
    return { type: head[0] as Frame, length };
  }

  payload(length: number): Promise<Buffer> {
    return this.bytes(length);
  }

  /** A payload of whole 4 KiB pages, each handed to `page` (the buffer and the page's offset in it). */
  async pages(length: number, page: (buf: Buffer, offset: number) => void): Promise<void> {
    if (length % PAGE_SIZE !== 0) throw new MigrationBroken(`a memory frame of ${length} bytes`);
    let left = length;
    let partial = 0; // bytes of a page split across chunks, gathered in scratch
    while (left > 0) {
      await this.ready();
      const piece = this.shift(left);
      left -= piece.length;
      let off = 0;
      if (partial > 0) {
        const take = Math.min(PAGE_SIZE - partial, piece.length);
        piece.copy(this.scratch, partial, 0, take);
        partial += take;
        off = take;
        if (partial < PAGE_SIZE) continue;
        page(this.scratch, 0);
        partial = 0;
      }
      for (; off + PAGE_SIZE <= piece.length; off += PAGE_SIZE) page(piece, off);
      if (off < piece.length) {
        piece.copy(this.scratch, 0, off);
        partial = piece.length - off;
      }
    }
  }

  /** The next frame, which must be of `type` (an Error frame becomes the DomainError it names). */
  async expect(type: Frame): Promise<Buffer> {
    const f = await this.next();
    const payload = await this.payload(f.length);
    if (f.type === Frame.Error) throw errorOf(payload);
    if (f.type !== type) throw new MigrationBroken(`expected frame ${type}, got ${f.type}`);
    return payload;
  }
}

export const json = <T>(payload: Buffer): T => JSON.parse(payload.toString('utf8')) as T;

/** An ERROR frame's payload: the domain manager's error, as it would be raised here. */
export function errorPayload(e: unknown): object {
  if (e instanceof DomainError) return { kind: e.kind, args: e.args };
  return { kind: 'Internal_error', args: [e instanceof Error ? e.message : String(e)] };
}

function errorOf(payload: Buffer): DomainError {
  try {
    const { kind, args } = json<{ kind: DomainError['kind']; args: string[] }>(payload);
    return new DomainError(kind, args);
  } catch {
    return new DomainError('Internal_error', ['the destination failed the migration']);
  }
}

/** The URL without its query (which holds a session): for errors and logs. */
export const withoutQuery = (url: string) => url.replace(/\?.*$/, '');

/**
 * Opens the migration connection to the destination. It cannot be reached, or refuses the
 * request: Failed_to_contact_remote_service [url]. The request stays open for the frames.
 */
export function openMigration(target: MigrationTarget): Promise<MigrationChannel & { close(): void }> {
  return new Promise((resolve, reject) => {
    const req = request(target.url, {
      method: 'PUT',
      rejectUnauthorized: false, // the pool's hosts have self-signed certificates
      agent: false,
      headers: { 'content-type': 'application/octet-stream', 'user-agent': 'xapi-ts xenopsd' },
    });
    const refuse = (why: string) => {
      req.destroy();
      reject(new DomainError('Failed_to_contact_remote_service', [`${withoutQuery(target.url)}: ${why}`]));
    };
    req.setNoDelay(true);
    req.on('error', (e) => refuse(e.message));
    req.on('response', (res: IncomingMessage) => {
      if (res.statusCode !== 200) {
        res.resume();
        refuse(`HTTP ${res.statusCode}`);
        return;
      }
      req.removeAllListeners('error');
      req.on('error', () => {}); // later failures surface through the frames
      res.on('error', () => {});
      resolve({
        input: res,
        output: req,
        // Ends our side and lets what is written reach the other end; the connection goes
        // once the other side has ended too (or soon after, if it does not).
        close: () => {
          if (!req.writableEnded) req.end();
          res.resume();
          const timer = setTimeout(() => req.destroy(), 5_000);
          timer.unref();
          res.once('close', () => {
            clearTimeout(timer);
            req.destroy();
          });
        },
      });
    });
    req.flushHeaders();
  });
}
