// The physical machine a host runs on, as the domain-manager backend reports it. The simulator
// makes one up from its settings (CPU count, memory, NICs); a real backend would read it off the
// hardware. xapi's start-up sync turns it into host, host_cpu, PIF and network records.
import { createHash } from 'node:crypto';

export interface Nic {
  device: string;
  mac: string;
  mtu: number;
  speedMbit: number;
  /** Whether a cable is in (a NIC without carrier reports speed 0). */
  carrier: boolean;
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
  /**
   * The NICs, each `device[:key=value...]` with keys mac (dashes for colons), mtu, speed (Mbit/s)
   * and carrier (up/down): `eth1:mtu=9000:speed=1000:carrier=down`.
   */
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

/** One NIC from its `device[:key=value...]` description; a bad key or value is an error. */
export function simulatedNic(spec: string, seed: string): Nic {
  const [device, ...settings] = spec.split(':');
  if (!device || !/^[a-zA-Z][a-zA-Z0-9_-]{0,14}$/.test(device)) throw new Error(`bad NIC name in ${JSON.stringify(spec)}`);
  const nic: Nic = { device, mac: macFor(seed, device), mtu: 1500, speedMbit: 10000, carrier: true };
  for (const setting of settings) {
    const [key, value = ''] = setting.split('=', 2) as [string, string?];
    const n = Number(value);
    if (key === 'mac' && /^([0-9a-f]{2}-){5}[0-9a-f]{2}$/i.test(value)) nic.mac = value.toLowerCase().replaceAll('-', ':');
    else if (key === 'mtu' && Number.isInteger(n) && n >= 68 && n <= 65535) nic.mtu = n;
    else if (key === 'speed' && Number.isInteger(n) && n >= 0) nic.speedMbit = n;
    else if (key === 'carrier' && (value === 'up' || value === 'down')) nic.carrier = value === 'up';
    else
      throw new Error(
        `bad NIC setting ${JSON.stringify(setting)} in ${JSON.stringify(spec)} (mac=xx-xx-xx-xx-xx-xx, mtu=N, speed=N, carrier=up|down)`,
      );
  }
  return nic;
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
    nics: (o.nics ?? ['eth0', 'eth1']).map((spec) => simulatedNic(spec, o.seed)),
  };
}

/** Memory the control domain keeps for itself: an eighth of the host, at most 4 GiB. */
export function dom0MemoryBytes(m: Machine): number {
  return Math.min(4096 * 1024 * 1024, Math.floor(m.memoryBytes / 8));
}
