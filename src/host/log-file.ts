// The call log's file: a pino destination that buffers lines and writes them in one write per
// 4 KiB (one write per call cost a quarter of the small-call rate). A write that fails — the
// disk is full — drops the lines it held and counts them; the next write that succeeds starts
// with a line saying how many were lost. Nothing here retries in a loop or blocks: pino's own
// file writer, on a full disk, crashed the process on the error and then retried its last
// flush for ever at exit, deaf to SIGTERM. The log is worth less than the service.
import { close, openSync, write, writeSync } from 'node:fs';

/** Buffered bytes that trigger a write. */
const BUFFER_BYTES = 4096;
/** Lines held while a write is in flight (a slow or failing disk); beyond that they are dropped. */
const MAX_HELD_BYTES = 1024 * 1024;

export class LogFile {
  private readonly fd: number;
  private held: string[] = [];
  private heldBytes = 0;
  private writing = false;
  private lost = 0;
  private lostReason = '';
  private flushWaiters: (() => void)[] = [];
  private closed = false;

  constructor(path: string) {
    this.fd = openSync(path, 'a', 0o600);
    process.on('exit', this.onExit);
  }

  /** pino's destination interface. */
  write(line: string): boolean {
    if (this.closed) return true;
    if (this.heldBytes + line.length > MAX_HELD_BYTES) {
      this.lose(1, 'too much to write');
      return true;
    }
    this.held.push(line);
    this.heldBytes += line.length;
    if (!this.writing && this.heldBytes >= BUFFER_BYTES) this.writeHeld();
    return true;
  }

  /** Writes what is held (one attempt); `cb` runs when that is done, whatever the outcome. */
  flush(cb: (err?: Error) => void = () => {}): void {
    if (!this.writing && this.held.length === 0 && this.lost === 0) {
      cb();
      return;
    }
    this.flushWaiters.push(() => cb());
    if (!this.writing) this.writeHeld();
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.flush(() => resolve()));
    this.closed = true;
    process.off('exit', this.onExit);
    await new Promise<void>((resolve) => close(this.fd, () => resolve()));
  }

  private lose(lines: number, reason: string): void {
    this.lost += lines;
    this.lostReason = reason;
  }

  /** The held lines as one buffer, after a line about earlier losses if there were any. */
  private take(): { data: Buffer; lines: number; reported: number } {
    const reported = this.lost;
    const notice = reported
      ? `${JSON.stringify({ level: 40, time: Date.now(), lost: reported, reason: this.lostReason, msg: 'log lines lost' })}\n`
      : '';
    const lines = this.held.length;
    const data = Buffer.from(notice + this.held.join(''));
    this.held = [];
    this.heldBytes = 0;
    return { data, lines, reported };
  }

  private writeHeld(): void {
    this.writing = true;
    const { data, lines, reported } = this.take();
    writeAll(this.fd, data, (err) => {
      this.writing = false;
      if (err) this.lose(lines, err.code ?? err.message);
      else this.lost -= reported;
      if (this.heldBytes >= BUFFER_BYTES || (this.flushWaiters.length && this.held.length)) {
        this.writeHeld();
        return;
      }
      const waiters = this.flushWaiters;
      this.flushWaiters = [];
      for (const w of waiters) w();
    });
  }

  /** At process exit (a crash, say): one synchronous attempt, never a retry. */
  private readonly onExit = () => {
    if (this.writing || this.held.length === 0) return;
    try {
      writeSync(this.fd, this.take().data);
    } catch {
      // nothing more can be done for the log
    }
  };
}

/** Writes all of `data` (a write may be partial), stopping at the first error. */
function writeAll(fd: number, data: Buffer, done: (err: NodeJS.ErrnoException | null) => void): void {
  write(fd, data, 0, data.length, null, (err, n) => {
    if (err) return done(err);
    if (n < data.length) return writeAll(fd, data.subarray(n), done);
    done(null);
  });
}
