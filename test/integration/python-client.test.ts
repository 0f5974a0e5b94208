// Python's standard xmlrpc.client (what XenAPI.py is built on) and urllib+json against a real
// host: test/integration/python_client.py makes the calls and checks, one printed line per check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { PASSWORD, ROOT, startXapi, stopXapi } from './harness.js';

const python = spawnSync('python3', ['--version'], { encoding: 'utf8' });
const havePython = python.status === 0;

function runPython(script: string, env: Record<string, string>, timeoutMs: number): Promise<{ code: number | string; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', [script], {
      cwd: ROOT,
      env: { ...process.env, PYTHONIOENCODING: 'utf-8', PYTHONDONTWRITEBYTECODE: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    // A deadline, not a wait: end only the child we started, by its pid, if it hangs.
    const timer = setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal ?? -1, output });
    });
  });
}

test('Python xmlrpc.client and urllib JSON-RPC clients', { timeout: 120_000, skip: havePython ? false : 'python3 not found' }, async () => {
  const x = await startXapi();
  try {
    const { code, output } = await runPython(
      join(ROOT, 'test/integration/python_client.py'),
      { XAPI_URL: x.url, XAPI_HTTPS_URL: x.httpsUrl, XAPI_PASSWORD: PASSWORD },
      90_000,
    );
    assert.equal(code, 0, `python_client.py failed (exit ${code}):\n${output}\n--- server output (tail) ---\n${x.output().slice(-4000)}`);
    assert.match(output, /^all \d+ checks passed$/m, output);
    assert.doesNotMatch(output, /^FAIL /m, output);
    // the host is still up afterwards
    assert.equal(x.proc.exitCode, null);
  } finally {
    await stopXapi(x);
  }
});
