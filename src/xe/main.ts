// The `xe` client (xapi's ocaml/xe-cli/newcli.ml): thin. It reads its own connection options
// (command line, XE_EXTRA_ARGS, ~/.xe), sends every other word to the server's /cli handler and
// obeys what the server tells it: print, print to stderr, send or fetch a file, exit with a code.
// Started once per command, so it loads node's own modules only, TLS only when used.
import { createReadStream, createWriteStream, openSync, readFileSync, statSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { homedir } from 'node:os';
import { isAbsolute, join, normalize } from 'node:path';
import {
  ByteReader,
  type Command,
  encodeBlobEnd,
  encodeChunk,
  encodeResponse,
  handshake,
  MAJOR,
  MINOR,
  NotACliServer,
  ShortRead,
  UnknownTag,
} from './protocol.js';

const USAGE = `Usage:
  xe <command>
    [ -s <server> ]            XenServer host
    [ -p <port> ]              XenServer port number
    [ -u <username> -pw <password> | -pwf <password file> ]
                               User authentication (password or file)
    [ --nossl ]                Disable SSL/TLS
    [ --debug ]                Enable debug output
    [ --debug-on-fail ]        Enable debug output only on failure
    [ --minimal ]              Output only values in a comma-separated lists
    [ --traceparent <value> ]  Distributed tracing context
    [ --trace ]                Show task stacktrace on failure
    [ <other arguments> ... ]  Command-specific options

A full list of commands can be obtained by running
  xe help -s <server> -p <port>
`;

interface Options {
  server: string;
  port?: number;
  username: string;
  password: string;
  passwordFile: string;
  ssl: boolean;
  debug: boolean;
  traceparent?: string;
}

class Usage extends Error {}
/** Ends the client with a message on stderr and exit code 1. */
class Fatal extends Error {}

const err = (s: string) => process.stderr.write(s);

function parsePort(v: string): number {
  const p = /^[-+]?\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!(p >= 0 && p <= 65535)) {
    err('Port number must be an integer (0-65535)\n');
    throw new Usage();
  }
  return p;
}

/** OCaml's bool_of_string: "true" or "false" only. */
function ocamlBool(v: string): boolean {
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw new Error('bool_of_string');
}

/** Sets a client option; false if the key is not one. */
function setKeyword(o: Options, k: string, v: string): boolean {
  switch (k) {
    case 'server':
      o.server = v;
      return true;
    case 'port':
      o.port = parsePort(v);
      return true;
    case 'username':
      o.username = v;
      return true;
    case 'password':
      o.password = v;
      return true;
    case 'passwordfile':
      o.passwordFile = v;
      return true;
    case 'nossl':
      o.ssl = !ocamlBool(v);
      return true;
    case 'debug':
    case 'debugonfail':
      try {
        o.debug = ocamlBool(v) || o.debug;
      } catch {
        /* a bad value means false */
      }
      return true;
    case 'traceparent':
      o.traceparent = v;
      return true;
    default:
      return false;
  }
}

const FLAGS_WITH_VALUE: Record<string, string> = {
  '-s': 'server',
  '-p': 'port',
  '-u': 'username',
  '-pw': 'password',
  '-pwf': 'passwordfile',
  '-h': 'server',
  '--traceparent': 'traceparent',
};
const FLAGS: Record<string, string> = { '--nossl': 'nossl', '--debug': 'debug', '--debug-on-fail': 'debugonfail' };

/** The words that are not client options, in order (newcli.ml process_args). */
function processArgs(o: Options, args: string[]): string[] {
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const withValue = FLAGS_WITH_VALUE[a];
    if (withValue && i + 1 < args.length) {
      setKeyword(o, withValue, args[++i]!);
      continue;
    }
    if (FLAGS[a]) {
      setKeyword(o, FLAGS[a], 'true');
      continue;
    }
    const eq = a.indexOf('=');
    if (eq >= 0 && setKeyword(o, a.slice(0, eq), a.slice(eq + 1))) continue;
    rest.push(a);
  }
  return rest;
}

/** ~/.xe: key=value lines; one line without `=` and the whole file is ignored. */
function readRc(): [string, string][] {
  let text: string;
  try {
    text = readFileSync(join(process.env.HOME ?? homedir(), '.xe'), 'utf8');
  } catch {
    return [];
  }
  const out: [string, string][] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const eq = line.indexOf('=');
    if (eq < 0) {
      err('Error parsing rc file. No defaults loaded\n');
      return [];
    }
    out.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return out;
}

/** XE_EXTRA_ARGS: comma-separated words, `\,` keeps a comma, backslashes then dropped. */
function extraArgs(): string[] {
  const s = process.env.XE_EXTRA_ARGS ?? '';
  const out: string[] = [];
  let pos = 0;
  let i = 0;
  while (pos < s.length) {
    if (s[pos] === ',') {
      pos++;
      i = pos;
    } else if (i >= s.length || (s[i] === ',' && s[i - 1] !== '\\')) {
      out.push(s.slice(pos, i).replace(/\\/g, ''));
      i++;
      pos = i;
    } else i++;
  }
  return out;
}

function parseArgs(o: Options, argv: string[]): string[] {
  const rcRest = readRc()
    .filter(([k, v]) => !setKeyword(o, k, v))
    .map(([k, v]) => `${k}=${v}`);
  const extrasRest = processArgs(o, extraArgs());
  if (process.env.TRACEPARENT !== undefined) o.traceparent = process.env.TRACEPARENT;
  const help = argv.some((a) => a === '-help' || a === '--help');
  const argsRest = processArgs(o, argv);
  if (help) throw new Usage();
  if (o.passwordFile !== '') {
    let lines: string[];
    try {
      lines = readFileSync(o.passwordFile, 'utf8').split('\n');
    } catch {
      throw new Fatal(`Error opening password file '${o.passwordFile}'\n`);
    }
    if (lines.length < 2)
      throw new Fatal('Error: password file format: expecting username on the first line, password on the second line\n');
    o.username = lines[0]!;
    o.password = lines[1]!;
  }
  return [...argsRest, ...extrasRest, ...rcRest];
}

const canonicalize = (p: string) => normalize(isAbsolute(p) ? p : join(process.cwd(), p));

/** Files the server may ask for: any `k=v` word's value (newcli.ml get_permit_filenames). */
function permittedFiles(args: string[]): string[] {
  return args.flatMap((a) => {
    const eq = a.indexOf('=');
    return eq >= 0 && a.slice(eq + 1).trim() !== '' ? [canonicalize(a.slice(eq + 1))] : [];
  });
}

function assertPermitted(permitted: string[], file: string, permitCwd = false): void {
  const wanted = canonicalize(file);
  if (permitted.includes(wanted) || (permitCwd && wanted === canonicalize('.'))) return;
  throw new Fatal(
    `File not permitted: Blocked upload/download of the file ${file}, which was requested by the server. The file name was not present on the command line\n.\n`,
  );
}

async function connect(o: Options, host: string): Promise<Socket> {
  const useTls = o.ssl && host !== '127.0.0.1';
  const port = o.port ?? (useTls ? 443 : 80);
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  const socket = await new Promise<Socket>((resolve, reject) => {
    if (useTls) {
      void import('node:tls').then((tls) => {
        const s = tls.connect({ host: bare, port, rejectUnauthorized: false, servername: undefined });
        s.once('secureConnect', () => resolve(s));
        s.once('error', reject);
      }, reject);
    } else {
      const s = createConnection({ host: bare, port });
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    }
  });
  socket.setNoDelay(true);
  return socket;
}

function connectError(o: Options, e: NodeJS.ErrnoException): Fatal {
  if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') return new Fatal(`Host '${o.server}' not found.\n`);
  if (e.code === 'ECONNREFUSED') return new Fatal('Unable to contact server. Please check server and port settings.\n');
  return new Fatal(`Error: ${e.message} (calling connect )\n`);
}

/** `https://host/path` names another host; a bare path means the server we talk to (newcli.ml parse_url). */
function parseUrl(o: Options, url: string): [host: string, path: string] {
  const m = /^https:\/\/([^/]+)(\/.*)?$/.exec(url);
  if (!m) return [o.server, url];
  return [m[1]!, decodeURIComponent(m[2] ?? '/')];
}

/** Reads an HTTP response head off a socket: status line, status and lower-cased headers, the rest left unread. */
async function readHead(reader: ByteReader): Promise<{ line: string; status: number; headers: Map<string, string> }> {
  let head = '';
  while (!head.endsWith('\r\n\r\n')) head += (await reader.read(1)).toString('latin1');
  const lines = head.split('\r\n');
  const status = Number(lines[0]!.split(' ')[1]);
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const c = l.indexOf(':');
    if (c > 0) headers.set(l.slice(0, c).toLowerCase(), l.slice(c + 1).trim());
  }
  return { line: lines[0]!, status, headers };
}

class ClientSideError extends Error {}

async function httpPut(o: Options, file: string, url: string): Promise<void> {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch {
    throw new ClientSideError(`file '${file}' does not exist`);
  }
  const [host, path] = parseUrl(o, url);
  const socket = await connect(o, host);
  try {
    const length = st.isFile() ? `\r\nContent-length: ${st.size}` : '';
    socket.write(`PUT ${path} HTTP/1.0${length}\r\n\r\n`);
    const reader = new ByteReader(socket);
    const { status, headers } = await readHead(reader);
    if (status === 302) return await httpPut(o, file, headers.get('location') ?? '');
    if (status !== 200) throw new Error(`Unhandled response code ${status}`);
    // The server closes the connection once it has read and handled the upload, or as soon as
    // it fails (then the task says why); a write into the closed connection is no error here.
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    const input = createReadStream(file, { highWaterMark: 65536 });
    const sent = new Promise<void>((resolve, reject) => {
      input.on('error', reject);
      input.on('end', resolve);
    });
    input.pipe(socket, { end: false });
    await Promise.race([sent, closed]);
    input.destroy();
    // With the length sent, the client does not half-close: over TLS that cut short an upload
    // the server was still reading behind (an XVA import), which then failed with "aborted".
    if (!st.isFile()) socket.end();
    socket.resume();
    await closed;
  } finally {
    socket.destroy();
  }
}

/** Ctrl+], which ends a console session (as telnet's escape). */
const CONSOLE_ESCAPE = 0x1d;

/**
 * A text console (newcli.ml's HttpConnect): CONNECT to its location, then the terminal, put in
 * raw mode so that keys like Ctrl+C reach the guest, relayed both ways until Ctrl+] is typed or
 * the console closes. Whether the session happened.
 */
async function httpConnect(o: Options, url: string): Promise<boolean> {
  const [host, path] = parseUrl(o, url);
  const socket = await connect(o, host);
  try {
    socket.write(`CONNECT ${path} HTTP/1.0\r\ncontent-length: 0\r\n\r\n`);
    const reader = new ByteReader(socket);
    const { line, status } = await readHead(reader);
    if (status === 404) {
      err('Server replied with HTTP 404: the console is not available\n');
      return false;
    }
    if (status !== 200) {
      // the status line as read, its carriage return kept and no newline added, as xe prints it
      err(`Server said: ${line}\r`);
      return false;
    }
    const raw = process.stdin.isTTY;
    if (raw) process.stdin.setRawMode(true);
    let typedEscape: () => void = () => undefined;
    const escaped = new Promise<void>((resolve) => {
      typedEscape = resolve;
    });
    const onKeys = (d: Buffer) => {
      const at = d.indexOf(CONSOLE_ESCAPE);
      socket.write(at < 0 ? d : d.subarray(0, at));
      if (at >= 0) typedEscape();
    };
    process.stdin.on('data', onKeys);
    process.stdin.resume();
    const shown = (async () => {
      for (let b = await reader.readSome(); b !== undefined; b = await reader.readSome()) process.stdout.write(b);
    })();
    try {
      await Promise.race([escaped, shown]);
    } finally {
      process.stdin.off('data', onKeys);
      process.stdin.pause();
      if (raw) {
        process.stdin.setRawMode(false);
        process.stdout.write('\r\n');
      }
    }
    return true;
  } finally {
    socket.destroy();
  }
}

async function httpGet(o: Options, file: string, url: string, permitted: string[]): Promise<void> {
  const [host, path] = parseUrl(o, url);
  const socket = await connect(o, host);
  try {
    socket.write(`GET ${path} HTTP/1.0\r\n\r\n`);
    const reader = new ByteReader(socket);
    const { status, headers } = await readHead(reader);
    if (status === 302) return await httpGet(o, file, headers.get('location') ?? '', permitted);
    if (status !== 200) throw new Error(`Unhandled response code ${status}`);
    let fd: number;
    if (file === '') fd = 1;
    else {
      assertPermitted(permitted, file, true);
      try {
        fd = openSync(file, 'wx', 0o600);
      } catch (e) {
        throw new ClientSideError(
          `Sys_error("${file}: ${(e as NodeJS.ErrnoException).code === 'EEXIST' ? 'File exists' : (e as Error).message}")`,
        );
      }
    }
    const out = createWriteStream('', { fd, autoClose: fd !== 1 });
    const rest = reader.drain();
    if (rest.length) out.write(rest);
    socket.removeAllListeners('data');
    await new Promise<void>((resolve, reject) => {
      socket.pipe(out, { end: false });
      socket.on('end', resolve);
      socket.on('error', reject);
    });
    await new Promise<void>((resolve) => (fd === 1 ? resolve() : out.end(resolve)));
  } finally {
    socket.destroy();
  }
}

async function mainLoop(o: Options, socket: Socket, reader: ByteReader, permitted: string[]): Promise<number> {
  let major: number;
  try {
    [major] = await reader.readHandshake();
  } catch (e) {
    if (e instanceof ShortRead) {
      if (e.got.length === 0) throw new Fatal('Unable to contact server. Please check server and port settings.\n');
      if (e.got.subarray(0, 4).toString('latin1').toUpperCase() === 'HTTP') throw new Fatal('Server internal error.\n');
      throw new Fatal('Lost connection to the server.\n');
    }
    if (e instanceof NotACliServer) {
      const got = Buffer.concat([e.got, reader.drain()]);
      if (got.subarray(0, 4).toString('latin1').toUpperCase() === 'HTTP') throw new Fatal('Server internal error.\n');
      throw new Fatal(`Failed to contact a running management agent.\nTry specifying a server name and port.\n${USAGE}`);
    }
    throw e;
  }
  if (major !== MAJOR) {
    throw new Fatal(
      `Protocol version mismatch: Server has protocol version ${major}.x. Client has ${MAJOR}.${MINOR}.\nTry specifying a server name and port on the command-line.\n${USAGE}`,
    );
  }
  socket.write(handshake());
  // stdout gathered and written in large pieces; flushed before anything else reaches the user
  // (stderr, a question) and before the command ends.
  let pending: string[] = [];
  let pendingBytes = 0;
  const flush = () => {
    if (pending.length === 0) return;
    process.stdout.write(pending.join(''));
    pending = [];
    pendingBytes = 0;
  };
  for (;;) {
    let m: Awaited<ReturnType<ByteReader['readMessage']>>;
    try {
      m = await reader.readMessage();
    } catch (e) {
      if (e instanceof ShortRead) throw new Fatal('Lost connection to the server.\n');
      if (e instanceof UnknownTag) throw new Fatal(`Unhandled exception\n${e.message}\n`);
      throw e;
    }
    if (m.kind !== 'command') throw new Fatal('Unexpected message from server: ');
    const c: Command = m.command;
    if (c.tag === 'print') {
      pending.push(c.text, '\n');
      pendingBytes += c.text.length + 1;
      if (pendingBytes > 1 << 20) flush();
      continue;
    }
    flush();
    switch (c.tag) {
      case 'printStderr':
        err(c.text);
        break;
      case 'debug':
        if (o.debug) err(`debug from server: ${c.text}\n`);
        break;
      case 'error':
        err(`Error code: ${c.code}\n`);
        err(`Error parameters: ${c.params.join(', ')}\n`);
        break;
      case 'exit':
        return c.code;
      case 'load': {
        assertPermitted(permitted, c.text);
        let data: Buffer;
        try {
          data = readFileSync(c.text);
        } catch {
          socket.write(encodeResponse('failed'));
          break;
        }
        socket.write(encodeResponse('ok'));
        socket.write(encodeChunk(data.length));
        socket.write(data);
        socket.write(encodeBlobEnd());
        break;
      }
      case 'prompt': {
        const line = await readLine();
        socket.write(encodeChunk(Buffer.byteLength(line)));
        socket.write(line);
        socket.write(encodeBlobEnd());
        break;
      }
      case 'httpPut':
      case 'httpGet':
        try {
          if (c.tag === 'httpPut') {
            assertPermitted(permitted, c.file);
            await httpPut(o, c.file, c.url);
          } else await httpGet(o, c.file, c.url, permitted);
          socket.write(encodeResponse('ok'));
        } catch (e) {
          if (e instanceof Fatal) throw e;
          socket.write(encodeResponse('failed'));
          if (e instanceof ClientSideError) {
            err(`Operation failed. Error: ${e.message}\n`);
            return 1;
          }
        }
        break;
      case 'httpConnect': {
        let connected = false;
        try {
          connected = await httpConnect(o, c.text);
        } catch (e) {
          err(`${(e as Error).message}\n`);
        }
        socket.write(encodeResponse(connected ? 'ok' : 'failed'));
        break;
      }
    }
  }
}

/** One line of stdin (for the server's Prompt). */
function readLine(): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString();
      const nl = got.indexOf('\n');
      if (nl >= 0) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        resolve(got.slice(0, nl));
      }
    };
    process.stdin.on('data', onData);
    process.stdin.once('end', () => resolve(got));
  });
}

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('-version')) {
    process.stdout.write(`ThinCLI protocol: ${MAJOR}.${MINOR}\n`);
    return 0;
  }
  const o: Options = { server: '127.0.0.1', username: 'root', password: 'null', passwordFile: '', ssl: true, debug: false };
  let socket: Socket | undefined;
  try {
    const args = parseArgs(o, argv);
    if (args.length === 0) throw new Usage();
    const permitted = permittedFiles(args);
    try {
      socket = await connect(o, o.server);
    } catch (e) {
      throw connectError(o, e as NodeJS.ErrnoException);
    }
    const words = [...args, `username=${o.username}`, `password=${o.password}`];
    const body = Buffer.from(words.join('\n'));
    let head = 'POST /cli HTTP/1.0\r\n';
    head += `User-agent: xe-cli/Unix/${MAJOR}.${MINOR}\r\n`;
    head += 'originator: cli\r\n';
    if (o.traceparent !== undefined) head += `traceparent: ${o.traceparent}\r\n`;
    if (process.env.BAGGAGE !== undefined) head += `baggage: ${process.env.BAGGAGE}\r\n`;
    head += `content-length: ${body.length}\r\n\r\n`;
    const reader = new ByteReader(socket);
    socket.write(Buffer.concat([Buffer.from(head), body]));
    return await mainLoop(o, socket, reader, permitted);
  } catch (e) {
    if (e instanceof Usage) {
      err(USAGE);
      return 0;
    }
    if (e instanceof Fatal) {
      err(e.message);
      return 1;
    }
    err(`Unhandled exception\n${String(e)}\n`);
    return 1;
  } finally {
    socket?.destroy();
  }
}

/** Used by bin/xe.js: exits once stdout and stderr are written. */
export function run(): void {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
