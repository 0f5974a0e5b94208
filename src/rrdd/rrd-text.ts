// An RRD as text: the XML rrdtool's dump uses (what /host_rrd and /vm_rrd serve, what a host
// sends another when a VM moves, and what is archived on disk, gzipped), its JSON form, and
// the reader of the XML. The layout is xapi-rrd's writer's, element for element.
import { SaxesParser } from 'saxes';
import { type Cf, type Ds, type DsType, fToS, Ring, type Rra, type Rrd } from './rrd.js';

/** `internal`: with each DS's last_updated, as xapi keeps it between its own hosts. */
export function rrdToXml(rrd: Rrd, internal = false): string {
  const out: string[] = ['<?xml version="1.0"?><rrd><version>0003</version>'];
  out.push(`<step>${rrd.step}</step><lastupdate>${Math.trunc(rrd.lastUpdated)}</lastupdate>`);
  for (const ds of rrd.dss) {
    out.push(
      `<ds><name>${escapeXml(ds.name)}</name><type>${ds.type}</type><minimal_heartbeat>${fToS(ds.mrhb)}</minimal_heartbeat>`,
      `<min>${fToS(ds.min)}</min><max>${fToS(ds.max)}</max><last_ds>${Number.isNaN(ds.last) ? '0.0' : fToS(ds.last)}</last_ds>`,
      `<value>${fToS(ds.value)}</value><unknown_sec>${Math.trunc(ds.unknownSec)}</unknown_sec>`,
      internal ? `<last_updated>${fToS(ds.lastUpdated)}</last_updated></ds>` : '</ds>',
    );
  }
  for (const rra of rrd.rras) {
    out.push(`<rra><cf>${rra.cf}</cf><pdp_per_row>${rra.pdpPerRow}</pdp_per_row><params><xff>${fToS(rra.xff)}</xff></params><cdp_prep>`);
    for (const c of rra.cdps) {
      out.push(
        `<ds><primary_value>0.0</primary_value><secondary_value>0.0</secondary_value><value>${fToS(c.value)}</value><unknown_datapoints>${c.unknownPdps}</unknown_datapoints></ds>`,
      );
    }
    out.push('</cdp_prep><database>');
    const rows = rra.data[0]?.size ?? 0;
    for (let row = 0; row < rows; row++) {
      out.push('<row>');
      // oldest first
      for (const ring of rra.data) out.push(`<v>${fToS(ring.peek(rows - row - 1))}</v>`);
      out.push('</row>');
    }
    out.push('</database></rra>');
  }
  out.push('</rrd>');
  return out.join('');
}

/** The JSON form (Rrd.Json): every number a string, as xapi writes it. */
export function rrdToJson(rrd: Rrd): string {
  const s = (x: number) => fToS(x);
  return JSON.stringify({
    version: '0003',
    step: String(rrd.step),
    lastupdate: s(rrd.lastUpdated),
    ds: rrd.dss.map((d) => ({
      name: d.name,
      type: d.type,
      minimal_heartbeat: s(d.mrhb),
      min: s(d.min),
      max: s(d.max),
      last_ds: Number.isNaN(d.last) ? '0.0' : s(d.last),
      value: s(d.value),
      unknown_sec: s(d.unknownSec),
      last_updated: s(d.lastUpdated),
    })),
    rra: rrd.rras.map((r) => ({
      cf: r.cf,
      pdp_per_row: String(r.pdpPerRow),
      params: { xff: s(r.xff) },
      cdp_prep: {
        ds: r.cdps.map((c) => ({
          primary_value: '0.0',
          secondary_value: '0.0',
          value: s(c.value),
          unknown_datapoints: String(c.unknownPdps),
        })),
      },
      database: Array.from({ length: r.data[0]?.size ?? 0 }, (_, row) => r.data.map((ring) => s(ring.peek(ring.size - row - 1)))),
    })),
  });
}

function escapeXml(s: string): string {
  return s.replace(/[<>&]/g, (c) => (c === '<' ? '&lt;' : c === '>' ? '&gt;' : '&amp;'));
}

const num = (s: string | undefined): number => {
  if (s === undefined) throw new Error('RRD XML: a value is missing');
  const t = s.trim();
  if (t === 'NaN' || t === 'nan') return Number.NaN;
  if (t === 'Infinity' || t === 'inf') return Infinity;
  if (t === '-Infinity' || t === '-inf') return -Infinity;
  const v = Number(t);
  if (t === '' || Number.isNaN(v)) throw new Error(`RRD XML: not a number: ${t.slice(0, 40)}`);
  return v;
};

/** Reads the XML form back (Rrd.from_xml); throws on a malformed document. */
export function rrdFromXml(text: string): Rrd {
  const parser = new SaxesParser();
  const path: string[] = [];
  let textBuf = '';
  let step = 5;
  let lastUpdated = 0;
  const dss: Ds[] = [];
  const rras: Rra[] = [];
  let ds: Record<string, string> = {};
  let rra: { cf?: string; pdp?: string; xff?: string; cdps: { value: number; unknownPdps: number }[]; rows: string[][] } | undefined;
  let cdp: Record<string, string> = {};
  let row: string[] = [];
  parser.on('opentag', (t) => {
    path.push(t.name);
    textBuf = '';
    if (t.name === 'ds') {
      if (path[path.length - 2] === 'rrd') ds = {};
      else cdp = {};
    } else if (t.name === 'rra') rra = { cdps: [], rows: [] };
    else if (t.name === 'row') row = [];
  });
  parser.on('text', (x) => {
    textBuf += x;
  });
  parser.on('closetag', (t) => {
    const parent = path[path.length - 2];
    const value = textBuf;
    textBuf = '';
    path.pop();
    if (parent === 'rrd' && t.name === 'step') step = num(value);
    else if (parent === 'rrd' && t.name === 'lastupdate') lastUpdated = num(value);
    else if (parent === 'ds' && path[path.length - 2] === 'rrd') ds[t.name] = value;
    else if (parent === 'ds') cdp[t.name] = value;
    else if (t.name === 'ds' && parent === 'rrd') {
      const type = ds.type as DsType;
      if (!['GAUGE', 'ABSOLUTE', 'DERIVE'].includes(type)) throw new Error('RRD XML: bad DS type');
      dss.push({
        name: ds.name ?? '',
        type,
        mrhb: num(ds.minimal_heartbeat),
        // negative history from old RRDs is dropped, as xapi does
        min: Math.max(num(ds.min), 0),
        max: num(ds.max),
        last: Number.NaN,
        value: num(ds.value),
        unknownSec: num(ds.unknown_sec),
        lastUpdated: ds.last_updated !== undefined ? num(ds.last_updated) : lastUpdated,
      });
    } else if (t.name === 'ds' && parent === 'cdp_prep')
      rra!.cdps.push({ value: num(cdp.value), unknownPdps: num(cdp.unknown_datapoints) });
    else if (parent === 'rra' && t.name === 'cf') rra!.cf = value;
    else if (parent === 'rra' && t.name === 'pdp_per_row') rra!.pdp = value;
    else if (parent === 'params' && t.name === 'xff') rra!.xff = value;
    else if (parent === 'row' && t.name === 'v') row.push(value);
    else if (t.name === 'row') rra!.rows.push(row);
    else if (t.name === 'rra') {
      const r = rra!;
      if (!['AVERAGE', 'MIN', 'MAX', 'LAST'].includes(r.cf ?? '')) throw new Error('RRD XML: bad CF');
      const n = r.rows.length;
      const data = dss.map((d, i) => {
        const ring = new Ring(n, d.min, d.max);
        for (const rw of r.rows) ring.push(num(rw[i]));
        return ring;
      });
      rras.push({ cf: r.cf as Cf, rows: n, pdpPerRow: num(r.pdp), xff: num(r.xff), data, cdps: r.cdps });
      rra = undefined;
    }
  });
  parser.write(text).close();
  if (dss.length === 0 && rras.length === 0 && !text.includes('<rrd')) throw new Error('RRD XML: no <rrd>');
  for (const r of rras)
    if (r.data.length !== dss.length || r.cdps.length !== dss.length) throw new Error('RRD XML: archive and DS counts differ');
  // a data source named twice keeps its last copy (xapi removes the earlier ones)
  const lastIndex = new Map(dss.map((d, i) => [d.name, i]));
  const keep = dss.map((d, i) => lastIndex.get(d.name) === i);
  return {
    step,
    lastUpdated,
    dss: dss.filter((_, i) => keep[i]),
    rras: rras.map((r) => ({ ...r, data: r.data.filter((_, i) => keep[i]), cdps: r.cdps.filter((_, i) => keep[i]) })),
  };
}
