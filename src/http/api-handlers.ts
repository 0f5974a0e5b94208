// The RPC endpoints: XML-RPC on POST / (and so /xmlrpc, by longest prefix), /RPC2 and the legacy
// /json, JSON-RPC on POST /jsonrpc. They only decode, hand the call to the dispatcher and encode
// the outcome; a body that is not a call is a transport error (HTTP 500), as in xapi.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Dispatcher, Outcome } from '../api/dispatch.js';
import { MalformedRequest, type RpcCall } from '../api/rpc.js';
import { InvalidUtf8Param, parseXmlRpcCall, XML_BARE, XML_SUCCESS, xmlRpcFailure } from '../api/xmlrpc.js';
import { jsonRpcFailure, jsonRpcSuccessAround, parseJsonRpcCall } from '../api/jsonrpc.js';
import { BodyAborted, BodyTimeout, BodyTooLarge, readBody } from './body.js';
import { RPC_BODY_LIMIT, RPC_BODY_TIMEOUT_MS, sendHttpError } from './server.js';
import type { Handler } from './handlers.js';

const CORS = { 'access-control-allow-origin': '*', 'access-control-allow-headers': 'X-Requested-With' };

async function readCall<T>(req: IncomingMessage, res: ServerResponse, timeoutMs: number, decode: (b: Buffer) => T): Promise<T | InvalidUtf8Param | undefined> {
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

function reply(res: ServerResponse, contentType: string, body: string | string[]): void {
  const bytes = typeof body === 'string' ? Buffer.from(body) : encode(body);
  res.writeHead(200, { 'content-type': contentType, 'content-length': bytes.length, ...CORS });
  res.end(bytes);
}

/** A reply's pieces (Marshal.xmlParts/jsonParts) as UTF-8, each written into one buffer in turn. */
function encode(parts: string[]): Buffer {
  let length = 0;
  for (const p of parts) length += Buffer.byteLength(p);
  const bytes = Buffer.allocUnsafe(length);
  let at = 0;
  for (const p of parts) at += bytes.write(p, at);
  return bytes;
}

async function run(dispatcher: Dispatcher, log: Logger, call: RpcCall, wire: string): Promise<Outcome> {
  const started = performance.now();
  const outcome = await dispatcher.dispatch(call.method, call.params);
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
      call instanceof InvalidUtf8Param ? { ok: false, error: invalidUtf8(call) } : await run(dispatcher, log, call, 'xml');
    if (!outcome.ok) return reply(res, 'text/xml', xmlRpcFailure(outcome.error));
    const [head, tail] = outcome.bare ? XML_BARE : XML_SUCCESS;
    const parts = [head];
    dispatcher.host.marshal.xmlParts(outcome.type, outcome.value, parts);
    parts.push(tail);
    reply(res, 'text/xml', parts);
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
    const outcome = await run(dispatcher, log, decoded.call, 'json');
    if (outcome.ok) {
      // xapi skips the v2 translation for system.listMethods: it answers in v1 shape
      const [head, tail] = jsonRpcSuccessAround(outcome.bare ? '1.0' : decoded.version, decoded.id);
      const parts = [head];
      dispatcher.host.marshal.jsonParts(outcome.type, outcome.value, parts);
      parts.push(tail);
      reply(res, 'application/json', parts);
    }
    else reply(res, 'application/json', jsonRpcFailure(decoded.version, decoded.id, outcome.error));
  };
}
