// The progress bar of file transfers (cli_progress_bar.ml), drawn on the client's stderr:
// `[` spinner `] ` `#`...`>` over the free columns, then `(NNN% ETA HH:MM:SS)`, 80 columns; redrawn
// only when the bar's length changes, and `Total time: ...` at the end.
const PREFIX = '[*] ';
const SUFFIX = '  (   % ETA   :  :  )';
const SPINNER = ['-', '\\', '|', '/'];

function hms(secs: number): string {
  const h = Math.trunc(secs / 3600);
  const m = Math.trunc((secs % 3600) / 60);
  const s = Math.trunc(secs % 60);
  const two = (n: number) => String(n).padStart(2, '0');
  const str = `${two(h)}:${two(m)}:${two(s)}`;
  if (str.length <= 8 && secs >= 0) return str;
  const longer = `${String(h).padStart(5, '0')}:${two(m)}`;
  return longer.length <= 8 && secs >= 0 ? longer : '++:++:++';
}

/** A duration as Mtime.Span.pp writes it (SI units, three significant digits). */
export function spanText(ms: number): string {
  const sig = (x: number) => String(Number(x.toPrecision(3)));
  if (ms < 1) return `${sig(ms * 1000)}us`;
  if (ms < 1000) return `${sig(ms)}ms`;
  if (ms < 60_000) return `${sig(ms / 1000)}s`;
  const min = Math.trunc(ms / 60_000);
  return `${min}min${Math.trunc((ms % 60_000) / 1000)}s`;
}

export class ProgressBar {
  private current = 0;
  private spin = 0;
  private summarised = false;
  private readonly line: string[];
  private readonly start = performance.now();

  constructor(private readonly width = 80) {
    this.line = Array.from({ length: width }, () => ' ');
    for (let i = 0; i < PREFIX.length; i++) this.line[i] = PREFIX[i]!;
    for (let i = 0; i < SUFFIX.length; i++) this.line[width - SUFFIX.length - 1 + i] = SUFFIX[i]!;
  }

  private barWidth(v: number): number {
    return Math.trunc(v * (this.width - PREFIX.length - SUFFIX.length));
  }

  /** True if the bar must be redrawn. */
  update(value: number): boolean {
    const v = Math.min(value, 1);
    const changed = this.barWidth(v) !== this.barWidth(this.current);
    this.current = v;
    return changed;
  }

  text(): string {
    const w = this.barWidth(this.current);
    this.line[1] = SPINNER[this.spin]!;
    this.spin = (this.spin + 1) % SPINNER.length;
    for (let i = 0; i < w; i++) this.line[PREFIX.length + i] = i === w - 1 ? '>' : '#';
    const pct = String(Math.trunc(this.current * 100)).padStart(3);
    for (let i = 0; i < 3; i++) this.line[this.width - 19 + i] = pct[i]!;
    const elapsed = (performance.now() - this.start) / 1000;
    const eta = hms(Math.trunc((1 / this.current) * elapsed - elapsed));
    for (let i = 0; i < eta.length; i++) this.line[this.width - 10 + i] = eta[i]!;
    return this.line.join('');
  }

  summarise(): string {
    if (this.summarised) return '';
    this.summarised = true;
    return `Total time: ${spanText(performance.now() - this.start)}\n`;
  }
}
