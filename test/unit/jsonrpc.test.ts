import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_JSON_DEPTH,
  jsonFloat,
  jsonRpcFailure,
  jsonRpcRequest,
  jsonRpcSuccess,
  jsonRpcValue,
  parseJson,
  parseJsonRpcCall,
  parseJsonRpcResponse,
} from '../../src/rpc/jsonrpc.js';
import { InvalidUtf8Param } from '../../src/rpc/xmlrpc.js';
import { MalformedRequest, RpcDateTime, newStruct, type Rpc } from '../../src/rpc/rpc.js';

const parse = (s: string | Buffer) => parseJsonRpcCall(typeof s === 'string' ? Buffer.from(s) : s);
const bad = (s: string | Buffer, re?: RegExp) =>
  assert.throws(
    () => parse(s),
    (e: unknown) => {
      assert.ok(e instanceof MalformedRequest, `expected MalformedRequest, got ${String(e)}`);
      if (re) assert.match((e as Error).message, re);
      return true;
    },
  );
const value = (json: string): Rpc => parseJson(json).value;

function struct(entries: [string, Rpc][]) {
  const s = newStruct();
  for (const [k, v] of entries) s[k] = v;
  return s;
}

test('v1 and v2 requests', () => {
  const v1 = parse('{"method":"session.login_with_password","params":["root","pw","1.0","x"],"id":1}');
  assert.equal(v1.version, '1.0');
  assert.equal(v1.id, 1);
  assert.deepEqual(v1.call, { method: 'session.login_with_password', params: ['root', 'pw', '1.0', 'x'] });

  const v2 = parse('{"jsonrpc":"2.0","method":"VM.get_all","params":["OpaqueRef:s"],"id":"abc"}');
  assert.equal(v2.version, '2.0');
  assert.equal(v2.id, 'abc');
  assert.deepEqual(v2.call.params, ['OpaqueRef:s']);

  assert.deepEqual(parse('{"jsonrpc":"2.0","method":"m","id":1}').call.params, []);
  assert.deepEqual(parse('{"jsonrpc":"2.0","method":"m","params":null,"id":1}').call.params, []);
  assert.deepEqual(parse('{"jsonrpc":"2.0","method":"m","params":{"a":1},"id":1}').call.params, [struct([['a', 1n]])]);
  // Whitespace and member order do not matter.
  assert.equal(parse(' {\n "id" : 7 , "params" : [ ] , "method" : "m" }\n').call.method, 'm');
});

test('ids: strings and integers only, echoed with their type', () => {
  assert.equal(parse('{"method":"m","params":[],"id":0}').id, 0);
  assert.equal(parse('{"method":"m","params":[],"id":-3}').id, -3);
  assert.equal(parse('{"method":"m","params":[],"id":"0"}').id, '0');
  assert.equal(parse('{"method":"m","params":[],"id":9223372036854775807}').id, 9223372036854775807n);
  bad('{"method":"m","params":[]}', /id/);
  bad('{"method":"m","params":[],"id":null}', /id/);
  bad('{"method":"m","params":[],"id":1.0}', /id/);
  bad('{"method":"m","params":[],"id":true}', /id/);
  bad('{"method":"m","params":[],"id":[1]}', /id/);
  bad('{"method":"m","params":[],"id":{}}', /id/);
});

test('malformed requests', () => {
  bad('', /end/);
  bad('not json');
  bad('[]', /Invalid request body/);
  bad('"str"', /Invalid request body/);
  bad('{"params":[],"id":1}', /method/);
  bad('{"method":1,"params":[],"id":1}', /method/);
  bad('{"method":null,"params":[],"id":1}', /method/);
  bad('{"method":"m","id":1}', /params/); // v1 needs params
  bad('{"method":"m","params":null,"id":1}', /params/);
  bad('{"method":"m","params":{},"id":1}', /params/);
  bad('{"jsonrpc":"2.0","method":"m","params":"x","id":1}', /params/);
  bad('{"jsonrpc":"2.0","method":"m","params":5,"id":1}', /params/);
  bad('{"jsonrpc":"1.0","method":"m","params":[],"id":1}', /jsonrpc/);
  bad('{"jsonrpc":2,"method":"m","params":[],"id":1}', /jsonrpc/);
  bad('{"jsonrpc":null,"method":"m","params":[],"id":1}', /jsonrpc/);
  bad('{"method":"m","params":[],"id":1} x', /junk/);
  bad('{"method":"m","params":[],"id":1}{}', /junk/);
  bad('{"method":"m","params":[1,],"id":1}');
  bad('{"method":"m","params":[],"id":1,}');
  bad('{"method":"m" "params":[],"id":1}');
  bad('{"method":"m","params":[01],"id":1}');
  bad('{"method":"m","params":[.5],"id":1}');
  bad('{"method":"m","params":[+1],"id":1}');
  bad('{"method":"m","params":["\\x"],"id":1}', /escape/);
  bad('{"method":"m","params":["\\u12"],"id":1}', /escape/);
  bad('{"method":"m","params":["\\ud800"],"id":1}', /surrogate/);
  bad('{"method":"m","params":["abc],"id":1}');
  bad('{"method":"m","params":[tru],"id":1}');
  bad('{"method":"m","params":[9223372036854775808],"id":1}', /range/);
  bad('{"method":"m","params":[-9223372036854775809],"id":1}', /range/);
  bad('{"method":"m","params":[],"id":1 /* unterminated', /comment/);
  bad('{"method":"m","params":[{"a"}],"id":1}', /:/);
  bad('{"method":"m","params":[{1:2}],"id":1}', /member name/);
});

test('values: ints are bigint only when spelled as integers', () => {
  assert.equal(value('5'), 5n);
  assert.equal(value('-0'), 0n);
  assert.equal(value('9223372036854775807'), 9223372036854775807n);
  assert.equal(value('-9223372036854775808'), -9223372036854775808n);
  assert.equal(value('5.0'), 5);
  assert.equal(value('5.'), 5); // Yojson accepts an empty fraction
  assert.equal(value('5e0'), 5);
  assert.equal(value('-1.5E+2'), -150);
  assert.equal(value('"s"'), 's');
  assert.equal(value('true'), true);
  assert.equal(value('false'), false);
  assert.equal(value('null'), null);
  assert.equal(value('Infinity'), Infinity);
  assert.equal(value('-Infinity'), -Infinity);
  assert.ok(Number.isNaN(value('NaN')));
  assert.deepEqual(value('[]'), []);
  assert.deepEqual(value('{}'), newStruct());
  assert.deepEqual(value('[1,[2,[3]],{"a":{"b":[]}}]'), [1n, [2n, [3n]], struct([['a', struct([['b', []]])]])]);
  assert.equal(value('"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0041\\u00e9\\ud83d\\ude00"'), 'a"b\\c/d\b\f\n\r\tA\u00e9\u{1F600}');
  assert.equal(value('"raw\ttab"'), 'raw\ttab'); // Yojson takes raw control characters
  assert.deepEqual(value('/* c */ [1, // line\n 2]'), [1n, 2n]);
});

test('__proto__ members are data; duplicate keys keep the first', () => {
  const v = value('{"__proto__":{"polluted":1},"constructor":"c","a":1,"a":2}') as Record<string, Rpc>;
  assert.equal(Object.getPrototypeOf(v), null);
  assert.deepEqual(Object.keys(v), ['__proto__', 'constructor', 'a']);
  // biome-ignore lint/suspicious/noProto: the decoded struct's own member named __proto__ (a null-prototype object), which is what this test checks
  assert.deepEqual(v['__proto__'], struct([['polluted', 1n]]));
  assert.equal(v['a'], 1n);
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
  // First "method" wins, as List.assoc in rpclib.
  assert.equal(parse('{"method":"first","method":"second","params":[],"id":1}').call.method, 'first');
});

test('deep nesting: 10,000 levels is refused without crashing', () => {
  const d = 10_000;
  bad('{"method":"m","params":' + '['.repeat(d) + ']'.repeat(d) + ',"id":1}', /deeper/);
  bad('{"method":"m","params":[' + '{"a":'.repeat(d) + '1' + '}'.repeat(d) + '],"id":1}', /deeper/);
  bad('['.repeat(d), /deeper/);
  assert.ok(MAX_JSON_DEPTH >= 1000);
  const ok = 500;
  let v = value('['.repeat(ok) + '"x"' + ']'.repeat(ok));
  for (let i = 0; i < ok; i++) v = (v as Rpc[])[0]!;
  assert.equal(v, 'x');
});

test('invalid UTF-8 → InvalidUtf8Param carrying version and id', () => {
  const body = Buffer.concat([
    Buffer.from('{"jsonrpc":"2.0","method":"VM.set_name_label","params":["OpaqueRef:s","caf'),
    Buffer.from([0xe9]),
    Buffer.from('"],"id":42}'),
  ]);
  assert.throws(
    () => parse(body),
    (e: unknown) => {
      assert.ok(e instanceof InvalidUtf8Param);
      assert.equal(e.value, 'S(caf\uFFFD)');
      assert.equal(e.text, 'caf\uFFFD');
      assert.equal(e.version, '2.0');
      assert.equal(e.id, 42);
      return true;
    },
  );
  // A lone low surrogate escape is invalid UTF-8 for xapi as well.
  assert.throws(
    () => parse('{"method":"m","params":[{"k":["x\\udc00"]}],"id":"i"}'),
    (e: unknown) => e instanceof InvalidUtf8Param && e.value === '{k:[S(x\uFFFD)]}' && e.id === 'i' && e.version === '1.0',
  );
  // Bad bytes that also break the JSON are malformed.
  bad(Buffer.concat([Buffer.from('{"method":"m","params":['), Buffer.from([0xff]), Buffer.from('],"id":1}')]));
  // A real U+FFFD in valid UTF-8 is fine.
  assert.deepEqual(parse('{"method":"m","params":["\uFFFD"],"id":1}').call.params, ['\uFFFD']);
});

test('output values', () => {
  assert.equal(jsonRpcValue('a"b\\c\n\u0001\u007f\u00e9/'), '"a\\"b\\\\c\\n\\u0001\\u007f\u00e9/"');
  assert.equal(jsonRpcValue(9223372036854775807n), '9223372036854775807');
  assert.equal(jsonRpcValue(-1n), '-1');
  assert.equal(jsonRpcValue(true), 'true');
  assert.equal(jsonRpcValue(null), 'null');
  assert.equal(jsonRpcValue(new RpcDateTime('20250319T04:16:24Z')), '"20250319T04:16:24Z"');
  assert.equal(jsonRpcValue([]), '[]');
  assert.equal(jsonRpcValue(newStruct()), '{}');
  assert.equal(
    jsonRpcValue([
      'a',
      1n,
      [true],
      struct([
        ['k', null],
        ['__proto__', 'x'],
      ]),
    ]),
    '["a",1,[true],{"k":null,"__proto__":"x"}]',
  );
  assert.equal(jsonRpcValue(struct([['a"b', 1n]])), '{"a\\"b":1}');
});

test('floats as Yojson writes them', () => {
  const cases: [number, string][] = [
    [1, '1.0'],
    [-2, '-2.0'],
    [0, '0.0'],
    [-0, '-0.0'],
    [0.5, '0.5'],
    [0.1, '0.1'],
    [1 / 3, '0.3333333333333333'],
    [1e20, '1e+20'],
    [1e15, '1000000000000000.0'],
    [1e16, '1e+16'],
    // biome-ignore lint/correctness/noPrecisionLoss: a double that needs 17 significant digits, on purpose
    [123456789012345678, '1.2345678901234568e+17'], // %.16g does not read back → %.17g
    [5e-324, '4.940656458412465e-324'],
    [NaN, 'NaN'],
    [Infinity, 'Infinity'],
    [-Infinity, '-Infinity'],
  ];
  for (const [v, s] of cases) assert.equal(jsonFloat(v), s, String(v));
  // biome-ignore lint/correctness/noPrecisionLoss: a double that needs 17 significant digits, on purpose
  for (const v of [0.1, 1 / 3, 123456789012345678, 2 ** -1074, 1.7976931348623157e308, 1e-300, Math.PI]) {
    assert.equal(value(jsonFloat(v)), v);
  }
});

test('response envelopes, byte for byte', () => {
  assert.equal(jsonRpcSuccess('1.0', 1, 'OpaqueRef:x'), '{"result":"OpaqueRef:x","error":null,"id":1}');
  assert.equal(jsonRpcSuccess('2.0', 'abc', ''), '{"jsonrpc":"2.0","result":"","id":"abc"}');
  assert.equal(jsonRpcSuccess('2.0', 9223372036854775807n, 5n), '{"jsonrpc":"2.0","result":5,"id":9223372036854775807}');
  assert.equal(
    jsonRpcFailure('1.0', 1, ['SESSION_INVALID', 'OpaqueRef:x']),
    '{"result":null,"error":["SESSION_INVALID","OpaqueRef:x"],"id":1}',
  );
  assert.equal(
    jsonRpcFailure('2.0', 'i', ['SESSION_INVALID', 'OpaqueRef:x']),
    '{"jsonrpc":"2.0","error":{"code":1,"message":"SESSION_INVALID","data":["OpaqueRef:x"]},"id":"i"}',
  );
  assert.equal(
    jsonRpcFailure('2.0', 7, ['MESSAGE_REMOVED']),
    '{"jsonrpc":"2.0","error":{"code":1,"message":"MESSAGE_REMOVED","data":[]},"id":7}',
  );
  assert.equal(jsonRpcFailure('2.0', null, []), '{"jsonrpc":"2.0","error":{"code":1,"message":"","data":[]},"id":null}');
  assert.equal(jsonRpcFailure('1.0', 'x"y', ['E']), '{"result":null,"error":["E"],"id":"x\\"y"}');
});

test('request helper and response parser round trip', () => {
  const params: Rpc[] = ['s', 1n, 1.5, 2.0, true, null, [1n, ['x']], struct([['__proto__', struct([['a', -9223372036854775808n]])]])];
  for (const version of ['1.0', '2.0'] as const) {
    const { call, version: v, id } = parse(jsonRpcRequest('VM.foo', params, version, 99));
    assert.equal(v, version);
    assert.equal(id, 99);
    assert.equal(call.method, 'VM.foo');
    assert.deepEqual(call.params, params);
  }
  assert.equal(jsonRpcRequest('m', ['a'], '2.0', 'q'), '{"jsonrpc":"2.0","method":"m","params":["a"],"id":"q"}');
  assert.equal(jsonRpcRequest('m', [], '1.0', 3), '{"method":"m","params":[],"id":3}');

  const ok1 = parseJsonRpcResponse(jsonRpcSuccess('1.0', 1, [1n, 'a']));
  assert.deepEqual(ok1, { ok: true, version: '1.0', id: 1, value: [1n, 'a'] });
  const err1 = parseJsonRpcResponse(Buffer.from(jsonRpcFailure('1.0', 'x', ['E', 'p'])));
  assert.deepEqual(err1, { ok: false, version: '1.0', id: 'x', error: ['E', 'p'] });
  const ok2 = parseJsonRpcResponse(jsonRpcSuccess('2.0', 2, null));
  assert.deepEqual(ok2, { ok: true, version: '2.0', id: 2, value: null });
  const err2 = parseJsonRpcResponse(jsonRpcFailure('2.0', 3, ['E', 'p']));
  assert.equal(err2.ok, false);
  assert.deepEqual(
    !err2.ok && err2.error,
    struct([
      ['code', 1n],
      ['message', 'E'],
      ['data', ['p']],
    ]),
  );
  assert.throws(() => parseJsonRpcResponse('{"jsonrpc":"2.0","id":1}'), MalformedRequest);
  assert.throws(() => parseJsonRpcResponse('[]'), MalformedRequest);
});

// How fast is for `npm run bench -- parse`, beside JSON.parse of the same body.
test('a large body parses whole', () => {
  const items: Rpc[] = [];
  for (let i = 0; i < 5000; i++)
    items.push(
      struct([
        ['uuid', `u-${i}`],
        ['n', BigInt(i)],
        ['f', i / 7],
        ['tags', ['a', 'b\n']],
      ]),
    );
  const body = Buffer.from(jsonRpcRequest('m', [items]));
  const { call } = parse(body);
  assert.equal((call.params[0] as Rpc[]).length, 5000);
  assert.deepEqual(call.params[0], items);
});
