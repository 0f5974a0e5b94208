// A plain JSON-RPC client over fetch for tests that need many calls and exact error arrays.
// (Real clients — xen-api, Python's xmlrpc.client — are exercised in their own tests.)
import { request } from 'node:http';

export class RpcFailure extends Error {
  constructor(readonly error: string[]) {
    super(error.join(' '));
  }
}

let id = 0;

export async function jsonCall(url: string, method: string, params: unknown[] = []): Promise<unknown> {
  const res = await fetch(`${url}/jsonrpc`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', method, params, id: ++id }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const body = (await res.json()) as { result?: unknown; error?: { message: string; data: string[] } };
  if (body.error) throw new RpcFailure([body.error.message, ...(body.error.data ?? [])]);
  return body.result;
}

/** The ErrorDescription a call fails with; fails the test if it succeeds or fails otherwise. */
export async function xapiFailure(p: Promise<unknown>): Promise<string[]> {
  try {
    await p;
  } catch (e) {
    if (e instanceof RpcFailure) return e.error;
    throw e;
  }
  throw new Error('expected a XenAPI failure, the call succeeded');
}

export async function login(url: string, password: string): Promise<string> {
  return (await jsonCall(url, 'session.login_with_password', ['root', password])) as string;
}

/**
 * A task's record once it has left 'pending'. Woken by event.from on the task, as xapi's own
 * clients wait for tasks, not by polling; fails after `timeoutMs` naming the task.
 */
export async function waitTask(url: string, session: string, task: string, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  let token = '';
  for (;;) {
    const rec = (await jsonCall(url, 'task.get_record', [session, task])) as Record<string, unknown>;
    if (rec.status !== 'pending') return rec;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`task ${task} still pending after ${timeoutMs} ms`);
    // The first call (empty token) answers at once with a token; later ones block until the task changes.
    const batch = (await jsonCall(url, 'event.from', [session, [`task/${task}`], token, Math.min(left, 10_000) / 1000])) as {
      token: string;
    };
    token = batch.token;
  }
}

/** PUTs `body` to `base` + `path` (a disk upload, say); resolves with the status once the reply ends. */
export function putBody(base: string, path: string, body: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method: 'PUT', headers: { 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * A call whose result may hold the bare Infinity or NaN that xapi's JSON writer (Yojson, not strict)
 * prints for such floats (a data source's max): JSON.parse refuses them, so they are read as strings.
 */
export async function lenientCall(url: string, method: string, params: unknown[]): Promise<unknown> {
  const res = await fetch(`${url}/jsonrpc`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', method, params, id: 1 }),
  });
  const text = (await res.text()).replace(/:(-?Infinity|NaN)([,}])/g, ':"$1"$2');
  if (res.status !== 200) throw new Error(text);
  return (JSON.parse(text) as { result: unknown }).result;
}
