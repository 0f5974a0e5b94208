// The physical machine a host runs on, as the domain-manager backend reports it. The simulator
// makes one up from its settings (CPU count, memory, NICs); a real backend would read it off the
// hardware. xapi's start-up sync turns it into host, host_cpu, PIF and network records.
import { createHash } from 'node:crypto';

export interface Nic {
  device: string;
  mac: string;
  mtu: number;
  speedMbit: number;
}

export interface Cpu {
  vendor: string;
  modelname: string;
  family: number;
  model: number;
  stepping: number;
  speedMHz: number;
  flags: string;
  /**
   * The CPU features Xen can offer PV and HVM guests on this machine (its featuresets: 32-bit
   * words in hex joined by dashes, as host.cpu_info carries them).
   */
  featuresPvHost: string;
  featuresHvmHost: string;
}

export interface Machine {
  cpus: number;
  cpu: Cpu;
  memoryBytes: number;
  nics: Nic[];
}

export interface SimulatedMachineOptions {
  cpus?: number;
  memoryMiB?: number;
  nics?: string[];
  /** Seeds the NIC MACs, so two simulated hosts never share one. */
  seed: string;
}

/** A MAC in the locally-administered range, stable for a given seed and device. */
function macFor(seed: string, device: string): string {
  const h = createHash('sha256').update(`${seed}/${device}`).digest();
  const bytes = [0x02, h[0]!, h[1]!, h[2]!, h[3]!, h[4]!];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export function simulatedMachine(o: SimulatedMachineOptions): Machine {
  return {
    cpus: o.cpus ?? 4,
    cpu: {
      vendor: 'GenuineIntel',
      modelname: 'Simulated CPU @ 2.40GHz',
      family: 6,
      model: 85,
      stepping: 7,
      speedMHz: 2400,
      flags:
        'fpu de tsc msr pae mce cx8 apic sep mca cmov pat clflush mmx fxsr sse sse2 ht syscall nx lm constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm',
      // The featuresets an XCP-ng host with an Intel Xeon of this family reports.
      featuresPvHost:
        '1fc9cbf5-80b82201-2991cbf5-00000003-00000000-00000000-00000000-00000000-00001000-8c000000-00000000-00000000-00000000-00000000-00000000',
      featuresHvmHost:
        '1fcbfbff-80b82221-2993fbff-00000403-00000000-00000000-00000000-00000000-00001000-9c000000-00000000-00000000-00000000-00000000-00000000',
    },
    memoryBytes: (o.memoryMiB ?? 16384) * 1024 * 1024,
    nics: (o.nics ?? ['eth0', 'eth1']).map((device) => ({ device, mac: macFor(o.seed, device), mtu: 1500, speedMbit: 10000 })),
  };
}

/** Memory the control domain keeps for itself: an eighth of the host, at most 4 GiB. */
export function dom0MemoryBytes(m: Machine): number {
  return Math.min(4096 * 1024 * 1024, Math.floor(m.memoryBytes / 8));
}
