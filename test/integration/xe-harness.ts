// Runs the real `xe` (bin/xe.js) as a subprocess against a test host, capturing its output.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { PASSWORD, ROOT, type XapiProcess } from './harness.js';

export interface XeResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** xe with no connection options added. */
export function xeRaw(args: string[], env: Record<string, string | undefined> = {}, input?: string): Promise<XeResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [join(ROOT, 'bin/xe.js'), ...args], {
      env: { ...process.env, HOME: '/nonexistent-xe-home', XE_EXTRA_ARGS: undefined, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
    p.stdin.end(input ?? '');
  });
}

/** xe against a host over TLS as root. */
export const xe = (host: XapiProcess, ...args: string[]): Promise<XeResult> =>
  xeRaw(['-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', PASSWORD, ...args]);

/** xe against a host, its stdin left open: the test types while it runs (a console session). */
export function xeInteractive(
  host: XapiProcess,
  ...args: string[]
): { stdout: () => string; type: (keys: string) => void; done: Promise<XeResult> } {
  const p = spawn(
    process.execPath,
    [join(ROOT, 'bin/xe.js'), '-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', PASSWORD, ...args],
    {
      env: { ...process.env, HOME: '/nonexistent-xe-home', XE_EXTRA_ARGS: undefined },
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<XeResult>((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { stdout: () => stdout, type: (keys) => p.stdin.write(keys), done };
}
