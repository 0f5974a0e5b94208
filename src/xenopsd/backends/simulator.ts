// The simulator backend: domains that behave like a real host's, without Xen. They take memory
// from the host's finite total (ballooned between dynamic_min and dynamic_max as squeezed does),
// take time to boot and to shut down, run a guest agent that reports an OS and IP addresses,
// write real (sparse) memory images on suspend, and can be made to misbehave for tests. Its
// state lives in <state>/xenopsd/ like xenopsd's own, so domains outlive an xapi restart.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  DomainError,
  type DeviceState,
  type DomainManager,
  type GuestAgent,
  type HostMemory,
  type Update,
  type VbdConfig,
  type VifConfig,
  type VmConfig,
  type VmState,
} from '../interface.js';
import { dom0MemoryBytes, type Machine } from '../machine.js';
import { overheadBytes } from '../overhead.js';
import { balloon, SLUSH_FUND } from '../squeezed.js';

export type Fault = 'crash' | 'refuse-shutdown' | 'guest-shutdown' | 'guest-reboot' | { slowBootMs: number };

export interface SimulatorOptions {
  machine: Machine;
  stateDir: string;
  bootTimeMs?: number;
  shutdownTimeMs?: number;
}

interface Domain {
  domid: number;
  paused: boolean;
  booting: boolean;
  memoryTarget: number;
  vcpus: number;
  startTime: number;
  bootCount: number;
  plugged: string[];
  guestAgent?: GuestAgent;
}

interface Record_ {
  config: VmConfig;
  domain?: Domain;
  suspended?: boolean;
  lastShutdownReason?: VmState['lastShutdownReason'];
  refuseShutdown?: boolean;
  slowBootMs?: number;
}

const IMAGE_MAGIC = 'xapi-ts simulated suspend image v1';
const PAGE = 4096;
const SAMPLE_PAGES = 8;

export class SimulatorBackend implements DomainManager {
  private readonly vms = new Map<string, Record_>();
  private readonly dir: string;
  private readonly timers = new Set<NodeJS.Timeout>();
  private seq = 0;
  private readonly changes = new Map<string, { seq: number; update: Update }>();
  private waiters: (() => void)[] = [];
  private closed = false;
  private readonly bootTimeMs: number;
  private readonly shutdownTimeMs: number;

  constructor(private readonly opts: SimulatorOptions) {
    this.bootTimeMs = opts.bootTimeMs ?? 50;
    this.shutdownTimeMs = opts.shutdownTimeMs ?? 50;
    this.dir = join(opts.stateDir, 'xenopsd');
    mkdirSync(this.dir, { recursive: true });
    for (const f of readdirSync(this.dir)) {
      if (!f.endsWith('.json')) continue;
      const rec = JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as Record_;
      this.vms.set(rec.config.id, rec);
      // A domain whose build a crash interrupted was never complete (xenopsd's "reboot me"
      // marker): it is torn down, and xapi's resync finds the VM Halted.
      if (rec.domain?.booting) {
        rec.domain = undefined;
        this.persist(rec.config.id);
      }
    }
  }

  // ---- bookkeeping ------------------------------------------------------------------------

  private persist(id: string): void {
    const rec = this.vms.get(id);
    const path = join(this.dir, `${id}.json`);
    if (!rec) {
      rmSync(path, { force: true });
      return;
    }
    writeFileSync(`${path}.tmp`, JSON.stringify(rec));
    renameSync(`${path}.tmp`, path);
  }

  private changed(update: Update): void {
    const key = update.kind === 'vm' ? `vm/${update.id}` : `${update.kind}/${update.vm}/${update.id}`;
    this.changes.delete(key); // keep the map in sequence order: an object appears once, at its latest change
    this.changes.set(key, { seq: ++this.seq, update });
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private vmChanged(id: string): void {
    this.persist(id);
    this.changed({ kind: 'vm', id });
  }

  private later(ms: number, fn: () => void): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        if (!this.closed) fn();
        resolve();
      }, ms);
      this.timers.add(t);
    });
  }

  private get(id: string): Record_ {
    const rec = this.vms.get(id);
    if (!rec) throw new DomainError('Does_not_exist', ['VM', id]);
    return rec;
  }

  private running(id: string): Record_ & { domain: Domain } {
    const rec = this.get(id);
    if (!rec.domain) throw new DomainError('Bad_power_state', [rec.suspended ? 'Suspended' : 'Halted', 'Running']);
    return rec as Record_ & { domain: Domain };
  }

  private overhead(c: VmConfig): number {
    return overheadBytes({ domainType: c.domainType, staticMax: c.memoryStaticMax, vcpus: c.vcpuMax, shadowMultiplier: 1 });
  }

  /** Memory guests may share: the total less dom0, the slush fund and every domain's overhead. */
  private guestPool(extra?: VmConfig): number {
    let pool = this.opts.machine.memoryBytes - dom0MemoryBytes(this.opts.machine) - SLUSH_FUND;
    for (const rec of this.vms.values()) if (rec.domain) pool -= this.overhead(rec.config);
    if (extra) pool -= this.overhead(extra);
    return pool;
  }

  /** squeezed's policy over the running domains (plus `joining`), applied to their targets. */
  private rebalance(joining?: VmConfig): void {
    const ids = [...this.vms.values()].filter((r) => r.domain).map((r) => r.config);
    const all = joining ? [...ids, joining] : ids;
    const pool = this.guestPool(joining);
    const targets = balloon(
      pool,
      all.map((c) => ({ min: c.memoryDynamicMin, max: c.memoryDynamicMax })),
    );
    if (!targets) {
      const needed = (joining ? joining.memoryDynamicMin + this.overhead(joining) : 0);
      const free = Math.max(0, pool + (joining ? this.overhead(joining) : 0) - ids.reduce((n, c) => n + c.memoryDynamicMin, 0));
      throw new DomainError('Cannot_free_this_much_memory', [String(needed), String(free)]);
    }
    ids.forEach((c, i) => {
      const d = this.vms.get(c.id)!.domain!;
      if (d.memoryTarget !== targets[i]) {
        d.memoryTarget = targets[i]!;
        this.vmChanged(c.id);
      }
    });
    if (joining) this.pendingTarget = targets[targets.length - 1]!;
  }

  private pendingTarget = 0;

  /** Domain ids only grow, as Xen's do, so a rebooted VM has a new one. */
  private lastDomid = 0;
  private nextDomid(): number {
    for (const r of this.vms.values()) if (r.domain && r.domain.domid > this.lastDomid) this.lastDomid = r.domain.domid;
    return ++this.lastDomid;
  }

  /** What the simulated guest agent reports once the OS is up. */
  private guestAgentFor(rec: Record_): GuestAgent {
    const c = rec.config;
    const windows = /windows/i.test(c.name);
    const networks: Record<string, string> = {};
    for (const vif of c.vifs) {
      if (!rec.domain?.plugged.includes(vif.id)) continue;
      const h = createHash('sha256').update(vif.mac).digest();
      const ip = `10.${h[0]! % 250}.${h[1]! % 250}.${(h[2]! % 250) + 2}`;
      networks[`${vif.position}/ip`] = ip;
      networks[`${vif.position}/ipv4/0`] = ip;
    }
    return {
      osVersion: windows
        ? { name: 'Microsoft Windows Server 2022 Standard', distro: 'windows', major: '10', minor: '0', spmajor: '0', spminor: '0' }
        : { name: 'Debian GNU/Linux 12 (bookworm)', uname: '6.1.0-simulated-amd64', distro: 'debian', major: '12', minor: '0' },
      pvDriversVersion: { major: '9', minor: '4', micro: '0', build: '1' },
      networks,
      other: {
        'feature-shutdown': '1',
        'feature-poweroff': '1',
        'feature-reboot': '1',
        'feature-suspend': '1',
        'feature-balloon': '1',
        'feature-vcpu-hotplug': '1',
        'has-vendor-device': '0',
        platform_feature_multiprocessor_suspend: '1',
      },
      memory: { total: String(Math.floor((rec.domain?.memoryTarget ?? 0) / 1024)), free: String(Math.floor((rec.domain?.memoryTarget ?? 0) / 2048)) },
    };
  }

  /** create + build + plug devices; the guest boots and its agent reports in after the boot time. */
  private async createDomain(id: string, paused: boolean, bootCount: number): Promise<void> {
    const rec = this.get(id);
    if (rec.domain) throw new DomainError('Already_exists', ['domain', id]);
    this.rebalance(rec.config);
    rec.domain = {
      domid: this.nextDomid(),
      paused: true,
      booting: true,
      memoryTarget: this.pendingTarget,
      vcpus: rec.config.vcpus,
      startTime: Date.now(),
      bootCount,
      plugged: [...rec.config.vbds.filter((v) => v.backend !== undefined || v.type === 'CD').map((v) => v.id), ...rec.config.vifs.map((v) => v.id)],
    };
    rec.lastShutdownReason = undefined;
    this.vmChanged(id);
    const domid = rec.domain.domid;
    await this.later(rec.slowBootMs ?? this.bootTimeMs, () => {
      const d = this.vms.get(id)?.domain;
      if (!d || d.domid !== domid) return;
      d.booting = false;
      d.paused = paused;
      this.vmChanged(id);
      // the guest agent starts a little after the kernel
      void this.later(Math.max(1, Math.floor(this.bootTimeMs / 2)), () => {
        const r = this.vms.get(id);
        if (!r?.domain || r.domain.domid !== domid) return;
        r.domain.guestAgent = this.guestAgentFor(r);
        this.vmChanged(id);
      });
    });
  }

  private destroyDomain(id: string, reason: VmState['lastShutdownReason']): void {
    const rec = this.get(id);
    rec.domain = undefined;
    rec.lastShutdownReason = reason;
    this.vmChanged(id);
    for (const vbd of rec.config.vbds) this.changed({ kind: 'vbd', vm: id, id: vbd.id });
    for (const vif of rec.config.vifs) this.changed({ kind: 'vif', vm: id, id: vif.id });
    this.rebalanceQuietly();
  }

  private rebalanceQuietly(): void {
    try {
      this.rebalance();
    } catch {
      /* shrinking never fails */
    }
  }

  // ---- DomainManager ------------------------------------------------------------------------

  async add(config: VmConfig): Promise<void> {
    const rec = this.vms.get(config.id);
    if (rec) rec.config = config;
    else this.vms.set(config.id, { config });
    this.persist(config.id);
  }

  async remove(id: string): Promise<void> {
    const rec = this.vms.get(id);
    if (!rec) return;
    if (rec.domain) throw new DomainError('Bad_power_state', ['Running', 'Halted']);
    this.vms.delete(id);
    this.persist(id);
  }

  async list(): Promise<VmState[]> {
    return Promise.all([...this.vms.keys()].map((id) => this.stat(id)));
  }

  async stat(id: string): Promise<VmState> {
    const rec = this.get(id);
    const d = rec.domain;
    return {
      id,
      powerState: d ? (d.paused ? 'Paused' : 'Running') : rec.suspended ? 'Suspended' : 'Halted',
      domid: d ? d.domid : -1,
      memoryTarget: d ? d.memoryTarget : 0,
      memoryActual: d ? d.memoryTarget : 0,
      vcpus: d ? d.vcpus : 0,
      domainType: rec.config.domainType,
      lastStartTime: d ? d.startTime : 0,
      guestAgent: d?.guestAgent,
      consoles: d ? [{ protocol: 'rfb', port: 5900 + d.domid }] : [],
      lastShutdownReason: rec.lastShutdownReason,
    };
  }

  async start(id: string, opts: { paused: boolean }): Promise<void> {
    const rec = this.get(id);
    if (rec.domain) throw new DomainError('Bad_power_state', ['Running', 'Halted']);
    await this.createDomain(id, opts.paused, 1);
  }

  async pause(id: string): Promise<void> {
    const rec = this.running(id);
    rec.domain.paused = true;
    this.vmChanged(id);
  }

  async unpause(id: string): Promise<void> {
    const rec = this.running(id);
    rec.domain.paused = false;
    this.vmChanged(id);
  }

  async shutdown(id: string, timeoutMs?: number): Promise<void> {
    const rec = this.running(id);
    if (timeoutMs !== undefined) {
      // a clean shutdown: the guest must co-operate, within the timeout
      if (rec.refuseShutdown || rec.domain.paused) {
        await this.later(Math.min(timeoutMs, 1000), () => undefined);
        throw new DomainError('Failed_to_shutdown', [id, String(timeoutMs / 1000)]);
      }
      const domid = rec.domain.domid;
      await this.later(this.shutdownTimeMs, () => undefined);
      if (this.vms.get(id)?.domain?.domid !== domid) return; // it went away meanwhile
    }
    this.destroyDomain(id, 'halt');
  }

  async reboot(id: string, timeoutMs?: number): Promise<void> {
    const rec = this.running(id);
    if (timeoutMs !== undefined && (rec.refuseShutdown || rec.domain.paused)) {
      await this.later(Math.min(timeoutMs, 1000), () => undefined);
      throw new DomainError('Failed_to_shutdown', [id, String(timeoutMs / 1000)]);
    }
    if (timeoutMs !== undefined) await this.later(this.shutdownTimeMs, () => undefined);
    const boots = rec.domain.bootCount + 1;
    this.destroyDomain(id, 'reboot');
    await this.createDomain(id, false, boots);
  }

  async suspend(id: string): Promise<void> {
    const rec = this.running(id);
    const path = rec.config.suspendImage;
    if (!path) throw new DomainError('Internal_error', ['no suspend image path']);
    await writeImage(path, id, rec.domain.memoryTarget, rec.domain.bootCount);
    rec.suspended = true;
    this.destroyDomain(id, 'suspend');
  }

  async resume(id: string, opts: { paused: boolean }): Promise<void> {
    const rec = this.get(id);
    if (rec.domain || !rec.suspended) throw new DomainError('Bad_power_state', [rec.domain ? 'Running' : 'Halted', 'Suspended']);
    const bootCount = await readImage(rec.config.suspendImage!, id);
    rec.suspended = false;
    await this.createDomain(id, opts.paused, bootCount);
  }

  async setMemoryDynamicRange(id: string, min: number, max: number): Promise<void> {
    const rec = this.get(id);
    const old = rec.config;
    rec.config = { ...old, memoryDynamicMin: min, memoryDynamicMax: max };
    try {
      if (rec.domain) this.rebalance();
    } catch (e) {
      rec.config = old;
      throw e;
    }
    this.vmChanged(id);
  }

  async setVcpus(id: string, n: number): Promise<void> {
    const rec = this.running(id);
    if (n < 1 || n > rec.config.vcpuMax) throw new DomainError('Internal_error', [`invalid vcpus ${n}`]);
    rec.domain.vcpus = n;
    this.vmChanged(id);
  }

  private plug(vm: string, id: string, kind: 'vbd' | 'vif'): void {
    const rec = this.running(vm);
    if (rec.domain.plugged.includes(id)) throw new DomainError('Device_is_connected', [id]);
    rec.domain.plugged.push(id);
    if (rec.domain.guestAgent) rec.domain.guestAgent = this.guestAgentFor(rec);
    this.persist(vm);
    this.changed({ kind, vm, id });
    this.changed({ kind: 'vm', id: vm });
  }

  private unplug(vm: string, id: string, kind: 'vbd' | 'vif'): void {
    const rec = this.running(vm);
    if (!rec.domain.plugged.includes(id)) throw new DomainError('Device_not_connected', [id]);
    rec.domain.plugged = rec.domain.plugged.filter((d) => d !== id);
    if (rec.domain.guestAgent) rec.domain.guestAgent = this.guestAgentFor(rec);
    this.persist(vm);
    this.changed({ kind, vm, id });
    this.changed({ kind: 'vm', id: vm });
  }

  private upsertDevice<T extends { id: string }>(list: T[], dev: T): T[] {
    return [...list.filter((d) => d.id !== dev.id), dev];
  }

  async vbdPlug(vm: string, vbd: VbdConfig): Promise<void> {
    const rec = this.get(vm);
    rec.config = { ...rec.config, vbds: this.upsertDevice(rec.config.vbds, vbd) };
    this.plug(vm, vbd.id, 'vbd');
  }

  async vbdUnplug(vm: string, vbd: string): Promise<void> {
    this.unplug(vm, vbd, 'vbd');
  }

  async vbdInsert(vm: string, vbd: string, backend: string): Promise<void> {
    const rec = this.get(vm);
    const dev = rec.config.vbds.find((v) => v.id === vbd);
    if (!dev) throw new DomainError('Does_not_exist', ['VBD', vbd]);
    if (dev.backend) throw new DomainError('Media_present', [vbd]);
    rec.config = { ...rec.config, vbds: this.upsertDevice(rec.config.vbds, { ...dev, backend }) };
    this.persist(vm);
    this.changed({ kind: 'vbd', vm, id: vbd });
  }

  async vbdEject(vm: string, vbd: string): Promise<void> {
    const rec = this.get(vm);
    const dev = rec.config.vbds.find((v) => v.id === vbd);
    if (!dev) throw new DomainError('Does_not_exist', ['VBD', vbd]);
    if (!dev.backend) throw new DomainError('Media_not_present', [vbd]);
    rec.config = { ...rec.config, vbds: this.upsertDevice(rec.config.vbds, { ...dev, backend: undefined }) };
    this.persist(vm);
    this.changed({ kind: 'vbd', vm, id: vbd });
  }

  async vifPlug(vm: string, vif: VifConfig): Promise<void> {
    const rec = this.get(vm);
    rec.config = { ...rec.config, vifs: this.upsertDevice(rec.config.vifs, vif) };
    this.plug(vm, vif.id, 'vif');
  }

  async vifUnplug(vm: string, vif: string): Promise<void> {
    this.unplug(vm, vif, 'vif');
  }

  async deviceState(vm: string, id: string): Promise<DeviceState> {
    const rec = this.get(vm);
    return { vm, id, plugged: rec.domain?.plugged.includes(id) ?? false };
  }

  async hostMemory(): Promise<HostMemory> {
    let used = dom0MemoryBytes(this.opts.machine);
    for (const r of this.vms.values()) if (r.domain) used += r.domain.memoryTarget + this.overhead(r.config);
    return { total: this.opts.machine.memoryBytes, free: this.opts.machine.memoryBytes - used };
  }

  async updates(token: string, timeoutMs: number): Promise<{ updates: Update[]; token: string }> {
    const since = token === '' ? 0 : Number(token);
    const pending = () => [...this.changes.values()].filter((c) => c.seq > since);
    if (pending().length === 0 && !this.closed) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, timeoutMs);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.waiters.push(done);
      });
    }
    const found = pending();
    return { updates: found.map((c) => c.update), token: String(this.seq) };
  }

  /** Makes a guest misbehave, for tests: see Fault. */
  inject(id: string, fault: Fault): void {
    const rec = this.get(id);
    if (typeof fault === 'object') {
      rec.slowBootMs = fault.slowBootMs;
    } else if (fault === 'refuse-shutdown') {
      rec.refuseShutdown = true;
    } else if (rec.domain) {
      this.destroyDomain(id, fault === 'crash' ? 'crash' : fault === 'guest-reboot' ? 'reboot' : 'halt');
      return;
    }
    this.persist(id);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

/** Pseudo-random page contents standing for the guest's memory at a given boot. */
function page(id: string, bootCount: number, n: number): Buffer {
  const out = Buffer.alloc(PAGE);
  let block = createHash('sha256').update(`${id}/${bootCount}/${n}`).digest();
  for (let off = 0; off < PAGE; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** Offsets of the sample pages: spread over the image so its size is real but sparse. */
const sampleOffsets = (memory: number) =>
  Array.from({ length: SAMPLE_PAGES }, (_, i) => PAGE + Math.floor(((memory - 2 * PAGE) / SAMPLE_PAGES / PAGE) * i) * PAGE);

async function writeImage(path: string, id: string, memory: number, bootCount: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const sum = createHash('sha256');
  const fh = await open(path, 'w', 0o600);
  try {
    await fh.truncate(memory);
    const offsets = sampleOffsets(memory);
    for (const [i, off] of offsets.entries()) {
      const p = page(id, bootCount, i);
      sum.update(p);
      await fh.write(p, 0, PAGE, off);
    }
    const header = Buffer.alloc(PAGE);
    header.write(JSON.stringify({ magic: IMAGE_MAGIC, id, memory, bootCount, sha256: sum.digest('hex') }));
    await fh.write(header, 0, PAGE, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Checks a memory image and returns the boot it was taken from; a bad image is Internal_error. */
async function readImage(path: string, id: string): Promise<number> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new DomainError('Internal_error', [`cannot read suspend image: ${(e as Error).message}`]);
  }
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(PAGE);
    await fh.read(head, 0, PAGE, 0);
    let header: { magic: string; id: string; memory: number; bootCount: number; sha256: string };
    try {
      header = JSON.parse(head.toString('utf8').replace(/\0+$/, ''));
    } catch {
      throw new DomainError('Internal_error', ['suspend image header is corrupt']);
    }
    if (header.magic !== IMAGE_MAGIC || header.id !== id) throw new DomainError('Internal_error', ["not this VM's suspend image"]);
    if (size !== header.memory) throw new DomainError('Internal_error', [`suspend image is ${size} bytes, expected ${header.memory}`]);
    const sum = createHash('sha256');
    const p = Buffer.alloc(PAGE);
    for (const off of sampleOffsets(header.memory)) {
      await fh.read(p, 0, PAGE, off);
      sum.update(p);
    }
    if (sum.digest('hex') !== header.sha256) throw new DomainError('Internal_error', ['suspend image checksum mismatch']);
    return header.bootCount;
  } finally {
    await fh.close();
  }
}
