// The two float layouts of the data-source commands: OCaml's string_of_float and C's "%f".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cFixed, ocamlFloat } from '../../src/xe-server/commands/data-source.js';

test('string_of_float: "%.12g" with a dot on integers, inf and nan spelt as OCaml does', () => {
  const cases: [number, string][] = [
    [0, '0.'],
    [100, '100.'],
    [-2.5, '-2.5'],
    [0.5, '0.5'],
    [1 / 3, '0.333333333333'],
    [123456789012, '123456789012.'],
    [1234567890123, '1.23456789012e+12'],
    [1e20, '1e+20'],
    [0.0001, '0.0001'],
    [0.00001, '1e-05'],
    [Infinity, 'inf'],
    [-Infinity, '-inf'],
    [Number.NaN, 'nan'],
  ];
  for (const [x, s] of cases) assert.equal(ocamlFloat(x), s, String(x));
});

test('"%f": six decimals', () => {
  assert.equal(cFixed(1048576), '1048576.000000');
  assert.equal(cFixed(0.1234567), '0.123457');
  assert.equal(cFixed(Infinity), 'inf');
});
