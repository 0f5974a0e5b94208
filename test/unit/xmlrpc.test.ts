import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  InvalidUtf8Param,
  MAX_XML_DEPTH,
  XmlRpcFault,
  parseOcamlFloat,
  parseOcamlInt64,
  parseXmlRpcCall,
  parseXmlRpcResponse,
  xmlRpcBare,
  xmlRpcFailure,
  xmlRpcRequest,
  xmlRpcSuccess,
  xmlRpcValue,
  writeXmlRpcValue,
} from '../../src/rpc/xmlrpc.js';
import { MalformedRequest, RpcDateTime, formatG, newStruct, rpcDebugString, type Rpc } from '../../src/rpc/rpc.js';

const call = (params: string, method = 'VM.get_all') =>
  parseXmlRpcCall(
    Buffer.from(`<?xml version="1.0"?><methodCall><methodName>${method}</methodName><params>${params}</params></methodCall>`),
  );
const one = (value: string): Rpc => call(`<param>${value}</param>`).params[0]!;
const bad = (body: string | Buffer, re?: RegExp) =>
  assert.throws(
    () => parseXmlRpcCall(typeof body === 'string' ? Buffer.from(body) : body),
    (e: unknown) => {
      assert.ok(e instanceof MalformedRequest, `expected MalformedRequest, got ${String(e)}`);
      if (re) assert.match((e as Error).message, re);
      return true;
    },
  );
const badValue = (value: string, re?: RegExp) =>
  bad(`<methodCall><methodName>m</methodName><params><param>${value}</param></params></methodCall>`, re);

function struct(entries: [string, Rpc][]) {
  const s = newStruct();
  for (const [k, v] of entries) s[k] = v;
  return s;
}

test('parses method name and typed params', () => {
  const c = call('<param><value>OpaqueRef:x</value></param><param><value><int>-42</int></value></param>', 'session.login_with_password');
  assert.equal(c.method, 'session.login_with_password');
  assert.deepEqual(c.params, ['OpaqueRef:x', -42n]);
});

test('value types', () => {
  assert.equal(one('<value>plain</value>'), 'plain');
  assert.equal(one('<value><string>s</string></value>'), 's');
  assert.equal(one('<value><int>7</int></value>'), 7n);
  assert.equal(one('<value><i4>7</i4></value>'), 7n);
  assert.equal(one('<value><i8>9223372036854775807</i8></value>'), 9223372036854775807n);
  assert.equal(one('<value><i8>-9223372036854775808</i8></value>'), -9223372036854775808n);
  assert.equal(one('<value><double>1.5</double></value>'), 1.5);
  assert.equal(typeof one('<value><double>2</double></value>'), 'number');
  assert.equal(one('<value><boolean>1</boolean></value>'), true);
  assert.equal(one('<value><boolean>0</boolean></value>'), false);
  assert.equal(one('<value><boolean>true</boolean></value>'), false); // only "1" is true
  const d = one('<value><dateTime.iso8601>20250319T04:16:24Z</dateTime.iso8601></value>');
  assert.ok(d instanceof RpcDateTime);
  assert.equal(d.text, '20250319T04:16:24Z');
  assert.equal(one('<value><base64>aGVsbG8=</base64></value>'), 'aGVsbG8=');
  assert.equal(one('<value><nil/></value>'), null);
  assert.deepEqual(one('<value><array><data><value>a</value><value><int>1</int></value></data></array></value>'), ['a', 1n]);
  assert.deepEqual(
    one(
      '<value><struct><member><name>a</name><value>x</value></member><member><name>b</name><value><boolean>1</boolean></value></member></struct></value>',
    ),
    struct([
      ['a', 'x'],
      ['b', true],
    ]),
  );
});

test('empty forms', () => {
  assert.equal(one('<value/>'), '');
  assert.equal(one('<value></value>'), '');
  assert.equal(one('<value><string/></value>'), '');
  assert.equal(one('<value><string></string></value>'), '');
  assert.deepEqual(one('<value><array/></value>'), []);
  assert.deepEqual(one('<value><array><data/></array></value>'), []);
  assert.deepEqual(one('<value><array><data></data></array></value>'), []);
  assert.deepEqual(one('<value><struct/></value>'), newStruct());
  assert.deepEqual(one('<value><struct></struct></value>'), newStruct());
  assert.deepEqual(parseXmlRpcCall(Buffer.from('<methodCall><methodName>m</methodName><params/></methodCall>')).params, []);
  assert.deepEqual(parseXmlRpcCall(Buffer.from('<methodCall><methodName>m</methodName><params></params></methodCall>')).params, []);
});

test('whitespace between elements is ignored, inside strings kept', () => {
  const body = `<?xml version="1.0"?>
<methodCall>
  <methodName>VM.set_name_label</methodName>
  <params>
    <param>
      <value> <string>  two  spaces </string> </value>
    </param>
    <param><value>
      <array>
        <data>
          <value>  a  </value>
        </data>
      </array>
    </value></param>
    <param><value>  </value></param>
    <param><value>
      <struct>
        <member>
          <name>k</name>
          <value><int>1</int></value>
        </member>
      </struct>
    </value></param>
  </params>
</methodCall>
`;
  const c = parseXmlRpcCall(Buffer.from(body));
  assert.deepEqual(c.params, ['  two  spaces ', ['  a  '], '  ', struct([['k', 1n]])]);
});

test('entities, char refs, CDATA and comments in text', () => {
  assert.equal(one('<value>a&amp;b&lt;c&gt;d&quot;e&apos;f&#65;&#x42;</value>'), 'a&b<c>d"e\'fAB');
  assert.equal(one('<value><![CDATA[<raw>&]]></value>'), '<raw>&');
  assert.equal(one('<value>a<!-- c -->b</value>'), 'ab');
  assert.equal(one('<value>caf\u00e9 \u{1F600}</value>'), 'caf\u00e9 \u{1F600}');
  assert.equal(one('<value>line1\r\nline2</value>'), 'line1\nline2'); // XML end-of-line normalisation
  assert.equal(one('<value>tab\there&#13;</value>'), 'tab\there\r');
});

test('__proto__ and constructor members are ordinary data; first duplicate wins', () => {
  const v = one(
    '<value><struct><member><name>__proto__</name><value>p</value></member><member><name>constructor</name><value><int>1</int></value></member><member><name>__proto__</name><value>second</value></member></struct></value>',
  ) as Record<string, Rpc>;
  assert.equal(Object.getPrototypeOf(v), null);
  assert.deepEqual(Object.keys(v), ['__proto__', 'constructor']);
  // biome-ignore lint/suspicious/noProto: the decoded struct's own member named __proto__ (a null-prototype object), which is what this test checks
  assert.equal(v['__proto__'], 'p');
  assert.equal(v['constructor'], 1n);
  assert.equal(({} as Record<string, unknown>)['p'], undefined);
});

test('OCaml integer syntax and range', () => {
  assert.equal(parseOcamlInt64('0x1F'), 31n);
  assert.equal(parseOcamlInt64('0o17'), 15n);
  assert.equal(parseOcamlInt64('0b101'), 5n);
  assert.equal(parseOcamlInt64('1_000'), 1000n);
  assert.equal(parseOcamlInt64('+5'), 5n);
  assert.equal(parseOcamlInt64('0xFFFFFFFFFFFFFFFF'), -1n);
  assert.equal(parseOcamlInt64('-0'), 0n);
  for (const t of ['', ' 1', '1 ', '1.0', 'abc', '9223372036854775808', '-9223372036854775809', '0x10000000000000000', '_1', '0x']) {
    assert.throws(() => parseOcamlInt64(t), MalformedRequest, t);
  }
});

test('OCaml float syntax', () => {
  assert.equal(parseOcamlFloat('1'), 1);
  assert.equal(parseOcamlFloat('-1.5e3'), -1500);
  assert.equal(parseOcamlFloat('1.'), 1);
  assert.equal(parseOcamlFloat('.5'), 0.5);
  assert.equal(parseOcamlFloat('1_000.5'), 1000.5);
  assert.equal(parseOcamlFloat('  2'), 2);
  assert.equal(parseOcamlFloat('inf'), Infinity);
  assert.equal(parseOcamlFloat('-Infinity'), -Infinity);
  assert.ok(Number.isNaN(parseOcamlFloat('nan')));
  assert.equal(parseOcamlFloat('0x1p4'), 16);
  assert.equal(parseOcamlFloat('0x1.8'), 1.5);
  for (const t of ['', 'abc', '1.5 ', '1e', 'e5', '--1']) assert.throws(() => parseOcamlFloat(t), MalformedRequest, t);
});

test('malformed requests', () => {
  bad('not xml at all', /XML|root/);
  bad('', /root/);
  bad('<methodResponse><params/></methodResponse>', /root element/);
  bad('<methodCall><params/></methodCall>', /methodName/);
  bad('<methodCall></methodCall>', /methodName/);
  bad('<methodCall><methodName>m</methodName></methodCall>', /params/); // rpclib requires <params>
  bad('<methodCall><methodName>m</methodName><params/><params/></methodCall>');
  bad('<methodCall><methodName>m</methodName><params/></methodCall>junk', /XML|root/);
  bad('<methodCall><methodName>m</methodName><params/></methodCall><methodCall/>');
  bad('<methodCall><methodName>m</methodName><params/>');
  bad('<methodCall><methodName>m<b/></methodName><params/></methodCall>');
  bad('<methodCall>text<methodName>m</methodName><params/></methodCall>', /text/);
  bad('<methodCall><methodName>m</methodName><params>x<param><value/></param></params></methodCall>', /text/);
  bad('<methodCall><methodName>m</methodName><params><value/></params></methodCall>', /param/);
  bad('<methodCall><methodName>m</methodName><params><param></param></params></methodCall>', /without <value>/);
  bad('<methodCall><methodName>m</methodName><params><param><value/><value/></param></params></methodCall>', /more than one/);
  bad('<!DOCTYPE x [<!ENTITY e "boom">]><methodCall><methodName>&e;</methodName><params/></methodCall>', /DOCTYPE/);
  bad('<methodCall><methodName>&nbsp;</methodName><params/></methodCall>', /entity/);
  bad('<methodCall><methodName>\u0001</methodName><params/></methodCall>');
  badValue('<value><foo/></value>', /unknown element/);
  badValue('<value><int>1.5</int></value>', /integer/);
  badValue('<value><int> 1</int></value>', /integer/);
  badValue('<value><int/></value>', /empty/);
  badValue('<value><int></int></value>', /empty/);
  badValue('<value><boolean/></value>', /empty/);
  badValue('<value><double>x</double></value>', /double/);
  badValue('<value><double/></value>', /empty/);
  badValue('<value><dateTime.iso8601/></value>', /empty/);
  badValue('<value>text<int>1</int></value>', /mixed/);
  badValue('<value><int>1</int>text</value>', /text/);
  badValue('<value><int>1</int><int>2</int></value>', /more than one/);
  badValue('<value><int><i4>1</i4></int></value>');
  badValue('<value><nil>x</nil></value>', /text/);
  badValue('<value><array><value/></array></value>');
  badValue('<value><array><data/><data/></array></value>');
  badValue('<value><array><data>x</data></array></value>', /text/);
  badValue('<value><array><data><int>1</int></data></array></value>', /value/);
  badValue('<value><struct><value/></struct></value>', /member/);
  badValue('<value><struct><member><value/></member></struct></value>', /name/);
  badValue('<value><struct><member><name>a</name></member></struct></value>', /without <value>/);
  badValue('<value><struct><member><name>a</name><value/><value/></member></struct></value>');
  badValue('<value><struct><member><name>a<b/></name><value/></member></struct></value>');
  badValue('<value><struct>x</struct></value>', /text/);
  badValue('<value><string><b/></string></value>');
});

test('deep nesting: 10,000 levels is refused without crashing', () => {
  const depth = 10_000;
  const body =
    '<methodCall><methodName>m</methodName><params><param>' +
    '<value><array><data>'.repeat(depth) +
    '</data></array></value>'.repeat(depth) +
    '</param></params></methodCall>';
  bad(body, /deeper/);
  const structs =
    '<methodCall><methodName>m</methodName><params><param>' +
    '<value><struct><member><name>a</name>'.repeat(depth) +
    '<value/>' +
    '</member></struct></value>'.repeat(depth) +
    '</param></params></methodCall>';
  bad(structs, /deeper/);
  // Unclosed deep nesting too.
  bad('<methodCall><methodName>m</methodName><params><param>' + '<value><array><data>'.repeat(depth), /deeper/);
  // A reasonably deep value is fine.
  const ok = 100;
  const v = one('<value><array><data>'.repeat(ok) + '<value>x</value>' + '</data></array></value>'.repeat(ok));
  let x: Rpc = v;
  for (let i = 0; i < ok; i++) x = (x as Rpc[])[0]!;
  assert.equal(x, 'x');
  assert.ok(MAX_XML_DEPTH >= 1000);
});

test('invalid UTF-8 in a parameter → InvalidUtf8Param with xapi-style value', () => {
  const body = Buffer.concat([
    Buffer.from('<methodCall><methodName>VM.set_name_label</methodName><params><param><value>OpaqueRef:s</value></param><param><value>caf'),
    Buffer.from([0xe9]),
    Buffer.from('</value></param></params></methodCall>'),
  ]);
  assert.throws(
    () => parseXmlRpcCall(body),
    (e: unknown) => {
      assert.ok(e instanceof InvalidUtf8Param);
      assert.equal(e.value, 'S(caf\uFFFD)');
      assert.equal(e.text, 'caf\uFFFD');
      assert.equal(e.call.method, 'VM.set_name_label');
      return true;
    },
  );
  // Inside a struct member name: the whole parameter is quoted, Rpc.to_string style.
  const body2 = Buffer.concat([
    Buffer.from('<methodCall><methodName>m</methodName><params><param><value><struct><member><name>k'),
    Buffer.from([0xff, 0xfe]),
    Buffer.from('</name><value><int>1</int></value></member></struct></value></param></params></methodCall>'),
  ]);
  assert.throws(
    () => parseXmlRpcCall(body2),
    (e: unknown) => e instanceof InvalidUtf8Param && e.value === '{k\uFFFD\uFFFD:I(1)}' && e.text === 'k\uFFFD\uFFFD',
  );
  // Invalid UTF-8 that also breaks the XML is just malformed.
  bad(Buffer.concat([Buffer.from('<methodCall><methodName>m</methodName><params><param><value>'), Buffer.from([0xc3])]));
  // Valid UTF-8, incl. a literal U+FFFD, is fine.
  assert.equal(one('<value>\uFFFD</value>'), '\uFFFD');
});

test('ISO-8859-1 declared bodies are decoded as such', () => {
  const body = Buffer.concat([
    Buffer.from("<?xml version='1.0' encoding='ISO-8859-1'?><methodCall><methodName>m</methodName><params><param><value>caf"),
    Buffer.from([0xe9]),
    Buffer.from('</value></param></params></methodCall>'),
  ]);
  assert.equal(parseXmlRpcCall(body).params[0], 'caf\u00e9');
  bad('<?xml version="1.0" encoding="UTF-16"?><methodCall/>', /encoding/);
});

test('output encoding of every type (xapi byte layout)', () => {
  assert.equal(xmlRpcValue('abc'), '<value>abc</value>');
  assert.equal(xmlRpcValue(''), '<value></value>');
  assert.equal(xmlRpcValue(123n), '<value>123</value>');
  assert.equal(xmlRpcValue(-9223372036854775808n), '<value>-9223372036854775808</value>');
  assert.equal(xmlRpcValue(1), '<value><double>1</double></value>');
  assert.equal(xmlRpcValue(0.5), '<value><double>0.5</double></value>');
  assert.equal(xmlRpcValue(true), '<value><boolean>1</boolean></value>');
  assert.equal(xmlRpcValue(false), '<value><boolean>0</boolean></value>');
  assert.equal(xmlRpcValue(null), '<value><nil/></value>');
  assert.equal(
    xmlRpcValue(new RpcDateTime('20250319T04:16:24Z')),
    '<value><dateTime.iso8601>20250319T04:16:24Z</dateTime.iso8601></value>',
  );
  assert.equal(xmlRpcValue([]), '<value><array><data></data></array></value>');
  assert.equal(xmlRpcValue(['a', 1n]), '<value><array><data><value>a</value><value>1</value></data></array></value>');
  assert.equal(xmlRpcValue(newStruct()), '<value><struct></struct></value>');
  assert.equal(
    xmlRpcValue(
      struct([
        ['name_label', 'x'],
        ['VCPUs_max', 4n],
      ]),
    ),
    '<value><struct><member><name>name_label</name><value>x</value></member><member><name>VCPUs_max</name><value>4</value></member></struct></value>',
  );
  const out: string[] = ['<pre>'];
  writeXmlRpcValue('x', out);
  assert.deepEqual(out, ['<pre>', '<value>x</value>']);
});

test('escaping and dropped control characters', () => {
  assert.equal(xmlRpcValue('a&b<c>d"e\'f'), "<value>a&amp;b&lt;c&gt;d&quot;e'f</value>");
  assert.equal(xmlRpcValue('t\tn\nr\r'), '<value>t\tn\nr\r</value>');
  assert.equal(xmlRpcValue('\u0000a\u0001b\u0008\u000b\u000c\u000e\u001fc\u007f'), '<value>abc\u007f</value>');
  assert.equal(xmlRpcValue('caf\u00e9 \u{1F600}'), '<value>caf\u00e9 \u{1F600}</value>');
  assert.equal(xmlRpcValue(struct([['a<b', 'x']])), '<value><struct><member><name>a&lt;b</name><value>x</value></member></struct></value>');
});

test('%.16g formatting of doubles', () => {
  const cases: [number, string][] = [
    [1, '1'],
    [0.5, '0.5'],
    [0, '0'],
    [-0, '-0'],
    [-1.25, '-1.25'],
    [0.1, '0.1'],
    [1 / 3, '0.3333333333333333'],
    [2 / 3, '0.6666666666666666'],
    [1e20, '1e+20'],
    [1e16, '1e+16'],
    [1e15, '1000000000000000'],
    // biome-ignore lint/correctness/noPrecisionLoss: a double that needs 17 significant digits, on purpose (%.16g rounds it)
    [123456789012345678, '1.234567890123457e+17'],
    [1e-4, '0.0001'],
    [1e-5, '1e-05'],
    [1.5e-7, '1.5e-07'],
    [1e100, '1e+100'],
    [1.32621e9, '1326210000'],
    [1234567890123456.5, '1234567890123456'], // exact tie: round half to even, like glibc
    [1234567890123457.5, '1234567890123458'],
    [5e-324, '4.940656458412465e-324'],
    [1.7976931348623157e308, '1.797693134862316e+308'],
    [NaN, 'nan'],
    [Infinity, 'inf'],
    [-Infinity, '-inf'],
  ];
  for (const [v, s] of cases) {
    assert.equal(formatG(v, 16), s, String(v));
    assert.equal(xmlRpcValue(v), `<value><double>${s}</double></value>`);
  }
  // %g (precision 6), used by Rpc.to_string
  assert.equal(formatG(1234565, 6), '1.23456e+06');
  assert.equal(formatG(1234575, 6), '1.23458e+06');
  assert.equal(formatG(0.5, 6), '0.5');
  assert.equal(formatG(100000, 6), '100000');
  assert.equal(formatG(1000000, 6), '1e+06');
});

test('rpcDebugString mirrors Rpc.to_string', () => {
  assert.equal(
    rpcDebugString([
      'a',
      1n,
      1.5,
      true,
      null,
      new RpcDateTime('d'),
      struct([
        ['k', 'v'],
        ['j', []],
      ]),
    ]),
    '[S(a);I(1);F(1.5);B(true);N;D(d);{k:S(v);j:[]}]',
  );
});

test('response envelopes, byte for byte', () => {
  assert.equal(
    xmlRpcSuccess('OpaqueRef:1'),
    '<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value>OpaqueRef:1</value></member></struct></value></param></params></methodResponse>',
  );
  assert.equal(
    xmlRpcSuccess(''),
    '<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value></value></member></struct></value></param></params></methodResponse>',
  );
  assert.equal(
    xmlRpcFailure(['SESSION_AUTHENTICATION_FAILED', 'root', 'a<b']),
    '<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data><value>SESSION_AUTHENTICATION_FAILED</value><value>root</value><value>a&lt;b</value></data></array></value></member></struct></value></param></params></methodResponse>',
  );
  assert.equal(
    xmlRpcFailure([]),
    '<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data></data></array></value></member></struct></value></param></params></methodResponse>',
  );
  assert.equal(
    xmlRpcBare(['VM.start', 'VM.stop']),
    '<?xml version="1.0"?><methodResponse><params><param><value><array><data><value>VM.start</value><value>VM.stop</value></data></array></value></param></params></methodResponse>',
  );
});

test('responses parse back', () => {
  const v = parseXmlRpcResponse(xmlRpcSuccess(struct([['a', 1n]]))) as Record<string, Rpc>;
  assert.equal(v['Status'], 'Success');
  assert.deepEqual(v['Value'], struct([['a', '1']])); // xapi writes ints as untyped (string) values
  const f = parseXmlRpcResponse(Buffer.from(xmlRpcFailure(['E', 'p']))) as Record<string, Rpc>;
  assert.deepEqual(f['ErrorDescription'], ['E', 'p']);
  assert.deepEqual(parseXmlRpcResponse(xmlRpcBare(['x'])), ['x']);
  assert.throws(
    () =>
      parseXmlRpcResponse(
        '<?xml version="1.0"?><methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member><member><name>faultString</name><value>Too many parameters.</value></member></struct></value></fault></methodResponse>',
      ),
    (e: unknown) => e instanceof XmlRpcFault && e.faultCode === 4n && e.faultString === 'Too many parameters.',
  );
  assert.throws(() => parseXmlRpcResponse('<methodCall/>'), MalformedRequest);
});

test('round trips through request encoding and output encoding', () => {
  const params: Rpc[] = [
    'OpaqueRef:abc',
    '',
    ' spaced & <escaped> "quoted" ',
    0n,
    -5n,
    9223372036854775807n,
    1.5,
    0.1,
    1e300,
    true,
    false,
    null,
    new RpcDateTime('20250101T00:00:00Z'),
    [],
    newStruct(),
    ['x', [1n, ['y']], struct([['k', 'v']])],
    struct([
      ['__proto__', 'p'],
      ['nested', struct([['a', [true, null]]])],
      ['emoji \u{1F600}', 'caf\u00e9'],
    ]),
  ];
  const c = parseXmlRpcCall(Buffer.from(xmlRpcRequest('VM.foo', params)));
  assert.equal(c.method, 'VM.foo');
  assert.deepEqual(c.params, params);
  // Server output reads back too (ints come back as untyped strings, as on xapi's wire).
  for (const p of params) {
    const back = parseXmlRpcResponse(xmlRpcBare(p));
    if (typeof p === 'bigint') assert.equal(back, p.toString());
    else if (typeof p === 'object' && p !== null && !(p instanceof RpcDateTime)) assert.equal(xmlRpcValue(back), xmlRpcValue(p));
    else assert.deepEqual(back, p);
  }
  // Doubles survive %.16g + parse for "nice" values.
  for (const d of [0.1, 1.5, 1e-7, 123.456, 1e21]) assert.equal(parseXmlRpcResponse(xmlRpcBare(d)), d);
});

test('request encoding uses <int> for ints and untyped strings', () => {
  assert.equal(
    xmlRpcRequest('a.b', ['s', 1n, 2.5]),
    '<?xml version="1.0"?><methodCall><methodName>a.b</methodName><params><param><value>s</value></param><param><value><int>1</int></value></param><param><value><double>2.5</double></value></param></params></methodCall>',
  );
});

// How fast is for `npm run bench -- parse`, beside saxes alone over the same body.
test('a large body parses whole', () => {
  const items: Rpc[] = [];
  for (let i = 0; i < 2000; i++)
    items.push(
      struct([
        ['uuid', `u-${i}`],
        ['n', BigInt(i)],
        ['tags', ['a', 'b']],
      ]),
    );
  const body = Buffer.from(xmlRpcRequest('m', [items]));
  const c = parseXmlRpcCall(body);
  assert.equal((c.params[0] as Rpc[]).length, 2000);
  assert.deepEqual(c.params[0], items);
});
