// xe's printer (cli_printer.ml): records as aligned `key: value` lines, lists line by line; with
// --minimal, only the first column of each record and the list items, commas escaped, gathered
// and printed as one comma-separated line at the end (in the reverse order of the calls, as xapi
// prepends to its buffer).
import type { CliChannel } from './channel.js';

export type PrintRecord = [key: string, value: string][];

/** A record's text: the first key padded on the right, the others on the left, to 4 + the longest key. */
export function multiLineRecord(r: PrintRecord): string {
  let longest = 0;
  for (const [k] of r) longest = Math.max(longest, k.length);
  const w = 4 + longest;
  return `${r.map(([k, v], i) => `${i === 0 ? k.padEnd(w) : k.padStart(w)}: ${v}`).join('\n')}\n`;
}

const escapeCommas = (s: string) => s.replace(/[\\,]/g, (c) => `\\${c}`);

export class Printer {
  private readonly buffer: string[] = [];

  constructor(
    private readonly channel: CliChannel,
    readonly minimal: boolean,
  ) {}

  table(records: PrintRecord[]): void {
    if (this.minimal) {
      if (records.length > 0 && records.every((r) => r.length > 0))
        this.buffer.unshift(records.map((r) => escapeCommas(r[0]![1])).join(','));
      return;
    }
    // One write for the lot: thousands of records are thousands of messages.
    this.channel.socket.cork();
    for (const r of records) this.channel.print(`${multiLineRecord(r)}\n`);
    this.channel.socket.uncork();
  }

  list(items: string[]): void {
    if (this.minimal) {
      this.buffer.unshift(items.map(escapeCommas).join(','));
      return;
    }
    for (const s of items) this.channel.print(s);
  }

  msg(text: string): void {
    if (!this.minimal) this.channel.print(text);
  }

  stderr(text: string): void {
    if (!this.minimal) this.channel.stderr(`${text}\n`);
  }

  flush(): void {
    if (this.minimal) this.channel.print(this.buffer.join(','));
  }
}
