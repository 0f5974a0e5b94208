// A host's xcp-rrdd: every few seconds it reads the domain manager's counters, turns them into
// the host's and each running VM's data sources and feeds their RRDs. It keeps the RRDs across
// restarts (gzipped XML under <state-dir>/rrds, as xapi's /var/lib/xcp/blobs/rrds), archives a
// VM's RRD with the coordinator when the VM stops, sends it to the destination when the VM
// migrates, and answers the queries of the HTTP handlers, the data-source API and perfmon.
import { request } from 'node:https';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import type { HostCounters } from '../xenopsd/interface.js';
import { writeFileAtomic } from '../util/files.js';
import { addDs, type Cf, copyRrd, createRrd, type DsDef, queryDs, removeDs, type Rrd, STEP, updateNamed } from './rrd.js';
import { rrdFromXml, rrdToXml } from './rrd-text.js';
import { type Xport, xport } from './xport.js';
import { hostSources, type Readings, vmSources } from './sources.js';

/** How often the counters are read (xcp-rrdd's timeslice). */
export const SAMPLE_INTERVAL_MS = 5_000;
/** How often the RRDs are written to disk besides at close (xapi: daily; here sooner, as a kill loses what is not). */
export const BACKUP_INTERVAL_MS = 5 * 60_000;

/** What the data-source API says of one data source (xcp-rrdd's Data_source.t). */
export interface DataSourceInfo {
  name: string;
  description: string;
  enabled: boolean;
  standard: boolean;
  units: string;
  min: number;
  max: number;
}

/** An RRD and the data sources last read for its owner (rrd_info). */
interface RrdInfo {
  rrd: Rrd;
  live: Map<string, DsDef>;
  /** The VM's name when last sampled (for the Prometheus labels). */
  name?: string;
}

/** The coordinator, for a member: where VMs' RRDs are archived and fetched from. */
export interface CoordinatorLink {
  address: string;
  httpsPort: number;
  poolSecret: string;
}

export interface RrddOptions {
  stateDir: string;
  hostUuid: string;
  counters: () => Promise<HostCounters>;
  /** undefined on the coordinator (and a host alone). */
  coordinator: () => CoordinatorLink | undefined;
  /** The HTTPS port of the other hosts (all of a pool use the same). */
  httpsPort: number;
  poolSecret: () => string;
  sampleIntervalMs?: number;
  backupIntervalMs?: number;
  log: { warn(o: object, m: string): void; info(o: object, m: string): void };
}

/** xapi's errors for the data-source calls (Rrd_interface.Rrdd_error as xapi prints an unexpected exception). */
export class RrddError extends Error {
  constructor(
    readonly kind: 'Datasource_missing' | 'Rrdd_internal_error',
    readonly detail: string,
  ) {
    super(`Rrd_interface.Rrdd_error([S(${kind}), S(${detail})])`);
  }
}

export class Rrdd {
  private host: RrdInfo | undefined;
  private readonly vms = new Map<string, RrdInfo>();
  /** VMs whose RRD is being looked for (on disk, or with the coordinator) before their first sample. */
  private readonly loading = new Map<string, Promise<void>>();
  /** VMs looked for in vain: the next sample starts their RRD. */
  private readonly looked = new Set<string>();
  private timer?: NodeJS.Timeout;
  private backupTimer?: NodeJS.Timeout;
  private sampling?: Promise<void>;
  private closed = false;
  /** The counters of the last sample (for Prometheus). */
  last?: HostCounters;
  /** The counters last fed into the RRDs. */
  private fed?: HostCounters;
  readonly dir: string;
  /** Told after each sample (perfmon and tests wait on it). */
  readonly sampled = new Set<() => void>();

  constructor(private readonly o: RrddOptions) {
    this.dir = join(o.stateDir, 'rrds');
  }

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const saved = await this.readArchive(this.o.hostUuid);
    if (saved) this.host = { rrd: saved, live: new Map() };
    this.timer = setInterval(() => void this.sample(), this.o.sampleIntervalMs ?? SAMPLE_INTERVAL_MS);
    this.timer.unref();
    this.backupTimer = setInterval(
      () => void this.backup().catch((e) => this.o.log.warn({ err: e }, 'RRD backup failed')),
      this.o.backupIntervalMs ?? BACKUP_INTERVAL_MS,
    );
    this.backupTimer.unref();
    await this.sample();
  }

  /** One reading of every counter into the RRDs; one at a time. */
  sample(): Promise<void> {
    this.sampling ??= this.sampleNow()
      .catch((e: unknown) => this.o.log.warn({ err: e }, 'sampling the counters failed'))
      .finally(() => {
        this.sampling = undefined;
        for (const f of this.sampled) f();
      });
    return this.sampling;
  }

  private async sampleNow(): Promise<void> {
    if (this.closed) return;
    const c = await this.o.counters();
    const t = c.time / 1000;
    this.last = c;
    // The RRDs take one reading per step (their counters' rates are worked out over the time
    // between two readings, as xcp-rrdd reads every 5 s): a shorter sampling interval only
    // makes the reading come sooner after each step begins.
    const prev = this.fed;
    if (prev && Math.floor(t / STEP) === Math.floor(prev.time / 1000 / STEP)) return;
    this.fed = c;
    this.host = this.feed(this.host, t, hostSources(c, prev));
    for (const d of c.domains) {
      if (this.loading.has(d.id)) continue;
      const info = this.vms.get(d.id);
      if (!info && !this.looked.has(d.id)) {
        this.startLoading(d.id);
        continue;
      }
      this.looked.delete(d.id);
      const fed = this.feed(info, t, vmSources(d));
      fed.name = d.name;
      this.vms.set(d.id, fed);
    }
  }

  /** Feeds one owner's readings, creating its RRD or adding new default data sources first (merge_new_dss). */
  private feed(info: RrdInfo | undefined, t: number, readings: Readings): RrdInfo {
    const defaults = readings.defs.filter((d) => d.default);
    if (!info) return { rrd: createRrd(defaults, t), live: new Map(readings.defs.map((d) => [d.name, d])) };
    info.live = new Map(readings.defs.map((d) => [d.name, d]));
    for (const d of defaults) addDs(info.rrd, t, d);
    updateNamed(info.rrd, t, readings.values);
    return info;
  }

  /** A VM seen running here for the first time: its RRD from this host's disk or the coordinator's archive, else a new one. */
  private startLoading(uuid: string): void {
    const p = (async () => {
      let rrd = await this.readArchive(uuid);
      const coordinator = this.o.coordinator();
      if (!rrd && coordinator) rrd = await this.fetchArchived(coordinator, uuid).catch(() => undefined);
      // one sent here meanwhile (a migration) is newer; none at all: the next sample makes one
      if (this.vms.has(uuid)) return;
      if (rrd) this.vms.set(uuid, { rrd, live: new Map() });
      else this.looked.add(uuid);
    })()
      .catch((e: unknown) => this.o.log.warn({ err: e, vm: uuid }, 'reading a VM RRD failed'))
      .finally(() => this.loading.delete(uuid));
    this.loading.set(uuid, p);
  }

  private async readArchive(uuid: string): Promise<Rrd | undefined> {
    let gz: Buffer;
    try {
      gz = await readFile(join(this.dir, `${uuid}.gz`));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    try {
      return rrdFromXml(gunzipSync(gz).toString('utf8'));
    } catch (e) {
      this.o.log.warn({ err: e, uuid }, 'an archived RRD does not read: ignored');
      return undefined;
    }
  }

  private async writeArchive(uuid: string, rrd: Rrd): Promise<void> {
    await writeFileAtomic(join(this.dir, `${uuid}.gz`), gzipSync(rrdToXml(rrd, true)));
  }

  /** Writes the host's and the running VMs' RRDs to disk (backup_rrds to local disk). */
  async backup(): Promise<void> {
    if (this.host) await this.writeArchive(this.o.hostUuid, this.host.rrd);
    for (const [uuid, info] of this.vms) await this.writeArchive(uuid, info.rrd);
  }

  /** A VM stopped here (halted or suspended): its RRD goes to the coordinator's archive (archive_rrd). */
  async vmStopped(uuid: string): Promise<void> {
    await this.loading.get(uuid);
    const info = this.vms.get(uuid);
    if (!info) return;
    this.vms.delete(uuid);
    const coordinator = this.o.coordinator();
    try {
      if (coordinator) await this.send(coordinator.address, uuid, info.rrd, true);
      else await this.writeArchive(uuid, info.rrd);
      // the copy a backup left here is older than the archive now
      if (coordinator) await rm(join(this.dir, `${uuid}.gz`), { force: true });
    } catch (e) {
      this.o.log.warn({ err: e, vm: uuid }, 'archiving a VM RRD with the coordinator failed: kept on this host');
      await this.writeArchive(uuid, info.rrd);
    }
  }

  /** A VM moved to the host at `address`: its RRD follows it (migrate_rrd); a failure is logged only. */
  async vmMigrated(uuid: string, address: string): Promise<void> {
    await this.loading.get(uuid);
    const info = this.vms.get(uuid);
    if (!info) return;
    this.vms.delete(uuid);
    await rm(join(this.dir, `${uuid}.gz`), { force: true });
    this.o.log.info({ vm: uuid, address }, 'sending a VM RRD to its new host');
    await this.send(address, uuid, info.rrd, false).catch((e: unknown) =>
      this.o.log.warn({ err: e, vm: uuid, address }, 'sending a VM RRD to its new host failed'),
    );
  }

  /** A VM was destroyed: its archive goes (remove_rrd). */
  async vmDestroyed(uuid: string): Promise<void> {
    this.vms.delete(uuid);
    await rm(join(this.dir, `${uuid}.gz`), { force: true });
  }

  /** PUT /rrd: an RRD sent by another host, for a VM now running here or (archive) to keep. */
  async received(uuid: string, rrd: Rrd, archive: boolean): Promise<void> {
    if (archive) await this.writeArchive(uuid, rrd);
    else this.vms.set(uuid, { rrd, live: this.vms.get(uuid)?.live ?? new Map() });
  }

  /** PUTs an RRD to another host's /rrd, authenticated by the pool secret (send_rrd). */
  private send(address: string, uuid: string, rrd: Rrd, archive: boolean): Promise<void> {
    const body = rrdToXml(rrd, true);
    const query = `${archive ? 'archive=true&' : ''}uuid=${encodeURIComponent(uuid)}`;
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: address.replace(/^\[|\]$/g, ''),
          port: this.o.httpsPort,
          method: 'PUT',
          path: `/rrd?${query}`,
          rejectUnauthorized: false,
          headers: {
            cookie: `pool_secret=${encodeURIComponent(this.o.poolSecret())}`,
            'content-type': 'text/xml',
            'content-length': Buffer.byteLength(body),
          },
          timeout: 30_000,
        },
        (res) => {
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`PUT /rrd answered ${res.statusCode}`))));
        },
      );
      req.on('timeout', () => req.destroy(new Error('PUT /rrd timed out')));
      req.on('error', reject);
      req.end(body);
    });
  }

  /** GETs a VM's archived RRD from the coordinator (its unarchive path), undefined when it has none. */
  private fetchArchived(c: CoordinatorLink, uuid: string): Promise<Rrd | undefined> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: c.address.replace(/^\[|\]$/g, ''),
          port: c.httpsPort,
          method: 'GET',
          path: `/vm_rrd?uuid=${encodeURIComponent(uuid)}&rrd_unarchive=`,
          rejectUnauthorized: false,
          headers: { cookie: `pool_secret=${encodeURIComponent(c.poolSecret)}` },
          timeout: 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (b: Buffer) => chunks.push(b));
          res.on('end', () => {
            if (res.statusCode !== 200) return resolve(undefined);
            try {
              resolve(rrdFromXml(Buffer.concat(chunks).toString('utf8')));
            } catch (e) {
              reject(e);
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('GET /vm_rrd timed out')));
      req.on('error', reject);
      req.end();
    });
  }

  // ---- queries ------------------------------------------------------------------------------

  hostRrd(): Rrd | undefined {
    return this.host && copyRrd(this.host.rrd);
  }

  /** The RRD of a VM running here. */
  vmRrd(uuid: string): Rrd | undefined {
    const info = this.vms.get(uuid);
    return info && copyRrd(info.rrd);
  }

  hasVm(uuid: string): boolean {
    return this.vms.has(uuid);
  }

  /** A VM's archived RRD on this host's disk (the coordinator's unarchive). */
  unarchive(uuid: string): Promise<Rrd | undefined> {
    return this.readArchive(uuid);
  }

  /** The running VMs with an RRD here, and their names. */
  vmList(): { uuid: string; name: string | undefined }[] {
    return [...this.vms].map(([uuid, info]) => ({ uuid, name: info.name }));
  }

  /** /rrd_updates: `vmUuids` undefined for every VM here. */
  updates(q: { start: number; interval: number; cf: Cf | undefined; host: boolean; vmUuids?: string[] }): Xport {
    const prefixed: [string, Rrd][] = [];
    if (q.host && this.host) prefixed.push([`host:${this.o.hostUuid}:`, this.host.rrd]);
    for (const [uuid, info] of this.vms) if (!q.vmUuids || q.vmUuids.includes(uuid)) prefixed.push([`vm:${uuid}:`, info.rrd]);
    return xport(prefixed, q.start, q.interval, q.cf);
  }

  private owner(vm: string | undefined): RrdInfo {
    const info = vm === undefined ? this.host : this.vms.get(vm);
    if (!info) throw new RrddError('Datasource_missing', vm === undefined ? 'No host datasource!' : `VM: ${vm}`);
    return info;
  }

  /** The data sources an owner has (query_possible_dss): live ones, and the archived ones no longer read. */
  dataSources(vm?: string): DataSourceInfo[] {
    const info = vm === undefined ? this.host : this.vms.get(vm);
    if (!info) return [];
    const recorded = new Set(info.rrd.dss.map((d) => d.name));
    const out = new Map<string, DataSourceInfo>();
    for (const d of info.live.values()) {
      out.set(d.name, {
        name: d.name,
        description: d.description,
        enabled: recorded.has(d.name),
        standard: d.default,
        units: d.units,
        min: d.min,
        max: d.max,
      });
    }
    for (const d of info.rrd.dss) {
      if (!out.has(d.name)) {
        out.set(d.name, {
          name: d.name,
          description: 'description not available',
          enabled: false,
          standard: false,
          units: 'unknown',
          min: d.min,
          max: d.max,
        });
      }
    }
    return [...out.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Starts recording a data source the owner has (add_ds); Datasource_missing if it has no such one. */
  record(vm: string | undefined, name: string): void {
    const info = this.owner(vm);
    const def = info.live.get(name);
    if (!def) throw new RrddError('Datasource_missing', name);
    addDs(info.rrd, Date.now() / 1000, def);
  }

  /** The newest average of a recorded data source (query_ds). */
  query(vm: string | undefined, name: string): number {
    const info = this.owner(vm);
    const v = queryDs(info.rrd, Date.now() / 1000, name);
    if (v === undefined) throw new RrddError('Rrdd_internal_error', `Rrd.Invalid_data_source("${name}")`);
    return v;
  }

  /** Drops a data source's archives (forget_ds); nothing to forget is no error. */
  forget(vm: string | undefined, name: string): void {
    const info = vm === undefined ? this.host : this.vms.get(vm);
    if (info) removeDs(info.rrd, name);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    clearInterval(this.backupTimer);
    await this.sampling;
    await Promise.all(this.loading.values());
    await this.backup().catch((e) => this.o.log.warn({ err: e }, 'RRD backup at close failed'));
  }
}
