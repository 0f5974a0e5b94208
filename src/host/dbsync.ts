// What xapi does to the database when a host starts (xapi.ml, dbsync_master.ml,
// dbsync_slave.ml, create_misc.ml, create_networks.ml): on first start it creates the pool
// (this host its coordinator), the host with its metrics and CPUs, the control domain and the SM
// records (the networks and PIFs come from the network daemon: src/xapi/pif-scan.ts); on every start it refreshes what describes the running software.
import { randomUUID } from 'node:crypto';
import type { Db } from '../db/interface.js';
import type { Schema } from '../schema/schema.js';
import type { pool_record } from '../schema/generated.js';
import { newRef } from '../api/implicit.js';
import { NULL_REF, formatDateTime } from '../schema/types.js';
import { XapiError } from '../rpc/errors.js';
import { dom0MemoryBytes, type Machine } from '../xenopsd/machine.js';
import { smRecords } from '../storage/drivers.js';
import { releaseVersions, softwareVersion } from '../xapi/version.js';
import { defaultTemplates } from './templates.js';
import { refreshPoolDerived, xcpNgLicenseParams } from '../xapi/pool-derived.js';

export interface HostIdentity {
  /** The inventory's INSTALLATION_UUID: how this host finds its row. */
  uuid: string;
  hostname: string;
  address: string;
  machine: Machine;
  /** The release this host runs (`--platform-version`; absent: the build's default). */
  platformVersion?: string;
}

/**
 * Returns this host's and its pool's refs. A coordinator's first start creates the pool and this
 * host; a member's host row was made by the coordinator when it joined (HOST_UNKNOWN_TO_MASTER
 * if it is not there). Every start refreshes what describes the running software.
 */
export async function syncDatabase(
  db: Db,
  schema: Schema,
  id: HostIdentity,
  role: 'master' | 'slave' = 'master',
): Promise<{ hostRef: string; poolRef: string; firstStart: boolean }> {
  const now = formatDateTime(new Date());
  let [pool] = await db.all('pool');
  let hostRef = await db.refByUuid('host', id.uuid);
  const firstStart = !pool;
  if (role === 'slave') {
    if (!pool || !hostRef) throw new XapiError('HOST_UNKNOWN_TO_MASTER', [id.uuid]);
  } else if (!pool) {
    hostRef = await createLocalhost(db, id, now);
    const poolRef = newRef();
    await db.create('pool', poolRef, {
      uuid: randomUUID(),
      name_label: '',
      master: hostRef,
      default_SR: NULL_REF,
      suspend_image_SR: NULL_REF,
      crash_dump_SR: NULL_REF,
      ...poolDefaults(schema),
    });
    pool = [poolRef, await db.get('pool', poolRef)];
    await db.create('user', newRef(), { uuid: randomUUID(), short_name: 'root', fullname: 'Super User', other_config: {} });
  } else if (!hostRef) {
    // A database whose pool does not know this host (a copy from elsewhere): nothing to run as.
    throw new XapiError('HOST_UNKNOWN_TO_MASTER', [id.uuid]);
  }
  if (role === 'master') {
    // The coordinator is whoever starts as one (a transition starts from another's database).
    if (pool[1].master !== hostRef) await db.update('pool', pool[0], { master: hostRef });
    await ensureDefaultTemplates(db);
    // Roles are a static list (role.ts), no longer rows: a database from before keeps none.
    for (const [ref] of await db.all('role')) await db.destroy('role', ref);
  }
  // Every start: the software running now, the machine's CPUs (create_host_cpu) and the license
  // (License_init); then what the pool derives from its hosts (create_pool_cpuinfo,
  // update_pool_features), on a member too: its first start as one is how a joiner counts.
  await db.update('host', hostRef, {
    API_version_major: schema.apiVersion.major,
    API_version_minor: schema.apiVersion.minor,
    API_version_vendor: 'XenSource',
    software_version: softwareVersion(releaseVersions(id.platformVersion)),
    address: id.address,
    cpu_info: cpuInfo(id.machine),
    license_params: xcpNgLicenseParams(),
  });
  await syncHostCpus(db, hostRef, id.machine);
  await refreshPoolDerived(db);
  await db.commit();
  return { hostRef, poolRef: pool[0], firstStart };
}

/**
 * The uuid of the database's coordinator, if it has a pool: the identity of a host whose state
 * directory predates the inventory file (before pools, every database was its host's own).
 */
export async function coordinatorUuid(db: Db): Promise<string | undefined> {
  const [pool] = await db.all('pool');
  return pool ? (await db.tryGet('host', pool[1].master))?.uuid : undefined;
}

/** Default templates missing from the database are (re)created, so an upgrade brings new ones. */
async function ensureDefaultTemplates(db: Db): Promise<void> {
  for (const t of defaultTemplates()) {
    if (await db.refByUuid('VM', t.uuid)) continue;
    const metrics = newRef();
    await db.create('VM_metrics', metrics, { uuid: randomUUID(), other_config: {} });
    await db.create('VM', newRef(), { ...t.fields, uuid: t.uuid, metrics, power_state: 'Halted', domid: -1 });
  }
}

/** The values xapi's create_pool_record gives a new pool (facts in the schema), less placeholders. */
function poolDefaults(schema: Schema): Partial<pool_record> {
  // The schema's constants are plain JSON; these are pool field values.
  const values = (schema.constants.poolDefaults as { values?: Partial<pool_record> } | undefined)?.values ?? {};
  return Object.fromEntries(Object.entries(values).filter(([, v]) => !(typeof v === 'string' && v.startsWith('<'))));
}

/** host.cpu_info as create_host_cpu writes it (the guest policies: the host's whole featuresets). */
function cpuInfo(m: Machine): Record<string, string> {
  return {
    cpu_count: String(m.cpus),
    socket_count: '1',
    threads_per_core: '1',
    nr_nodes: '1',
    vendor: m.cpu.vendor,
    speed: m.cpu.speedMHz.toFixed(3),
    modelname: m.cpu.modelname,
    family: String(m.cpu.family),
    model: String(m.cpu.model),
    stepping: String(m.cpu.stepping),
    flags: m.cpu.flags,
    features_pv: m.cpu.featuresPvHost,
    features_hvm: m.cpu.featuresHvmHost,
    features_hvm_host: m.cpu.featuresHvmHost,
    features_pv_host: m.cpu.featuresPvHost,
  };
}

/** One host_cpu per CPU of the machine: made again if their number changed (xapi remakes them at every start). */
async function syncHostCpus(db: Db, hostRef: string, m: Machine): Promise<void> {
  const existing = await db.find('host_cpu', { host: hostRef });
  if (existing.length === m.cpus) return;
  for (const [ref] of existing) await db.destroy('host_cpu', ref);
  await createHostCpus(db, hostRef, m);
}

async function createHostCpus(db: Db, hostRef: string, m: Machine): Promise<void> {
  for (let i = 0; i < m.cpus; i++) {
    await db.create('host_cpu', newRef(), {
      uuid: randomUUID(),
      host: hostRef,
      number: i,
      vendor: m.cpu.vendor,
      speed: m.cpu.speedMHz,
      modelname: m.cpu.modelname,
      family: m.cpu.family,
      model: m.cpu.model,
      stepping: String(m.cpu.stepping),
      flags: m.cpu.flags,
      features: '',
      utilisation: 0,
      other_config: {},
    });
  }
}

async function createLocalhost(db: Db, id: HostIdentity, now: string): Promise<string> {
  const m = id.machine;
  const hostRef = newRef();
  const metricsRef = newRef();
  const dom0Ref = newRef();
  const dom0Memory = dom0MemoryBytes(m);
  await db.create('host_metrics', metricsRef, {
    uuid: randomUUID(),
    memory_total: m.memoryBytes,
    memory_free: m.memoryBytes - dom0Memory,
    live: true,
    last_updated: now,
    other_config: {},
  });
  await db.create('host', hostRef, {
    uuid: id.uuid,
    name_label: id.hostname,
    name_description: 'Default install',
    hostname: id.hostname,
    address: id.address,
    enabled: true,
    metrics: metricsRef,
    memory_overhead: 0,
    cpu_info: cpuInfo(m),
    capabilities: ['xen-3.0-x86_64', 'hvm-3.0-x86_32', 'hvm-3.0-x86_32p', 'hvm-3.0-x86_64'],
    sched_policy: 'credit',
    edition: 'xcp-ng',
    license_params: xcpNgLicenseParams(),
    https_only: false,
    control_domain: dom0Ref,
    external_auth_type: '',
    external_auth_service_name: '',
  });
  await createHostCpus(db, hostRef, m);
  await createControlDomain(db, id, hostRef, dom0Ref, dom0Memory, now);
  for (const sm of smRecords()) await db.create('SM', newRef(), { uuid: randomUUID(), ...sm });
  return hostRef;
}

async function createControlDomain(db: Db, id: HostIdentity, hostRef: string, vmRef: string, memory: number, now: string): Promise<void> {
  const metricsRef = newRef();
  const vcpus = Math.min(id.machine.cpus, 16);
  await db.create('VM_metrics', metricsRef, {
    uuid: randomUUID(),
    memory_actual: memory,
    VCPUs_number: vcpus,
    VCPUs_utilisation: {},
    state: [],
    start_time: now,
    install_time: now,
    last_updated: now,
    other_config: {},
  });
  await db.create('VM', vmRef, {
    uuid: randomUUID(),
    name_label: `Control domain on host: ${id.hostname}`,
    name_description: 'The domain which manages physical devices and manages other domains',
    power_state: 'Running',
    is_a_template: false,
    is_control_domain: true,
    resident_on: hostRef,
    domid: 0,
    memory_target: memory,
    memory_static_max: memory,
    memory_dynamic_max: memory,
    memory_dynamic_min: memory,
    memory_static_min: memory,
    VCPUs_max: vcpus,
    VCPUs_at_startup: vcpus,
    metrics: metricsRef,
    other_config: { storage_driver_domain: vmRef, is_system_domain: 'true' },
    domain_type: 'pv',
    allowed_operations: [],
  });
  // create_misc.ml: the location names the console's own ref
  for (const protocol of ['rfb', 'vt100'] as const) {
    const consoleRef = newRef();
    await db.create('console', consoleRef, {
      uuid: randomUUID(),
      protocol,
      location: `https://${id.address}/console?ref=${consoleRef}`,
      VM: vmRef,
      other_config: {},
    });
  }
}
