// The direct typed writers (Marshal.xml/json, the hot path for results) give exactly the bytes
// the wire-tree path gives (toRpc, then the codecs' value writers), for every class's records,
// whether a row is written afresh or from the text kept for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { memoryHost } from '../../src/host/memory-host.js';
import { xmlRpcValue } from '../../src/api/xmlrpc.js';
import { jsonRpcValue } from '../../src/api/jsonrpc.js';
import { parseType } from '../../src/schema/types.js';

test('typed writers match the wire-tree path for every record of every class', async () => {
  const { host, db } = await memoryHost();
  for (const cls of host.schema.dbClasses()) await db.create(cls.name, `OpaqueRef:${randomUUID()}`, { uuid: randomUUID() });
  // awkward values: escaping, control characters, floats, negative ints, unicode, __proto__ keys
  const [[dom0]] = await db.find('VM', { is_control_domain: true });
  await db.update('VM', dom0!, {
    name_label: 'a<b>&"c"\u0001\t\n ñ 😀',
    other_config: JSON.parse('{"__proto__":"x","k&<":"v\\u0002"}'),
    VCPUs_max: -3,
    HVM_shadow_multiplier: 1.5,
  });
  const m = host.marshal;
  for (const cls of host.schema.dbClasses()) {
    const t = parseType(`(${cls.name} ref -> ${cls.name} record) map`);
    const all = Object.fromEntries(await db.all(cls.name));
    // twice: the second time the rows' text is the one kept from the first
    for (let i = 0; i < 2; i++) {
      assert.equal(m.xml(t, all), xmlRpcValue(m.toRpc(t, all)), `${cls.name} XML`);
      assert.equal(m.json(t, all), jsonRpcValue(m.toRpc(t, all)), `${cls.name} JSON`);
    }
    // in pieces, as replies are written: the same text
    const set = parseType(`${cls.name} record set`);
    const refs = parseType(`${cls.name} ref set`);
    for (const [type, value] of [[t, all], [set, Object.values(all)], [refs, Object.keys(all)]] as const) {
      const xml: string[] = [];
      const json: string[] = [];
      m.xmlParts(type, value, xml);
      m.jsonParts(type, value, json);
      assert.equal(xml.join(''), m.xml(type, value), `${cls.name} XML pieces`);
      assert.equal(json.join(''), m.json(type, value), `${cls.name} JSON pieces`);
    }
  }
  for (const [type, value] of [
    ['float', 0.1],
    ['float', 1e21],
    ['float', 1],
    ['int', 2 ** 40],
    ['datetime', '20260101T00:00:00Z'],
    ['string set', ['a', '<']],
    ['(string -> int) map', { a: 1 }],
    ['void', undefined],
  ] as const) {
    const t = parseType(type);
    assert.equal(m.xml(t, value), xmlRpcValue(m.toRpc(t, value)), type);
    assert.equal(m.json(t, value), jsonRpcValue(m.toRpc(t, value)), type);
  }
});

test('typed writers match the wire-tree path for values of unexpected shapes and optional fields', async () => {
  const { host } = await memoryHost();
  const m = host.marshal;
  const same = (type: string, value: unknown, what: string) => {
    const t = parseType(type);
    assert.equal(m.xml(t, value), xmlRpcValue(m.toRpc(t, value)), `${what} XML`);
    assert.equal(m.json(t, value), jsonRpcValue(m.toRpc(t, value)), `${what} JSON`);
  };
  // A network whose sets and maps hold what their types do not promise, and strings that need
  // escaping inside them (the JSON writer stringifies all-string arrays and maps natively).
  const odd = {
    uuid: 'u', name_label: null, name_description: undefined, MTU: 1.5, managed: 'yes',
    allowed_operations: ['attaching', 5], current_operations: { a: 'attaching', b: undefined },
    VIFs: ['OpaqueRef:a\x7f', 'b"\\\u{1F600}\ud800'], PIFs: undefined, other_config: { 'k\x7f': 'v\x01\u2028', n: 3 },
    bridge: 7, blobs: {}, tags: [], default_locking_mode: 'unlocked', assigned_ips: { x: '1.2.3.4' }, purpose: [],
  };
  same('network record', odd, 'odd network');
  const frozen = Object.freeze({ ...odd });
  same('network record', frozen, 'odd frozen network');
  same('network record', frozen, 'odd frozen network, written again from its kept text');
  // Optional fields: absent ones are left out, the first field of sr_stat among them.
  const stat = { name_label: 'n', name_description: 'd', free_space: 1, total_space: 2, clustered: false, health: 'healthy' };
  same('sr_stat record', stat, 'sr_stat without uuid');
  same('sr_stat record', { ...stat, uuid: 'x' }, 'sr_stat with uuid');
  same('probe_result record', { configuration: { a: 'b' }, complete: true, extra_info: {} }, 'probe_result without sr');
  same('probe_result record', { configuration: {}, complete: true, sr: stat, extra_info: { c: 'd' } }, 'probe_result with sr');
  same('(int -> float) map', { 0: 0.5, 1: 1 }, 'VCPUs_utilisation');
});

test('a row is written again after a write replaces it; objects that are not frozen rows are never reused', async () => {
  const { host, db } = await memoryHost();
  const m = host.marshal;
  const t = parseType('network record');
  const ref = `OpaqueRef:${randomUUID()}`;
  await db.create('network', ref, { uuid: randomUUID(), name_label: 'before' });
  for (const write of [m.json.bind(m), m.xml.bind(m)]) {
    assert.match(write(t, await db.get('network', ref)), /before/);
    assert.match(write(t, await db.get('network', ref)), /before/);
  }
  await db.update('network', ref, { name_label: 'after' });
  for (const write of [m.json.bind(m), m.xml.bind(m)]) assert.match(write(t, await db.get('network', ref)), /after/);
  // A record an implementation builds and later changes is written as it is each time.
  const built: Record<string, unknown> = { ...(await db.get('network', ref)) };
  for (const write of [m.json.bind(m), m.xml.bind(m)]) {
    built['name_label'] = 'first';
    assert.match(write(t, built), /first/);
    built['name_label'] = 'second';
    assert.match(write(t, built), /second/);
  }
  assert.throws(() => {
    (db.getSync('network', ref) as Record<string, unknown>)['name_label'] = 'in place';
  }, TypeError);
});
