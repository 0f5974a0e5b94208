// GET /metrics (beyond xapi): the host's and its running VMs' counters in Prometheus's text
// exposition format, built with prom-client (see docs/architecture.md, Dependencies). The values
// are those of xcp-rrdd's last sample (src/rrdd), labelled by host uuid and name and by VM uuid
// and name; running totals are counters, levels gauges. One registry per host, never the
// process's global one, as several hosts may share a process in tests. prom-client is loaded
// at the first scrape: it costs ~12 MiB of RSS, which an idle host that nobody scrapes (64 of
// them on one machine, see Memory) should not pay.
import type { Counter as CounterT, Gauge as GaugeT, Registry as RegistryT } from 'prom-client';
import type { Rrdd } from '../rrdd/service.js';

export interface PrometheusExporter {
  /** The exposition and its content type. */
  render(): Promise<{ body: string; contentType: string }>;
}

export function prometheusExporter(rrdd: Rrdd, host: { uuid: string; name: () => string }): PrometheusExporter {
  let registry: Promise<RegistryT> | undefined;
  return {
    render: async () => {
      registry ??= import('prom-client').then((p) => build(p.Registry, p.Gauge, p.Counter, rrdd, host));
      const r = await registry;
      return { body: await r.metrics(), contentType: r.contentType };
    },
  };
}

function build(
  Registry: typeof RegistryT,
  Gauge: typeof GaugeT,
  Counter: typeof CounterT,
  rrdd: Rrdd,
  host: { uuid: string; name: () => string },
): RegistryT {
  const registry = new Registry();
  const hostLabels = () => ({ host_uuid: host.uuid, host: host.name() });
  const vmLabels = (d: { id: string; name: string }) => ({ ...hostLabels(), vm_uuid: d.id, vm: d.name });
  const last = () => rrdd.last;

  // a metric whose values are all set afresh from the last sample at each scrape
  const gauge = (name: string, help: string, labelNames: string[], fill: (g: GaugeT) => void) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        fill(this as GaugeT);
      },
    });
  const counter = (
    name: string,
    help: string,
    labelNames: string[],
    fill: (add: (labels: Record<string, string>, v: number) => void) => void,
  ) =>
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        fill((labels, v) => this.inc(labels, Math.max(0, v)));
      },
    });

  const H = ['host_uuid', 'host'];
  const V = [...H, 'vm_uuid', 'vm'];
  counter('xapi_host_cpu_seconds_total', 'Busy time of each physical CPU, seconds', [...H, 'cpu'], (add) => {
    for (const [i, s] of (last()?.cpuSeconds ?? []).entries()) add({ ...hostLabels(), cpu: String(i) }, s);
  });
  gauge('xapi_host_load_average', 'Runnable vCPUs averaged over the last minute', H, (g) => {
    const c = last();
    if (c) g.set(hostLabels(), c.loadavg);
  });
  gauge('xapi_host_memory_total_bytes', 'Memory of the host', H, (g) => {
    const c = last();
    if (c) g.set(hostLabels(), c.memoryTotal);
  });
  gauge('xapi_host_memory_free_bytes', 'Memory of the host not used by domains', H, (g) => {
    const c = last();
    if (c) g.set(hostLabels(), c.memoryFree);
  });
  counter('xapi_host_pif_receive_bytes_total', 'Bytes received on each physical interface', [...H, 'pif'], (add) => {
    for (const p of last()?.pifs ?? []) add({ ...hostLabels(), pif: p.device }, p.rxBytes);
  });
  counter('xapi_host_pif_transmit_bytes_total', 'Bytes sent on each physical interface', [...H, 'pif'], (add) => {
    for (const p of last()?.pifs ?? []) add({ ...hostLabels(), pif: p.device }, p.txBytes);
  });
  gauge('xapi_host_running_vms', 'VMs with a domain on this host', H, (g) => {
    const c = last();
    if (c) g.set(hostLabels(), c.domains.length);
  });
  counter('xapi_vm_cpu_seconds_total', 'Busy time of each vCPU of a VM, seconds', [...V, 'vcpu'], (add) => {
    for (const d of last()?.domains ?? []) for (const [i, s] of d.vcpuSeconds.entries()) add({ ...vmLabels(d), vcpu: String(i) }, s);
  });
  gauge('xapi_vm_memory_bytes', 'Memory allocated to a VM', V, (g) => {
    for (const d of last()?.domains ?? []) g.set(vmLabels(d), d.memoryActual);
  });
  gauge('xapi_vm_memory_target_bytes', "Target of a VM's balloon driver", V, (g) => {
    for (const d of last()?.domains ?? []) g.set(vmLabels(d), d.memoryTarget);
  });
  gauge('xapi_vm_memory_internal_free_bytes', 'Free memory as the guest agent reports it', V, (g) => {
    for (const d of last()?.domains ?? []) if (d.memoryInternalFree !== undefined) g.set(vmLabels(d), d.memoryInternalFree);
  });
  counter('xapi_vm_vbd_read_bytes_total', 'Bytes read from each disk of a VM', [...V, 'device'], (add) => {
    for (const d of last()?.domains ?? []) for (const v of d.vbds) add({ ...vmLabels(d), device: v.device }, v.readBytes);
  });
  counter('xapi_vm_vbd_write_bytes_total', 'Bytes written to each disk of a VM', [...V, 'device'], (add) => {
    for (const d of last()?.domains ?? []) for (const v of d.vbds) add({ ...vmLabels(d), device: v.device }, v.writeBytes);
  });
  counter('xapi_vm_vif_receive_bytes_total', 'Bytes received on each virtual interface of a VM', [...V, 'vif'], (add) => {
    for (const d of last()?.domains ?? []) for (const v of d.vifs) add({ ...vmLabels(d), vif: String(v.position) }, v.rxBytes);
  });
  counter('xapi_vm_vif_transmit_bytes_total', 'Bytes sent on each virtual interface of a VM', [...V, 'vif'], (add) => {
    for (const d of last()?.domains ?? []) for (const v of d.vifs) add({ ...vmLabels(d), vif: String(v.position) }, v.txBytes);
  });

  return registry;
}
