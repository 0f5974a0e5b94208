#!/usr/bin/env node
// Derives the project's own schema file (schema/xenapi-schema.json) from the datamodel
// (../shared/xenapi/xenapi.json) and the facts read off the reference source that the datamodel
// export lacks (tools/reference-facts.json: error parameters, parameter defaults, async flags...).
// Facts only: names, types, qualifiers, defaults, roles, errors, enums, lifecycle states. The
// prose descriptions are dropped on purpose.
//
//   node tools/gen-schema.mjs [path/to/xenapi.json]
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const datamodelPath = process.argv[2] ?? join(root, '..', 'shared', 'xenapi', 'xenapi.json');
const factsPath = process.env.XAPI_FACTS ?? join(root, 'tools', 'reference-facts.json');
// XAPI_SCHEMA_OUT lets a test regenerate the schema elsewhere and compare it with the committed one.
const outPath = process.env.XAPI_SCHEMA_OUT ?? join(root, 'schema', 'xenapi-schema.json');

const datamodel = JSON.parse(readFileSync(datamodelPath, 'utf8'));
const facts = JSON.parse(readFileSync(factsPath, 'utf8'));
const relationFacts = JSON.parse(readFileSync(join(root, 'tools', 'reference-relations.json'), 'utf8'));

const state = (lc) => lc.state.replace(/_s$/, '');

// --- defaults: the datamodel export prints them as OCaml-ish values; turn them into our values.
function parseDefault(text, type) {
  const t = type.trim();
  if (t.endsWith(' map')) return parseBraced(text, true, t);
  if (t.endsWith(' set')) return parseBraced(text, false, t);
  if (t === 'string' || t === 'uuid') return JSON.parse(text);
  if (t === 'int') return Number(text);
  if (t === 'float') return Number(text.endsWith('.') ? text + '0' : text);
  if (t === 'bool') return text === 'true';
  if (t === 'datetime') return text;
  if (t.endsWith(' ref')) return text === 'Null' ? 'OpaqueRef:NULL' : text;
  if (t.startsWith('enum ')) return text;
  throw new Error(`no default parser for ${type}: ${text}`);
}

// `{}`, `{a, b}`, `{"k" -> "v", ...}`
function parseBraced(text, isMap, type) {
  const inner = text.trim().replace(/^\{/, '').replace(/\}$/, '').trim();
  if (inner === '') return isMap ? {} : [];
  const items = [];
  const re = /"((?:[^"\\]|\\.)*)"|[^,\s{}]+|->|,/g;
  const tokens = inner.match(re);
  let cur = [];
  for (const tok of tokens) {
    if (tok === ',') {
      items.push(cur);
      cur = [];
      continue;
    }
    cur.push(tok);
  }
  items.push(cur);
  const val = (tok) => (tok.startsWith('"') ? JSON.parse(tok) : tok);
  if (isMap) {
    const out = {};
    for (const it of items) {
      if (it.length !== 3 || it[1] !== '->') throw new Error(`bad map default ${text}`);
      out[val(it[0])] = val(it[2]);
    }
    return out;
  }
  const elemType = type.replace(/ set$/, '');
  return items.map((it) => {
    const v = val(it[0]);
    return elemType === 'int' ? Number(v) : v;
  });
}

const set = (xs) => new Set(xs ?? []);
const getAll = set(facts.getAllClasses);
const notInDb = set(facts.notInDbClasses);
const noEvents = set(facts.noEventClasses);
const ctorDtor = set(facts.ctorDtorClasses);
const syncOnly = set(facts.syncOnlyMessages);
const noTaskIdFor = set(facts.noTaskIdFor);
// Implicit messages that xapi serves with a hand-written implementation, not a database action.
const customImplicit = set(facts.customImplicitMessages);
// Messages that the login machinery reaches without a session.
const sessionless = new Set([
  'session.login_with_password',
  'session.slave_login',
  'session.slave_local_login',
  'session.slave_local_login_with_password',
]);

// xapi keeps messages (alerts) in a store of their own beside the database; we keep them in a
// database table, which gives them durability and events (add/del) for free.
const storedInOurDb = new Set(['message']);

const enums = {};
const classes = [];
for (const c of datamodel) {
  for (const e of c.enums ?? []) enums[e.name] = e.values.map((v) => v.name);
  const inDb = !notInDb.has(c.name) || storedInOurDb.has(c.name);
  const fields = c.fields.map((f) => {
    const out = { name: f.name, type: f.type, qualifier: f.qualifier, lifecycle: state(f.lifecycle) };
    if ('default' in f) out.default = parseDefault(f.default, f.type);
    return out;
  });
  // Internal fields: in the database, never on the wire (e.g. task.session, which session.tasks follows).
  for (const h of relationFacts.hiddenFields?.[c.name] ?? []) {
    fields.push({ name: h.name, type: h.type, qualifier: 'RO/runtime', lifecycle: 'Published', internal: true });
  }
  // Messages hidden from the docs (pool-internal logins and calls); newer public messages that
  // this datamodel export predates are left out, to stay one consistent API version.
  const hidden = (facts.hiddenMessages ?? []).filter((m) => m.class === c.name && m.hiddenFromDocs && !m.implicit);
  const msgs = [
    ...c.messages.map((m) => ({ ...m, hidden: false })),
    ...hidden.map((m) => ({
      name: m.name,
      params: m.params,
      result: [m.result],
      errors: [],
      roles: m.roles,
      implicit: false,
      lifecycle: { state: 'Published_s' },
      hidden: true,
      async: m.async,
    })),
  ].filter((m, i, all) => all.findIndex((o) => o.name === m.name) === i);
  const messages = msgs.map((m) => {
    const wire = `${c.name}.${m.name}`;
    const defaults = facts.paramDefaults?.[wire] ?? {};
    const checked = !sessionless.has(wire) && c.name !== 'system';
    const params = m.params
      .filter((p, i) => !(checked && i === 0 && p.type === 'session ref'))
      .map((p) => (p.name in defaults ? { name: p.name, type: p.type, default: defaults[p.name] } : { name: p.name, type: p.type }));
    // Whether a message has an Async twin follows its own flags only (xapi's
    // no_async_messages_for list is defined but unused at the reference commit).
    const isGenCtor = m.implicit && (m.name === 'create' || m.name === 'destroy');
    const async = m.hidden ? m.async : isGenCtor || (!m.implicit && !syncOnly.has(wire));
    return {
      name: m.name,
      params,
      result: m.result[0],
      errors: m.errors.map((e) => e.name),
      roles: m.roles,
      implicit: m.implicit,
      async,
      // A sync call runs on a database task only for async-capable messages of classes other
      // than task and event (xapi's no_task_id_for): event.from must not make events itself.
      syncTask: async && !noTaskIdFor.has(c.name),
      sessionChecked: checked,
      hidden: m.hidden,
      lifecycle: state(m.lifecycle),
    };
  });
  // xapi also generates these for get_all classes; hidden from the docs, so absent from the export.
  if (inDb && getAll.has(c.name) && messages.some((m) => m.name === 'get_all_records')) {
    const base = messages.find((m) => m.name === 'get_all_records');
    for (const [name, result] of [
      ['get_all_records_where', `(${c.name} ref -> ${c.name} record) map`],
      ['get_all_where', `${c.name} ref set`],
    ]) {
      if (!messages.some((m) => m.name === name)) {
        messages.push({ ...base, name, result, params: [{ name: 'expr', type: 'string' }], hidden: true });
      }
    }
  }
  for (const m of messages) if (m.implicit && customImplicit.has(`${c.name}.${m.name}`)) m.custom = true;
  classes.push({
    name: c.name,
    inDb,
    genEvents: inDb && (!noEvents.has(c.name) || storedInOurDb.has(c.name)),
    getAll: getAll.has(c.name),
    ctorDtor: ctorDtor.has(c.name),
    lifecycle: state(c.lifecycle),
    fields,
    messages,
  });
}

// One-to-many relations whose both sides exist here (the export lacks a few newer classes).
const hasField = (r) => classes.find((c) => c.name === r.class)?.fields.some((f) => f.name === r.field);
const relations = relationFacts.oneToMany.filter((r) => hasField(r.one) && hasField(r.many));

// RBAC: xapi gives every http action a permission "http/<action>" (and "http/<action>/<sub>" for
// each sub-action) with the action's roles (gen_rbac.ml get_http_permissions_roles).
const rbac = { ...(facts.rbac ?? {}) };
const permissionNames = new Set((rbac.extraPermissions ?? []).map((p) => p.name));
rbac.extraPermissions = [...(rbac.extraPermissions ?? [])];
for (const a of facts.httpActions ?? []) {
  const perms = [{ name: `http/${a.name}`, roles: a.roles ?? [] }];
  for (const sub of a.subActions ?? []) perms.push({ name: `http/${a.name}/${sub.name}`, roles: sub.roles ?? [] });
  for (const p of perms) {
    if (permissionNames.has(p.name)) continue;
    permissionNames.add(p.name);
    rbac.extraPermissions.push(p);
  }
}

const schema = {
  generatedFrom: { datamodel: 'xapi-project/xen-api doc/data/xenapi.json', facts: facts.source },
  relations,
  apiVersion: facts.apiVersion,
  enums,
  errors: facts.errors,
  mapKeysRoles: facts.mapKeysRoles ?? {},
  emergencyCalls: facts.emergencyCalls ?? [],
  rbac,
  constants: facts.constants ?? {},
  classes,
};
writeFileSync(outPath, JSON.stringify(schema, null, 1) + '\n');
console.log(
  `wrote ${outPath}: ${classes.length} classes, ${classes.reduce((n, c) => n + c.fields.length, 0)} fields, ${classes.reduce((n, c) => n + c.messages.length, 0)} messages, ${Object.keys(enums).length} enums, ${Object.keys(facts.errors ?? {}).length} errors`,
);
if (!existsSync(factsPath)) process.exitCode = 1;
