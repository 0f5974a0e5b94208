// The server's end of one /cli connection once the HTTP request is read: commands out, the
// client's answers in (protocol in src/xe/protocol.ts).
import type { Socket } from 'node:net';
import { type ByteReader, type Command, encodeCommand, type Message } from '../xe/protocol.js';

/** Constants.max_cli_upload_bytes. */
const MAX_UPLOAD = 33554432;

export class CliChannel {
  constructor(
    readonly socket: Socket,
    readonly reader: ByteReader,
  ) {}

  send(c: Command): void {
    if (!this.socket.destroyed) this.socket.write(encodeCommand(c));
  }

  print(text: string): void {
    this.send({ tag: 'print', text });
  }

  /** Written verbatim to the client's stderr (no newline added). */
  stderr(text: string): void {
    this.send({ tag: 'printStderr', text });
  }

  /** One line the user types (Prompt): the client answers with a chunk and an end. */
  async prompt(): Promise<string> {
    this.send({ tag: 'prompt' });
    const m = await this.reader.readMessage();
    if (m.kind !== 'chunk') throw new Error('Protocol error');
    const line = (await this.reader.read(m.length)).toString();
    if ((await this.reader.readMessage()).kind !== 'end') throw new Error('Protocol error');
    return line;
  }

  /**
   * A small file of the client's (Load): its bytes, or undefined if the client could not read it
   * (cli_operations.ml get_client_file). At most 32 MiB.
   */
  async load(file: string): Promise<Buffer | undefined> {
    this.send({ tag: 'load', text: file });
    const answer = await this.next();
    if (answer.kind !== 'response' || answer.response !== 'ok') return undefined;
    const parts: Buffer[] = [];
    let total = 0;
    for (;;) {
      const m = await this.reader.readMessage();
      if (m.kind === 'end') break;
      if (m.kind !== 'chunk') throw new Error('Protocol error');
      total += m.length;
      if (total > MAX_UPLOAD) {
        throw new Error(`Fatal error: A CLI client tried to transfer more than the maximum allowed of ${MAX_UPLOAD}B, aborting.`);
      }
      parts.push(await this.reader.read(m.length));
    }
    return Buffer.concat(parts);
  }

  /** cli_util.ml user_says_yes. */
  async userSaysYes(): Promise<boolean> {
    this.print("Type 'yes' to continue");
    const answer = await this.prompt();
    const yes = answer.trim().toLowerCase() === 'yes';
    if (!yes) this.print(`Aborted (you typed: '${answer}')`);
    return yes;
  }

  /** The next message from the client, heartbeats (Response Wait) skipped. */
  async next(): Promise<Message> {
    for (;;) {
      const m = await this.reader.readMessage();
      if (m.kind !== 'response' || m.response !== 'wait') return m;
    }
  }
}
