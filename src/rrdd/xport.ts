// /rrd_updates's document: the rows of several RRDs since a start time, in rrdtool's xport
// layout (xapi-rrd's Rrd_updates.create_multi): one archive resolution for all, each column
// named "<CF>:<prefix><ds>" (prefix "host:<uuid>:" or "vm:<uuid>:"), newest row first.
import { type Cf, findBestRras, fToS, NoRraAvailable, type Rra, type Rrd } from './rrd.js';

export interface Xport {
  start: number;
  step: number;
  end: number;
  legend: string[];
  rows: { t: number; values: number[] }[];
}

/**
 * `start` in seconds (negative: relative to the last update); `interval` the resolution wanted
 * in seconds (0: the finest that still holds `start`); `cf` undefined: every CF.
 */
export function xport(prefixed: [string, Rrd][], start: number, interval: number, cf: Cf | undefined): Xport {
  const first = prefixed[0];
  if (!first) throw new NoRraAvailable();
  const { step, lastUpdated } = first[1];
  const pdpInterval = Math.trunc(interval / step);
  const same = prefixed.filter(([, r]) => r.step === step);
  const from = Math.min(...same.map(([, r]) => (start < 0 ? start + Math.trunc(r.lastUpdated) : start)));
  const chosen = same.map(([, r]) => findBestRras(r, pdpInterval, cf, from));
  const firstRra = chosen.find((c) => c.length > 0)?.[0];
  if (!firstRra) throw new NoRraAvailable();
  const alike = chosen.map((c) => c.filter((r) => r.pdpPerRow === firstRra.pdpPerRow && r.rows === firstRra.rows));
  const legend: string[] = [];
  same.forEach(([prefix, r], k) => {
    for (const rra of alike[k]!) for (const ds of r.dss) legend.push(`${rra.cf}:${prefix}${ds.name}`);
  });
  const rras: Rra[] = alike.flat();
  const rraStep = step * firstRra.pdpPerRow;
  const lastCdp = rraStep * Math.floor(Math.trunc(lastUpdated) / rraStep);
  const firstCdp = rraStep * Math.floor(from / rraStep) + rraStep;
  const rows: Xport['rows'] = [];
  for (let i = 0; i < firstRra.rows; i++) {
    const t = lastCdp - i * rraStep;
    if (t < from) break;
    const values: number[] = [];
    for (const rra of rras) for (const ring of rra.data) values.push(ring.peek(i));
    rows.push({ t, values });
  }
  return { start: firstCdp, step: rraStep, end: lastCdp, legend, rows };
}

export function xportToXml(x: Xport): string {
  const out: string[] = ['<?xml version="1.0"?><xport><meta>'];
  out.push(
    `<start>${x.start}</start><step>${x.step}</step><end>${x.end}</end><rows>${x.rows.length}</rows><columns>${x.legend.length}</columns><legend>`,
  );
  for (const l of x.legend) out.push(`<entry>${l}</entry>`);
  out.push('</legend></meta><data>');
  for (const r of x.rows) {
    out.push(`<row><t>${r.t}</t>`);
    for (const v of r.values) out.push(`<v>${fToS(v)}</v>`);
    out.push('</row>');
  }
  out.push('</data></xport>');
  return out.join('');
}

/**
 * The JSON form. Its layout is xapi's ({meta: {start, step, end, rows, columns, legend}, data:
 * [{t, values}]}); the numbers are JSON numbers, as Xen Orchestra compares meta.step with ===
 * and charts the values as they come (written by the engine's JSON.stringify, its shortest
 * form of each value): only an unknown value is a string, "NaN", as xapi writes it, which XO's
 * isNaN turns into a gap.
 */
export function xportToJson(x: Xport): string {
  const out: string[] = [
    `{"meta":{"start":${x.start},"step":${x.step},"end":${x.end},"rows":${x.rows.length},"columns":${x.legend.length},"legend":`,
    JSON.stringify(x.legend),
    '},"data":[',
  ];
  x.rows.forEach((r, k) => {
    // JSON.stringify writes a non-finite number as null: those are xapi's strings instead
    const infinite = r.values.some((v) => v === Infinity || v === -Infinity);
    const values = infinite
      ? `[${r.values.map((v) => (Number.isFinite(v) ? String(v) : `"${fToS(v)}"`)).join(',')}]`
      : JSON.stringify(r.values).replace(/null/g, '"NaN"');
    out.push(`${k === 0 ? '' : ','}{"t":${r.t},"values":${values}}`);
  });
  out.push(']}');
  return out.join('');
}
