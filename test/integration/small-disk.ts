// Small filesystems that tests can fill up: tmpfs mounts inside a private user and mount
// namespace (`unshare --user --map-root-user --mount`), so no root is needed and nothing is
// mounted on the machine itself. A holder process keeps the namespace (and the mounts' content)
// alive across restarts of the xapi processes entered into it with `nsenter`; the test reaches
// the files through /proc/<holder>/root. Ending the holder (by its pid) unmounts everything.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, statfsSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export class SmallDisks {
  private constructor(
    private readonly holder: ChildProcess,
    private readonly base: string,
  ) {}

  /** Mounts one tmpfs of `bytes` per name, at `<base>/<name>`. */
  static async create(sizes: Record<string, number>): Promise<SmallDisks> {
    const base = await mkdtemp(join(tmpdir(), 'xapi-small-disk-'));
    const mounts = Object.entries(sizes)
      .map(([name, bytes]) => `mkdir -p '${base}/${name}' && mount -t tmpfs -o size=${bytes} tmpfs '${base}/${name}'`)
      .join(' && ');
    const holder = spawn(
      'unshare',
      ['--user', '--map-root-user', '--mount', 'sh', '-c', `${mounts} && echo mounted && exec sleep 100000`],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('mounted')) resolve();
      });
      holder.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      holder.once('exit', (code) => reject(new Error(`could not make the small disks (exit ${code}): ${out}`)));
    });
    return new SmallDisks(holder, base);
  }

  /** The path of a disk, as processes inside the namespace see it. */
  path(name: string): string {
    return join(this.base, name);
  }

  /** The same path, as this process reaches it. */
  outside(name: string): string {
    return join(`/proc/${this.holder.pid}/root`, this.base, name);
  }

  /** The command prefix that runs a program inside the namespace (nsenter execs it: same pid). */
  enter(): string[] {
    return ['nsenter', '--target', String(this.holder.pid), '--user', '--mount', '--preserve-credentials', '--'];
  }

  /** Fills a disk with a file of its own, to the last byte or until `leave` bytes are free; returns how much it wrote. */
  fill(name: string, leave = 0): number {
    const fd = openSync(join(this.outside(name), 'filler'), 'a');
    const { bavail, bsize } = statfsSync(this.outside(name));
    const budget = leave > 0 ? Math.max(0, bavail * bsize - leave) : Infinity;
    let written = 0;
    try {
      for (const size of [1024 * 1024, 64 * 1024, 4096, 512, 1]) {
        const chunk = Buffer.alloc(size, 0xee);
        while (written + size <= budget) {
          try {
            const n = writeSync(fd, chunk);
            written += n;
            if (n < size) break;
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
            throw e;
          }
        }
      }
    } finally {
      closeSync(fd);
    }
    return written;
  }

  /** Gives back what fill() took. */
  async free(name: string): Promise<void> {
    await rm(join(this.outside(name), 'filler'), { force: true });
  }

  async close(): Promise<void> {
    if (this.holder.exitCode === null && this.holder.signalCode === null) {
      const exited = new Promise((r) => this.holder.once('exit', r));
      process.kill(this.holder.pid!, 'SIGKILL');
      await exited;
    }
    await rm(this.base, { recursive: true, force: true });
  }
}
