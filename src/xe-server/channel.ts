// The server's end of one /cli connection once the HTTP request is read: commands out, the
// client's answers in (protocol in src/xe/protocol.ts).
import type { Socket } from 'node:net';
import { type ByteReader, type Command, encodeCommand, type Message } from '../xe/protocol.js';

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

  /** The next message from the client, heartbeats (Response Wait) skipped. */
  async next(): Promise<Message> {
    for (;;) {
      const m = await this.reader.readMessage();
      if (m.kind !== 'response' || m.response !== 'wait') return m;
    }
  }
}
