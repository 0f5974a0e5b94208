// Starts real `xapi pool` launchers for the integration tests: N consecutive loopback addresses,
// one free port pair shared by every host (as a pool's hosts share theirs), a temporary state
// directory. Ends only the processes it started, by PID.
import { spawn, type ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, freePort, loopbackAddress, makeStateDir } from './harness.js';
import { waitUntil } from '../wait.js';

/** n consecutive fresh loopback addresses (a pool's hosts sit on A, A+1, ...). */
export function loopbackRange(n: number): string[] {
  for (;;) {
    const run = Array.from({ length: n }, () => loopbackAddress());
    const last = run.map((a) => Number(a.split('.')[3]));
    if (last.every((x, i) => x === last[0]! + i)) return run;
  }
}

export interface PoolProcess {
  proc: ChildProcess;
  addresses: string[];
  httpPort: number;
  httpsPort: number;
  stateDir: string;
  output: () => string;
  exited: Promise<number | string>;
  /** The launcher's PID, as it prints it (not the wrapper's, when started through one). */
  launcherPid: number;
  /** Each host's PID, as the launcher prints them, host1 first. */
  hostPids: number[];
}

export interface PoolStartOptions {
  hosts: number;
  args?: string[];
  env?: Record<string, string | undefined>;
  /** 'npx': run as `npx xapi pool ...` from the package's directory (npx passes no signal on). */
  via?: 'node' | 'npx';
  /** Resolve once the output matches this (default: the ready line); rejects if the launcher exits first. */
  waitFor?: RegExp;
  timeoutMs?: number;
  /** Start on these (a pool started again on its state) rather than fresh ones. */
  again?: { addresses: string[]; httpPort: number; httpsPort: number; stateDir: string };
}

export async function startPool(o: PoolStartOptions): Promise<PoolProcess> {
  const addresses = o.again?.addresses ?? loopbackRange(o.hosts);
  const httpPort = o.again?.httpPort ?? (await freePort(addresses[0]!));
  const httpsPort = o.again?.httpsPort ?? (await freePort(addresses[0]!));
  const stateDir = o.again?.stateDir ?? (await makeStateDir());
  const args = [
    'pool',
    '--hosts',
    String(o.hosts),
    '--base-address',
    addresses[0]!,
    '--http-port',
    String(httpPort),
    '--https-port',
    String(httpsPort),
    '--state-dir',
    stateDir,
    ...(o.args ?? []),
  ];
  const [command, commandArgs] =
    o.via === 'npx' ? ['npx', ['--offline', '--yes', 'xapi', ...args]] : [process.execPath, [join(ROOT, 'bin/xapi.js'), ...args]];
  const proc = spawn(command, commandArgs, { cwd: ROOT, env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  const waitFor = o.waitFor ?? /xapi pool: ready/;
  // npx's first run in a fresh checkout installs the package into its cache (about a minute here)
  const timeoutMs = o.timeoutMs ?? (o.via === 'npx' ? 240_000 : 60_000);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Not ready: end what was started, so no host outlives the test (SIGTERM: npx passes it on
      // to its shell, whose end the launcher notices).
      proc.kill('SIGTERM');
      reject(new Error(`xapi pool was not ready in time:\n${out}`));
    }, timeoutMs);
    const check = () => {
      if (waitFor.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout!.on('data', check);
    proc.stderr!.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      if (waitFor.test(out)) resolve();
      else reject(new Error(`xapi pool exited (${code}) before it was ready:\n${out}`));
    });
  });
  const hostPids = [...out.matchAll(/^ {2}host\d+ .* pid (\d+)$/gm)].map((m) => Number(m[1]));
  const launcherPid = Number(/launcher pid (\d+)/.exec(out)?.[1] ?? -1);
  return { proc, addresses, httpPort, httpsPort, stateDir, output: () => out, exited, launcherPid, hostPids };
}

export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
}

/** Waits until none of these processes exists any more (they are not our children: poll). */
export async function waitGone(pids: number[], what: string, timeoutMs = 30_000): Promise<void> {
  await waitUntil(`${what} (pids ${pids.join(', ')}) to exit`, () => pids.every((p) => !isRunning(p)), { intervalMs: 50, timeoutMs });
}

/** Stops a launcher we started (SIGTERM, then SIGKILL of it and its hosts past a deadline) and removes its state unless asked to keep it. */
export async function stopPool(p: PoolProcess, keepState = false): Promise<void> {
  const pids = [p.launcherPid, ...p.hostPids].filter((pid) => pid > 0);
  for (const pid of pids.slice(0, 1)) if (isRunning(pid)) process.kill(pid, 'SIGTERM');
  const t = setTimeout(() => {
    for (const pid of pids) if (isRunning(pid)) process.kill(pid, 'SIGKILL');
  }, 30_000); // a deadline for a clean exit, not a wait
  await waitGone(pids, 'the launcher and its hosts', 40_000);
  clearTimeout(t);
  if (!keepState) await rm(p.stateDir, { recursive: true, force: true });
}
