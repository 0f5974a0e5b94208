// Reading a whole request body (RPC calls, CLI commands) with a hard size limit.
import type { IncomingMessage } from 'node:http';

/** The body is bigger than the limit. The message is the exception xapi's http_svr prints
 * (Http_svr.read_body), so it can go as-is into the HTTP 500 page. */
export class BodyTooLarge extends Error {
  constructor(readonly limit: number) {
    super('Http_svr.Client_requested_size_over_limit');
    this.name = 'BodyTooLarge';
  }
}

/** The body did not arrive within its time bound (the caller answers 408). */
export class BodyTimeout extends Error {
  constructor(
    readonly timeoutMs: number,
    readonly idle = false,
  ) {
    super(
      idle ? `the request body sent nothing for ${timeoutMs / 1000} s` : `the request body did not arrive within ${timeoutMs / 1000} s`,
    );
    this.name = 'BodyTimeout';
  }
}

/** The client went away before sending the whole body; there is nobody left to answer. */
export class BodyAborted extends Error {
  constructor() {
    super('client closed the connection before the end of the request body');
    this.name = 'BodyAborted';
  }
}

/**
 * Reads the body (Content-Length or chunked; node's parser undoes the chunking) into one Buffer.
 * Rejects with BodyTooLarge as soon as the limit is passed — at once if Content-Length already
 * says so — and then keeps no more of the body: the rest is discarded as it arrives, and the
 * error page the caller sends (sendHttpError) closes the connection. Rejects with BodyTimeout if
 * the whole body has not arrived `timeoutMs` after the call (the same discarding follows).
 */
export function readBody(req: IncomingMessage, limit: number, timeoutMs = 0): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      discard(req);
      reject(new BodyTooLarge(limit));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        chunks.length = 0;
        discard(req);
        reject(new BodyTooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
    };
    // 'error' (ECONNRESET "aborted") and 'close' without 'end' both mean the client is gone.
    const onGone = () => {
      if (req.complete) return;
      cleanup();
      reject(new BodyAborted());
    };
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            cleanup();
            chunks.length = 0;
            discard(req);
            reject(new BodyTimeout(timeoutMs));
          }, timeoutMs)
        : undefined;
    const cleanup = () => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onGone);
      req.off('close', onGone);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onGone);
    req.on('close', onGone);
  });
}

/** Lets the rest of the body flow and be dropped, without buffering it. */
function discard(req: IncomingMessage): void {
  req.on('error', () => {}); // a later reset must not become an uncaught 'error'
  req.resume();
}
