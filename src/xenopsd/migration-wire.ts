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
} as const;
export type Frame = (typeof Frame)[keyof typeof Frame];

const HEADER = 8;
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

/** The connection broke, or the other side said something out of turn. */
export class MigrationBroken extends Error {}

/** Writes frames, waiting whenever the stream asks to (backpressure); fails once it is broken. */
export class FrameWriter {
  private failed: Error | undefined;
  constructor(private readonly out: Writable) {
    out.on('error', (e) => {
      this.failed ??= e;
    });
    out.on('close', () => {
      this.failed ??= new MigrationBroken('connection closed');
    });
  }

  /** Sends one frame; a payload given in pieces is sent without joining them. */
  async send(type: Frame, payload: Buffer | Buffer[] | object = Buffer.alloc(0)): Promise<number> {
    if (this.failed) throw new MigrationBroken(this.failed.message);
    const parts = Buffer.isBuffer(payload)
      ? [payload]
      : Array.isArray(payload)
        ? (payload as Buffer[])
        : [Buffer.from(JSON.stringify(payload))];
    const length = parts.reduce((n, p) => n + p.length, 0);
    let room = this.out.write(frameHeader(type, length));
    for (const p of parts) room = this.out.write(p);
    if (!room) await this.drained();
    return HEADER + length;
  }

  private drained(): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.out.off('drain', done);
        this.out.off('close', done);
        if (this.failed) reject(new MigrationBroken(this.failed.message));
        else resolve();
      };
      this.out.on('drain', done);
      this.out.on('close', done);
    });
  }

  end(): void {
    if (!this.out.writableEnded) this.out.end();
  }
}

/** Reads frames off a stream, one at a time. */
export class FrameReader {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private readonly it: AsyncIterator<Buffer>;

  constructor(input: Readable) {
    this.it = input[Symbol.asyncIterator]();
  }

  /** The next frame; MigrationBroken when the stream ends or fails first. */
  async next(): Promise<{ type: Frame; payload: Buffer }> {
    const head = await this.take(HEADER);
    const type = head[0] as Frame;
    const length = head.readUInt32BE(4);
    if (length > MAX_FRAME) throw new MigrationBroken(`a frame of ${length} bytes`);
    return { type, payload: await this.take(length) };
  }

  /** The next frame, which must be of `type` (an Error frame becomes the DomainError it names). */
  async expect(type: Frame): Promise<Buffer> {
    const f = await this.next();
    if (f.type === Frame.Error) throw errorOf(f.payload);
    if (f.type !== type) throw new MigrationBroken(`expected frame ${type}, got ${f.type}`);
    return f.payload;
  }

  private async take(n: number): Promise<Buffer> {
    while (this.buffered < n) {
      let r: IteratorResult<Buffer>;
      try {
        r = await this.it.next();
      } catch (e) {
        throw new MigrationBroken((e as Error).message);
      }
      if (r.done) throw new MigrationBroken('End_of_file');
      this.chunks.push(r.value);
      this.buffered += r.value.length;
    }
    const whole = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    this.chunks.length = 0;
    const out = whole.subarray(0, n);
    if (whole.length > n) this.chunks.push(whole.subarray(n));
    this.buffered = whole.length - n;
    return out;
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
