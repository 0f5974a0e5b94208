// What a host's simulator keeps on disk (<state-dir>/xenopsd: a snapshot and a journal of whole
// VM records), read back as the simulator would: for tests that check which host holds a VM's
// domain without asking the host.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface SavedDomain {
  domid: number;
  paused: boolean;
  migratingOut?: boolean;
  pausedForMigration?: boolean;
  startTime: number;
  memoryIdentity?: string;
  /** Plugged disks: their device and the file the domain reads and writes. */
  vbds?: Record<string, { position: string; backend?: string }>;
}

export interface SavedVm {
  domain?: SavedDomain;
  incoming?: SavedDomain;
}

/** Every VM the simulator of the host at `stateDir` holds, by uuid. */
export function simulatorVms(stateDir: string): Map<string, SavedVm> {
  const dir = join(stateDir, 'xenopsd');
  const vms = new Map<string, SavedVm>();
  const read = (f: string) => {
    try {
      return readFileSync(join(dir, f), 'utf8');
    } catch {
      return '';
    }
  };
  const apply = (entry: { vms: Record<string, SavedVm | null> }) => {
    for (const [id, v] of Object.entries(entry.vms)) {
      if (v) vms.set(id, v);
      else vms.delete(id);
    }
  };
  const snapshot = read('state.json');
  if (snapshot) apply(JSON.parse(snapshot) as { vms: Record<string, SavedVm> });
  for (const line of read('journal').split('\n')) {
    try {
      apply(JSON.parse(line) as { vms: Record<string, SavedVm | null> });
    } catch {
      // the empty tail, or a line cut short
    }
  }
  return vms;
}
