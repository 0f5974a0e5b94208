// A simulated guest's own disk writes (a workload inside the VM), so a storage migration has
// writes to mirror: a VM whose configuration names a disk write rate (VM.other_config
// `simulator_disk_write_rate`, bytes/s) writes random 4 KiB blocks of random data to each of
// its read-write disks while its domain runs (built and not paused), through the same handles
// as any guest I/O (openDiskFile, so a mirror sees them). Writes land in the first
// WORKING_SET bytes of the disk, as a real guest keeps rewriting the same data.
import { randomBytes } from 'node:crypto';
import { openDiskFile } from '../../storage/disk-file.js';
import type { Domain, Vm } from './sim-model.js';

const BLOCK = 4096;
const WORKING_SET = 256 * 1024 * 1024;
/** How often the workload catches up with its rate. */
const TICK_MS = 20;
/** The most blocks written in one go (a guest stalled for long does not flood its disk). */
const MAX_BATCH = 256;

export class DiskWorkload {
  private readonly timer: NodeJS.Timeout;
  /** Per domain: the write under way, and what the rate owes but was not written yet. */
  private readonly state = new WeakMap<Domain, { busy?: Promise<void>; last: number; carry: number }>();
  /** Per domain and VBD id: the bytes and requests its guest has written so far (for the counters). */
  readonly written = new WeakMap<Domain, Map<string, { bytes: number; ops: number }>>();

  constructor(
    private readonly vms: () => Iterable<Vm>,
    private readonly onError: (vm: Vm, e: unknown) => void,
  ) {
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  private tick(): void {
    const now = performance.now();
    for (const vm of this.vms()) {
      const d = vm.domain;
      const rate = vm.config.simDiskWriteRate ?? 0;
      if (!d || rate <= 0) continue;
      let s = this.state.get(d);
      if (!s) {
        s = { last: now, carry: 0 };
        this.state.set(d, s);
      }
      if (!d.built || d.paused) {
        s.last = now; // a paused guest writes nothing
        continue;
      }
      if (s.busy) continue;
      const owed = ((now - s.last) / 1000) * (rate / BLOCK) + s.carry;
      s.last = now;
      const n = Math.min(MAX_BATCH, Math.floor(owed));
      s.carry = owed - n;
      if (n === 0) continue;
      const state = s;
      state.busy = this.write(vm, d, n)
        .catch((e: unknown) => this.onError(vm, e))
        .finally(() => (state.busy = undefined));
    }
  }

  private async write(vm: Vm, d: Domain, blocks: number): Promise<void> {
    for (const v of vm.config.vbds) {
      const backend = d.vbds[v.id]?.backend;
      if (v.mode !== 'RW' || v.type !== 'Disk' || !backend) continue;
      const disk = await openDiskFile(backend, { readOnly: false });
      try {
        const span = Math.max(1, Math.floor(Math.min(disk.size, WORKING_SET) / BLOCK));
        for (let i = 0; i < blocks && !d.paused; i++) {
          await disk.write(Math.floor(Math.random() * span) * BLOCK, randomBytes(BLOCK));
          this.count(d, v.id, BLOCK);
        }
      } finally {
        await disk.close();
      }
    }
  }

  /** Counts a write of `bytes` by the domain's guest to VBD `vbd`. */
  count(d: Domain, vbd: string, bytes: number): void {
    let perVbd = this.written.get(d);
    if (!perVbd) {
      perVbd = new Map();
      this.written.set(d, perVbd);
    }
    const c = perVbd.get(vbd) ?? { bytes: 0, ops: 0 };
    c.bytes += bytes;
    c.ops++;
    perVbd.set(vbd, c);
  }

  /** Resolves once the domain's write under way (if any) is done: called once it is paused. */
  async idle(d: Domain): Promise<void> {
    await this.state.get(d)?.busy;
  }

  close(): void {
    clearInterval(this.timer);
  }
}
