#!/usr/bin/env node
// Reads the facts the xe command line needs off the reference source and writes them to
// schema/xe-cli.json: the command table (names, required and optional parameters, help text,
// flags), the text xe prints for each datamodel error, and per class the fields of xe's records
// (name, order, which API field they show, which edits they allow). The output of `xe` is part of
// the interface, so its texts are kept as xe prints them; the code that uses them is our own.
//
//   node tools/gen-xe-facts.mjs [git-dir [commit]]
// (default: the mirror /work/.mirror/xapi-project+xen-api/repo at HEAD)
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const gitDir = process.argv[2] ?? '/work/.mirror/xapi-project+xen-api/repo';
const commit = process.argv[3] ?? 'HEAD';
const show = (path) => execFileSync('git', ['-C', gitDir, 'show', `${commit}:${path}`], { encoding: 'utf8', maxBuffer: 64 << 20 });

// ---- A small OCaml tokenizer: strings (with escapes and line continuations), quoted strings,
// identifiers, numbers, punctuation; comments dropped.
function tokenize(src) {
  const out = [];
  let i = 0;
  const n = src.length;
  while (i < n) {
    const c = src[i];
    if (/\s/.test(c)) {
      i++;
    } else if (src.startsWith('(*', i)) {
      let depth = 0;
      while (i < n) {
        if (src.startsWith('(*', i)) {
          depth++;
          i += 2;
        } else if (src.startsWith('*)', i)) {
          depth--;
          i += 2;
          if (depth === 0) break;
        } else if (src[i] === '"') {
          i = readString(src, i).end; // a string inside a comment may hold "*)"
        } else i++;
      }
    } else if (c === '"') {
      const s = readString(src, i);
      out.push({ k: 'str', v: s.value });
      i = s.end;
    } else if (c === '{' && /^\{[a-z_]*\|/.test(src.slice(i, i + 20))) {
      const id = /^\{([a-z_]*)\|/.exec(src.slice(i, i + 20))[1];
      const close = `|${id}}`;
      const start = i + id.length + 2;
      const end = src.indexOf(close, start);
      out.push({ k: 'str', v: src.slice(start, end) });
      i = end + close.length;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_']*/.exec(src.slice(i, i + 200));
      out.push({ k: 'id', v: m[0] });
      i += m[0].length;
    } else if (/[0-9]/.test(c)) {
      const m = /^[0-9][0-9A-Za-z_.]*/.exec(src.slice(i, i + 100));
      out.push({ k: 'num', v: m[0] });
      i += m[0].length;
    } else if (c === "'" && src[i + 2] === "'") {
      out.push({ k: 'chr', v: src[i + 1] });
      i += 3;
    } else if (c === "'" && src[i + 1] === '\\') {
      const end = src.indexOf("'", i + 2);
      out.push({ k: 'chr', v: src.slice(i + 1, end) });
      i = end + 1;
    } else {
      out.push({ k: 'p', v: c });
      i++;
    }
  }
  return out;
}

function readString(src, i) {
  let value = '';
  let j = i + 1;
  for (;;) {
    const c = src[j];
    if (c === '"') return { value, end: j + 1 };
    if (c === '\\') {
      const d = src[j + 1];
      if (d === '\n') {
        j += 2;
        while (src[j] === ' ' || src[j] === '\t') j++; // a line continuation skips leading blanks
        continue;
      }
      const esc = { n: '\n', t: '\t', r: '\r', b: '\b', '\\': '\\', '"': '"', "'": "'", ' ': ' ' }[d];
      if (esc !== undefined) {
        value += esc;
        j += 2;
        continue;
      }
      if (/[0-9]/.test(d)) {
        value += String.fromCharCode(Number(src.slice(j + 1, j + 4)));
        j += 4;
        continue;
      }
      throw new Error(`unknown escape \\${d}`);
    }
    value += c;
    j++;
  }
}

/** The tokens of a balanced expression starting at `i`, up to (not including) a stop token at depth 0. */
function expression(toks, i, stops) {
  let depth = 0;
  const start = i;
  for (; i < toks.length; i++) {
    const t = toks[i];
    if (t.k === 'p' && '([{'.includes(t.v)) depth++;
    else if (t.k === 'p' && ')]}'.includes(t.v)) {
      if (depth === 0) break;
      depth--;
    } else if (depth === 0 && t.k === 'p' && stops.includes(t.v)) break;
    else if (depth === 0 && t.k === 'id' && stops.includes(t.v)) break;
  }
  return { toks: toks.slice(start, i), end: i };
}

const text = (toks) =>
  toks
    .map((t) => (t.k === 'str' ? JSON.stringify(t.v) : t.v))
    .join(' ')
    .replace(/ \. /g, '.')
    .replace(/\( /g, '(')
    .replace(/ \)/g, ')');

/** A string expression: literals joined by ^ (identifiers named in `consts` resolved). */
function stringOf(toks, consts = {}) {
  let s = '';
  for (const t of toks) {
    if (t.k === 'str') s += t.v;
    else if (t.k === 'p' && t.v === '^') continue;
    else if (t.k === 'id' && t.v in consts) s += consts[t.v];
    else throw new Error(`not a string expression: ${text(toks)}`);
  }
  return s;
}

const stringList = (toks) => toks.filter((t) => t.k === 'str').map((t) => t.v);

// ---- The command table (cli_frontend.ml cmdtable_data)
function commands() {
  const toks = tokenize(show('ocaml/xapi-cli-server/cli_frontend.ml'));
  let i = toks.findIndex((t, j) => t.v === 'cmdtable_data' && toks[j + 1]?.v === ':');
  i = toks.findIndex((t, j) => j > i && t.v === '[');
  const table = {};
  const list = expression(toks, i + 1, []);
  const items = list.toks;
  for (let j = 0; j < items.length; ) {
    if (items[j].v === ';') {
      j++;
      continue;
    }
    // ( "name" , { fields } )
    const entry = expression(items, j + 1, []);
    const name = entry.toks[0].v;
    const body = entry.toks.slice(3, -1); // inside { }
    const spec = { reqd: [], optn: [], help: '', flags: [], impl: '' };
    for (let k = 0; k < body.length; ) {
      const field = body[k].v;
      const value = expression(body, k + 2, [';']);
      if (field === 'reqd') spec.reqd = stringList(value.toks);
      else if (field === 'optn') spec.optn = stringList(value.toks);
      else if (field === 'help') spec.help = stringOf(value.toks);
      else if (field === 'implementation') spec.impl = value.toks[0].v;
      else if (field === 'flags')
        spec.flags = value.toks.filter((t) => t.k === 'id' && /^[A-Z]/.test(t.v) && t.v !== 'Deprecated').map((t) => t.v);
      if (field === 'flags' && value.toks.some((t) => t.v === 'Deprecated')) spec.flags.push('Deprecated');
      k = value.end + 1;
    }
    table[name] = spec;
    j = entry.end + 1;
  }
  return table;
}

// ---- Error texts (ocaml/idl/datamodel_errors.ml): Api_errors.name -> wire code via api_errors.ml
function errors() {
  const codes = {};
  for (const m of show('ocaml/xapi-consts/api_errors.ml').matchAll(/let ([a-z0-9_]+) =\s*add_error\s+"([A-Z0-9_]+)"/g)) codes[m[1]] = m[2];
  const toks = tokenize(show('ocaml/idl/datamodel_errors.ml'));
  const out = {};
  for (let i = 0; i < toks.length; i++) {
    if (toks[i].v !== 'error' || toks[i + 1]?.v !== 'Api_errors' || toks[i + 2]?.v !== '.') continue;
    const code = codes[toks[i + 3].v];
    const params = expression(toks, i + 5, []);
    const rest = expression(toks, params.end + 1, [';', 'error']);
    const d = rest.toks.findIndex((t) => t.v === 'doc');
    if (!code) continue;
    let e = d + 2;
    while (d >= 0 && (rest.toks[e]?.k === 'str' || rest.toks[e]?.v === '^')) e++;
    const doc = d < 0 ? '' : stringOf(rest.toks.slice(d + 2, e));
    out[code] = { params: stringList(params.toks), doc };
  }
  return out;
}

// ---- xe's records (records.ml): per record function, its fields in order
const EDITS = [
  'set',
  'add_to_set',
  'remove_from_set',
  'add_to_map',
  'remove_from_map',
  'clear_map',
  'set_in_map',
  'set_map',
  'get_set',
  'get_map',
];
const FLAGS = ['expensive', 'hidden', 'deprecated', 'case_insensitive'];

function records() {
  const toks = tokenize(show('ocaml/xapi-cli-server/records.ml'));
  const out = {};
  let current;
  for (let i = 0; i < toks.length; i++) {
    const t = toks[i];
    if (t.v === 'let' && toks[i + 1]?.k === 'id' && /_record$/.test(toks[i + 1].v) && toks[i + 2]?.v === 'rpc') {
      current = toks[i + 1].v.replace(/_record$/, '');
      out[current] = [];
      continue;
    }
    if (!current || t.v !== 'make_field') continue;
    const call = expression(toks, i + 1, [';']);
    const field = { name: '' };
    const c = call.toks;
    for (let k = 0; k < c.length; k++) {
      if (c[k].v !== '~' && c[k].v !== '?') continue;
      const label = c[k + 1].v;
      if (c[k + 2]?.v !== ':') {
        if (FLAGS.includes(label)) field[label] = true; // ~hidden punned: a let-bound value
        continue;
      }
      const value = expression(c, k + 3, ['~', '?']);
      if (label === 'name') field.name = stringOf(value.toks);
      else if (label === 'get') field.get = text(value.toks);
      else if (EDITS.includes(label)) field[label] = true;
      else if (FLAGS.includes(label)) field[label] = value.toks.length === 1 && value.toks[0].v === 'true' ? true : text(value.toks);
      k = value.end - 1;
    }
    out[current].push(field);
    i = call.end - 1;
  }
  for (const fields of Object.values(out)) classify(fields);
  return out;
}

/**
 * Where a field's value comes from, when its getter reads one API field: `from` the record itself
 * (`rec`), its metrics (`metrics`) or guest metrics (`guest_metrics`); `field` the wire name;
 * `conv` how xe turns it into text (the getter with the field written X). Anything else (extra
 * API calls, several fields) is `special`, left to the code.
 */
function classify(fields) {
  const uuid = fields.find((f) => f.name === 'uuid')?.get ?? '';
  const prefix = /API\.([A-Za-z_]*?)uuid/.exec(uuid)?.[1];
  for (const f of fields) {
    const g = (f.get ?? '').replace(/^\(fun \(\) - > /, '').replace(/\) \(\)$|\)$/, '');
    delete f.get;
    const own = [...g.matchAll(/\(x \(\)\)\.API\.(\w+)/g)];
    const metric = [...g.matchAll(/\bm\.API\.(\w+)/g)];
    const viaMetrics = /\(xm \(\)\)$/.test(g);
    const viaGuest = /\(xgm \(\)\)$/.test(g);
    if (prefix && own.length === 1 && metric.length === 0 && !g.includes('Client.') && own[0][1].startsWith(prefix)) {
      f.from = 'rec';
      f.field = own[0][1].slice(prefix.length);
      f.conv = g.replace(own[0][0], 'X');
    } else if (prefix && own.length === 0 && metric.length === 1 && (viaMetrics || viaGuest) && !g.includes('Client.')) {
      const mp = `${prefix}${viaGuest ? 'guest_metrics_' : 'metrics_'}`;
      if (!metric[0][1].startsWith(mp)) {
        f.from = 'special';
        continue;
      }
      f.from = viaGuest ? 'guest_metrics' : 'metrics';
      f.field = metric[0][1].slice(mp.length);
      const none = /~ none : ("[^"]*"|\w+)/.exec(g)?.[1] ?? 'nid';
      f.none = none.startsWith('"') ? JSON.parse(none) : ({ nid: '<not in database>', unknown_time: '<unknown time>' }[none] ?? none);
      f.conv = (/~ some : \(fun m - > (.*)\) \((xm|xgm) \(\)\)$/.exec(g)?.[1] ?? 'X').replace(metric[0][0], 'X');
    } else f.from = 'special';
  }
}

const facts = {
  generatedFrom: {
    repo: 'xapi-project/xen-api',
    commit: execFileSync('git', ['-C', gitDir, 'rev-parse', commit], { encoding: 'utf8' }).trim(),
  },
  commands: commands(),
  errors: errors(),
  records: records(),
};
const outPath = process.env.XE_FACTS_OUT ?? join(root, 'schema', 'xe-cli.json');
writeFileSync(outPath, `${JSON.stringify(facts, null, 1)}\n`);
console.log(
  `${outPath}: ${Object.keys(facts.commands).length} commands, ${Object.keys(facts.errors).length} errors, ${Object.keys(facts.records).length} records`,
);
