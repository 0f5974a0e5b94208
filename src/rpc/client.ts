// A XenAPI client over JSON-RPC 2.0 (POST /jsonrpc), for the project's own calls to a host: the
// pool launcher forming a pool, and host-to-host calls inside a pool. One client per host URL,
// its connections kept alive between calls. HTTPS certificates are not verified, as xapi's
// host-to-host calls do not verify them when TLS verification is off (its default).
//
// Three ways a call can fail, kept apart because callers treat them differently:
//   XapiError         the host answered with a XenAPI error (code and parameters);
//   ConnectionFailed  no answer: the connection could not be made or broke before the reply
//                     (the caller cannot know whether the call ran: forwarding maps this to
//                     CANNOT_CONTACT_HOST);
//   BadResponse       an answer that is not a JSON-RPC response (wrong status, unreadable body).
import * as http from 'node:http';
import * as https from 'node:https';
import { XapiError } from './errors.js';
import { jsonRpcRequest, parseJsonRpcResponse } from './jsonrpc.js';
import { isStruct, type Rpc } from './rpc.js';

export class ConnectionFailed extends Error {
  constructor(
    readonly url: string,
    override readonly cause: unknown,
  ) {
    super(`cannot reach ${url}: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
}

export class BadResponse extends Error {
  constructor(
    readonly url: string,
    detail: string,
  ) {
    super(`unexpected answer from ${url}: ${detail}`);
  }
}

/**
 * A kept-alive connection left unused this long is closed by the client. Idle, a TLS connection
 * holds ~60 KiB on each side (OpenSSL's buffers, node's socket): a coordinator's connections
 * from 63 members, kept for the server's minute, were ~7 MiB of its idle RSS. The next call
 * opens a new one, its TLS session resumed.
 */
export const IDLE_SOCKET_MS = 5_000;

export interface XapiClientOptions {
  /** Give up on a call (ConnectionFailed) when its connection stays silent this long; none by default (event.from blocks). */
  idleTimeoutMs?: number;
  /** Extra request headers (e.g. `task-id`, or the pool secret's cookie). */
  headers?: Record<string, string>;
  /** Keep connections open between calls (default true; for up to IDLE_SOCKET_MS unused). */
  keepAlive?: boolean;
}

export class XapiClient {
  readonly url: string;
  private readonly endpoint: URL;
  private readonly agent: http.Agent;
  private readonly request: typeof http.request;
  private nextId = 1;

  /** `url` is the host's base URL, e.g. `https://127.0.0.11:443` (http: or https:). */
  constructor(
    url: string,
    private readonly options: XapiClientOptions = {},
  ) {
    this.url = url.replace(/\/+$/, '');
    this.endpoint = new URL(`${this.url}/jsonrpc`);
    const keepAlive = options.keepAlive ?? true;
    if (this.endpoint.protocol === 'https:') {
      this.agent = new https.Agent({ keepAlive, timeout: IDLE_SOCKET_MS, rejectUnauthorized: false });
      this.request = https.request;
    } else if (this.endpoint.protocol === 'http:') {
      this.agent = new http.Agent({ keepAlive, timeout: IDLE_SOCKET_MS });
      this.request = http.request;
    } else {
      throw new Error(`XapiClient: ${url} is not an http: or https: URL`);
    }
  }

  /** Calls `method` with positional `params`; resolves with the result, rejects as described above. */
  async call(method: string, params: Rpc[] = [], headers: Record<string, string> = {}): Promise<Rpc> {
    const body = jsonRpcRequest(method, params, '2.0', this.nextId++);
    const { status, text } = await this.post(body, headers);
    if (status !== 200) throw new BadResponse(this.url, `HTTP ${status} to ${method}: ${text.slice(0, 200)}`);
    let res: ReturnType<typeof parseJsonRpcResponse>;
    try {
      res = parseJsonRpcResponse(text);
    } catch (e) {
      throw new BadResponse(this.url, `${method}: ${(e as Error).message}`);
    }
    if (res.ok) return res.value;
    throw toXapiError(res.error);
  }

  /** Closes the kept-alive connections. The client may still be used afterwards (it reconnects). */
  close(): void {
    this.agent.destroy();
  }

  private post(body: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = this.request(this.endpoint, {
        method: 'POST',
        agent: this.agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          ...this.options.headers,
          ...headers,
        },
      });
      const fail = (e: unknown) => reject(new ConnectionFailed(this.url, e));
      req.on('error', fail);
      if (this.options.idleTimeoutMs !== undefined) {
        req.setTimeout(this.options.idleTimeoutMs, () => req.destroy(new Error(`no answer for ${this.options.idleTimeoutMs} ms`)));
      }
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', fail);
        res.on('close', () => {
          if (!res.complete) fail(new Error('the reply was cut short'));
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      });
      req.end(body);
    });
  }
}

/** A JSON-RPC error as a XapiError: v2's {message: code, data: params}, or v1's [code, ...params]. */
function toXapiError(error: Rpc): XapiError {
  if (Array.isArray(error)) return new XapiError(String(error[0] ?? ''), error.slice(1).map(String));
  if (isStruct(error)) {
    const data = error['data'];
    return new XapiError(String(error['message'] ?? ''), Array.isArray(data) ? data.map(String) : []);
  }
  return new XapiError('INTERNAL_ERROR', [`unreadable error ${String(error)}`]);
}
