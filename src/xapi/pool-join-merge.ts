// What a joining host brings into the pool's database (xapi's update_non_vm_metadata with the
// create_or_get_*_on_master functions, then its VMs through export_metadata/import_metadata):
// the joiner collects its rows into one JSON document (`collectJoinContribution`, on its own
// database before anything changes), the coordinator applies it to the pool's
// (`applyJoinContribution`). Every object is looked up first (by uuid, networks by bridge) and
// created only if missing, so applying the same document twice changes nothing the second time.
//
// Transport: the document is plain JSON (rows in the database's representation), so it can go
// as the body of one coordinator-only HTTP request authenticated by the pool secret (which the
// joiner holds by then: pool.initial_auth comes first) and be applied there in one go: one round
// trip, one group commit. Applying it from the joiner through the RemoteDb face works as well
// (the function only needs a Db), at one round trip per read and write. The first is
// recommended.
//
// Where this differs from xapi, on purpose:
// - PIFs and PBDs keep the joiner's uuids (xapi makes fresh ones, so running the merge twice
//   there duplicates them, and the member finds its rows again only by device/SR);
// - a VDI's snapshot_of and a VM's snapshot_of/parent are translated to the coordinator's refs
//   (xapi passes the joiner's refs, left dangling);
// - the control domain keeps its power state and is resident on the new host (xapi imports it
//   Halted and resident nowhere, and the member's start-up puts both right);
// - a VM's affinity to the joiner becomes an affinity to the new host record (xapi drops it).
import { randomUUID } from 'node:crypto';
import { untyped, type AnyRow, type Db } from '../db/interface.js';
import type { Schema } from '../schema/schema.js';
import { NULL_REF, type Type } from '../schema/types.js';
import { newRef } from '../api/implicit.js';

/**
 * The host fields xapi's Host.create sets to its own values whatever the joiner had, and that
 * nothing recomputes afterwards: the joiner's description, tags, logging, guest VCPU
 * parameters, power-on settings, HA state, pending guidances and UEFI certificates stay behind.
 */
const HOST_CREATE_FRESH = {
  name_description: 'Default install',
  tags: [],
  logging: {},
  guest_VCPUs_params: {},
  power_on_mode: '',
  power_on_config: {},
  sched_policy: 'credit',
  cpu_configuration: {},
  ha_statefiles: [],
  ha_network_peers: [],
  updates_requiring_reboot: [],
  pending_guidances: [],
  uefi_certificates: '',
  ssl_legacy: false,
};

/** The classes a contribution holds, in the order they are applied. */
export const CONTRIBUTION_CLASSES = [
  'host',
  'host_metrics',
  'host_cpu',
  'network',
  'PIF',
  'PIF_metrics',
  'SR',
  'PBD',
  'VDI',
  'VM_metrics',
  'VM',
  'VBD_metrics',
  'VBD',
  'VIF_metrics',
  'VIF',
  'console',
] as const;
export type ContributionClass = (typeof CONTRIBUTION_CLASSES)[number];

/** What the joiner sends: its host's ref and its rows by class, as [ref, row] in its database. */
export interface JoinContribution {
  host: string;
  rows: Partial<Record<ContributionClass, [string, Record<string, unknown>][]>>;
}

export interface JoinMergeResult {
  /** The joiner's host on the coordinator. */
  host: string;
  /** Every joiner ref of the document → the coordinator's ref it became or was matched with. */
  refs: Record<string, string>;
  /** Objects that could not be merged (xapi logs each and carries on). */
  failed: { cls: string; ref: string; error: string }[];
}

/** The joiner's side: what it contributes, read from its own (standalone) database. */
export async function collectJoinContribution(db: Db, hostRef: string): Promise<JoinContribution> {
  const rows: JoinContribution['rows'] = {};
  const add = (cls: ContributionClass, ref: string, row: AnyRow) => {
    const list = rows[cls] ?? [];
    list.push([ref, { ...row }]);
    rows[cls] = list;
  };
  const any = untyped(db);
  const follow = async (cls: ContributionClass, ref: string) => {
    if (ref === NULL_REF) return;
    const row = await any.tryGet(cls, ref);
    if (row) add(cls, ref, row);
  };
  const host = await db.get('host', hostRef);
  add('host', hostRef, host);
  await follow('host_metrics', host.metrics);
  for (const [ref, row] of await db.find('host_cpu', { host: hostRef })) add('host_cpu', ref, row);
  for (const [ref, row] of await db.all('network')) add('network', ref, row);
  // Physical PIFs only: bonds, tunnels and VLANs other than management's are refused earlier.
  for (const [ref, row] of await db.find('PIF', { physical: true })) {
    add('PIF', ref, row);
    await follow('PIF_metrics', row.metrics);
  }
  for (const [ref, row] of await db.all('SR')) add('SR', ref, row);
  for (const [ref, row] of await db.all('PBD')) add('PBD', ref, row);
  for (const [ref, row] of await db.all('VDI')) add('VDI', ref, row);
  // Every VM, templates, snapshots and the control domain included (export_metadata?all=true
  // &include_dom0=true), with their disks, interfaces and consoles.
  for (const [ref, row] of await db.all('VM')) {
    add('VM', ref, row);
    await follow('VM_metrics', row.metrics);
    for (const [vbd, v] of await db.find('VBD', { VM: ref })) {
      add('VBD', vbd, v);
      await follow('VBD_metrics', v.metrics);
    }
    for (const [vif, v] of await db.find('VIF', { VM: ref })) {
      add('VIF', vif, v);
      await follow('VIF_metrics', v.metrics);
    }
    for (const [c, v] of await db.find('console', { VM: ref })) add('console', c, v);
  }
  return { host: hostRef, rows };
}

/** Field values copied from a row with its refs translated (see `translate`). */
type Row = Record<string, unknown>;

/** The coordinator's side: merges a contribution into the pool's database. */
export async function applyJoinContribution(db: Db, doc: JoinContribution): Promise<JoinMergeResult> {
  return new Merge(db, doc).run();
}

class Merge {
  private readonly any;
  private readonly schema: Schema;
  private readonly refs = new Map<string, string>();
  /** Rows created by this run: only these get their deferred self-references. */
  private readonly created = new Set<string>();
  private readonly failed: JoinMergeResult['failed'] = [];
  /** Joiner refs of the VMs created here: only their devices are brought along. */
  private readonly vmsCreated = new Set<string>();
  /** The "one" side of each one-to-many relation: kept by the database, never written. */
  private readonly derived = new Set<string>();

  constructor(
    private readonly db: Db,
    private readonly doc: JoinContribution,
  ) {
    this.any = untyped(db);
    this.schema = db.schema;
    for (const r of this.schema.relations) this.derived.add(`${r.one.class}.${r.one.field}`);
  }

  private rows(cls: ContributionClass): [string, Row][] {
    return this.doc.rows[cls] ?? [];
  }
  private row(cls: ContributionClass, ref: string): Row | undefined {
    return this.rows(cls).find(([r]) => r === ref)?.[1];
  }
  private map(ref: unknown): string {
    return typeof ref === 'string' ? (this.refs.get(ref) ?? NULL_REF) : NULL_REF;
  }

  /** One object, xapi's protect_exn: a failure is recorded and the merge goes on. */
  private async guarded(cls: string, ref: string, f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      this.failed.push({ cls, ref, error: e instanceof Error ? e.message : String(e) });
    }
  }

  /**
   * The row's fields for the coordinator: refs translated (a ref to an object the document does
   * not map becomes NULL, a set or map loses such members), relation sets left out (the
   * database rebuilds them as the "many" side is created), then `overrides`.
   */
  private translate(cls: string, row: Row, overrides: Row = {}): Row {
    const out: Row = {};
    for (const f of this.schema.cls(cls).fields) {
      if (this.derived.has(`${cls}.${f.name}`) || !(f.name in row)) continue;
      out[f.name] = this.value(f.type, row[f.name]);
    }
    return { ...out, ...overrides };
  }
  private value(t: Type, v: unknown): unknown {
    switch (t.k) {
      case 'ref':
        return v === NULL_REF ? NULL_REF : this.map(v);
      case 'set':
        if (t.of.k !== 'ref' || !Array.isArray(v)) return v;
        return v.map((x) => this.map(x)).filter((x) => x !== NULL_REF);
      case 'map': {
        if ((t.key.k !== 'ref' && t.val.k !== 'ref') || v === null || typeof v !== 'object') return v;
        const out: Record<string, unknown> = {};
        for (const [k, x] of Object.entries(v)) {
          const key = t.key.k === 'ref' ? this.map(k) : k;
          const val = t.val.k === 'ref' ? this.map(x) : x;
          if (key !== NULL_REF && val !== NULL_REF) out[key] = val;
        }
        return out;
      }
      default:
        return v;
    }
  }

  /** Matches a row by uuid, or creates it from `fields()` with a fresh ref. */
  private async byUuid(cls: ContributionClass, ref: string, row: Row, fields: () => Row): Promise<void> {
    await this.guarded(cls, ref, async () => {
      const existing = await this.any.refByUuid(cls, row.uuid as string);
      if (existing) {
        this.refs.set(ref, existing);
        return;
      }
      const created = newRef();
      await this.any.create(cls, created, fields());
      this.refs.set(ref, created);
      this.created.add(created);
    });
  }

  /** Records the mapping of a row the coordinator has already (same uuid); creates nothing. */
  private async matchOnly(cls: ContributionClass, ref: string): Promise<void> {
    const row = this.row(cls, ref);
    if (!row) return;
    const existing = await this.any.refByUuid(cls, row.uuid as string);
    if (existing) this.refs.set(ref, existing);
  }

  async run(): Promise<JoinMergeResult> {
    const hostRef = await this.host();
    await this.hostCpus();
    await this.networks();
    await this.pifs();
    await this.srs();
    await this.pbds();
    await this.sharedSrPbds(hostRef);
    await this.vdis();
    await this.vms();
    await this.devices();
    await this.fixUp(hostRef);
    return { host: hostRef, refs: Object.fromEntries(this.refs), failed: this.failed };
  }

  /**
   * Host.create: the joiner's uuid and description of itself; disabled, its metrics not live
   * (the member's start-up changes both), no operations; TLS verification as the pool has it.
   * Its SRs and control domain are set once they exist (fixUp). What Host.create does not take
   * from the joiner starts afresh (HOST_CREATE_FRESH); what a member's start-up rewrites anyway
   * (capabilities, cpu_info, bios strings, memory figures...) is carried over meanwhile.
   */
  private async host(): Promise<string> {
    const ref = this.doc.host;
    const row = this.row('host', ref);
    if (!row) throw new Error(`the contribution has no host ${ref}`);
    const existing = await this.db.refByUuid('host', row.uuid as string);
    const metricsRef = row.metrics as string;
    if (existing) {
      this.refs.set(ref, existing);
      this.refs.set(metricsRef, (await this.db.get('host', existing)).metrics);
      return existing;
    }
    const metrics = this.row('host_metrics', metricsRef) ?? {};
    const newMetrics = newRef();
    const metricsUuid =
      typeof metrics.uuid === 'string' && !(await this.db.refByUuid('host_metrics', metrics.uuid)) ? metrics.uuid : randomUUID();
    await this.any.create('host_metrics', newMetrics, { ...this.translate('host_metrics', metrics), uuid: metricsUuid, live: false });
    this.refs.set(metricsRef, newMetrics);
    const [pool] = await this.db.all('pool');
    const created = newRef();
    await this.any.create(
      'host',
      created,
      this.translate('host', row, {
        enabled: false,
        metrics: newMetrics,
        current_operations: {},
        allowed_operations: [],
        control_domain: NULL_REF,
        crash_dump_sr: NULL_REF,
        suspend_image_sr: NULL_REF,
        local_cache_sr: NULL_REF,
        tls_verification_enabled: pool?.[1].tls_verification_enabled ?? false,
        ...HOST_CREATE_FRESH,
      }),
    );
    this.refs.set(ref, created);
    this.created.add(created);
    return created;
  }

  private async hostCpus(): Promise<void> {
    for (const [ref, row] of this.rows('host_cpu')) await this.byUuid('host_cpu', ref, row, () => this.translate('host_cpu', row));
  }

  /**
   * create_or_get_network_on_master: the coordinator's network with the same bridge, else a new
   * one (fresh uuid) with the joiner's bridge: Network.pool_introduce for physical networks and
   * the host-internal management network, Network.create for the others.
   */
  private async networks(): Promise<void> {
    const pifs = this.rows('PIF');
    for (const [ref, row] of this.rows('network')) {
      await this.guarded('network', ref, async () => {
        const [same] = await this.db.find('network', { bridge: row.bridge as string });
        if (same) {
          this.refs.set(ref, same[0]);
          return;
        }
        const physical = pifs.find(([, p]) => p.network === ref)?.[1].physical === true;
        const himn = (row.other_config as Record<string, string>).is_host_internal_management_network === 'true';
        // pool_introduce carries the purpose over, create the tags.
        const copied: Row = physical || himn ? { purpose: row.purpose } : { tags: row.tags };
        const created = newRef();
        await this.any.create('network', created, {
          uuid: randomUUID(),
          name_label: row.name_label,
          name_description: row.name_description,
          MTU: row.MTU,
          other_config: row.other_config,
          bridge: row.bridge,
          managed: row.managed,
          ...copied,
        });
        this.refs.set(ref, created);
        this.created.add(created);
      });
    }
  }

  /** Physical PIFs (PIF.pool_introduce) with their metrics, on the networks just mapped. */
  private async pifs(): Promise<void> {
    for (const [ref, row] of this.rows('PIF_metrics')) {
      await this.byUuid('PIF_metrics', ref, row, () => this.translate('PIF_metrics', row));
    }
    for (const [ref, row] of this.rows('PIF')) {
      await this.byUuid('PIF', ref, row, () => this.translate('PIF', row, { bond_slave_of: NULL_REF, VLAN_master_of: NULL_REF }));
    }
  }

  /**
   * create_or_get_sr_on_master: SR.introduce with the joiner's uuid, not shared; the joiner's
   * tools SR is the pool's.
   */
  private async srs(): Promise<void> {
    for (const [ref, row] of this.rows('SR')) {
      await this.guarded('SR', ref, async () => {
        const existing = await this.db.refByUuid('SR', row.uuid as string);
        if (existing) {
          this.refs.set(ref, existing);
          return;
        }
        if (row.is_tools_sr === true) {
          const [tools] = await this.db.find('SR', { is_tools_sr: true });
          if (!tools) throw new Error(`can't find SR ${String(row.uuid)} of tools iso`);
          this.refs.set(ref, tools[0]);
          return;
        }
        const created = newRef();
        await this.any.create('SR', created, this.translate('SR', row, { shared: false, current_operations: {} }));
        this.refs.set(ref, created);
        this.created.add(created);
      });
    }
  }

  /** The joiner's PBDs, unplugged: the member plugs them again when it starts. */
  private async pbds(): Promise<void> {
    for (const [ref, row] of this.rows('PBD')) {
      await this.byUuid('PBD', ref, row, () => this.translate('PBD', row, { currently_attached: false }));
    }
  }

  /**
   * create_storage.ml's PBDs for the pool's shared SRs (xapi makes them when the member starts):
   * the coordinator's PBD's device_config less SRmaster, unplugged; none when the pool's
   * other_config says sync_create_pbds=nosync.
   */
  private async sharedSrPbds(hostRef: string): Promise<void> {
    const [pool] = await this.db.all('pool');
    if (!pool || pool[1].other_config.sync_create_pbds === 'nosync') return;
    const master = pool[1].master;
    for (const [sr, row] of await this.db.all('SR')) {
      if (!row.shared || row.is_tools_sr) continue;
      await this.guarded('SR', sr, async () => {
        const pbds = await this.db.find('PBD', { SR: sr });
        const model = pbds.find(([, p]) => p.host === master);
        if (!model || pbds.some(([, p]) => p.host === hostRef)) return;
        const { SRmaster: _, ...deviceConfig } = model[1].device_config;
        await this.db.create('PBD', newRef(), {
          uuid: randomUUID(),
          host: hostRef,
          SR: sr,
          device_config: deviceConfig,
          other_config: {},
          currently_attached: false,
        });
      });
    }
  }

  /** VDI.pool_introduce: same uuid, location and settings, in the mapped SR. */
  private async vdis(): Promise<void> {
    for (const [ref, row] of this.rows('VDI')) {
      await this.byUuid('VDI', ref, row, () => this.translate('VDI', row, { current_operations: {}, snapshot_of: NULL_REF }));
    }
  }

  /**
   * The joiner's VMs as import_metadata?restore=true brings them: a default template the pool
   * has (by name) is the pool's; a VM whose uuid the pool has is left alone (with its devices);
   * the others are created with their uuid, Halted unless Suspended, with no appliance or
   * protection policy and their version counted up.
   */
  private async vms(): Promise<void> {
    for (const [ref, row] of this.rows('VM')) {
      await this.guarded('VM', ref, async () => {
        const existing = await this.db.refByUuid('VM', row.uuid as string);
        if (existing) {
          this.refs.set(ref, existing);
          await this.matchOnly('VM_metrics', row.metrics as string);
          return;
        }
        const otherConfig = (row.other_config ?? {}) as Record<string, string>;
        const defaultTemplate = row.is_default_template === true || (row.is_a_template === true && otherConfig.default_template === 'true');
        if (defaultTemplate) {
          const [same] = await this.db.find('VM', { name_label: row.name_label as string });
          if (same) {
            this.refs.set(ref, same[0]);
            return;
          }
        }
        // Metrics come with a VM that is created, never with one that is matched.
        const metrics = this.row('VM_metrics', row.metrics as string);
        if (metrics) await this.byUuid('VM_metrics', row.metrics as string, metrics, () => this.translate('VM_metrics', metrics));
        const dom0 = row.is_control_domain === true;
        const suspended = row.power_state === 'Suspended';
        const created = newRef();
        await this.any.create(
          'VM',
          created,
          this.translate('VM', row, {
            power_state: dom0 || suspended ? row.power_state : 'Halted',
            resident_on: dom0 ? this.map(row.resident_on) : NULL_REF,
            scheduled_to_be_resident_on: NULL_REF,
            suspend_VDI: suspended ? this.map(row.suspend_VDI) : NULL_REF,
            current_operations: {},
            appliance: NULL_REF,
            protection_policy: NULL_REF,
            snapshot_of: NULL_REF,
            parent: NULL_REF,
            version: Number(row.version ?? 0) + 1,
          }),
        );
        this.refs.set(ref, created);
        this.created.add(created);
        this.vmsCreated.add(ref);
      });
    }
  }

  private async devices(): Promise<void> {
    const ofCreatedVm = (row: Row) => this.vmsCreated.has(row.VM as string);
    for (const [cls, metricsCls] of [
      ['VBD', 'VBD_metrics'],
      ['VIF', 'VIF_metrics'],
    ] as const) {
      for (const [ref, row] of this.rows(cls)) {
        if (!ofCreatedVm(row)) {
          await this.matchOnly(metricsCls, row.metrics as string);
          await this.matchOnly(cls, ref);
          continue;
        }
        const metrics = this.row(metricsCls, row.metrics as string);
        if (metrics) await this.byUuid(metricsCls, row.metrics as string, metrics, () => this.translate(metricsCls, metrics));
        await this.byUuid(cls, ref, row, () => this.translate(cls, row, { current_operations: {} }));
      }
    }
    for (const [ref, row] of this.rows('console')) {
      if (ofCreatedVm(row)) await this.byUuid('console', ref, row, () => this.translate('console', row));
      else await this.matchOnly('console', ref);
    }
  }

  /**
   * References that could only be set once their targets exist: snapshot links between VDIs and
   * between VMs, and the new host's control domain and SRs. Host.create's quirk is kept: the
   * suspend-image SR is set from the joiner's crash-dump SR.
   */
  private async fixUp(hostRef: string): Promise<void> {
    for (const [ref, row] of this.rows('VDI')) {
      const mine = this.refs.get(ref);
      if (!mine || !this.created.has(mine) || row.snapshot_of === NULL_REF) continue;
      await this.guarded('VDI', ref, () => this.db.update('VDI', mine, { snapshot_of: this.map(row.snapshot_of) }));
    }
    for (const [ref, row] of this.rows('VM')) {
      const mine = this.refs.get(ref);
      if (!mine || !this.created.has(mine)) continue;
      if (row.snapshot_of === NULL_REF && row.parent === NULL_REF) continue;
      await this.guarded('VM', ref, () =>
        this.db.update('VM', mine, { snapshot_of: this.map(row.snapshot_of), parent: this.map(row.parent) }),
      );
    }
    if (!this.created.has(hostRef)) return;
    const row = this.row('host', this.doc.host)!;
    await this.db.update('host', hostRef, {
      control_domain: this.map(row.control_domain),
      crash_dump_sr: this.map(row.crash_dump_sr),
      suspend_image_sr: this.map(row.crash_dump_sr),
      local_cache_sr: this.map(row.local_cache_sr),
    });
  }
}
