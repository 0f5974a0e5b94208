// The simulator's state on disk, under <state>/xenopsd/: a snapshot (state.json) and a journal
// of the changes since (journal). Each save appends one line holding the whole new state of
// every VM it changed (or null for a VM removed) and, when it moved, the last domain id: a
// single append, where a file per VM replaced by rename cost a forced writeback each (ext4
// flushes a file renamed over another). Records are whole states, so replaying one twice is
// harmless. When the journal outgrows the snapshot, a new snapshot is written (temporary file,
// rename) and the journal emptied; a process killed in between replays lines the snapshot
// already holds.
//
// A line cut short by the process dying mid-write is dropped at load: it was written by a save
// that had not returned, so nobody had been told about it. Nothing is fsynced: the failure
// modelled is the xapi process dying, after which the kernel still has every completed write
// (a crash of the machine would take the simulated domains with it anyway).
//
// A save that cannot be written (a full disk) throws and leaves the store as it was: a line
// written only in part is cut off again (and the next one is written where it began, so a torn
// line never sits before a whole one), and the caller saves the same VMs again later. A snapshot
// that cannot be written is not an error: the journal still holds everything, and folding is
// tried again at the next save.
//
// Directories written before the journal (vm/<id>.json, domain/<id>.json, host.json) are read
// when there is no snapshot yet, and removed once one has been written.
import {
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

const SNAPSHOT = 'state.json';
const JOURNAL = 'journal';
/** The journal is folded into a new snapshot once it is this large and larger than the snapshot. */
const COMPACT_MIN_BYTES = 1024 * 1024;

export interface SavedState<T> {
  lastDomid: number;
  vms: Map<string, T>;
}

export class SimStateStore<T> {
  /** Every VM's latest state as JSON text: what the next snapshot is made of. */
  private readonly texts = new Map<string, string>();
  private lastDomid = 0;
  private journal: number | undefined;
  /** Where the next line goes: the end of the last whole line. */
  private journalBytes = 0;
  private snapshotBytes = 0;

  constructor(private readonly dir: string) {}

  /** What the previous process left, after which the files are compacted into a snapshot. */
  load(): SavedState<T> {
    const snapshotPath = join(this.dir, SNAPSHOT);
    const legacy = !existsSync(snapshotPath);
    if (legacy) this.loadLegacy();
    else {
      const text = readFileSync(snapshotPath, 'utf8');
      this.snapshotBytes = Buffer.byteLength(text);
      const snap = JSON.parse(text) as { lastDomid: number; vms: Record<string, unknown> };
      this.lastDomid = snap.lastDomid;
      for (const [id, state] of Object.entries(snap.vms)) this.texts.set(id, JSON.stringify(state));
    }
    this.replayJournal();
    // Folded at once; on a full disk the files are kept as they are, and lines are appended
    // after the last whole one.
    if (this.compact() && legacy) {
      for (const d of ['vm', 'domain']) rmSync(join(this.dir, d), { recursive: true, force: true });
      rmSync(join(this.dir, 'host.json'), { force: true });
    }
    const vms = new Map<string, T>();
    for (const [id, text] of this.texts) vms.set(id, JSON.parse(text) as T);
    return { lastDomid: this.lastDomid, vms };
  }

  /**
   * Records the new state of the VMs in `changed` (undefined: the VM is gone) and the last
   * domain id, in one append. Synchronous: when it returns, the change survives the process.
   * If the append fails (ENOSPC...) it throws, having stored nothing of it.
   */
  save(lastDomid: number, changed: Map<string, T | undefined>): void {
    const texts = new Map<string, string | undefined>();
    const parts: string[] = [];
    for (const [id, state] of changed) {
      const text = state === undefined ? undefined : JSON.stringify(state);
      texts.set(id, text);
      parts.push(JSON.stringify(id) + ':' + (text ?? 'null'));
    }
    if (parts.length === 0 && lastDomid === this.lastDomid) return;
    this.append(Buffer.from(`{"lastDomid":${lastDomid},"vms":{${parts.join(',')}}}\n`));
    for (const [id, text] of texts) {
      if (text === undefined) this.texts.delete(id);
      else this.texts.set(id, text);
    }
    this.lastDomid = lastDomid;
    if (this.journalBytes > Math.max(COMPACT_MIN_BYTES, this.snapshotBytes)) this.compact();
  }

  /** Writes a whole line after the last whole one, or nothing of it. */
  private append(line: Buffer): void {
    this.journal ??= openSync(join(this.dir, JOURNAL), existsSync(join(this.dir, JOURNAL)) ? 'r+' : 'w');
    let written = 0;
    try {
      // at explicit positions: after a failed append, the next one overwrites what it left
      while (written < line.length) written += writeSync(this.journal, line, written, line.length - written, this.journalBytes + written);
    } catch (e) {
      if (written > 0) {
        try {
          ftruncateSync(this.journal, this.journalBytes);
        } catch {
          // the torn bytes stay past the last whole line, where a load ignores them
        }
      }
      throw e;
    }
    this.journalBytes += line.length;
  }

  close(): void {
    if (this.journal !== undefined) closeSync(this.journal);
    this.journal = undefined;
  }

  /**
   * Writes the snapshot of everything, then starts an empty journal. False if the snapshot
   * could not be written (a full disk): the journal goes on as it was.
   */
  private compact(): boolean {
    const parts: string[] = [];
    for (const [id, text] of this.texts) parts.push(JSON.stringify(id) + ':' + text);
    const snapshot = `{"lastDomid":${this.lastDomid},"vms":{${parts.join(',')}}}\n`;
    const path = join(this.dir, SNAPSHOT);
    const tmp = `${path}.${process.pid}.tmp`;
    let journal: number;
    try {
      writeFileSync(tmp, snapshot);
      renameSync(tmp, path);
      this.snapshotBytes = Buffer.byteLength(snapshot);
      // The journal is emptied by opening it anew. If that fails, lines go on to the old one:
      // replayed over this snapshot, the old lines end where it is.
      journal = openSync(join(this.dir, JOURNAL), 'w');
    } catch {
      try {
        rmSync(tmp, { force: true });
      } catch {
        // a leftover temporary file is ignored by load() and replaced by the next compaction
      }
      return false;
    }
    if (this.journal !== undefined) closeSync(this.journal);
    this.journal = journal;
    this.journalBytes = 0;
    return true;
  }

  private replayJournal(): void {
    let bytes: Buffer;
    try {
      bytes = readFileSync(join(this.dir, JOURNAL));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    let start = 0;
    for (let end = bytes.indexOf(10); end >= 0; start = end + 1, end = bytes.indexOf(10, start)) {
      let entry: { lastDomid: number; vms: Record<string, unknown> };
      try {
        entry = JSON.parse(bytes.toString('utf8', start, end)) as typeof entry;
      } catch {
        break; // cut short by the process dying mid-write (and nothing can follow it)
      }
      this.journalBytes = end + 1;
      this.lastDomid = Math.max(this.lastDomid, entry.lastDomid);
      for (const [id, state] of Object.entries(entry.vms)) {
        if (state === null) this.texts.delete(id);
        else this.texts.set(id, JSON.stringify(state));
      }
    }
  }

  /** The layout before the journal: vm/<id>.json ({config, status}), domain/<id>.json, host.json. */
  private loadLegacy(): void {
    try {
      this.lastDomid = (JSON.parse(readFileSync(join(this.dir, 'host.json'), 'utf8')) as { lastDomid: number }).lastDomid;
    } catch {
      this.lastDomid = 0;
    }
    const files = (d: string) => {
      try {
        return readdirSync(join(this.dir, d)).filter((f) => f.endsWith('.json')); // not a leftover .tmp
      } catch {
        return [];
      }
    };
    const states = new Map<string, Record<string, unknown>>();
    for (const f of files('vm')) {
      const saved = JSON.parse(readFileSync(join(this.dir, 'vm', f), 'utf8')) as { config: { id: string }; status: unknown };
      states.set(saved.config.id, { config: saved.config, status: saved.status });
    }
    for (const f of files('domain')) {
      const state = states.get(decodeURIComponent(f.slice(0, -'.json'.length)));
      if (state) state['domain'] = JSON.parse(readFileSync(join(this.dir, 'domain', f), 'utf8'));
    }
    for (const [id, state] of states) this.texts.set(id, JSON.stringify(state));
  }
}
