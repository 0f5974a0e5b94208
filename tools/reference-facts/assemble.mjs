#!/usr/bin/env node
// Turns the evaluated reference datamodel (the JSON that dump.ml prints) into the committed facts
// files tools/reference-facts.json and tools/reference-relations.json, merging the few facts that
// are kept by hand (hand-facts.json) and comparing against the published datamodel export
// (xenapi.json) where a fact is "what the export lacks".
//
//   node tools/reference-facts/assemble.mjs --dump raw.json --commit <sha> \
//        [--datamodel ../shared/xenapi/xenapi.json] [--out tools]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const { values: args } = parseArgs({
  options: {
    dump: { type: 'string' },
    commit: { type: 'string' },
    datamodel: { type: 'string', default: join(root, '..', 'shared', 'xenapi', 'xenapi.json') },
    out: { type: 'string', default: join(root, 'tools') },
    hand: { type: 'string', default: join(here, 'hand-facts.json') },
  },
});
if (!args.dump || !args.commit) {
  console.error('usage: assemble.mjs --dump raw.json --commit <sha> [--datamodel xenapi.json] [--out dir]');
  process.exit(2);
}

const raw = JSON.parse(readFileSync(args.dump, 'utf8'));
const hand = JSON.parse(readFileSync(args.hand, 'utf8'));
const exported = JSON.parse(readFileSync(args.datamodel, 'utf8'));
const source = `xapi-project/xen-api@${args.commit}`;
if (hand.source !== source) {
  console.warn(`warning: hand-kept facts were read at ${hand.source}, not ${source}; re-read them (see README.md)`);
}

// The hand-kept notes, each placed by key; every one must be used.
const usedNotes = new Set();
const handNote = (notes, key) => {
  if (!(key in notes)) throw new Error(`hand-facts.json has no note ${key}`);
  usedNotes.add(notes[key]);
  return notes[key];
};
const wire = (cls, msg) => `${cls.name}.${msg.name}`;
const list = (xs) => xs.join(', ');
// Every (class, message) on the wire: what xapi's generated server.ml dispatches.
const served = raw.classes.flatMap((c) => c.messages.filter((m) => m.served).map((m) => ({ cls: c, msg: m })));
const isImplicit = (m) => m.tag !== 'Custom';

// --- facts derived from messages -------------------------------------------------------------

const noAsyncClasses = new Set(raw.noAsyncMessagesFor);
const syncOnlyMessages = served.filter(({ msg }) => !isImplicit(msg) && !msg.hasAsync).map(({ cls, msg }) => wire(cls, msg));
const asyncInNoAsyncClasses = served
  .filter(({ cls, msg }) => noAsyncClasses.has(cls.name) && msg.hasAsync)
  .map(({ cls, msg }) => wire(cls, msg));

const paramDefaults = {};
const emptyRefDefaults = [];
for (const { cls, msg } of served) {
  const withDefault = msg.params.filter((p) => 'default' in p);
  if (withDefault.length === 0) continue;
  paramDefaults[wire(cls, msg)] = Object.fromEntries(withDefault.map((p) => [p.name, p.default]));
  for (const p of withDefault) if (p.type.endsWith(' ref') && p.default === '') emptyRefDefaults.push(`${wire(cls, msg)} ${p.name}`);
}

// Generated (implicit) messages that xapi's server.ml routes to a hand-written implementation
// (module Custom, i.e. Custom_actions) rather than to the generated database action (module
// Db_actions.DB_Action). The choice is gen_server.ml's: Gen_empty_custom.operation_requires_side_effect.
const customImplicit = served.filter(({ msg }) => isImplicit(msg) && msg.customAction);
const customImplicitMessages = customImplicit.map(({ cls, msg }) => wire(cls, msg));
const customBy = (pred) => customImplicit.filter(pred).map(({ cls, msg }) => wire(cls, msg));
const customCtorDtor = customBy(({ msg }) => msg.tag === 'Make' || msg.tag === 'Delete');
const customSetters = customBy(({ msg }) => msg.tag === 'Setter' && !msg.forceCustom);
const customForced = customBy(({ msg }) => msg.forceCustom && msg.tag !== 'Make' && msg.tag !== 'Delete');
const customOther = customImplicitMessages.filter((w) => ![...customCtorDtor, ...customSetters, ...customForced].includes(w));
if (customOther.length > 0) throw new Error(`custom implicit messages outside the known rules: ${list(customOther)}`);
const forcedClasses = raw.classes.filter((c) => c.forceCustomActions).map((c) => `${c.name} (${c.forceCustomActions})`);
const effectFields = raw.classes.flatMap((c) => c.fields.filter((f) => f.hasEffect).map((f) => `${c.name}.${f.name} (${f.qualifier})`));

// Client-visible messages the export (xenapi.json) lacks, for classes it has.
const exportedClasses = new Map(exported.map((c) => [c.name, new Set(c.messages.map((m) => m.name))]));
const hiddenMessages = [];
for (const { cls, msg } of served) {
  const names = exportedClasses.get(cls.name);
  if (!names || names.has(msg.name)) continue;
  const params = msg.params.map((p) => ({ name: p.name, type: p.type }));
  hiddenMessages.push({
    class: cls.name,
    name: msg.name,
    params: msg.session ? [{ name: 'session_id', type: 'session ref' }, ...params] : params,
    result: msg.result,
    roles: msg.roles ?? [],
    sessionChecked: msg.session,
    async: msg.hasAsync,
    hiddenFromDocs: msg.hideFromDocs,
    implicit: isImplicit(msg),
  });
}
// Within a class: explicit messages first (declaration order), then the generated ones.
const classOrder = new Map(raw.classes.map((c, i) => [c.name, i]));
hiddenMessages.sort((a, b) => classOrder.get(a.class) - classOrder.get(b.class) || Number(a.implicit) - Number(b.implicit));
const missingClasses = raw.classes.filter((c) => !exportedClasses.has(c.name)).map((c) => c.name);

const mapKeysRoles = {};
for (const c of raw.classes) {
  for (const f of c.fields) {
    if (f.mapKeysRoles.length === 0) continue;
    mapKeysRoles[`${c.name}.${f.name}`] = Object.fromEntries(f.mapKeysRoles.map((k) => [k.key, k.roles ?? []]));
  }
}
// Explicit messages (e.g. VM.add_to_other_config) that declare key roles of their own.
const keyRoleOverrides = served.filter(({ msg }) => !isImplicit(msg) && msg.mapKeysRoles.length > 0);
const overrideMismatch = keyRoleOverrides.filter(({ cls, msg }) => {
  const field = msg.name.replace(/^(add_to|remove_from)_/, '');
  const keySet = (entries) => JSON.stringify(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  const own = msg.mapKeysRoles.map((k) => [k.key, k.roles ?? []]);
  return keySet(own) !== keySet(Object.entries(mapKeysRoles[`${cls.name}.${field}`] ?? {}));
});

const httpActions = raw.httpActions.map((a) => ({
  name: a.name,
  method: a.method,
  uri: a.uri,
  roles: a.roles ?? [],
  ...(a.subActions.length > 0 ? { subActions: a.subActions.map((s) => ({ name: s.name, roles: s.roles ?? [] })) } : {}),
}));

const httpByName = new Map(raw.httpActions.map((a) => [a.name, a]));
const extraPermissions = [
  ...raw.extraPermissions.map((p) => ({ name: p.name, roles: p.roles ?? [] })),
  ...hand.facts.rbac.httpPermissionActions.map((name) => {
    const a = httpByName.get(name);
    if (!a) throw new Error(`hand-facts.json names an unknown http action: ${name}`);
    return { name: `http/${name}`, roles: a.roles ?? [] };
  }),
];

const declaredErrors = Object.fromEntries(raw.errors.map((e) => [e.name, e.params]));
const undeclaredErrors = raw.apiErrorCodes.filter((c) => !(c in declaredErrors)).sort();

const constants = {};
for (const [name, c] of Object.entries(hand.facts.constants)) {
  constants[name] = name in raw.constants ? { value: raw.constants[name], ...c } : c;
}
for (const name of Object.keys(raw.constants)) {
  if (!(name in constants)) throw new Error(`evaluated constant ${name} has no entry in hand-facts.json`);
}

const subActionNotes = httpActions
  .filter((a) => a.subActions)
  .map((a) => `${a.name} (${list(a.subActions.map((s) => `${s.name}: ${list(s.roles)}`))})`);
const facts = {
  source,
  errors: declaredErrors,
  paramDefaults,
  syncOnlyMessages,
  noAsyncClasses: raw.noAsyncMessagesFor,
  noTaskIdFor: raw.noTaskIdFor,
  noTaskIdForFile: hand.facts.noTaskIdForFile,
  getAllClasses: raw.exposeGetAllMessagesFor,
  noEventClasses: raw.classes.filter((c) => !c.genEvents).map((c) => c.name),
  notInDbClasses: raw.classes.filter((c) => !c.inDatabase).map((c) => c.name),
  ctorDtorClasses: raw.classes.filter((c) => c.genConstructorDestructor).map((c) => c.name),
  customImplicitMessages,
  hiddenMessages,
  mapKeysRoles,
  emergencyCalls: raw.emergencyCalls,
  publicHttpActionsNoRbac: raw.publicHttpActionsWithNoRbacCheck,
  httpActions,
  rbac: {
    roles: raw.roles,
    roleUuids: raw.roleUuids,
    roleUuidDerivation: hand.facts.rbac.roleUuidDerivation,
    extraPermissions,
    extraPermissionsFile: hand.facts.rbac.extraPermissionsFile,
  },
  apiVersion: { major: raw.apiVersion.major, minor: raw.apiVersion.minor, file: 'ocaml/idl/api_version.ml' },
  constants,
  notes: [
    `Generated by tools/reference-facts (extract.sh) from ${source}: the reference datamodel modules (ocaml/idl/datamodel*.ml, dm_api, datamodel_utils, api_errors, api_messages, constants, and the code generator's gen_client/gen_empty_custom) are compiled with OCaml 4.13 against small stand-ins for rpclib, Clock.Date, xapi-stdext, sexplib0, xapi-backtrace, astring and Schema.Value, and the evaluated API is dumped; so defaults, flags, roles and lists are evaluated values. Kept by hand in tools/reference-facts/hand-facts.json: noTaskIdForFile, rbac.roleUuidDerivation, the http actions listed in rbac.extraPermissions, and constants (except the values of ${list(Object.keys(raw.constants))}, evaluated from ocaml/xapi-consts/constants.ml).`,
    `"On the wire" below means served by xapi's generated dispatcher: the API with its implicit messages, without internal-only fields and db-only messages, restricted to the "closed" release, then Gen_client.client_api ~sync:true (gen_api_main.ml; the server.ml rule in ocaml/xapi/dune).`,
    `xenapi.json (the published export) is older than this commit; it lacks classes ${list(missingClasses)} plus newer fields and messages. hiddenMessages lists every message on the wire that xenapi.json lacks, for classes that xenapi.json has: hiddenFromDocs=true marks genuinely hidden ones; hiddenFromDocs=false ones are newer public API; implicit=true ones are generated getters/setters/get_all_where etc.`,
    'hiddenMessages params include a leading session_id (type "session ref") when sessionChecked is true, matching xenapi.json style. async is Gen_client.has_async: explicit messages follow their `Async flag; of the generated ones only create/destroy have Async variants.',
    handNote(hand.facts.notes, 'noAsyncMessagesFor'),
    `So messages of noAsyncClasses that have Async variants by their own flags: ${list(asyncInNoAsyncClasses)}; and syncOnlyMessages includes the sync-only messages of those classes too (session.login_with_password, event.from...).`,
    'syncOnlyMessages lists the explicit messages on the wire without an Async variant, hidden (hide_from_docs) ones included.',
    `customImplicitMessages: generated messages that server.ml hands to a hand-written implementation (Custom_actions) instead of a generated database action, by Gen_empty_custom.operation_requires_side_effect: every generated create/destroy on the wire (they exist only for ctorDtorClasses): ${customCtorDtor.length} messages; setters of fields marked has_effect: ${list(customSetters)} (has_effect fields: ${list(effectFields)}; only RW ones have a setter on the wire); everything but setters/add/remove/create/destroy of classes with force_custom_actions (${list(forcedClasses)}): ${list(customForced)}. Add/remove and all other getters are database actions.`,
    `Some param defaults are VRef "" rather than OpaqueRef:NULL (${list(emptyRefDefaults)}); kept as "" verbatim.`,
    `Map defaults are given as JSON objects; host.create license_server default is ${JSON.stringify(paramDefaults['host.create']?.license_server)}.`,
    `errors: ${raw.errors.length} declared in datamodel_errors.ml (wire strings evaluated from api_errors.ml, e.g. AUTH_ENABLE_FAILED_* are built by string concatenation). ${undeclaredErrors.length} codes exist in api_errors.ml without a datamodel declaration (no params known): ${list(undeclaredErrors)}`,
    `mapKeysRoles comes from field-level map_keys_roles; explicit messages with key roles of their own (${list(keyRoleOverrides.map(({ cls, msg }) => wire(cls, msg)))}) ${overrideMismatch.length === 0 ? 'carry the same key sets' : `differ for ${list(overrideMismatch.map(({ cls, msg }) => wire(cls, msg)))}`}.`,
    `http actions with sub-actions, given as subActions: ${list(subActionNotes)}.`,
    `custom_rate_limit_http_actions (handlers doing their own rate limiting): ${list(raw.customRateLimitHttpActions)}.`,
    `whitelist (calls a slave never forwards to the master) = ${list(raw.whitelist.filter((w) => !raw.emergencyCalls.includes(w)))} plus emergencyCalls.`,
    'Classes in expose_get_all_messages_for get get_all/get_all_records; get_all_where/get_all_records_where are generated for them too but hidden from docs. Other classes still get a hidden db-only get_all (not client-side).',
    handNote(hand.facts.notes, 'eventDelays'),
  ],
};

// --- relations ------------------------------------------------------------------------------

const fieldOf = (ref) => raw.classes.find((c) => c.name === ref.class)?.fields.find((f) => f.name === ref.field);
const oneToMany = [];
const manyToMany = [];
const neither = [];
for (const r of raw.relations) {
  if (r.kind === 'one-to-many') oneToMany.push({ one: r.b, many: r.a });
  else if (r.kind === 'many-to-one') oneToMany.push({ one: r.a, many: r.b });
  else if (r.kind === 'many-to-many') manyToMany.push({ a: r.a, b: r.b });
  else neither.push(r);
}
const refSideFirst = raw.relations.every((r) => r.kind !== 'many-to-one');
const name = (ref) => `${ref.class}.${ref.field}`;
const inRelation = new Set(raw.relations.flatMap((r) => [name(r.a), name(r.b)]));
const exportedFields = new Map(exported.map((c) => [c.name, new Map(c.fields.map((f) => [f.name, f.type]))]));
const exportedType = (ref) => exportedFields.get(ref.class)?.get(ref.field);
const setRefWithoutRelation = exported
  .flatMap((c) => c.fields.filter((f) => / ref set$/.test(f.type)).map((f) => `${c.name}.${f.name}`))
  .filter((n) => !inRelation.has(n))
  .sort();
const relationRefs = [...oneToMany.flatMap((r) => [r.one, r.many]), ...manyToMany.flatMap((r) => [r.a, r.b])];
const internalRelationFields = relationRefs.filter((ref) => fieldOf(ref)?.internalOnly).map((ref) => `${name(ref)} (${fieldOf(ref).type})`);
const relationsOfMissingClasses = [...oneToMany.map((r) => [r.one, r.many]), ...manyToMany.map((r) => [r.a, r.b])]
  .filter((pair) => pair.some((ref) => !exportedFields.has(ref.class) || (!exportedType(ref) && !fieldOf(ref)?.internalOnly)))
  .map(([x, y]) => `${name(x)}/${name(y)}`);
const typeMismatches = relationRefs
  .filter((ref) => exportedType(ref) !== undefined && exportedType(ref) !== fieldOf(ref)?.type)
  .map((ref) => `${name(ref)}: export ${exportedType(ref)}, source ${fieldOf(ref)?.type}`);

const hiddenFields = Object.fromEntries(
  hand.relations.hiddenFieldsFor.map((cls) => [
    cls,
    raw.classes
      .find((c) => c.name === cls)
      .fields.filter((f) => f.internalOnly)
      .map((f) => ({ name: f.name, type: f.type })),
  ]),
);

const relations = {
  source,
  oneToMany,
  manyToMany,
  hiddenFields,
  uniqueFields: hand.relations.uniqueFields,
  exceptionMapping: hand.relations.exceptionMapping,
  notes: [
    `Relations are Datamodel.all_relations at ${source}, classified by Datamodel_utils.Relations.classify on the field types (generated by tools/reference-facts).${refSideFirst ? ' In all_relations the Ref side is always listed first.' : ''}`,
    ...['schemaKeying', 'oneToManyMaintenance', 'manyToManyMaintenance', 'roleSubroles'].map((k) => handNote(hand.relations.notes, k)),
    `Pairs in all_relations whose types classify as neither relation kind (plain, manually-maintained fields): ${list(neither.map((r) => `(${name(r.a)}, ${name(r.b)})`))}; subject.roles is there only to satisfy a sanity check.`,
    `Set(Ref) fields in xenapi.json with no relation (ignore_foreign_key, manually maintained): ${list(setRefWithoutRelation)}.`,
    `Relations involving classes or fields that xenapi.json lacks (included with types from the source): ${list(relationsOfMissingClasses)}.`,
    `Relation fields that are internal_only (hence absent from xenapi.json): ${list(internalRelationFields)}. hiddenFields covers only ${list(hand.relations.hiddenFieldsFor)} (the classes listed in hand-facts.json).`,
    typeMismatches.length === 0
      ? 'Every other relation field was checked against xenapi.json by the tool: class and field exist there with exactly the type of the source. No mismatches.'
      : `Relation fields whose xenapi.json type differs from the source: ${list(typeMismatches)}.`,
    ...['refColumn', 'uniqueFields', 'exceptionMapping', 'rpclib'].map((k) => handNote(hand.relations.notes, k)),
  ],
};

const unused = [...Object.values(hand.facts.notes), ...Object.values(hand.relations.notes)].filter((n) => !usedNotes.has(n));
if (unused.length > 0) throw new Error(`hand-facts.json notes not placed: ${unused.join(' | ')}`);
mkdirSync(args.out, { recursive: true });
const write = (file, value, indent) => writeFileSync(join(args.out, file), JSON.stringify(value, null, indent) + '\n');
write('reference-facts.json', facts, 1);
write('reference-relations.json', relations, 2);
console.log(
  `wrote ${join(args.out, 'reference-facts.json')} and reference-relations.json: ${Object.keys(declaredErrors).length} errors, ${syncOnlyMessages.length} sync-only, ${hiddenMessages.length} hidden, ${customImplicitMessages.length} custom implicit messages, ${oneToMany.length}+${manyToMany.length} relations`,
);
