// The direct typed writers (Marshal.xml/json, the hot path for results) give exactly the bytes
// the wire-tree path gives (toRpc, then the codecs' value writers), for every class's records.
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
    assert.equal(m.xml(t, all), xmlRpcValue(m.toRpc(t, all)), `${cls.name} XML`);
    assert.equal(m.json(t, all), jsonRpcValue(m.toRpc(t, all)), `${cls.name} JSON`);
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
