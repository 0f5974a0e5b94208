// The real `xe` binary running xapi's hand-written commands against a real `xapi serve`:
// vm-install from a template, snapshots, uninstall (with its question), disks, VIFs and networks,
// VDIs with their data through /cli's HttpPut/HttpGet, SRs and PBDs, host commands, event-wait,
// data sources, diagnostics, a text console through HttpConnect. Output, errors and exit codes
// as cli_operations.ml has them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jsonCall, lenientCall, login } from './client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { type XeResult, xe, xeInteractive, xeRaw } from './xe-harness.js';
import { waitUntil } from '../wait.js';
import { vmRecord } from '../vm-record.js';

let host: XapiProcess;
let session: string;
let dir: string;

before(async () => {
  // Counters sampled often, so that a started VM's data sources appear within the test.
  host = await startXapi({ args: ['--rrd-sample-interval-ms', '200'] });
  session = await login(host.url, PASSWORD);
  dir = await mkdtemp(join(tmpdir(), 'xe-cmds-'));
});
after(async () => {
  if (host) await stopXapi(host);
  if (dir) await rm(dir, { recursive: true, force: true });
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function ok(r: XeResult): string {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  assert.equal(r.stderr, '');
  return r.stdout;
}

/** A command that prints one uuid. */
async function newUuid(...args: string[]): Promise<string> {
  const out = ok(await xe(host, ...args)).trim();
  assert.match(out, UUID, out);
  return out;
}

test('vm-install from a template by name, its disk listed, started, snapshotted, reverted, uninstalled', async () => {
  const vm = await newUuid('vm-install', 'template=Debian Bookworm 12', 'new-name-label=deb1');
  assert.equal(ok(await xe(host, 'vm-param-get', `uuid=${vm}`, 'param-name=name-description')), 'Installed via xe CLI\n');
  const disks = ok(await xe(host, 'vm-disk-list', 'vm=deb1'));
  const vbd = ok(await xe(host, 'vbd-list', `vm-uuid=${vm}`, '--minimal')).trim();
  const vdi = ok(await xe(host, 'vbd-param-get', `uuid=${vbd}`, 'param-name=vdi-uuid')).trim();
  const size = ok(await xe(host, 'vdi-param-get', `uuid=${vdi}`, 'param-name=virtual-size')).trim();
  const vdiName = ok(await xe(host, 'vdi-param-get', `uuid=${vdi}`, 'param-name=name-label')).trim();
  assert.equal(
    disks,
    'Disk 0 VBD:\n' +
      `uuid ( RO)             : ${vbd}\n    vm-name-label ( RO): deb1\n       userdevice ( RW): 0\n\n\n` +
      'Disk 0 VDI:\n' +
      `uuid ( RO)             : ${vdi}\n       name-label ( RW): ${vdiName}\n    sr-name-label ( RO): Local storage\n     virtual-size ( RO): ${size}\n\n\n`,
  );
  const noTemplate = await xe(host, 'vm-install', 'template=No Such Template', 'new-name-label=x');
  assert.deepEqual([noTemplate.code, noTemplate.stderr], [1, 'Error: No templates matched\n']);
  const notTemplate = await xe(host, 'vm-install', `template-uuid=${vm}`, 'new-name-label=x');
  assert.deepEqual([notTemplate.code, notTemplate.stderr], [1, 'Error: Can only install from templates\n']);

  ok(await xe(host, 'vm-start', `uuid=${vm}`));
  assert.equal(ok(await xe(host, 'vm-list', `uuid=${vm}`, 'params=power-state', '--minimal')), 'running\n');
  ok(await xe(host, 'vm-memory-target-set', 'vm=deb1', 'target=1GiB'));
  ok(await xe(host, 'vm-shutdown', 'vm=deb1'));

  const snap = await newUuid('vm-snapshot', 'vm=deb1', 'new-name-label=before', 'new-name-description=first');
  assert.equal(ok(await xe(host, 'snapshot-list', `uuid=${snap}`, 'params=name-label,name-description', '--minimal')), 'before\n');
  assert.equal(ok(await xe(host, 'snapshot-param-get', `uuid=${snap}`, 'param-name=name-description')), 'first\n');
  ok(await xe(host, 'snapshot-revert', `snapshot-uuid=${snap}`));
  // The VM's disk is now a fresh copy of the snapshot's.
  const revertedVdi = ok(await xe(host, 'vbd-list', `vm-uuid=${vm}`, 'params=vdi-uuid', '--minimal')).trim();
  assert.notEqual(revertedVdi, vdi);
  const revertedName = ok(await xe(host, 'vdi-param-get', `uuid=${revertedVdi}`, 'param-name=name-label')).trim();
  const notSnap = await xe(host, 'snapshot-revert', `uuid=${vm}`);
  assert.deepEqual(
    [notSnap.code, notSnap.stderr],
    [1, `Error: This operation can only be performed on a VM snapshot. ${vm} is not a VM snapshot.\n`],
  );
  const noUuid = await xe(host, 'snapshot-revert');
  assert.deepEqual([noUuid.code, noUuid.stderr], [1, 'Error: Required parameter not found: snapshot-uuid or uuid.\n']);

  const clone = await newUuid('vm-clone', 'vm=deb1', 'new-name-label=deb1-clone');
  assert.equal(ok(await xe(host, 'vm-list', 'name-label=deb1-clone', '--minimal')), `${clone}\n`);

  // Uninstall lists the VM, its own disks and its snapshots, asks, and stops at anything but yes.
  const snapVdi = ok(await xe(host, 'vbd-list', `vm-uuid=${snap}`, 'params=vdi-uuid', '--minimal')).trim();
  const listing =
    'The following items are about to be destroyed\n' +
    `VM : ${vm} (deb1)\nVDI: ${revertedVdi} (${revertedName}) \n` +
    `VM : ${snap} (before)\nVDI: ${snapVdi} (${ok(await xe(host, 'vdi-param-get', `uuid=${snapVdi}`, 'param-name=name-label')).trim()}) \n`;
  const no = await xeRaw(
    ['-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', PASSWORD, 'vm-uninstall', 'vm=deb1'],
    {},
    'no\n',
  );
  assert.deepEqual([no.code, no.stdout, no.stderr], [0, `${listing}Type 'yes' to continue\nAborted (you typed: 'no')\n`, '']);
  const yes = await xeRaw(
    ['-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', PASSWORD, 'vm-uninstall', 'vm=deb1'],
    {},
    'yes\n',
  );
  assert.deepEqual([yes.code, yes.stdout], [0, `${listing}Type 'yes' to continue\nAll objects destroyed\n`]);
  assert.equal(ok(await xe(host, 'vm-list', `uuid=${vm}`, '--minimal')), '\n');
  assert.equal(ok(await xe(host, 'vdi-list', `uuid=${revertedVdi}`, '--minimal')), '\n');
  const forced = ok(await xe(host, 'vm-uninstall', `uuid=${clone}`, '--force'));
  assert.ok(forced.startsWith(`The following items are about to be destroyed\nVM : ${clone} (deb1-clone)\n`), forced);
  assert.ok(forced.endsWith('All objects destroyed\n'));
});

test('vdi-create, vdi-import and vdi-export move the data through a separate connection', async () => {
  const sr = ok(await xe(host, 'sr-list', 'name-label=Local storage', '--minimal')).trim();
  const vdi = await newUuid('vdi-create', `sr-uuid=${sr}`, 'name-label=data', 'virtual-size=2MiB');
  assert.equal(ok(await xe(host, 'vdi-param-get', `uuid=${vdi}`, 'param-name=virtual-size')), `${2 * 2 ** 20}\n`);
  const data = randomBytes(2 * 2 ** 20);
  const src = join(dir, 'disk.raw');
  await writeFile(src, data);
  assert.equal(ok(await xe(host, 'vdi-import', `uuid=${vdi}`, `filename=${src}`, 'format=raw')), '');
  const out = join(dir, 'back.raw');
  assert.equal(ok(await xe(host, 'vdi-export', `uuid=${vdi}`, `filename=${out}`, 'format=raw')), '');
  assert.ok((await readFile(out)).equals(data));
  const again = await xe(host, 'vdi-export', `uuid=${vdi}`, `filename=${out}`, 'format=raw');
  assert.deepEqual([again.code, again.stderr], [1, `Operation failed. Error: Sys_error("${out}: File exists")\n`]);
  const missing = await xe(host, 'vdi-import', `uuid=${vdi}`, `filename=${join(dir, 'absent')}`);
  assert.deepEqual([missing.code, missing.stderr], [1, `Operation failed. Error: file '${join(dir, 'absent')}' does not exist\n`]);

  ok(await xe(host, 'vdi-resize', `uuid=${vdi}`, 'disk-size=4MiB'));
  assert.equal(ok(await xe(host, 'vdi-param-get', `uuid=${vdi}`, 'param-name=virtual-size')), `${4 * 2 ** 20}\n`);
  const copy = await newUuid('vdi-clone', `uuid=${vdi}`, 'new-name-label=data-clone');
  assert.equal(ok(await xe(host, 'vdi-param-get', `uuid=${copy}`, 'param-name=name-label')), 'data-clone\n');
  const both = await xe(host, 'vdi-copy', `uuid=${vdi}`);
  assert.equal(
    both.stderr,
    'Error: Please specify one but not both of: a destination sr-uuid (I will create a fresh VDI); or a destination into-vdi-uuid (I will copy the blocks into this VDI)\n',
  );
  ok(await xe(host, 'vdi-destroy', `uuid=${copy}`));
  ok(await xe(host, 'vdi-destroy', `uuid=${vdi}`));
  const gone = await xe(host, 'vdi-destroy', `uuid=${vdi}`);
  assert.deepEqual([gone.code, gone.stderr], [1, `The uuid you supplied was invalid.\ntype: VDI\nuuid: ${vdi}\n`]);
  // No transfer task is left behind, failed or not. The client of a failed transfer ends at once
  // (as xapi's does), so the server may still be finishing the task: waited for, not assumed.
  for (const label of ['VDI import', 'VDI export']) {
    await waitUntil(`no ${label} task left`, async () => ok(await xe(host, 'task-list', `name-label=${label}`, '--minimal')) === '\n');
  }
});

test('sr-create of a file SR, its PBD, scan, unplug and forget', async () => {
  const location = await mkdtemp(join(dir, 'sr-'));
  const sr = await newUuid('sr-create', 'name-label=files', 'type=file', `device-config:location=${location}`);
  const pbd = ok(await xe(host, 'pbd-list', `sr-uuid=${sr}`, '--minimal')).trim();
  assert.equal(ok(await xe(host, 'pbd-param-get', `uuid=${pbd}`, 'param-name=device-config', `param-key=location`)), `${location}\n`);
  assert.equal(ok(await xe(host, 'pbd-param-get', `uuid=${pbd}`, 'param-name=currently-attached')), 'true\n');
  ok(await xe(host, 'sr-scan', `uuid=${sr}`));
  ok(await xe(host, 'pbd-unplug', `uuid=${pbd}`));
  ok(await xe(host, 'sr-forget', `uuid=${sr}`));
  assert.equal(ok(await xe(host, 'sr-list', `uuid=${sr}`, '--minimal')), '\n');
});

test('networks and VIFs: network-create, vif-create, vm-vif-list, vif-destroy, network-destroy', async () => {
  const template = ok(await xe(host, 'template-list', 'name-label=Debian Bookworm 12', '--minimal')).trim();
  const vm = await newUuid('vm-clone', `uuid=${template}`, 'new-name-label=netvm');
  ok(await xe(host, 'vm-param-set', `uuid=${vm}`, 'is-a-template=false'));
  const net = await newUuid('network-create', 'name-label=lan2', 'MTU=9000');
  assert.equal(ok(await xe(host, 'network-param-get', `uuid=${net}`, 'param-name=MTU')), '9000\n');
  const vif = await newUuid('vif-create', `vm-uuid=${vm}`, `network-uuid=${net}`, 'device=0', 'mac=random');
  const mac = ok(await xe(host, 'vif-param-get', `uuid=${vif}`, 'param-name=MAC')).trim();
  assert.match(mac, /^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/, 'locally administered, unicast');
  assert.equal(
    ok(await xe(host, 'vm-vif-list', 'vm=netvm')),
    `uuid ( RO)                  : ${vif}\n         vm-name-label ( RO): netvm\n                device ( RO): 0\n                   MAC ( RO): ${mac}\n` +
      `          network-uuid ( RO): ${net}\n    network-name-label ( RO): lan2\n\n\n`,
  );
  ok(await xe(host, 'vif-destroy', `uuid=${vif}`));
  ok(await xe(host, 'network-destroy', `uuid=${net}`));
  assert.equal(ok(await xe(host, 'network-list', `uuid=${net}`, '--minimal')), '\n');
});

test('host commands: selectors, disable/enable, free memory, declare-dead asks first', async () => {
  const hostUuid = ok(await xe(host, 'host-list', '--minimal')).trim();
  ok(await xe(host, 'host-disable', `host=${hostUuid}`));
  assert.equal(ok(await xe(host, 'host-param-get', `uuid=${hostUuid}`, 'param-name=enabled')), 'false\n');
  ok(await xe(host, 'host-enable'));
  assert.equal(ok(await xe(host, 'host-param-get', `uuid=${hostUuid}`, 'param-name=enabled')), 'true\n');
  const free = ok(await xe(host, 'host-compute-free-memory'));
  assert.equal(
    free,
    `${String(await jsonCall(host.url, 'host.compute_free_memory', [session, await jsonCall(host.url, 'host.get_by_uuid', [session, hostUuid])]))}\n`,
  );
  const none = await xe(host, 'host-disable', 'host=nowhere');
  assert.deepEqual([none.code, none.stderr], [1, 'Error: No matching hosts found\n']);
  const asked = await xeRaw(
    ['-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', PASSWORD, 'host-declare-dead', `uuid=${hostUuid}`],
    {},
    'n\n',
  );
  assert.deepEqual(
    [asked.code, asked.stdout],
    [
      0,
      'WARNING: A host should only be declared dead if it is verified offline.\n' +
        'WARNING: Performing this operation if the host is still online and has any\n' +
        'WARNING: running VMs may lead to possible data loss and/or corruption.\n' +
        "Type 'yes' to continue\nAborted (you typed: 'n')\n",
    ],
  );
});

test('event-wait returns once an object of the class matches, at once or at the event that makes it so', async () => {
  const hostUuid = ok(await xe(host, 'host-list', '--minimal')).trim();
  assert.equal(ok(await xe(host, 'event-wait', 'class=host', `uuid=${hostUuid}`, 'enabled=true')), '');
  const waiting = xe(host, 'event-wait', 'class=host', `uuid=${hostUuid}`, 'name-description=/=');
  await jsonCall(host.url, 'host.set_name_description', [
    session,
    await jsonCall(host.url, 'host.get_by_uuid', [session, hostUuid]),
    'described',
  ]);
  assert.equal(ok(await waiting), '');
  const missingKey = await xe(host, 'event-wait', 'class=host', 'colour=red');
  assert.deepEqual([missingKey.code, missingKey.stderr], [1, 'Error: key missing: colour\n']);
  const unknownClass = await xe(host, 'event-wait', 'class=blob');
  assert.deepEqual([unknownClass.code, unknownClass.stderr], [1, "Error: Cli listening for class 'blob' not currently implemented\n"]);
});

test('diagnostic-license-status: a row per host, nearest expiry first, then the pool, in padded columns', async () => {
  const out = ok(await xe(host, 'diagnostic-license-status'));
  const lines = out.split('\n');
  assert.equal(lines.length, 6, out); // heading, divider, this host, divider, the pool, and the final newline
  const uuid = ok(await xe(host, 'host-list', '--minimal')).trim();
  const hostname = ok(await xe(host, 'host-param-get', `uuid=${uuid}`, 'param-name=hostname')).trim();
  const width = (l: string) => l.length;
  assert.ok(
    lines.slice(0, 5).every((l) => width(l) === width(lines[0]!)),
    out,
  );
  // No expiry in this host's license_params: xapi reads it as the epoch.
  const days = ((0 - Date.now() / 1000) / 86400).toFixed(1);
  const row = lines[2]!;
  assert.ok(row.startsWith(`${hostname.padEnd(Math.max(hostname.length, 'Hostname'.length))} ${uuid.slice(0, 8)} VLAN QoS SStorage `), row);
  assert.match(row, / Start Start xcp-ng {2}19700101T00:00:00Z -\d+\.\d\s*$/);
  assert.ok(Math.abs(Number(row.trim().split(' ').pop()) - Number(days)) <= 0.1, row);
  assert.match(lines[0]!, /^Hostname +UUID +Features +Edition Expiry +Days left$/);
  assert.match(lines[1]!, /^- +- +- +- +- +- *$/);
  assert.match(lines[4]!, /^- +- +VLAN QoS .* Start Start - +- +- *$/);
});

test('data-source commands: a record per source as the API lists them, a query in "%f", record and forget', async () => {
  const hostUuid = ok(await xe(host, 'host-list', '--minimal')).trim();
  const hostRef = (await jsonCall(host.url, 'host.get_by_uuid', [session, hostUuid])) as string;
  const sources = (await lenientCall(host.url, 'host.get_data_sources', [session, hostRef])) as Record<string, unknown>[];
  const total = sources.find((d) => d.name_label === 'memory_total_kib')!;
  const listed = ok(await xe(host, 'host-data-source-list', `uuid=${hostUuid}`));
  assert.equal(listed.split('\n\n').filter((r) => r.trim() !== '').length, sources.length);
  assert.ok(
    listed.includes(
      'name_label          : memory_total_kib\n' +
        `    name_description: ${String(total.name_description)}\n` +
        `             enabled: ${String(total.enabled)}\n` +
        `            standard: ${String(total.standard)}\n` +
        '                 min: 0.\n' +
        '                 max: inf\n' +
        `               units: ${String(total.units)}\n\n\n`,
    ),
    listed,
  );
  // The first sample may not be taken yet: the value is nan until it is.
  const query = () => lenientCall(host.url, 'host.query_data_source', [session, hostRef, 'memory_total_kib']);
  await waitUntil('a first sample of the host', async () => typeof (await query()) === 'number');
  const kib = (await query()) as number;
  assert.equal(ok(await xe(host, 'host-data-source-query', 'data-source=memory_total_kib')), `${kib.toFixed(6)}\n`);
  assert.equal(ok(await xe(host, 'host-data-source-record', 'data-source=memory_total_kib')), '');
  assert.equal(ok(await xe(host, 'host-data-source-forget', 'data-source=memory_total_kib')), '');
  const missing = await xe(host, 'host-data-source-query');
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /data-source/);

  const vm = await newUuid('vm-install', 'template=Debian Bookworm 12', 'new-name-label=counted');
  const halted = await xe(host, 'vm-data-source-list', `uuid=${vm}`);
  assert.equal(halted.code, 1, 'a halted VM has no data sources to list');
  ok(await xe(host, 'vm-start', `uuid=${vm}`));
  const vmRef = (await jsonCall(host.url, 'VM.get_by_uuid', [session, vm])) as string;
  await waitUntil(
    'a first sample of the VM',
    async () =>
      typeof (await lenientCall(host.url, 'VM.query_data_source', [session, vmRef, 'memory']).catch(() => undefined)) === 'number',
  );
  assert.match(ok(await xe(host, 'vm-data-source-list', 'vm=counted')), /^name_label {10}: memory$/m);
  assert.match(ok(await xe(host, 'vm-data-source-query', 'vm=counted', 'data-source=memory')), /^\d+\.\d{6}\n$/);
  ok(await xe(host, 'vm-uninstall', `uuid=${vm}`, '--force'));
});

test('diagnostic-vdi-status: the VDI sharing and locking fields, then its VBDs, attached ones as active', async () => {
  const vm = await newUuid('vm-install', 'template=Debian Bookworm 12', 'new-name-label=diag');
  const vbd = ok(await xe(host, 'vbd-list', `vm-uuid=${vm}`, '--minimal')).trim();
  const vdi = ok(await xe(host, 'vbd-param-get', `uuid=${vbd}`, 'param-name=vdi-uuid')).trim();
  const sr = ok(await xe(host, 'vdi-param-get', `uuid=${vdi}`, 'param-name=sr-uuid')).trim();
  const vdiName = ok(await xe(host, 'vdi-param-get', `uuid=${vdi}`, 'param-name=name-label')).trim();
  const device = async () => ok(await xe(host, 'vbd-param-get', `uuid=${vbd}`, 'param-name=device')).trim();
  const head =
    `uuid ( RO)            : ${vdi}\n      name-label ( RW): ${vdiName}\n         sr-uuid ( RO): ${sr}\n` +
    '        sharable ( RO): false\n       read-only ( RO): false\n    storage-lock ( RO): false\n\n\n';
  const vbdRecord = (dev: string) =>
    `uuid ( RO)            : ${vbd}\n           empty ( RO): false\n          device ( RO): ${dev}\n      userdevice ( RW): 0\n` +
    '            mode ( RW): RW\n            type ( RW): Disk\n    storage-lock ( RO): false\n\n\n';
  assert.equal(
    ok(await xe(host, 'diagnostic-vdi-status', `uuid=${vdi}`)),
    `${head}no active VBDs.\ninactive VBDs:\n${vbdRecord(await device())}`,
  );
  ok(await xe(host, 'vm-start', `uuid=${vm}`));
  assert.equal(ok(await xe(host, 'diagnostic-vdi-status', `uuid=${vdi}`)), `${head}active VBDs:\n${vbdRecord(await device())}`);
  const none = await xe(host, 'diagnostic-vdi-status', 'uuid=00000000-0000-0000-0000-000000000000');
  assert.equal(none.code, 1);
  ok(await xe(host, 'vm-uninstall', `uuid=${vm}`, '--force'));
});

test('console: a PV guest’s text console in the terminal until Ctrl+], and the refusals', async () => {
  const vm = (await jsonCall(host.url, 'VM.create', [
    session,
    vmRecord('textcon', { memory: 128 * 1024 * 1024 }, { domain_type: 'pv', HVM_boot_policy: '' }),
  ])) as string;
  await jsonCall(host.url, 'VM.start', [session, vm, false, false]);
  const con = xeInteractive(host, 'console', 'vm=textcon');
  await waitUntil('the login prompt', () => con.stdout().includes('textcon login: '));
  con.type('root\r');
  await waitUntil('the keys echoed', () => con.stdout().includes('root\r\nPassword: '));
  con.type('\x1d');
  const r = await con.done;
  assert.deepEqual([r.code, r.stderr], [0, '']);
  assert.ok(r.stdout.startsWith("Connecting to console on VM textcon. Press Ctrl + ']' to quit.\n"), r.stdout);

  const none = await xe(host, 'console', 'vm=nothing-of-that-name');
  assert.deepEqual([none.code, none.stderr], [1, 'No VM found\n']);
  const hvm = (await jsonCall(host.url, 'VM.create', [session, vmRecord('graphical', { memory: 128 * 1024 * 1024 })])) as string;
  await jsonCall(host.url, 'VM.start', [session, hvm, false, false]);
  const graphical = await xe(host, 'console', 'vm=graphical');
  assert.deepEqual([graphical.code, graphical.stderr], [1, 'No text console available\n']);
  for (const v of [vm, hvm]) await jsonCall(host.url, 'VM.hard_shutdown', [session, v]);
});

test('pool-ha-*: the planner’s answers as xe prints them, and the refusals', async () => {
  const hostUuid = ok(await xe(host, 'host-list', '--minimal')).trim();
  const max = await jsonCall(host.url, 'pool.ha_compute_max_host_failures_to_tolerate', [session]);
  assert.equal(ok(await xe(host, 'pool-ha-compute-max-host-failures-to-tolerate')), `${String(max)}\n`);
  const vm = (await jsonCall(host.url, 'VM.create', [session, vmRecord('protected', { memory: 128 * 1024 * 1024 })])) as string;
  const vmUuid = (await jsonCall(host.url, 'VM.get_uuid', [session, vm])) as string;
  const unpaired = await xe(host, 'pool-ha-compute-hypothetical-max-host-failures-to-tolerate', `vm-uuid=${vmUuid}`);
  assert.equal(unpaired.code, 1);
  assert.match(unpaired.stderr, /Call requires an equal number of vm-uuid and restart-priority arguments/);
  const hypothetical = await jsonCall(host.url, 'pool.ha_compute_hypothetical_max_host_failures_to_tolerate', [
    session,
    { [vm]: 'restart' },
  ]);
  assert.equal(
    ok(await xe(host, 'pool-ha-compute-hypothetical-max-host-failures-to-tolerate', `vm-uuid=${vmUuid}`, 'restart-priority=restart')),
    `${String(hypothetical)}\n`,
  );
  await jsonCall(host.url, 'VM.start', [session, vm, false, false]);
  const plan = ok(await xe(host, 'pool-ha-compute-vm-failover-plan', `host-uuids=${hostUuid}`));
  assert.match(plan, /^VM +: Destination Host or Error\n/);
  assert.match(plan, new RegExp(`${vmUuid} \\(protected\\): `));
  const badSeconds = await xe(host, 'pool-ha-prevent-restarts-for', 'seconds=soon');
  assert.equal(badSeconds.code, 1);
  await jsonCall(host.url, 'VM.hard_shutdown', [session, vm]);
  // A pool of one host: its local SR, plugged on every host of the pool, may hold the statefile
  // (xha_statefile.ml), so enable_ha picks it when no heartbeat SR is named.
  const poolUuid = ok(await xe(host, 'pool-list', '--minimal')).trim();
  const haEnabled = async () => ok(await xe(host, 'pool-param-get', `uuid=${poolUuid}`, 'param-name=ha-enabled'));
  assert.equal(ok(await xe(host, 'pool-ha-enable', 'ha-config:timeout=10')), '');
  assert.equal(await haEnabled(), 'true\n');
  const again = await xe(host, 'pool-ha-enable');
  assert.deepEqual(
    [again.code, again.stderr.split('\n')[0]],
    [1, 'The operation could not be performed because HA is enabled on the Pool'],
  );
  assert.equal(ok(await xe(host, 'pool-ha-disable')), '');
  assert.equal(await haEnabled(), 'false\n');
});
