// The data sources a host and its VMs have, named and typed as xcp-rrdd's plugins name them
// (rrdp-cpu, rrdp-netdev, rrdp-iostat, rrdp-squeezed, the monitor's memory sources), read off
// the domain manager's counters. Counters are DERIVE sources (the RRD takes their rate);
// levels are GAUGE. A few are not recorded unless asked (default false, as xapi's error counts).
import type { DomainCounters, HostCounters } from '../xenopsd/interface.js';
import type { DsDef, DsType } from './rrd.js';

export interface Readings {
  defs: DsDef[];
  values: Map<string, number>;
}

class Builder implements Readings {
  readonly defs: DsDef[] = [];
  readonly values = new Map<string, number>();
  add(name: string, type: DsType, value: number, description: string, units: string, o: { max?: number; default?: boolean } = {}): void {
    this.defs.push({ name, type, min: 0, max: o.max ?? Infinity, description, units, default: o.default ?? true });
    this.values.set(name, value);
  }
}

export function hostSources(c: HostCounters, prev: HostCounters | undefined): Readings {
  const b = new Builder();
  for (const [i, s] of c.cpuSeconds.entries()) b.add(`cpu${i}`, 'DERIVE', s, `Physical cpu usage for cpu ${i}`, '(fraction)', { max: 1 });
  // the average over the CPUs since the last reading (a level, as rrdp-cpu computes it)
  const dt = prev ? (c.time - prev.time) / 1000 : 0;
  const busy =
    prev && dt > 0 ? c.cpuSeconds.reduce((a, s, i) => a + (s - (prev.cpuSeconds[i] ?? s)), 0) / (dt * c.cpuSeconds.length) : Number.NaN;
  b.add('cpu_avg', 'GAUGE', busy, 'Average physical cpu usage', '(fraction)', { max: 1 });
  b.add('loadavg', 'GAUGE', c.loadavg, 'Domain0 loadavg', '');
  b.add('memory_total_kib', 'GAUGE', c.memoryTotal / 1024, 'Total amount of memory in use', 'KiB');
  b.add('memory_free_kib', 'GAUGE', c.memoryFree / 1024, 'Total amount of free memory', 'KiB');
  for (const p of c.pifs) {
    const dev = p.device;
    b.add(`pif_${dev}_rx`, 'DERIVE', p.rxBytes, `Bytes per second received on physical interface ${dev}`, 'B/s');
    b.add(`pif_${dev}_tx`, 'DERIVE', p.txBytes, `Bytes per second sent on physical interface ${dev}`, 'B/s');
    b.add(`pif_${dev}_rx_errors`, 'DERIVE', p.rxErrors, `Receive errors per second on physical interface ${dev}`, 'err/s', {
      default: false,
    });
    b.add(`pif_${dev}_tx_errors`, 'DERIVE', p.txErrors, `Transmit errors per second on physical interface ${dev}`, 'err/s', {
      default: false,
    });
  }
  return b;
}

export function vmSources(d: DomainCounters): Readings {
  const b = new Builder();
  for (const [i, s] of d.vcpuSeconds.entries()) b.add(`cpu${i}`, 'DERIVE', s, `CPU${i} usage`, '(fraction)', { max: 1 });
  b.add('memory', 'GAUGE', d.memoryActual, 'Memory currently allocated to VM', 'B');
  b.add('memory_target', 'GAUGE', d.memoryTarget, 'Target of VM balloon driver', 'B');
  b.add(
    'memory_internal_free',
    'GAUGE',
    d.memoryInternalFree === undefined ? Number.NaN : d.memoryInternalFree / 1024,
    'Memory used as reported by the guest agent',
    'KiB',
  );
  for (const v of d.vifs) {
    const n = v.position;
    b.add(`vif_${n}_rx`, 'DERIVE', v.rxBytes, `Bytes per second received on virtual interface number '${n}'`, 'B/s');
    b.add(`vif_${n}_tx`, 'DERIVE', v.txBytes, `Bytes per second transmitted on virtual interface number '${n}'`, 'B/s');
    b.add(`vif_${n}_rx_errors`, 'DERIVE', v.rxErrors, `Receive errors per second on virtual interface number '${n}'`, 'err/s', {
      default: false,
    });
    b.add(`vif_${n}_tx_errors`, 'DERIVE', v.txErrors, `Transmit errors per second on virtual interface number '${n}'`, 'err/s', {
      default: false,
    });
  }
  for (const v of d.vbds) {
    const dev = v.device;
    b.add(`vbd_${dev}_read`, 'DERIVE', v.readBytes, `Reads from device ${dev} in B/s`, 'B/s');
    b.add(`vbd_${dev}_write`, 'DERIVE', v.writeBytes, `Writes to device ${dev} in B/s`, 'B/s');
    b.add(`vbd_${dev}_iops_read`, 'DERIVE', v.reads, `Read requests per second from device ${dev}`, 'requests/s');
    b.add(`vbd_${dev}_iops_write`, 'DERIVE', v.writes, `Write requests per second to device ${dev}`, 'requests/s');
  }
  return b;
}
