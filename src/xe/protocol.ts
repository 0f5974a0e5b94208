// xapi's thin CLI protocol (ocaml/xapi-cli-protocol/cli_protocol.ml), spoken on the /cli
// connection after the POST body: each side sends a handshake (a fixed prefix and the version),
// then the server sends commands and the client answers. Integers are 32-bit little-endian,
// strings are a length and the bytes, every message is framed by its length. Shared by the `xe`
// client (src/xe/main.ts) and the server (src/xe-server/); imports nothing but node.
import type { Socket } from 'node:net';

export const PREFIX = 'XenSource thin CLI protocol';
export const MAJOR = 0;
export const MINOR = 2;

/** Message kinds and the tags inside them. */
export const MSG = { command: 9, response: 10, blob: 11 } as const;
export const CMD = {
  print: 0,
  load: 1,
  prompt: 3,
  exit: 4,
  httpGet: 12,
  httpPut: 13,
  error: 14,
  debug: 15,
  printStderr: 16,
  httpConnect: 17,
} as const;
export const RESPONSE = { ok: 5, failed: 6, wait: 18 } as const;
export const BLOB = { chunk: 7, end: 8 } as const;

export type Command =
  | { tag: 'print' | 'printStderr' | 'debug' | 'load' | 'httpConnect'; text: string }
  | { tag: 'httpGet' | 'httpPut'; file: string; url: string }
  | { tag: 'prompt' }
  | { tag: 'exit'; code: number }
  | { tag: 'error'; code: string; params: string[] };

export type Response = 'ok' | 'failed' | 'wait';

const int = (n: number) => {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32LE(n);
  return b;
};
const str = (s: string | Buffer) => {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  return Buffer.concat([int(b.length), b]);
};
const frame = (payload: Buffer) => Buffer.concat([int(payload.length), payload]);

export const handshake = (): Buffer => Buffer.concat([Buffer.from(PREFIX), int(MAJOR), int(MINOR)]);

export function encodeCommand(c: Command): Buffer {
  const head = int(MSG.command);
  switch (c.tag) {
    case 'prompt':
      return frame(Buffer.concat([head, int(CMD.prompt)]));
    case 'exit':
      return frame(Buffer.concat([head, int(CMD.exit), int(c.code)]));
    case 'httpGet':
    case 'httpPut':
      return frame(Buffer.concat([head, int(CMD[c.tag]), str(c.file), str(c.url)]));
    case 'error':
      return frame(Buffer.concat([head, int(CMD.error), str(c.code), int(c.params.length), ...c.params.map(str)]));
    default:
      return frame(Buffer.concat([head, int(CMD[c.tag]), str(c.text)]));
  }
}

export const encodeResponse = (r: Response): Buffer => frame(Buffer.concat([int(MSG.response), int(RESPONSE[r])]));
/** A chunk's header; its bytes follow outside the frame. */
export const encodeChunk = (n: number): Buffer => frame(Buffer.concat([int(MSG.blob), int(BLOB.chunk), int(n)]));
export const encodeBlobEnd = (): Buffer => frame(Buffer.concat([int(MSG.blob), int(BLOB.end)]));

export class UnknownTag extends Error {
  constructor(
    readonly kind: string,
    readonly tag: number,
  ) {
    super(`Unknown_tag("${kind}", ${tag})`);
  }
}

export type Message =
  | { kind: 'command'; command: Command }
  | { kind: 'response'; response: Response }
  | { kind: 'chunk'; length: number }
  | { kind: 'end' };

/** Decodes one message's payload (without its length frame). */
export function decodeMessage(p: Buffer): Message {
  let at = 0;
  const getInt = () => {
    const v = p.readInt32LE(at);
    at += 4;
    return v;
  };
  const getStr = () => {
    const n = getInt();
    const s = p.subarray(at, at + n).toString();
    at += n;
    return s;
  };
  const kind = getInt();
  const tag = getInt();
  if (kind === MSG.command) {
    switch (tag) {
      case CMD.print:
        return { kind: 'command', command: { tag: 'print', text: getStr() } };
      case CMD.printStderr:
        return { kind: 'command', command: { tag: 'printStderr', text: getStr() } };
      case CMD.debug:
        return { kind: 'command', command: { tag: 'debug', text: getStr() } };
      case CMD.load:
        return { kind: 'command', command: { tag: 'load', text: getStr() } };
      case CMD.httpConnect:
        return { kind: 'command', command: { tag: 'httpConnect', text: getStr() } };
      case CMD.httpGet:
      case CMD.httpPut:
        return { kind: 'command', command: { tag: tag === CMD.httpGet ? 'httpGet' : 'httpPut', file: getStr(), url: getStr() } };
      case CMD.prompt:
        return { kind: 'command', command: { tag: 'prompt' } };
      case CMD.exit:
        return { kind: 'command', command: { tag: 'exit', code: getInt() } };
      case CMD.error: {
        const code = getStr();
        const n = getInt();
        const params: string[] = [];
        for (let i = 0; i < n; i++) params.push(getStr());
        return { kind: 'command', command: { tag: 'error', code, params } };
      }
      default:
        throw new UnknownTag('command', tag);
    }
  }
  if (kind === MSG.response) {
    const r = (Object.entries(RESPONSE) as [Response, number][]).find(([, t]) => t === tag);
    if (!r) throw new UnknownTag('response', tag);
    return { kind: 'response', response: r[0] };
  }
  if (kind === MSG.blob) {
    if (tag === BLOB.chunk) return { kind: 'chunk', length: getInt() };
    if (tag === BLOB.end) return { kind: 'end' };
  }
  throw new UnknownTag('blob_header', tag);
}

/** The connection closed before the bytes asked for arrived; `got` holds what did. */
export class ShortRead extends Error {
  constructor(readonly got: Buffer) {
    super('connection closed');
  }
}

/** Reads exact byte counts off a socket, as the protocol needs. */
export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private error?: Error;
  private waiter?: () => void;

  constructor(socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', (e) => {
      this.error = e;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Exactly n bytes; ShortRead (with what came) if the connection ends first. */
  async read(n: number): Promise<Buffer> {
    while (this.buffered < n) {
      if (this.ended || this.error) {
        const got = Buffer.concat(this.chunks);
        this.chunks = [];
        this.buffered = 0;
        throw new ShortRead(got);
      }
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }

  /** What has come and not been read, as soon as there is some; undefined once the connection ended. */
  async readSome(): Promise<Buffer | undefined> {
    while (this.buffered === 0) {
      if (this.ended || this.error) return undefined;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
    return this.drain();
  }

  /** Whatever is buffered now (for error reports). */
  drain(): Buffer {
    const all = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return all;
  }

  async readInt(): Promise<number> {
    return (await this.read(4)).readInt32LE(0);
  }

  async readMessage(): Promise<Message> {
    const n = await this.readInt();
    return decodeMessage(await this.read(n));
  }

  /** The other side's handshake: [major, minor]. Throws NotACliServer on a wrong prefix. */
  async readHandshake(): Promise<[number, number]> {
    const prefix = await this.read(PREFIX.length);
    if (prefix.toString('latin1') !== PREFIX) throw new NotACliServer(prefix);
    return [await this.readInt(), await this.readInt()];
  }
}

export class NotACliServer extends Error {
  constructor(readonly got: Buffer) {
    super('not a CLI server');
  }
}
