// What a simulated machine and its guests have done, as running counters (DomainManager
// .counters): vCPU time, disk and network bytes. They move with the load each guest is given
// (VM.other_config simulator_cpu_load, simulator_dirty_rate, simulator_disk_write_rate,
// simulator_net_rate): writing memory and disks and moving packets costs CPU; the disk bytes are
// the ones the guest's disk workload really wrote. A small wobble keeps an idle guest alive.
import type { DomainCounters, HostCounters, HostMemory, VmConfig } from '../interface.js';
import type { Machine } from '../machine.js';
import type { DiskWorkload } from './sim-disk-workload.js';
import type { Domain, Vm } from './sim-model.js';

/** Work costs: a fully busy vCPU writes this many bytes of memory / disk / network per second. */
const MEMORY_BYTES_PER_CPU_SECOND = 512 * 1024 * 1024;
const DISK_BYTES_PER_CPU_SECOND = 64 * 1024 * 1024;
const NET_BYTES_PER_CPU_SECOND = 128 * 1024 * 1024;
/** An idle guest's own ticking, and what it sends and receives anyway (ARP, NTP...). */
const IDLE_CPU = 0.01;
const IDLE_NET = 256;
const BOOTING_CPU = 0.6;
/** dom0's share of one CPU. */
const DOM0_CPU = 0.02;

interface Accumulated {
  at: number;
  vcpuSeconds: number[];
  vifs: Map<number, { rx: number; tx: number }>;
}

/** The busy fraction of each vCPU of a guest doing what its configuration says. */
export function guestCpuLoad(c: VmConfig): number {
  const work =
    (c.simCpuLoad ?? 0) +
    (c.simDirtyRate ?? 0) / MEMORY_BYTES_PER_CPU_SECOND +
    (c.simDiskWriteRate ?? 0) / DISK_BYTES_PER_CPU_SECOND +
    (1.5 * (c.simNetRate ?? 0)) / NET_BYTES_PER_CPU_SECOND;
  return Math.min(1, IDLE_CPU + work);
}

/** A slow wobble of ±10% so a steady load does not draw a flat line; its phase is the domain's. */
function wobble(t: number, seed: number): number {
  return 1 + 0.1 * Math.sin(t / 7000 + seed);
}

export class SimCounters {
  private readonly acc = new WeakMap<Domain, Accumulated>();
  private readonly host = { at: 0, cpuSeconds: [] as number[], load: 0, pifs: new Map<string, { rx: number; tx: number }>() };

  constructor(
    private readonly machine: Machine,
    private readonly disks: DiskWorkload,
  ) {}

  /** Advances every counter to `now` (ms) and reads them. */
  read(now: number, vms: Iterable<Vm>, memory: HostMemory): HostCounters {
    const domains: DomainCounters[] = [];
    let busy = 0;
    let runnable = 0;
    const bridgeTraffic = new Map<string, { rx: number; tx: number }>();
    for (const vm of vms) {
      const d = vm.domain;
      if (!d?.built) continue;
      const a = this.advance(vm, d, now, bridgeTraffic);
      const writes = this.disks.written.get(d);
      busy += a.busy;
      runnable += a.busy;
      domains.push({
        id: vm.config.id,
        name: vm.config.name,
        domid: d.domid,
        vcpuSeconds: [...a.acc.vcpuSeconds],
        memoryActual: d.memoryActual,
        memoryTarget: d.memoryTarget,
        // a guest busy writing its memory has less of it free
        memoryInternalFree: d.guestAgent ? Math.floor(d.memoryActual * (0.6 - 0.3 * Math.min(1, a.busy / d.vcpus))) : undefined,
        vbds: vm.config.vbds
          .filter((v) => d.vbds[v.id])
          .map((v) => {
            const w = writes?.get(v.id);
            return { device: deviceName(d.vbds[v.id]!.position), readBytes: 0, writeBytes: w?.bytes ?? 0, reads: 0, writes: w?.ops ?? 0 };
          }),
        vifs: vm.config.vifs
          .filter((v) => d.vifs[v.id])
          .map((v) => {
            const c = a.acc.vifs.get(v.position) ?? { rx: 0, tx: 0 };
            return { position: v.position, rxBytes: Math.floor(c.rx), txBytes: Math.floor(c.tx), rxErrors: 0, txErrors: 0 };
          }),
      });
    }
    const h = this.host;
    const dt = h.at === 0 ? 0 : Math.max(0, (now - h.at) / 1000);
    h.at = now;
    const n = this.machine.cpus;
    while (h.cpuSeconds.length < n) h.cpuSeconds.push(0);
    // the guests' work spread over the CPUs, dom0's on the first
    for (let i = 0; i < n; i++) h.cpuSeconds[i]! += dt * Math.min(1, busy / n + (i === 0 ? DOM0_CPU : 0));
    // a one-minute exponential average of the runnable vCPUs, as the kernel's
    const k = Math.exp(-dt / 60);
    h.load = h.load * k + runnable * (1 - k);
    for (const nic of this.machine.nics) {
      const c = h.pifs.get(nic.device) ?? { rx: 0, tx: 0 };
      const t = bridgeTraffic.get(bridgeOf(nic.device));
      c.rx += (t?.rx ?? 0) + dt * IDLE_NET;
      c.tx += (t?.tx ?? 0) + dt * IDLE_NET;
      h.pifs.set(nic.device, c);
    }
    return {
      time: now,
      cpuSeconds: [...h.cpuSeconds],
      loadavg: h.load,
      memoryTotal: memory.total,
      memoryFree: memory.free,
      pifs: [...h.pifs].map(([device, c]) => ({ device, rxBytes: Math.floor(c.rx), txBytes: Math.floor(c.tx), rxErrors: 0, txErrors: 0 })),
      domains,
    };
  }

  private advance(vm: Vm, d: Domain, now: number, bridges: Map<string, { rx: number; tx: number }>): { acc: Accumulated; busy: number } {
    let acc = this.acc.get(d);
    if (!acc) {
      acc = { at: now, vcpuSeconds: Array.from({ length: d.vcpus }, () => 0), vifs: new Map() };
      this.acc.set(d, acc);
    }
    while (acc.vcpuSeconds.length < d.vcpus) acc.vcpuSeconds.push(0);
    const dt = Math.max(0, (now - acc.at) / 1000);
    acc.at = now;
    const c = vm.config;
    const perVcpu = d.paused ? 0 : !d.osUp ? BOOTING_CPU : Math.min(1, guestCpuLoad(c) * wobble(now, d.domid));
    for (let i = 0; i < d.vcpus; i++) acc.vcpuSeconds[i]! += dt * perVcpu;
    const net = d.paused || !d.osUp ? 0 : ((c.simNetRate ?? 0) + IDLE_NET) * wobble(now, d.domid + 1);
    for (const v of c.vifs) {
      if (!d.vifs[v.id]) continue;
      const x = acc.vifs.get(v.position) ?? { rx: 0, tx: 0 };
      x.rx += dt * net;
      x.tx += (dt * net) / 2;
      acc.vifs.set(v.position, x);
      const b = bridges.get(v.bridge) ?? { rx: 0, tx: 0 };
      b.rx += dt * net;
      b.tx += (dt * net) / 2;
      bridges.set(v.bridge, b);
    }
    return { acc, busy: perVcpu * d.vcpus };
  }
}

/** A disk's name as the guest sees it: xvda for device 0, xvdb for 1... */
export function deviceName(position: string): string {
  const n = Number(position);
  if (!Number.isInteger(n) || n < 0) return `xvd${position}`;
  let name = '';
  let k = n;
  do {
    name = String.fromCharCode(97 + (k % 26)) + name;
    k = Math.floor(k / 26) - 1;
  } while (k >= 0);
  return `xvd${name}`;
}

/** The bridge of a NIC's network, as the start-up sync names it (eth0 -> xenbr0). */
function bridgeOf(device: string): string {
  return `xenbr${device.replace(/^\D+/, '')}`;
}
