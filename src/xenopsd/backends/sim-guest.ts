// The simulated guest as its agent (the PV drivers) reports it once the OS is up: which OS it
// runs, the addresses its interfaces configured, the features it advertises, its memory.
import { createHash } from 'node:crypto';
import type { GuestAgent, VmConfig } from '../interface.js';
import type { Domain } from './sim-model.js';

/** What the guest agent of `d` (a domain of a VM configured as `c`) reports. */
export function guestAgentReport(c: VmConfig, d: Domain): GuestAgent {
  const networks: Record<string, string> = {};
  for (const v of c.vifs) {
    if (!d.vifs[v.id]) continue;
    networks[`${v.position}/ip`] = ipv4ForMac(v.mac);
    networks[`${v.position}/ipv4/0`] = ipv4ForMac(v.mac);
    networks[`${v.position}/ipv6/0`] = linkLocalForMac(v.mac);
  }
  const os = osFor(c);
  return {
    osVersion: os.osVersion,
    pvDriversVersion: os.pvDriversVersion,
    networks,
    other: {
      'feature-shutdown': '1',
      'feature-poweroff': '1',
      'feature-reboot': '1',
      'feature-suspend': '1',
      'feature-balloon': '1',
      'feature-vcpu-hotplug': '1',
      'has-vendor-device': '0',
      'platform-feature-multiprocessor-suspend': '1',
    },
    memory: meminfo(d.memoryActual),
  };
}

/** data/meminfo_total and data/meminfo_free, KiB, as a Linux guest reports them. */
export function meminfo(bytes: number): Record<string, string> {
  const kib = Math.floor(bytes / 1024);
  return { total: String(kib), free: String(Math.floor(kib * 0.6)) };
}

/** A stable private address for a MAC: the guest's DHCP lease on the simulated network. */
export function ipv4ForMac(mac: string): string {
  const h = createHash('sha256').update(mac.toLowerCase()).digest();
  return `10.${h[0]! % 250}.${h[1]! % 250}.${(h[2]! % 250) + 2}`;
}

/** The IPv6 link-local address (EUI-64) an interface with this MAC configures for itself. */
export function linkLocalForMac(mac: string): string {
  const b = mac.split(':').map((x) => parseInt(x, 16));
  if (b.length !== 6 || b.some((x) => Number.isNaN(x))) return 'fe80::1';
  const eui = [b[0]! ^ 0x02, b[1]!, b[2]!, 0xff, 0xfe, b[3]!, b[4]!, b[5]!];
  const groups = [0, 2, 4, 6].map((i) => ((eui[i]! << 8) | eui[i + 1]!).toString(16));
  return `fe80::${groups.join(':')}`;
}

/** The OS a simulated guest runs, guessed from the VM's name (as installed from its template). */
function osFor(c: VmConfig): { osVersion: Record<string, string>; pvDriversVersion: Record<string, string> } {
  const name = c.name.toLowerCase();
  const linuxTools = { major: '8', minor: '4', micro: '0', build: '1' };
  if (/windows|\bwin(10|11|20\d\d)\b/.test(name)) {
    const desktop = /(windows|win) ?1[01]\b/.exec(name);
    return {
      osVersion: desktop
        ? {
            name: `Microsoft Windows ${desktop[0].endsWith('11') ? '11' : '10'} Pro|C:\\Windows|\\Device\\Harddisk0\\Partition2`,
            distro: 'windows',
            major: '10',
            minor: '0',
            spmajor: '0',
            spminor: '0',
          }
        : {
            name: 'Microsoft Windows Server 2022 Standard|C:\\Windows|\\Device\\Harddisk0\\Partition2',
            distro: 'windows',
            major: '10',
            minor: '0',
            spmajor: '0',
            spminor: '0',
          },
      pvDriversVersion: { major: '9', minor: '4', micro: '0', build: '146' },
    };
  }
  if (/ubuntu/.test(name)) {
    return {
      osVersion: { name: 'Ubuntu 22.04.4 LTS', distro: 'ubuntu', major: '22', minor: '04', uname: '5.15.0-simulated' },
      pvDriversVersion: linuxTools,
    };
  }
  if (/centos|rhel|red ?hat|rocky|alma|oracle/.test(name)) {
    return {
      osVersion: { name: 'Rocky Linux 9.3 (Blue Onyx)', distro: 'rocky', major: '9', minor: '3', uname: '5.14.0-simulated.el9' },
      pvDriversVersion: linuxTools,
    };
  }
  return {
    osVersion: { name: 'Debian GNU/Linux 12', distro: 'debian', major: '12', minor: '0', uname: '6.1.0-simulated' },
    pvDriversVersion: linuxTools,
  };
}
