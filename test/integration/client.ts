// A plain JSON-RPC client over fetch for tests that need many calls and exact error arrays.
// (Real clients — xen-api, Python's xmlrpc.client — are exercised in their own tests.)
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

export async function login(url: string, password: string): Promise<string> {
  return (await jsonCall(url, 'session.login_with_password', ['root', password])) as string;
}
