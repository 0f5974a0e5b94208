// The daemon's side of the watchdog process (watchdog-main.ts): started when fencing is armed,
// petted over its stdin, told to fence or to disarm. Detached from the xapi process's group, so
// a signal meant for xapi (SIGSTOP) does not reach it.
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('./watchdog-main.js', import.meta.url));

export class Watchdog {
  private child: ChildProcess | undefined;

  constructor(private readonly simDir: string) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  arm(): void {
    if (this.child) return;
    this.child = spawn(process.execPath, [MAIN, String(process.pid), this.simDir], {
      detached: true,
      stdio: ['pipe', 'ignore', 'inherit'],
    });
    this.child.unref();
    // Its stdin is kept open (and refed) only through our writes; the process itself is not
    // waited for.
    (this.child.stdin as unknown as { unref?: () => void }).unref?.();
    this.child.on('error', () => undefined);
    this.child.stdin?.on('error', () => undefined);
  }

  pet(instance: 'hb' | 'sf', seconds: number): void {
    this.send(`pet ${instance} ${Math.round(seconds * 1000)}`);
  }

  /** Fires now. The process is killed by it: nothing after this runs for long. */
  fence(): void {
    this.send('fence');
  }

  /** Closes every instance: the watchdog exits without firing. */
  disarm(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.stdin?.write('disarm\n');
      child.stdin?.end();
    });
  }

  private send(line: string): void {
    this.child?.stdin?.write(`${line}\n`);
  }
}
