import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evalWhere, parseWhere, WhereParseError, LEX_ERROR, PARSE_ERROR, type WhereExpr } from '../../src/db/where.js';

// A compact printer so expectations read like the OCaml constructors.
function show(e: WhereExpr): string {
  const v = (x: { kind: string; name?: string; value?: string }) =>
    x.kind === 'field' ? `F${JSON.stringify(x.name)}` : `L${JSON.stringify(x.value)}`;
  switch (e.op) {
    case 'true':
      return 'T';
    case 'false':
      return 'F';
    case 'not':
      return `Not(${show(e.e)})`;
    case 'eq':
      return `Eq(${v(e.a)},${v(e.b)})`;
    case 'and':
      return `And(${show(e.a)},${show(e.b)})`;
    case 'or':
      return `Or(${show(e.a)},${show(e.b)})`;
  }
}

// Expected trees were produced by xapi's own lexer and menhir grammar compiled from
// ocaml/database/db_filter_{lex.mll,parse.mly}.
const parses: [string, string][] = [
  ['"a"="b"', 'Eq(L"a",L"b")'],
  ['field "name__label" = "x"', 'Eq(F"name__label",L"x")'],
  ['field"x"="y"', 'Eq(F"x",L"y")'],
  ['field "a" = field "b"', 'Eq(F"a",F"b")'],
  ['"a\n b"="c"', 'Eq(L"a\\n b",L"c")'],
  ['\ttrue\n', 'T'],
  ['trueandfalse', 'And(T,F)'],
  ['notfalse', 'Not(F)'],
  ['not not true', 'Not(Not(T))'],
  ['("a"="b")and(field"c"="d")', 'And(Eq(L"a",L"b"),Eq(F"c",L"d"))'],
  [
    'field "is_a_template"="false" and field "is_control_domain"="false"',
    'And(Eq(F"is_a_template",L"false"),Eq(F"is_control_domain",L"false"))',
  ],
];

test('parses values, keywords without word boundaries, strings without escapes', () => {
  for (const [text, tree] of parses) assert.equal(show(parseWhere(text)), tree, text);
});

test('and/or share one level, left-associative; not has the lowest precedence', () => {
  assert.equal(show(parseWhere('true and false or true')), 'Or(And(T,F),T)');
  assert.equal(show(parseWhere('true or false and true')), 'And(Or(T,F),T)');
  assert.equal(show(parseWhere('not true and false')), 'Not(And(T,F))');
  assert.equal(show(parseWhere('true and not false or true')), 'And(T,Not(Or(F,T)))');
  assert.equal(show(parseWhere('(not true) and false')), 'And(Not(T),F)');
  assert.equal(show(parseWhere('not "a"="b" or not "c"="d" and true')), 'Not(Or(Eq(L"a",L"b"),Not(And(Eq(L"c",L"d"),T))))');
});

test('errors carry the exception text xapi prints', () => {
  const cases: [string, string][] = [
    ['', PARSE_ERROR],
    ['true true @', PARSE_ERROR], // the parser fails before the lexer reaches '@'
    ['true @', LEX_ERROR],
    ['"a" = "b" = "c"', PARSE_ERROR],
    ['true\r', LEX_ERROR],
    ['"unterminated', LEX_ERROR],
    ['TRUE', LEX_ERROR],
    ['(true', PARSE_ERROR],
    ['true)', PARSE_ERROR],
    ['not', PARSE_ERROR],
    ['field "a"', PARSE_ERROR],
    ['"a" = true', PARSE_ERROR],
    ['true and @', LEX_ERROR],
    ['true or', PARSE_ERROR],
    ['fieldx', LEX_ERROR],
    ['()', PARSE_ERROR],
  ];
  for (const [text, msg] of cases) {
    assert.throws(
      () => parseWhere(text),
      (e: unknown) => e instanceof WhereParseError && e.message === msg,
      JSON.stringify(text),
    );
  }
  assert.equal(LEX_ERROR, 'Failure("lexing: empty token")');
  assert.equal(PARSE_ERROR, 'Xapi_database__Db_filter_parse.MenhirBasics.Error');
});

test('evaluates string equality on DB representations', () => {
  const row: Record<string, string> = { power_state: 'Running', is_a_template: 'false', name__label: 'vm 1' };
  const col = (n: string) => {
    const v = row[n];
    if (v === undefined) throw new Error(`missing field ${n}`);
    return v;
  };
  const ev = (t: string) => evalWhere(parseWhere(t), col);
  assert.equal(ev('field "power_state" = "Running"'), true);
  assert.equal(ev('field "power_state" = "running"'), false);
  assert.equal(ev('"Running" = field "power_state"'), true);
  assert.equal(ev('field "is_a_template"="false" and field "name__label"="vm 1"'), true);
  assert.equal(ev('not field "is_a_template"="true"'), true);
  assert.equal(ev('false or "x"="x"'), true);
  assert.equal(ev('true'), true);
  assert.equal(ev('false'), false);
  // and/or short-circuit: the unknown column is never looked up
  assert.equal(ev('false and field "nope"="x"'), false);
  assert.equal(ev('true or field "nope"="x"'), true);
  assert.throws(() => ev('true and field "nope"="x"'), /missing field nope/);
});
