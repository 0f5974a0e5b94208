// A round-robin database as xcp-rrdd keeps one per host and per VM (the xapi-rrd library's
// model, compatible with rrdtool's): data sources (DS) turn each reading into a rate, a primary
// data point (PDP) per 5 s step; archives (RRA) consolidate PDPs into rows (AVERAGE, MIN or MAX
// over pdp_per_row PDPs; a row is unknown when more than xff of its PDPs were), kept in rings
// of single-precision floats. Every rule below follows rrd.ml's update, so the numbers a client
// reads are those xapi would serve for the same readings at the same times.
import { formatG } from '../rpc/rpc.js';

export type DsType = 'GAUGE' | 'ABSOLUTE' | 'DERIVE';
export type Cf = 'AVERAGE' | 'MIN' | 'MAX' | 'LAST';

export interface Ds {
  name: string;
  type: DsType;
  min: number;
  max: number;
  /** Seconds between readings beyond which the PDP is unknown (minimal_heartbeat). */
  mrhb: number;
  /** The last raw reading (for DERIVE), NaN when unknown. */
  last: number;
  /** The PDP being accumulated. */
  value: number;
  unknownSec: number;
  lastUpdated: number;
}

/** One consolidated data point in preparation. */
export interface CdpPrep {
  value: number;
  unknownPdps: number;
}

export class Ring {
  readonly data: Float32Array;
  current: number;
  constructor(
    readonly size: number,
    readonly min: number,
    readonly max: number,
    init = Number.NaN,
  ) {
    this.data = new Float32Array(size);
    this.data.fill(bound(init, min, max));
    this.current = size - 1;
  }
  push(v: number): void {
    this.current = this.current + 1 === this.size ? 0 : this.current + 1;
    this.data[this.current] = bound(v, this.min, this.max);
  }
  /** The i-th newest value (0 = the newest). */
  peek(i: number): number {
    const at = this.current - i;
    return this.data[at >= 0 ? at : this.size + at]!;
  }
  copy(): Ring {
    const r = new Ring(this.size, this.min, this.max);
    r.data.set(this.data);
    r.current = this.current;
    return r;
  }
}

/** A value outside [min, max] is stored as unknown, as xapi's bounded rings do. */
function bound(v: number, min: number, max: number): number {
  return v < min || v > max ? Number.NaN : v;
}

export interface Rra {
  cf: Cf;
  rows: number;
  pdpPerRow: number;
  xff: number;
  /** One ring per data source, in the RRD's DS order. */
  data: Ring[];
  cdps: CdpPrep[];
}

export interface Rrd {
  lastUpdated: number;
  step: number;
  dss: Ds[];
  rras: Rra[];
}

/** xcp-rrdd's archives: (rows, PDPs per row): 10 min of 5 s, 2 h of 1 min, a week of 1 h, a year of 1 day. */
export const TIMESCALES: [number, number][] = [
  [120, 1],
  [120, 12],
  [168, 720],
  [366, 17280],
];
export const STEP = 5;

/** A reading's source, before it is a DS of an RRD (xcp-rrdd's Ds.ds). */
export interface DsDef {
  name: string;
  type: DsType;
  min: number;
  max: number;
  description: string;
  units: string;
  /** Recorded unless asked not to (record_data_source enables the others). */
  default: boolean;
}

/** The archives of a new RRD: AVERAGE for the 5 s one; AVERAGE, MIN, MAX for the others (create_rras with min/max). */
export function rraSpecs(): { cf: Cf; rows: number; pdpPerRow: number; xff: number }[] {
  return TIMESCALES.flatMap(([rows, pdpPerRow]) =>
    pdpPerRow > 1
      ? (['AVERAGE', 'MIN', 'MAX'] as Cf[]).map((cf) => ({ cf, rows, pdpPerRow, xff: 1 }))
      : [{ cf: 'AVERAGE' as Cf, rows, pdpPerRow, xff: 0.5 }],
  );
}

function cfInit(cf: Cf, ds: Ds): number {
  const d = cf === 'AVERAGE' ? 0 : cf === 'MIN' ? Infinity : cf === 'MAX' ? -Infinity : Number.NaN;
  return Math.min(ds.max, Math.max(ds.min, d));
}

export function makeDs(def: Pick<DsDef, 'name' | 'type' | 'min' | 'max'>, mrhb = 300): Ds {
  return { name: def.name, type: def.type, min: def.min, max: def.max, mrhb, last: Number.NaN, value: 0, unknownSec: 0, lastUpdated: 0 };
}

/** A new RRD whose data sources are `defs`, initialised at `timestamp` (seconds) with unknown readings. */
export function createRrd(defs: Pick<DsDef, 'name' | 'type' | 'min' | 'max'>[], timestamp: number): Rrd {
  const dss = defs.map((d) => makeDs(d));
  const rrd: Rrd = {
    lastUpdated: 0,
    step: STEP,
    dss,
    rras: rraSpecs().map((s) => ({
      ...s,
      data: dss.map((ds) => new Ring(s.rows, ds.min, ds.max)),
      cdps: dss.map((ds) => ({ value: cfInit(s.cf, ds), unknownPdps: 0 })),
    })),
  };
  update(
    rrd,
    timestamp,
    dss.map((_, i) => [i, Number.NaN]),
    true,
  );
  return rrd;
}

/** Adds a data source (no-op if present): its archives start unknown (rrd_add_ds). */
export function addDs(rrd: Rrd, timestamp: number, def: Pick<DsDef, 'name' | 'type' | 'min' | 'max'>): void {
  if (rrd.dss.some((d) => d.name === def.name)) return;
  const ds = makeDs(def);
  const npdps = Math.floor(Math.floor(timestamp) / rrd.step);
  rrd.dss.push(ds);
  for (const rra of rrd.rras) {
    rra.data.push(new Ring(rra.rows, ds.min, ds.max));
    rra.cdps.push({ value: cfInit(rra.cf, ds), unknownPdps: npdps % rra.pdpPerRow });
  }
}

/** Removes a data source and its archives (rrd_remove_ds); idempotent. */
export function removeDs(rrd: Rrd, name: string): void {
  const i = rrd.dss.findIndex((d) => d.name === name);
  if (i < 0) return;
  rrd.dss.splice(i, 1);
  for (const rra of rrd.rras) {
    rra.data.splice(i, 1);
    rra.cdps.splice(i, 1);
  }
}

function pdpStart(time: number, step: number): [number, number] {
  const start = step * Math.floor(Math.trunc(time) / step);
  return [start, time - start];
}

function doCfs(rra: Rra, startPdpOffset: number, pdps: [number, number][]): void {
  for (const [i, pdp] of pdps) {
    const cdp = rra.cdps[i]!;
    if (Number.isNaN(pdp)) {
      // the average so far was of the PDPs expected: renormalise for the ones now unknown
      const olddiv = rra.pdpPerRow - cdp.unknownPdps;
      const newdiv = olddiv - startPdpOffset;
      if (newdiv > 0) {
        cdp.value = (cdp.value * olddiv) / newdiv;
        cdp.unknownPdps += startPdpOffset;
      }
    } else if (rra.cf === 'AVERAGE') cdp.value += (pdp * startPdpOffset) / rra.pdpPerRow;
    else if (rra.cf === 'MIN') cdp.value = Math.min(cdp.value, pdp);
    else if (rra.cf === 'MAX') cdp.value = Math.max(cdp.value, pdp);
    else cdp.value = pdp;
  }
}

function rraUpdate(rrd: Rrd, procPdpSt: number, elapsed: number, pdps: [number, number][]): void {
  for (const rra of rrd.rras) {
    const startPdpOffset = rra.pdpPerRow - ((procPdpSt / rrd.step) % rra.pdpPerRow);
    const steps = elapsed < startPdpOffset ? 0 : Math.floor((elapsed - startPdpOffset) / rra.pdpPerRow) + 1;
    doCfs(rra, Math.min(startPdpOffset, elapsed), pdps);
    if (steps === 0) continue;
    // the first row closed is what was accumulated; any further ones are the current PDP itself
    for (const [i] of pdps) {
      const cdp = rra.cdps[i]!;
      rra.data[i]!.push(cdp.unknownPdps <= Math.trunc(rra.xff * rra.pdpPerRow) ? cdp.value : Number.NaN);
    }
    for (let n = 1; n <= Math.min(steps - 1, rra.rows); n++) for (const [i, pdp] of pdps) rra.data[i]!.push(pdp);
    for (const [i] of pdps) {
      const cdp = rra.cdps[i]!;
      cdp.unknownPdps = 0;
      cdp.value = cfInit(rra.cf, rrd.dss[i]!);
    }
    doCfs(rra, (elapsed - startPdpOffset) % rra.pdpPerRow, pdps);
  }
}

function rate(ds: Ds, value: number, interval: number, fresh: boolean): number {
  if (interval > ds.mrhb) return Number.NaN;
  let r: number;
  if (ds.type === 'GAUGE' || (ds.type === 'DERIVE' && fresh)) r = value;
  else if (ds.type === 'ABSOLUTE') r = value / interval;
  else r = value - ds.last; // NaN when either is unknown
  ds.last = value;
  return r;
}

/**
 * Feeds readings taken at `timestamp` (seconds) for the data sources at the given indexes
 * (ds_update). A DERIVE reading is a counter (its rate is the difference), GAUGE and ABSOLUTE
 * readings are rates already; NaN is an unknown reading.
 */
export function update(rrd: Rrd, timestamp: number, readings: [number, number][], fresh = false): void {
  if (readings.length === 0) return;
  const lastUpdated = rrd.dss[readings[0]![0]]!.lastUpdated;
  let interval = timestamp - lastUpdated;
  if (interval < 0) interval = 5; // the clock went back
  const [procPdpSt] = pdpStart(lastUpdated, rrd.step);
  const [occuPdpSt, occuPdpAge] = pdpStart(timestamp, rrd.step);
  const elapsed = Math.trunc((occuPdpSt - procPdpSt) / rrd.step);
  const [preInt, postInt] = elapsed > 0 ? [interval - occuPdpAge, occuPdpAge] : [interval, 0];
  rrd.lastUpdated = timestamp;
  const v2s: [number, number][] = readings.map(([i, v]) => {
    const ds = rrd.dss[i]!;
    const r = rate(ds, v, interval, fresh);
    ds.lastUpdated = timestamp;
    return [i, r];
  });
  for (const [i, v] of v2s) {
    const ds = rrd.dss[i]!;
    if (Number.isNaN(v)) ds.unknownSec = preInt;
    else if (ds.type === 'DERIVE') ds.value += (preInt * v) / interval;
    else ds.value = v;
  }
  if (elapsed <= 0) return;
  const procF = rrd.step * (lastUpdated / rrd.step);
  const occuF = rrd.step * (timestamp / rrd.step);
  const pdps: [number, number][] = readings.map(([i]) => {
    const ds = rrd.dss[i]!;
    if (interval > ds.mrhb) return [i, Number.NaN];
    const raw = ds.type === 'DERIVE' ? ds.value / (occuF - procF - ds.unknownSec) : ds.value;
    // a counter's rate a little over its maximum (timing jitter) is the maximum; anything else out of bounds is unknown
    if (ds.type === 'DERIVE' && raw > ds.max && raw < ds.max * 1.05) return [i, ds.max];
    if (raw < ds.min || raw > ds.max) return [i, Number.NaN];
    return [i, raw];
  });
  rraUpdate(rrd, procPdpSt, elapsed, pdps);
  for (const [i, v] of v2s) {
    const ds = rrd.dss[i]!;
    if (Number.isNaN(v)) {
      ds.value = 0;
      ds.unknownSec = postInt;
    } else {
      ds.unknownSec = 0;
      ds.value = ds.type === 'DERIVE' ? (postInt * v) / interval : v;
    }
  }
}

/** Feeds readings by data source name; names the RRD does not record are ignored (ds_update_named). */
export function updateNamed(rrd: Rrd, timestamp: number, readings: Map<string, number>): void {
  const indexed: [number, number][] = [];
  rrd.dss.forEach((ds, i) => {
    const v = readings.get(ds.name);
    if (v !== undefined) indexed.push([i, v]);
  });
  update(rrd, timestamp, indexed);
}

export function copyRrd(r: Rrd): Rrd {
  return {
    lastUpdated: r.lastUpdated,
    step: r.step,
    dss: r.dss.map((d) => ({ ...d })),
    rras: r.rras.map((a) => ({ ...a, data: a.data.map((x) => x.copy()), cdps: a.cdps.map((c) => ({ ...c })) })),
  };
}

/** The archives holding `start` at the resolution asked for, per xapi's find_best_rras. */
export function findBestRras(rrd: Rrd, pdpInterval: number, cf: Cf | undefined, start: number): Rra[] {
  const rras = cf ? rrd.rras.filter((r) => r.cf === cf) : rrd.rras;
  if (rras.length === 0) throw new NoRraAvailable();
  const [lastPdpTime] = pdpStart(rrd.lastUpdated, rrd.step);
  const contains = (t: number, r: Rra) => r.pdpPerRow >= pdpInterval && t > lastPdpTime - rrd.step * r.rows * r.pdpPerRow;
  const first = rras.find((r) => contains(start, r));
  if (first) return rras.filter((r) => r.rows === first.rows && r.pdpPerRow === first.pdpPerRow);
  const last = rras[rras.length - 1]!;
  const newStart = 1 + lastPdpTime - rrd.step * last.rows * last.pdpPerRow;
  return rras.filter((r) => contains(newStart, r));
}

export class NoRraAvailable extends Error {
  constructor() {
    super('No_RRA_Available');
  }
}

/** The newest AVERAGE of a data source (query_named_ds); undefined when it has none. */
export function queryDs(rrd: Rrd, now: number, name: string): number | undefined {
  const i = rrd.dss.findIndex((d) => d.name === name);
  if (i < 0) return undefined;
  const rra = findBestRras(rrd, 0, 'AVERAGE', Math.trunc(now))[0];
  if (!rra) throw new NoRraAvailable();
  return rra.data[i]!.peek(0);
}

/** A float as xapi's RRD writers print it (%0.15g; NaN, Infinity, 0.0). */
export function fToS(f: number): string {
  if (Number.isNaN(f)) return 'NaN';
  if (f === Infinity) return 'Infinity';
  if (f === -Infinity) return '-Infinity';
  if (f === 0) return '0.0';
  return formatG(f, 15);
}
