#!/usr/bin/env node
// Compares two facts files key by key (values compared as JSON; lists of records as sets keyed
// by their identity), so a regenerated file can be checked against the committed one.
//
//   node tools/reference-facts/compare.mjs old.json new.json
import { readFileSync } from 'node:fs';

const [oldPath, newPath] = process.argv.slice(2);
if (!oldPath || !newPath) {
  console.error('usage: compare.mjs old.json new.json');
  process.exit(2);
}
const before = JSON.parse(readFileSync(oldPath, 'utf8'));
const after = JSON.parse(readFileSync(newPath, 'utf8'));

// Order-insensitive JSON: object keys sorted; arrays kept in order (compared as sets below).
const canon = (v) =>
  Array.isArray(v)
    ? `[${v.map(canon).join(',')}]`
    : v && typeof v === 'object'
      ? `{${Object.keys(v)
          .sort()
          .map((k) => `${JSON.stringify(k)}:${canon(v[k])}`)
          .join(',')}}`
      : JSON.stringify(v);
// The identity of a list element, for reporting which element changed.
const identity = (x) =>
  x && typeof x === 'object' && !Array.isArray(x)
    ? (x.class ? `${x.class}.` : '') +
      (x.name ?? x.exception ?? (x.one ? `${x.one.class}.${x.one.field}` : x.a ? `${x.a.class}.${x.a.field}` : canon(x)))
    : canon(x);

let differences = 0;
const report = (line) => {
  differences++;
  console.log(line);
};

function compare(path, a, b) {
  if (canon(a) === canon(b)) {
    if (Array.isArray(a) && a.length > 1 && JSON.stringify(a) !== JSON.stringify(b)) console.log(`${path}: same elements, different order`);
    return;
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    const before = differences;
    const ids = (xs) => new Map(xs.map((x) => [identity(x), x]));
    const ma = ids(a);
    const mb = ids(b);
    for (const [id, x] of ma) {
      if (!mb.has(id)) report(`${path}: removed ${id}`);
      else if (canon(x) !== canon(mb.get(id))) compare(`${path}[${id}]`, x, mb.get(id));
    }
    for (const id of mb.keys()) if (!ma.has(id)) report(`${path}: added ${id}`);
    if (differences === before) console.log(`${path}: same elements, different order`);
    return;
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (!(k in b)) report(`${path}.${k}: removed`);
      else if (!(k in a)) report(`${path}.${k}: added`);
      else compare(`${path}.${k}`, a[k], b[k]);
    }
    return;
  }
  report(`${path}: ${JSON.stringify(a)} -> ${JSON.stringify(b)}`);
}

compare('', before, after);
console.log(differences === 0 ? 'no differences' : `${differences} difference(s)`);
process.exitCode = differences === 0 ? 0 : 1;
