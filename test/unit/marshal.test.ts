// The direct typed writers (Marshal.xml/json, the hot path for results) give exactly the bytes
// the wire-tree path gives (toRpc, then the codecs' value writers), for every class's records,
// whether a row is written afresh or from the text kept for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { memoryHost } from '../../src/host/memory-host.js';
import { xmlRpcValue } from '../../src/rpc/xmlrpc.js';
import { jsonRpcValue } from '../../src/rpc/jsonrpc.js';
import { parseType, type Type } from '../../src/schema/types.js';
import { schema as loadSchema } from '../../src/schema/schema.js';
import { Marshal } from '../../src/api/marshal.js';
import { frozenRow, ROW_TEXT, type RowTextSlot } from '../../src/db/row-text.js';

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
    for (const [type, value] of [
      [t, all],
      [set, Object.values(all)],
      [refs, Object.keys(all)],
    ] as const) {
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
    uuid: 'u',
    name_label: null,
    name_description: undefined,
    MTU: 1.5,
    managed: 'yes',
    allowed_operations: ['attaching', 5],
    current_operations: { a: 'attaching', b: undefined },
    VIFs: ['OpaqueRef:a\x7f', 'b"\\\u{1F600}\ud800'],
    PIFs: undefined,
    other_config: { 'k\x7f': 'v\x01\u2028', n: 3 },
    bridge: 7,
    blobs: {},
    tags: [],
    default_locking_mode: 'unlocked',
    assigned_ips: { x: '1.2.3.4' },
    purpose: [],
  };
  same('network record', odd, 'odd network');
  const frozen = frozenRow({ ...odd });
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
  const before = await db.get('network', ref);
  await db.update('network', ref, { name_label: 'after' });
  for (const write of [m.json.bind(m), m.xml.bind(m)]) assert.match(write(t, await db.get('network', ref)), /after/);
  // The replaced row's text is not kept: its slot was emptied (the marshaller's list of filled
  // slots would otherwise hold it until its budget is spent).
  const slot = (before as { [ROW_TEXT]?: RowTextSlot })[ROW_TEXT]!;
  assert.deepEqual([slot.json, slot.xml], [undefined, undefined]);
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
  // A row's kept text is its own class's: written as another class, it is that class's record.
  const row = await db.get('network', ref);
  const other = parseType('VIF record');
  for (const write of [m.json.bind(m), m.xml.bind(m)]) {
    write(t, row);
    assert.equal(write(other, row), write(other, { ...row }));
  }
});

// The JSON record writers are generated code; this pins their bytes against text built here from
// JSON.stringify, field by field in schema order, independently of the project's own writers:
// strings as JSON.stringify writes them (a lone surrogate as a \u escape) with DEL escaped as
// Yojson does, int64s as decimal digits, floats as Yojson's %.16g/%.17g (listed by hand).
test('JSON record writers give JSON.stringify text for awkward values, fresh, kept and in pieces', () => {
  const schema = loadSchema();
  const m = new Marshal(schema);
  const FLOATS = new Map<number, string>([
    [0.5, '0.5'],
    [1, '1.0'],
    [-3, '-3.0'],
    [1 / 3, '0.3333333333333333'],
    [0.1 + 0.2, '0.30000000000000004'],
    [-2.5e-7, '-2.5e-07'],
    [1e21, '1e+21'],
  ]);
  const str = (s: string) => JSON.stringify(s).replace(/\x7f/g, '\\u007f');
  const expectValue = (t: Type, v: unknown): string => {
    switch (t.k) {
      case 'string':
      case 'ref':
      case 'enum':
        return str(v === undefined ? '' : (v as string));
      case 'datetime':
        return str(v === undefined ? '19700101T00:00:00Z' : (v as string));
      case 'int':
        return v === undefined ? '0' : BigInt(v as string | number | bigint).toString();
      case 'float': {
        const text = FLOATS.get(v as number);
        assert.ok(text !== undefined, `no expected text for float ${String(v)}`);
        return text;
      }
      case 'bool':
        return v === true ? 'true' : 'false';
      case 'set':
        return '[' + ((v as unknown[] | undefined) ?? []).map((x) => expectValue(t.of, x)).join(',') + ']';
      case 'map':
        return (
          '{' +
          Object.entries((v as object | undefined) ?? {})
            .map(([k, x]) => str(k) + ':' + expectValue(t.val, x))
            .join(',') +
          '}'
        );
      case 'record':
        return expectRecord(t.cls, v as Record<string, unknown>);
      default:
        throw new Error(`no expectation for ${t.k}`);
    }
  };
  const expectRecord = (cls: string, row: Record<string, unknown>): string => {
    const members: string[] = [];
    for (const f of schema.cls(cls).fields) {
      if (f.internal) continue;
      if (f.type.k === 'option' && row[f.name] === undefined) continue;
      members.push(JSON.stringify(f.name) + ':' + expectValue(f.type.k === 'option' ? f.type.of : f.type, row[f.name]));
    }
    return '{' + members.join(',') + '}';
  };

  const awkward = [
    'plain',
    '',
    'quote " backslash \\ slash /',
    'controls \x00\x01\x08\t\n\x0b\x0c\r\x1b\x1f',
    'DEL \x7f',
    'lone high \ud800 end',
    'lone low \udc00',
    'pair \ud83d\ude00, ñ é 中文 \u2028\u2029',
    '</script> & <tag>',
  ];
  const pairs = Object.fromEntries(awkward.map((s, i) => [s, awkward[(i + 1) % awkward.length]!]));
  const records: [string, Record<string, unknown>][] = [
    [
      'VM_metrics',
      {
        uuid: awkward[2],
        memory_actual: '9007199254740993', // int64 beyond 2^53, kept exact as a string
        VCPUs_number: 2n ** 62n,
        VCPUs_utilisation: { 0: 0.5, 1: 1, 2: 1 / 3, 3: -2.5e-7, 4: 1e21, 5: 0.1 + 0.2 },
        VCPUs_CPU: { 0: '-9223372036854775808', 1: 7, 2: -3 },
        VCPUs_params: pairs,
        VCPUs_flags: { 0: awkward, 1: [] },
        state: awkward,
        start_time: '20260101T00:00:00Z',
        install_time: undefined, // the epoch
        last_updated: 'not "quite" a date \x7f',
        other_config: JSON.parse('{"__proto__":"kept as a key","k\\u007f":"\\ud800"}'),
        hvm: true,
        nested_virt: false,
        nomigrate: undefined,
        current_domain_type: 'hvm',
      },
    ],
    [
      'task',
      {
        uuid: awkward[7],
        name_label: awkward[3],
        name_description: awkward[4],
        allowed_operations: ['cancel'],
        current_operations: { [awkward[5]!]: 'cancel' },
        created: '20260101T00:00:00Z',
        finished: '20260101T00:00:01Z',
        status: 'success',
        resident_on: 'OpaqueRef:NULL',
        progress: -3,
        type: awkward[8],
        result: '<value>x</value>',
        error_info: [],
        other_config: {},
        subtask_of: 'OpaqueRef:NULL',
        subtasks: [awkward[6], awkward[1]],
        backtrace: '()',
        // internal: never on the wire
        session: 'OpaqueRef:secret',
        externalpid: 1,
        stunnelpid: 2,
        forwarded: true,
        forwarded_to: 'OpaqueRef:x',
      },
    ],
    [
      'sr_stat',
      {
        name_label: awkward[5],
        name_description: awkward[6],
        free_space: 0,
        total_space: '18446744073709551615',
        clustered: false,
        health: 'healthy',
      },
    ],
    [
      'sr_stat',
      { uuid: awkward[3], name_label: '', name_description: '', free_space: 1, total_space: 2, clustered: true, health: 'recovering' },
    ],
    ['probe_result', { configuration: pairs, complete: true, extra_info: {} }],
    [
      'probe_result',
      {
        configuration: {},
        complete: false,
        sr: {
          uuid: awkward[4],
          name_label: 'n',
          name_description: 'd',
          free_space: 1,
          total_space: 2,
          clustered: false,
          health: 'healthy',
        },
        extra_info: pairs,
      },
    ],
  ];
  for (const [cls, row] of records) {
    const want = expectRecord(cls, row);
    JSON.parse(want); // the expectation itself is JSON
    const t = parseType(`${cls} record`);
    assert.equal(m.json(t, row), want, `${cls} written afresh`);
    // A database row (frozen, with a slot for its text): written once, then its kept text.
    const frozen = frozenRow({ ...row });
    assert.equal(m.json(t, frozen), want, `${cls} frozen`);
    assert.equal(m.json(t, frozen), want, `${cls} from its kept text`);
    // As get_all_records hands rows over ([ref, row] pairs), written whole and in pieces.
    const all = parseType(`(${cls} ref -> ${cls} record) map`);
    const rows: [string, object][] = [
      ['OpaqueRef:a"\x7f', frozen],
      ['OpaqueRef:b', frozenRow({ ...row })],
    ];
    const wantAll = '{' + str('OpaqueRef:a"\x7f') + ':' + want + ',"OpaqueRef:b":' + want + '}';
    assert.equal(m.json(all, rows), wantAll, `${cls} map`);
    const pieces: string[] = [];
    m.jsonParts(all, rows, pieces);
    assert.equal(pieces.join(''), wantAll, `${cls} map in pieces`);
    // The other paths take pairs as they take an object.
    const asObject = Object.fromEntries(rows);
    assert.equal(m.json(all, asObject), wantAll, `${cls} object`);
    assert.equal(m.xml(all, rows), m.xml(all, asObject), `${cls} map XML`);
    const xmlPieces: string[] = [];
    m.xmlParts(all, rows, xmlPieces);
    assert.equal(xmlPieces.join(''), m.xml(all, asObject), `${cls} map XML in pieces`);
    assert.deepEqual(m.toRpc(all, rows), m.toRpc(all, asObject), `${cls} map as a wire tree`);
  }
});
