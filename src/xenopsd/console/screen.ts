// A simulated guest's text screen: 80×25 characters, a cursor, and what the guest's OS writes
// on it (its boot log, a login prompt, lines about what happens to the domain) and echoes of
// what is typed. Consoles read it: the RFB server draws it (rfb.ts), a vt100 console streams
// the text. The screen says which rows changed (a version per row), so an RFB client gets the
// rows it has not seen yet.
import { EventEmitter } from 'node:events';

export const COLS = 80;
export const ROWS = 25;

/** What a screen tells its readers. */
export interface ScreenEvents {
  /** Some rows changed (their versions moved). */
  change: [];
  /** Text written to the screen, as a serial console carries it (\r\n line ends). */
  output: [text: string];
  /** The domain went away: its consoles close. */
  off: [];
}

export class GuestScreen extends EventEmitter<ScreenEvents> {
  private readonly lines: string[] = Array.from({ length: ROWS }, () => '');
  /** A row's version moves each time the row (or the cursor on it) changes. */
  readonly versions: number[] = Array.from({ length: ROWS }, () => 0);
  private version = 0;
  row = 0;
  col = 0;
  /** What the guest does with a finished input line (set by GuestShell). */
  onLine?: (line: string) => void;
  private input = '';
  /** Input is not echoed (a password). */
  private silent = false;

  constructor() {
    super();
    this.setMaxListeners(0); // one per console client
  }

  /** The text of row `r` (without trailing blanks). */
  text(r: number): string {
    return this.lines[r];
  }

  /** The visible rows, for a console that connects now. */
  snapshot(): string[] {
    return [...this.lines];
  }

  clear(): void {
    for (let r = 0; r < ROWS; r++) this.lines[r] = '';
    this.row = 0;
    this.col = 0;
    this.input = '';
    this.touch(0, ROWS - 1);
    this.emit('output', '\x1b[2J\x1b[H');
  }

  /** Writes text at the cursor: \n is a new line (scrolling at the bottom), \b moves back. */
  write(text: string): void {
    if (text === '') return;
    const before = this.row;
    let scrolled = false;
    for (const ch of text) {
      if (ch === '\n') {
        this.col = 0;
        if (this.row === ROWS - 1) {
          this.lines.shift();
          this.lines.push('');
          scrolled = true;
        } else this.row++;
      } else if (ch === '\r') this.col = 0;
      else if (ch === '\b') {
        if (this.col > 0) {
          this.col--;
          this.lines[this.row] = this.lines[this.row].slice(0, this.col);
        }
      } else {
        if (this.col >= COLS) this.write('\n');
        const line = this.lines[this.row].padEnd(this.col);
        this.lines[this.row] = line.slice(0, this.col) + printable(ch) + line.slice(this.col + 1);
        this.col++;
      }
    }
    if (scrolled) this.touch(0, ROWS - 1);
    else this.touch(Math.min(before, this.row), Math.max(before, this.row));
    this.emit('output', text.replace(/\n/g, '\r\n'));
  }

  /** Writes whole lines, starting on a fresh line. */
  say(...lines: string[]): void {
    const fresh = this.col === 0 ? '' : '\n';
    this.write(fresh + lines.map((l) => `${l}\n`).join(''));
  }

  /** Keyboard input: printable characters are echoed, Enter hands the line to the guest. */
  type(text: string): void {
    for (const ch of text) {
      if (ch === '\r' || ch === '\n') {
        const line = this.input;
        this.input = '';
        this.write('\n');
        this.onLine?.(line);
      } else if (ch === '\b' || ch === '\x7f') {
        if (this.input.length === 0) continue;
        this.input = this.input.slice(0, -1);
        if (!this.silent) this.write('\b');
      } else if (ch >= ' ' && ch <= '~') {
        this.input += ch;
        if (!this.silent) this.write(ch);
      }
    }
  }

  /** Whether typed characters are echoed (not while a password is typed). */
  echo(on: boolean): void {
    this.silent = !on;
  }

  powerOff(): void {
    this.emit('off');
  }

  private touch(from: number, to: number): void {
    this.version++;
    for (let r = from; r <= to; r++) this.versions[r] = this.version;
    this.emit('change');
  }
}

function printable(ch: string): string {
  return ch >= ' ' && ch <= '~' ? ch : '?';
}

/**
 * The simulated guest OS on its screen: the boot log, a login prompt once it is up, a shell
 * that answers what is typed, and lines about what the domain goes through.
 */
export class GuestShell {
  private state: 'booting' | 'login' | 'password' | 'shell' | 'off' = 'booting';
  private user = 'root';

  constructor(
    readonly screen: GuestScreen,
    private readonly name: string,
  ) {
    screen.onLine = (line) => this.line(line);
  }

  /** The host name the guest calls itself: its VM's name, as a host name can be written. */
  get hostname(): string {
    return (
      this.name
        .toLowerCase()
        .replace(/[^a-z0-9-]+/g, '-')
        .replace(/^-+|-+$/g, '')
        .slice(0, 32) || 'localhost'
    );
  }

  /** A new domain: the firmware and kernel messages of a boot. */
  boot(o: { domid: number; memoryBytes: number; vcpus: number; disks: string[]; nics: number; hvm: boolean }): void {
    const s = this.screen;
    s.clear();
    this.state = 'booting';
    s.echo(true);
    if (o.hvm) s.say('SeaBIOS (version 1.16.2-xen)', `Booting from Hard Disk...`);
    s.say(
      `Linux version 6.1.0-simulated (domain ${o.domid})`,
      `Memory: ${Math.round(o.memoryBytes / 1048576)} MiB available`,
      `smpboot: ${o.vcpus} vCPU${o.vcpus === 1 ? '' : 's'} online`,
      ...o.disks.map((d) => `blkfront: ${d}: attached`),
      ...Array.from({ length: o.nics }, (_, i) => `xen_netfront: eth${i}: link up`),
      'Starting system services...',
    );
  }

  /** A domain that did not boot before this screen's eyes (restored, migrated in, found running). */
  attached(text: string, osUp: boolean): void {
    this.screen.clear();
    this.screen.echo(true);
    this.state = 'booting';
    this.screen.say(`[ ${text} ]`);
    if (osUp) this.loginPrompt();
  }

  /** The OS is up: a login prompt. */
  up(): void {
    if (this.state !== 'booting') return;
    this.screen.say('', `Simulated Linux 6.1 ${this.hostname} hvc0`, '');
    this.loginPrompt();
  }

  /** A line about the domain (paused, memory target moved, a shutdown request...). */
  event(text: string): void {
    if (this.state === 'off') return;
    const s = this.screen;
    s.say(`[ ${text} ]`);
    this.prompt();
  }

  /** The domain went away. */
  halted(reason: string): void {
    if (this.state === 'off') return;
    this.screen.say(`[ ${reason} ]`);
    this.state = 'off';
    this.screen.powerOff();
  }

  private loginPrompt(): void {
    this.state = 'login';
    this.screen.echo(true);
    this.screen.write(`${this.hostname} login: `);
  }

  private prompt(): void {
    if (this.state === 'login') this.screen.write(`${this.hostname} login: `);
    else if (this.state === 'password') this.screen.write('Password: ');
    else if (this.state === 'shell') this.screen.write(this.shellPrompt());
  }

  private shellPrompt(): string {
    return `[${this.user}@${this.hostname} ~]# `;
  }

  private line(line: string): void {
    const s = this.screen;
    switch (this.state) {
      case 'login':
        if (line.trim() === '') {
          this.loginPrompt();
          return;
        }
        this.user = line.trim();
        this.state = 'password';
        s.echo(false);
        s.write('Password: ');
        return;
      case 'password':
        s.echo(true);
        this.state = 'shell';
        s.write(`Last login: ${new Date().toUTCString()}\n${this.shellPrompt()}`);
        return;
      case 'shell': {
        const [cmd] = line.trim().split(/\s+/);
        if (cmd === 'exit' || cmd === 'logout') {
          this.loginPrompt();
          return;
        }
        if (cmd === 'hostname') s.write(`${this.hostname}\n`);
        else if (cmd === 'echo') s.write(`${line.trim().slice(5)}\n`);
        else if (cmd) s.write(`-bash: ${cmd}: command not found\n`);
        s.write(this.shellPrompt());
        return;
      }
      default:
        return;
    }
  }
}
