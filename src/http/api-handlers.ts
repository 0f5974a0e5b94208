// The RPC endpoints: XML-RPC on POST / (and so /xmlrpc, by longest prefix), /RPC2 and the legacy
// /json, JSON-RPC on POST /jsonrpc. They only decode, hand the call to the dispatcher and encode
// the outcome; a body that is not a call is a transport error (HTTP 500), as in xapi.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Dispatcher, Outcome } from '../api/dispatch.js';
import { MalformedRequest, type RpcCall } from '../rpc/rpc.js';
import { InvalidUtf8Param, parseXmlRpcCall, XML_BARE, XML_SUCCESS, xmlRpcFailure } from '../rpc/xmlrpc.js';
import { jsonRpcFailure, jsonRpcSuccessAround, parseJsonRpcCall } from '../rpc/jsonrpc.js';
import { BodyAborted, BodyTimeout, BodyTooLarge, readBody } from './body.js';
import { RPC_BODY_LIMIT, RPC_BODY_TIMEOUT_MS, sendHttpError } from './server.js';
import type { Handler } from './handlers.js';

const CORS = { 'access-control-allow-origin': '*', 'access-control-allow-headers': 'X-Requested-With' };

async function readCall<T>(
  req: IncomingMessage,
  res: ServerResponse,
  timeoutMs: number,
  decode: (b: Buffer) => T,
): Promise<T | InvalidUtf8Param | undefined> {
  let body: Buffer;
  try {
    body = await readBody(req, RPC_BODY_LIMIT, timeoutMs);
  } catch (e) {
    if (e instanceof BodyTooLarge) sendHttpError(res, 500, e.message);
    else if (e instanceof BodyTimeout) sendHttpError(res, 408);
    else if (!(e instanceof BodyAborted)) throw e;
    return undefined;
  }
  try {
    return decode(body);
  } catch (e) {
    if (e instanceof InvalidUtf8Param) return e;
    if (e instanceof MalformedRequest) {
      sendHttpError(res, 500, `Malformed request: ${e.message}`);
      return undefined;
    }
    throw e;
  }
}

/**
 * A successful reply: its text whole, or in pieces (Marshal.xmlParts/jsonParts) whose byte length
 * is counted first, for the content-length header. Settles when the last byte is handed to the
 * socket, or when the client has gone.
 */
export function reply(res: ServerResponse, contentType: string, body: string | string[]): Promise<void> | undefined {
  if (typeof body === 'string') {
    const bytes = Buffer.from(body);
    res.writeHead(200, { 'content-type': contentType, 'content-length': bytes.length, ...CORS });
    res.end(bytes);
    return;
  }
  let length = 0;
  for (const p of body) length += Buffer.byteLength(p);
  res.writeHead(200, { 'content-type': contentType, 'content-length': length, ...CORS });
  if (length <= PIECE_BYTES) res.end(encode(body, length));
  else return writeInPieces(res, body);
}

/** A reply's pieces (Marshal.xmlParts/jsonParts) as UTF-8, each written into one buffer in turn. */
function encode(parts: string[], length: number): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  let at = 0;
  for (const p of parts) at += bytes.write(p, at);
  return bytes;
}

/** Replies longer than this are sent a piece of about this size at a time (see writeInPieces). */
const PIECE_BYTES = 64 * 1024;

/**
 * Sends a large reply (get_all_records of thousands of objects: megabytes) a piece at a time,
 * each piece encoded into one of two buffers while the other is on its way out, so the client
 * receives the start of the reply while the rest is being encoded. The reply is never one buffer
 * of its whole size: each megabyte freshly allocated costs the kernel a page fault per 4 KiB
 * page as it is first written, which on a busy host took longer than the encoding itself (a
 * 4 MB reply: 20-45 ms to encode and hand over whole, 10 ms in pieces), while the two piece
 * buffers are written again and again in pages already mapped.
 */
async function writeInPieces(res: ServerResponse, parts: string[]): Promise<void> {
  const buffers = [Buffer.allocUnsafe(PIECE_BYTES), Buffer.allocUnsafe(PIECE_BYTES)];
  const sending: (Promise<boolean> | undefined)[] = [undefined, undefined];
  let b = 0;
  let at = 0;
  for (const p of parts) {
    // A UTF-16 code unit takes at most 3 bytes in UTF-8.
    if (at + p.length * 3 > PIECE_BYTES) {
      if (at > 0) {
        sending[b] = sent(res, buffers[b]!.subarray(0, at));
        b ^= 1;
        at = 0;
        // The buffer is reused once the socket is done with it (and not at all if the client left).
        if (sending[b] && !(await sending[b])) return;
      }
      if (p.length * 3 > PIECE_BYTES) {
        res.write(p);
        continue;
      }
    }
    at += buffers[b]!.write(p, at);
  }
  res.end(buffers[b]!.subarray(0, at));
}

/** Writes a chunk; true once the socket has taken it, false if the connection went first. */
function sent(res: ServerResponse, chunk: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const onClose = () => resolve(false);
    res.once('close', onClose);
    res.write(chunk, (err) => {
      res.off('close', onClose);
      resolve(!err);
    });
  });
}

/** The `task-id` header: the coordinator's task a forwarded call runs under. */
function forwardedTask(req: IncomingMessage): string | undefined {
  const v = req.headers['task-id'];
  return typeof v === 'string' && v.length > 0 ? v : undefined;
}

async function run(dispatcher: Dispatcher, log: Logger, call: RpcCall, wire: string, task: string | undefined): Promise<Outcome> {
  const started = performance.now();
  const outcome = await dispatcher.dispatch(call.method, call.params, task);
  log.info(
    {
      wire,
      method: call.method,
      session: outcome.session,
      task: outcome.task,
      ok: outcome.ok,
      error: outcome.ok ? undefined : outcome.error[0],
      ms: Math.round((performance.now() - started) * 1000) / 1000,
    },
    'call',
  );
  return outcome;
}

const invalidUtf8 = (e: InvalidUtf8Param) => ['INVALID_VALUE', 'Invalid UTF-8 string in parameter', e.value];

export function xmlRpcHandler(dispatcher: Dispatcher, log: Logger, bodyTimeoutMs = RPC_BODY_TIMEOUT_MS): Handler {
  return async (req, res) => {
    const call = await readCall(req, res, bodyTimeoutMs, parseXmlRpcCall);
    if (call === undefined) return;
    const outcome: Outcome =
      call instanceof InvalidUtf8Param
        ? { ok: false, error: invalidUtf8(call) }
        : await run(dispatcher, log, call, 'xml', forwardedTask(req));
    if (!outcome.ok) return reply(res, 'text/xml', xmlRpcFailure(outcome.error));
    const [head, tail] = outcome.bare ? XML_BARE : XML_SUCCESS;
    const parts = [head];
    dispatcher.host.marshal.xmlParts(outcome.type, outcome.value, parts);
    parts.push(tail);
    await reply(res, 'text/xml', parts);
  };
}

export function jsonRpcHandler(dispatcher: Dispatcher, log: Logger, bodyTimeoutMs = RPC_BODY_TIMEOUT_MS): Handler {
  return async (req, res) => {
    const decoded = await readCall(req, res, bodyTimeoutMs, parseJsonRpcCall);
    if (decoded === undefined) return;
    if (decoded instanceof InvalidUtf8Param) {
      // xapi checks UTF-8 before its error wrapper, so the error escapes to the JSON-RPC handler,
      // which writes a bare v2 error array with ocaml-rpc's default id 0, whatever the request.
      reply(res, 'application/json', JSON.stringify({ jsonrpc: '2.0', error: invalidUtf8(decoded), id: 0 }));
      return;
    }
    const outcome = await run(dispatcher, log, decoded.call, 'json', forwardedTask(req));
    if (outcome.ok) {
      // xapi skips the v2 translation for system.listMethods: it answers in v1 shape
      const [head, tail] = jsonRpcSuccessAround(outcome.bare ? '1.0' : decoded.version, decoded.id);
      const parts = [head];
      dispatcher.host.marshal.jsonParts(outcome.type, outcome.value, parts);
      parts.push(tail);
      await reply(res, 'application/json', parts);
    } else reply(res, 'application/json', jsonRpcFailure(decoded.version, decoded.id, outcome.error));
  };
}
