// Starts real `xapi serve` processes on loopback addresses for the integration tests, and
// ends only those processes, by PID. Each host gets its own 127.x address, free ports and a
// temporary state directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HOST_NODE_FLAGS, hostEnv } from '../../src/cli/host-process.js';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const PASSWORD = 'test-root-password';

let nextAddress = 10 + ((process.pid * 7) % 200);

/** A fresh loopback address per host, so hosts never collide on ports. */
export function loopbackAddress(): string {
  nextAddress = (nextAddress % 250) + 1;
  return `127.0.${(process.pid % 200) + 10}.${nextAddress + 1}`;
}

export function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, address, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface XapiProcess {
  proc: ChildProcess;
  pid: number;
  address: string;
  httpPort: number;
  httpsPort: number;
  stateDir: string;
  url: string;
  httpsUrl: string;
  output: () => string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  exited: Promise<number | string>;
  kill(signal: NodeJS.Signals): void;
}

export interface StartOptions {
  stateDir?: string;
  address?: string;
  httpPort?: number;
  httpsPort?: number;
  env?: Record<string, string | undefined>;
  args?: string[];
  /** Resolve as soon as the process prints this (default: the ready line). */
  waitFor?: RegExp;
  /** A command that runs node for us (e.g. nsenter into a namespace); it must exec node, so the pid stays node's. */
  wrap?: string[];
}

export async function makeStateDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'xapi-ts-test-'));
}

/** How long a host may take to say it is ready (see startXapi). */
const START_DEADLINE_MS = 120_000;

export async function startXapi(o: StartOptions = {}): Promise<XapiProcess> {
  const address = o.address ?? loopbackAddress();
  const httpPort = o.httpPort ?? (await freePort(address));
  const httpsPort = o.httpsPort ?? (await freePort(address));
  const stateDir = o.stateDir ?? (await makeStateDir());
  const wrap = o.wrap ?? [];
  const proc = spawn(
    wrap[0] ?? process.execPath,
    [
      ...(wrap.length ? [...wrap.slice(1), process.execPath] : []),
      ...HOST_NODE_FLAGS,
      join(ROOT, 'bin/xapi.js'),
      'serve',
      '--address',
      address,
      '--http-port',
      String(httpPort),
      '--https-port',
      String(httpsPort),
      '--state-dir',
      stateDir,
      ...(o.args ?? []),
    ],
    { env: hostEnv({ ...process.env, XAPI_ROOT_PASSWORD: PASSWORD, ...o.env }), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  const waitFor = o.waitFor ?? /host ready/;
  // Ready when it says so on its output; the timer is only a deadline, generous because on a
  // loaded machine (two test files and their hosts on two cores) a start has taken over 30 s. A
  // host not ready by then is killed: left running, it would outlive the test and keep its test
  // file from ever ending.
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Not left running: nobody would stop a host whose start failed.
      proc.kill('SIGKILL');
      reject(new Error(`xapi did not start in time:\n${out}`));
    }, START_DEADLINE_MS);
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
      else reject(new Error(`xapi exited (${code}) before it was ready:\n${out}`));
    });
  });
  return {
    proc,
    pid: proc.pid!,
    address,
    httpPort,
    httpsPort,
    stateDir,
    url: `http://${address}:${httpPort}`,
    httpsUrl: `https://${address}:${httpsPort}`,
    output: () => out,
    exited,
    kill: (signal) => {
      if (proc.exitCode === null && proc.signalCode === null) process.kill(proc.pid!, signal);
    },
  };
}

/** Stops a host we started (SIGTERM, then SIGKILL) and removes its state unless asked to keep it. */
export async function stopXapi(x: XapiProcess, keepState = false): Promise<void> {
  x.kill('SIGTERM');
  const t = setTimeout(() => x.kill('SIGKILL'), 10_000); // a deadline for a clean exit, not a wait
  await x.exited;
  clearTimeout(t);
  if (!keepState) await rm(x.stateDir, { recursive: true, force: true });
}

/**
 * Stops several hosts (resuming any that a test stopped with SIGSTOP) and only then removes their
 * state directories, each once. A host restarted from another's state directory shares it: removing
 * it while the other process still writes there on its way out (its RRDs) fails with ENOTEMPTY.
 */
export async function stopHosts(hosts: Array<XapiProcess | undefined>, keepState = false): Promise<void> {
  const live = hosts.filter((h): h is XapiProcess => h !== undefined);
  await Promise.all(
    live.map((h) => {
      h.kill('SIGCONT');
      return stopXapi(h, true);
    }),
  );
  if (keepState) return;
  for (const dir of new Set(live.map((h) => h.stateDir))) await rm(dir, { recursive: true, force: true });
}
