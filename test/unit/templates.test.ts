// The default template catalogue: identity, memory/vCPU consistency, field names and types
// against the VM class of the schema, the disks documents, and the disks parser.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { defaultTemplates, nameBasedUuid, templateMemoryDefaults } from '../../src/host/templates.js';
import { parseDisksXml } from '../../src/xapi/provision-disks.js';

interface SchemaField {
  name: string;
  type: string;
}
interface Schema {
  enums: Record<string, string[]>;
  classes: { name: string; fields: SchemaField[] }[];
}

const schemaUrl = new URL('../../../schema/xenapi-schema.json', import.meta.url);
const schema = JSON.parse(readFileSync(schemaUrl, 'utf8')) as Schema;
const vmFields = new Map(schema.classes.find((c) => c.name === 'VM')!.fields.map((f) => [f.name, f.type]));

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype;

/** Checks a value against a datamodel type (the subset templates use), returning a problem or ''. */
function typeProblem(type: string, v: unknown): string {
  if (type === 'string') return typeof v === 'string' ? '' : 'not a string';
  if (type === 'int') return Number.isSafeInteger(v) ? '' : 'not an integer';
  if (type === 'float') return typeof v === 'number' && Number.isFinite(v) ? '' : 'not a number';
  if (type === 'bool') return typeof v === 'boolean' ? '' : 'not a boolean';
  const en = /^enum (\w+)$/.exec(type);
  if (en) return schema.enums[en[1]!]?.includes(v as string) ? '' : `not a ${en[1]} value`;
  if (type === '(string -> string) map') {
    if (!isPlainObject(v)) return 'not a map';
    return Object.values(v).every((x) => typeof x === 'string') ? '' : 'a map value is not a string';
  }
  const set = /^(.+) set$/.exec(type);
  if (set) return Array.isArray(v) ? (v.map((x) => typeProblem(set[1]!, x)).find((p) => p) ?? '') : 'not a set';
  return `unchecked type ${type}`;
}

test('every template has a stable, unique uuid and a unique name and reference label', () => {
  const a = defaultTemplates();
  const b = defaultTemplates();
  assert.deepEqual(a, b);
  assert.ok(a.length >= 20, `only ${a.length} templates`);
  for (const key of ['uuid', 'name_label', 'reference_label'] as const) {
    const values = a.map((t) => (key === 'uuid' ? t.uuid : (t.fields[key] as string)));
    assert.equal(new Set(values).size, values.length, `duplicate ${key}`);
  }
  for (const t of a) assert.match(t.uuid, UUID_RE);
  // Callers get fresh objects.
  (a[0]!.fields.platform as Record<string, string>).x = 'y';
  assert.equal((defaultTemplates()[0]!.fields.platform as Record<string, string>).x, undefined);
});

test('the expected families are in the catalogue, with "Other install media"', () => {
  const byName = new Map(defaultTemplates().map((t) => [t.fields.name_label as string, t.fields]));
  for (const name of [
    'Debian Bookworm 12',
    'Debian Bullseye 11',
    'Ubuntu Jammy Jellyfish 22.04',
    'Ubuntu Noble Numbat 24.04',
    'CentOS Stream 9',
    'Rocky Linux 9',
    'AlmaLinux 9',
    'Red Hat Enterprise Linux 8',
    'Red Hat Enterprise Linux 9',
    'Oracle Linux 8',
    'Oracle Linux 9',
    'SUSE Linux Enterprise 15 (64-bit)',
    'Generic Linux UEFI',
    'Generic Linux BIOS',
    'Windows 10 (64-bit)',
    'Windows 11',
    'Windows Server 2019 (64-bit)',
    'Windows Server 2022 (64-bit)',
    'Windows Server 2025',
    'Other install media',
  ]) {
    assert.ok(byName.has(name), `no template "${name}"`);
  }
  const other = byName.get('Other install media')!;
  assert.equal((other.other_config as Record<string, string>)['install-methods'], 'cdrom');
  assert.equal((other.other_config as Record<string, string>).disks, undefined);
  assert.equal(other.memory_static_min, 128 * 1024 ** 2);

  const debian = byName.get('Debian Bookworm 12')!;
  assert.equal(debian.reference_label, 'debian-12');
  assert.equal(debian.uuid, undefined);
  assert.equal((debian.other_config as Record<string, string>).linux_template, 'true');
  assert.equal((debian.other_config as Record<string, string>)['install-methods'], 'cdrom,nfs,http,ftp');
  assert.deepEqual(parseDisksXml((debian.other_config as Record<string, string>).disks!), [
    { device: '0', size: 10 * 1024 ** 3, sr: '', bootable: true, type: 'system' },
  ]);

  const win11 = byName.get('Windows 11')!;
  assert.equal((win11.HVM_boot_params as Record<string, string>).firmware, 'uefi');
  assert.equal((win11.platform as Record<string, string>).viridian, 'true');
  assert.equal((win11.platform as Record<string, string>).device_id, '0002');
  assert.equal(win11.memory_static_min, 4 * 1024 ** 3);
  assert.match(win11.recommendations as string, /<restriction field="has-vendor-device" value="true"\/>/);
  assert.match(win11.recommendations as string, /<restriction field="supports-bios" value="no"\/>/);
  assert.equal(parseDisksXml((win11.other_config as Record<string, string>).disks!)[0]!.size, 64 * 1024 ** 3);

  const bios = byName.get('Generic Linux BIOS')!;
  assert.equal((bios.HVM_boot_params as Record<string, string>).firmware, 'bios');
  assert.equal((bios.platform as Record<string, string>).viridian, 'false');
});

test('memory and vCPU settings are consistent', () => {
  for (const { fields: f } of defaultTemplates()) {
    const n = f.name_label as string;
    const [smin, dmin, dmax, smax] = [f.memory_static_min, f.memory_dynamic_min, f.memory_dynamic_max, f.memory_static_max] as number[];
    assert.ok(smin! > 0 && smin! <= dmin! && dmin! <= dmax! && dmax! <= smax!, `${n}: memory order ${smin} ${dmin} ${dmax} ${smax}`);
    const [start, max] = [f.VCPUs_at_startup, f.VCPUs_max] as number[];
    assert.ok(start! >= 1 && start! <= max!, `${n}: VCPUs ${start}/${max}`);
    const rec = f.recommendations as string;
    assert.match(rec, /^<restrictions>(<restriction (field|property)="[\w-]+" (max|min|value)="[^"]*"\/>)+<\/restrictions>$/, n);
    const maxMem = Number(/field="memory-static-max" max="(\d+)"/.exec(rec)![1]);
    const maxVcpus = Number(/field="vcpus-max" max="(\d+)"/.exec(rec)![1]);
    assert.ok(smax! <= maxMem, `${n}: static_max above the recommendation`);
    assert.ok(max! <= maxVcpus, `${n}: VCPUs_max above the recommendation`);
  }
  assert.deepEqual(templateMemoryDefaults(1024), {
    memory_static_min: 1024,
    memory_dynamic_min: 2048,
    memory_dynamic_max: 2048,
    memory_static_max: 2048,
  });
});

test('every field is a VM field of the schema, with a value of its type', () => {
  for (const { fields } of defaultTemplates()) {
    for (const [k, v] of Object.entries(fields)) {
      const type = vmFields.get(k);
      assert.ok(type !== undefined, `${fields.name_label}: ${k} is not a field of VM`);
      assert.equal(typeProblem(type, v), '', `${fields.name_label}: ${k} (${type}) = ${JSON.stringify(v)}`);
    }
  }
});

test('template flags, boot settings and other_config', () => {
  for (const { fields: f } of defaultTemplates()) {
    const n = f.name_label as string;
    const other = f.other_config as Record<string, string>;
    const boot = f.HVM_boot_params as Record<string, string>;
    assert.equal(f.is_a_template, true, n);
    assert.equal(f.is_default_template, true, n);
    assert.equal(other.default_template, 'true', n);
    assert.ok(other['install-methods'], `${n}: no install-methods`);
    for (const m of other['install-methods']!.split(','))
      assert.ok(['cdrom', 'nfs', 'http', 'ftp'].includes(m), `${n}: install method ${m}`);
    assert.match(other.mac_seed!, UUID_RE);
    assert.equal(f.HVM_boot_policy, 'BIOS order', n);
    assert.equal(f.domain_type, 'hvm', n);
    assert.ok(['bios', 'uefi'].includes(boot.firmware!), `${n}: firmware ${boot.firmware}`);
    assert.match(boot.order!, /^[cdn]+$/, n);
    const platform = f.platform as Record<string, string>;
    if (boot.firmware === 'uefi') assert.equal(platform['device-model'], undefined, `${n}: device-model with UEFI`);
    assert.equal(f.actions_after_shutdown, 'destroy');
    assert.equal(f.actions_after_reboot, 'restart');
    assert.equal(f.actions_after_crash, 'restart');
    assert.equal(f.reference_label !== '', true, n);
    if (other.disks !== undefined) {
      const disks = parseDisksXml(other.disks);
      assert.equal(disks.length, 1, n);
      assert.ok(disks[0]!.size >= 1024 ** 3, `${n}: disk size ${disks[0]!.size}`);
      assert.equal(disks[0]!.sr, '');
      assert.equal(disks[0]!.type, 'system');
    }
  }
});

test('nameBasedUuid is a deterministic version-5 layout uuid', () => {
  const u = nameBasedUuid('debian-12');
  assert.equal(u, nameBasedUuid('debian-12'));
  assert.notEqual(u, nameBasedUuid('debian-11'));
  assert.match(u, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

test('parseDisksXml reads the provision documents xapi accepts', () => {
  assert.deepEqual(parseDisksXml('<provision/>'), []);
  assert.deepEqual(parseDisksXml('<provision></provision>'), []);
  assert.deepEqual(
    parseDisksXml(
      `<?xml version="1.0"?>\n<provision>\n  <disk device="0" size="8589934592" sr="abc" bootable="true" type="system"/>\n` +
        `  <!-- data --><disk bootable='false' type="user" sr="" size="1024" device="1"></disk>\n</provision>\n`,
    ),
    [
      { device: '0', size: 8589934592, sr: 'abc', bootable: true, type: 'system' },
      { device: '1', size: 1024, sr: '', bootable: false, type: 'user' },
    ],
  );
  // A missing or unknown type means "system"; attribute values are XML-decoded.
  assert.deepEqual(parseDisksXml('<provision><disk device="xvda" size="1" sr="a&amp;b" bootable="yes" type="weird"/></provision>'), [
    { device: 'xvda', size: 1, sr: 'a&b', bootable: false, type: 'system' },
  ]);
});

test('parseDisksXml rejects malformed documents with a clear error', () => {
  for (const bad of [
    '',
    '   ',
    'not xml',
    '<provisions/>',
    '<provision x="1"/>',
    '<provision>',
    '<provision><disk device="0" size="1" sr="" bootable="true"/>',
    '<provision><disk size="1" sr="" bootable="true"/></provision>',
    '<provision><disk device="0" sr="" bootable="true"/></provision>',
    '<provision><disk device="0" size="1" bootable="true"/></provision>',
    '<provision><disk device="0" size="1" sr=""/></provision>',
    '<provision><disk device="0" size="-1" sr="" bootable="true"/></provision>',
    '<provision><disk device="0" size="10G" sr="" bootable="true"/></provision>',
    '<provision><disk device="0" size="1" sr="" bootable="true" device="1"/></provision>',
    '<provision><disk device="0" size="1" sr="" bootable="true"><x/></disk></provision>',
    '<provision><vdi device="0"/></provision>',
    '<provision>text</provision>',
    '<provision/><provision/>',
    '<provision><disk device="0" size="1" sr="a&b" bootable="true"/></provision>',
    '<provision><disk device=0 size="1" sr="" bootable="true"/></provision>',
  ]) {
    assert.throws(() => parseDisksXml(bad), /other_config:disks is not a valid <provision> document/, JSON.stringify(bad));
  }
});
