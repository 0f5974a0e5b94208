// The RRD as xapi-rrd consolidates it: PDPs per 5 s step, 1-minute AVERAGE/MIN/MAX rows,
// counters turned into rates, unknown PDPs renormalising an average, the xport and the texts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createRrd, type DsType, fToS, queryDs, type Rrd, updateNamed } from '../../src/rrdd/rrd.js';
import { rrdFromXml, rrdToXml } from '../../src/rrdd/rrd-text.js';
import { xport, xportToJson, xportToXml } from '../../src/rrdd/xport.js';

/** A minute boundary, so the 1-minute archive's rows start with the readings. */
const T0 = 1_700_000_040;

function rrdOf(type: DsType, max = Infinity): Rrd {
  return createRrd([{ name: 'x', type, min: 0, max }], T0);
}

/** Readings at T0 + 5k for k = 1..values.length (one per step, as xcp-rrdd reads). */
function feed(rrd: Rrd, values: number[]): void {
  for (const [i, v] of values.entries()) updateNamed(rrd, T0 + 5 * (i + 1), new Map([['x', v]]));
}

const column = (rrd: Rrd, interval: number, cf: 'AVERAGE' | 'MIN' | 'MAX') =>
  xport([['o:', rrd]], T0 + 1, interval, cf).rows.map((r) => [r.t - T0, r.values[0]]);

test('a gauge: one row per 5 s step; the 1-minute rows are the AVERAGE, MIN and MAX of 12 steps', () => {
  const rrd = rrdOf('GAUGE');
  feed(
    rrd,
    Array.from({ length: 24 }, (_, k) => k + 1),
  );
  const fine = column(rrd, 5, 'AVERAGE');
  assert.deepEqual(fine.slice(0, 3), [
    [120, 24],
    [115, 23],
    [110, 22],
  ]);
  assert.deepEqual(column(rrd, 60, 'AVERAGE'), [
    [120, 18.5],
    [60, 6.5],
  ]);
  // (xapi-rrd folds the PDP that closes a row into the next MIN/MAX row too)
  assert.deepEqual(column(rrd, 60, 'MIN'), [
    [120, 12],
    [60, 1],
  ]);
  assert.deepEqual(column(rrd, 60, 'MAX'), [
    [120, 24],
    [60, 12],
  ]);
  assert.equal(queryDs(rrd, T0 + 120, 'x'), 24);
});

test('a counter (DERIVE): its rate per second; the first reading has none', () => {
  const rrd = rrdOf('DERIVE', 1);
  feed(
    rrd,
    Array.from({ length: 6 }, (_, k) => 2.5 * (k + 1)),
  );
  const rows = column(rrd, 5, 'AVERAGE');
  assert.deepEqual(
    rows.slice(0, 5).map(([, v]) => v),
    [0.5, 0.5, 0.5, 0.5, 0.5],
  );
  // a rate above the maximum (a counter reset the other way, or a wrong reading) is unknown...
  updateNamed(rrd, T0 + 35, new Map([['x', 100]]));
  // ...which the 5 s archive keeps as xapi does: an unknown PDP leaves the row's start value
  assert.equal(column(rrd, 5, 'AVERAGE')[0]![1], 0);
});

test('unknown PDPs (out of bounds) after known ones renormalise the average over the known ones', () => {
  const rrd = rrdOf('GAUGE', 100);
  feed(rrd, [10, 10, 10, 10, 10, 10, 1000, 1000, 1000, 1000, 1000, 1000]);
  assert.deepEqual(column(rrd, 60, 'AVERAGE'), [[60, 10]]);
  // (xapi-rrd renormalises a MAX row the same way, so it overshoots)
  assert.deepEqual(column(rrd, 60, 'MAX'), [[60, 20]]);
});

test('the xport: legend "<CF>:<prefix><ds>", newest row first; XML and the JSON Xen Orchestra reads', () => {
  const a = rrdOf('GAUGE');
  const b = rrdOf('GAUGE');
  feed(a, [1, 2, 3]);
  feed(b, [Number.NaN, Number.NaN, Number.NaN]);
  const x = xport(
    [
      ['host:h:', a],
      ['vm:v:', b],
    ],
    T0 + 10,
    5,
    'AVERAGE',
  );
  assert.deepEqual(x.legend, ['AVERAGE:host:h:x', 'AVERAGE:vm:v:x']);
  assert.deepEqual(
    x.rows.map((r) => r.t - T0),
    [15, 10],
  );
  assert.equal(
    xportToXml(x),
    `<?xml version="1.0"?><xport><meta><start>${T0 + 15}</start><step>5</step><end>${T0 + 15}</end><rows>2</rows><columns>2</columns>` +
      `<legend><entry>AVERAGE:host:h:x</entry><entry>AVERAGE:vm:v:x</entry></legend></meta><data>` +
      `<row><t>${T0 + 15}</t><v>3</v><v>0.0</v></row><row><t>${T0 + 10}</t><v>2</v><v>0.0</v></row></data></xport>`,
  );
  const json = JSON.parse(xportToJson(x)) as { meta: Record<string, unknown>; data: { t: number; values: unknown[] }[] };
  assert.deepEqual(json.meta, {
    start: T0 + 15,
    step: 5,
    end: T0 + 15,
    rows: 2,
    columns: 2,
    legend: ['AVERAGE:host:h:x', 'AVERAGE:vm:v:x'],
  });
  assert.deepEqual(json.data[0], { t: T0 + 15, values: [3, 0] });
});

test('the RRD XML reads back to the same RRD; a malformed one is refused', () => {
  const rrd = rrdOf('DERIVE', 1);
  feed(
    rrd,
    Array.from({ length: 30 }, (_, k) => 0.7 * k),
  );
  const text = rrdToXml(rrd, true);
  const back = rrdFromXml(text);
  // all but each DS's last reading, which xapi does not read back either
  const noLast = (t: string) => t.replace(/<last_ds>[^<]*<\/last_ds>/g, '');
  assert.equal(noLast(rrdToXml(back, true)), noLast(text));
  assert.match(
    text,
    /^<\?xml version="1\.0"\?><rrd><version>0003<\/version><step>5<\/step><lastupdate>\d+<\/lastupdate><ds><name>x<\/name><type>DERIVE<\/type>/,
  );
  assert.throws(() => rrdFromXml('<rrd><ds><name>x</name><type>WHAT</type></ds></rrd>'));
  assert.throws(() => rrdFromXml('not xml'));
});

test("floats as xapi's RRD writers print them", () => {
  assert.equal(fToS(0), '0.0');
  assert.equal(fToS(Number.NaN), 'NaN');
  assert.equal(fToS(Infinity), 'Infinity');
  assert.equal(fToS(0.1), '0.1');
  assert.equal(fToS(Math.fround(0.1)), '0.100000001490116');
  assert.equal(fToS(1e-7), '1e-07');
});
