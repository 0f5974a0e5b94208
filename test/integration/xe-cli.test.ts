// The real `xe` binary against a real `xapi serve`: the /cli transport, help before login,
// errors and exit codes, and the generated <class>-list / <class>-param-* commands, output
// compared byte for byte with xe's layout (../shared/spec/cli.md §3, §5, §7; cli_printer.ml).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { jsonCall, login } from './client.js';
import { PASSWORD, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { xe, xeRaw } from './xe-harness.js';
import { vmRecord } from '../vm-record.js';

let host: XapiProcess;
let session: string;
let vm: string;
let vmUuid: string;

before(async () => {
  host = await startXapi();
  session = await login(host.url, PASSWORD);
  vm = (await jsonCall(host.url, 'VM.create', [session, vmRecord('web01', { memory: 256 * 2 ** 20 })])) as string;
  vmUuid = (await jsonCall(host.url, 'VM.get_uuid', [session, vm])) as string;
});
after(async () => {
  if (host) await stopXapi(host);
});

const USAGE_HEAD = `Usage:
  xe <command>
    [ -s <server> ]            XenServer host
    [ -p <port> ]              XenServer port number
    [ -u <username> -pw <password> | -pwf <password file> ]
                               User authentication (password or file)
    [ --nossl ]                Disable SSL/TLS
    [ --debug ]                Enable debug output
    [ --debug-on-fail ]        Enable debug output only on failure
    [ --traceparent <value> ]  Distributed tracing context
    [ <other arguments> ... ]  Command-specific options

To get help on a specific command:
  xe help <command>

`;

test('xe help answers before any login: usage, then the standard commands packed 4-indented', async () => {
  const r = await xeRaw(['-s', host.address, '-p', String(host.httpsPort), '-u', 'nobody', '-pw', 'wrong', 'help']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const head = `${USAGE_HEAD}To get a full listing of commands:\n  xe help --all\n\nCommon command list\n-------------------\n\n`;
  assert.ok(r.stdout.startsWith(head), r.stdout);
  const names = r.stdout.slice(head.length).trimEnd().split('\n');
  for (const line of names) {
    assert.match(line, /^ {4}\S/);
    assert.ok(line.length <= 78, line);
  }
  const listed = names.join(',').replace(/\s/g, '').split(',');
  assert.deepEqual(listed, [...listed].sort());
  for (const n of ['network-list', 'sr-list', 'vm-list', 'vm-start', 'vm-shutdown']) assert.ok(listed.includes(n), n);
  for (const n of ['vm-destroy', 'vm-param-get', 'pbd-list']) assert.ok(!listed.includes(n), `${n} is not a Standard command`);
});

test('xe help --all groups host-, vm- and the rest; --minimal gives one comma-separated line', async () => {
  const r = await xeRaw(['-s', host.address, '-p', String(host.httpsPort), 'help', '--all']);
  assert.equal(r.code, 0);
  const head = `${USAGE_HEAD}Full command list\n-----------------\n\n`;
  assert.ok(r.stdout.startsWith(head), r.stdout.slice(0, 900));
  // Three packed groups: host-*, a line of 4 spaces, vm-*, a line of 4 spaces, the rest.
  const groups = r.stdout.slice(head.length).trimEnd().split('\n    \n');
  assert.equal(groups.length, 3);
  const names = groups.map((g) => g.split('\n').join(',').replace(/\s/g, '').split(','));
  assert.ok(names[0]!.every((n) => n.startsWith('host-')) && names[0]!.includes('host-list'));
  assert.ok(names[1]!.every((n) => n.startsWith('vm-')) && names[1]!.includes('vm-start'));
  assert.ok(names[2]!.every((n) => !n.startsWith('vm-') && !n.startsWith('host-')) && names[2]!.includes('sr-create'));
  const m = await xeRaw(['-s', host.address, '-p', String(host.httpsPort), 'help', '--all', '--minimal']);
  assert.equal(m.code, 0);
  const all = m.stdout.trimEnd().split(',');
  assert.equal(m.stdout.split('\n').length, 2);
  assert.deepEqual(all, [...all].sort());
  assert.ok(all.includes('vm-param-set') && all.includes('pbd-list'));
});

test('xe help COMMAND prints its record; selectors and unknown names as xapi does', async () => {
  const r = await xeRaw(['-s', host.address, '-p', String(host.httpsPort), 'help', 'vm-param-get', 'nosuch']);
  assert.equal(r.code, 0);
  assert.equal(
    r.stdout,
    'command name            : vm-param-get\n' +
      '        reqd params     : uuid, param-name\n' +
      '        optional params : param-key, database:\n' +
      "        description     : Gets the parameter specified of the object. If the parameter is a map of key=value pairs, use 'param-key=<key>' to get the value associated with a particular key.\n" +
      '\n\n' +
      "Unknown command 'nosuch'\n",
  );
});

test('xe vm-list prints aligned records, each followed by two blank lines', async () => {
  const r = await xe(host, 'vm-list', `uuid=${vmUuid}`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout, `uuid ( RO)           : ${vmUuid}\n     name-label ( RW): web01\n    power-state ( RO): halted\n\n\n`);
  const minimal = await xe(host, 'vm-list', 'name-label=web01', '--minimal');
  assert.equal(minimal.stdout, `${vmUuid}\n`);
  const names = await xe(host, 'vm-list', 'params=name-label', 'is-control-domain=false', '--minimal');
  assert.equal(names.stdout, 'web01\n');
  const ordered = await xe(host, 'vm-list', 'params=name-label,uuid', 'is-control-domain=false', '--minimal');
  assert.equal(ordered.stdout, `${vmUuid}\n`, 'columns come in record order: uuid first');
  const none = await xe(host, 'vm-list', 'name-label=nothing-has-this', '--minimal');
  assert.equal(none.stdout, '\n');
  const dom0 = await xe(host, 'vm-list', 'is-control-domain=true', 'params=power-state');
  assert.equal(dom0.stdout, 'power-state ( RO)    : running\n\n\n');
});

test('xe filters: map keys, set membership, unknown fields', async () => {
  await jsonCall(host.url, 'VM.add_to_other_config', [session, vm, 'role', 'web']);
  await jsonCall(host.url, 'VM.add_tags', [session, vm, 'blue']);
  assert.equal((await xe(host, 'vm-list', 'other-config:role=web', '--minimal')).stdout, `${vmUuid}\n`);
  assert.equal((await xe(host, 'vm-list', 'other-config-role=web', '--minimal')).stdout, `${vmUuid}\n`, 'legacy map-key form');
  assert.equal((await xe(host, 'vm-list', 'tags:contains=blue', '--minimal')).stdout, `${vmUuid}\n`);
  const bad = await xe(host, 'vm-list', 'tags:has=blue');
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr, 'Error: Invalid syntax for set filtering (should be set-param:contains=key)\n');
  const unknown = await xe(host, 'vm-list', 'colour=red');
  assert.equal(unknown.code, 1);
  assert.equal(unknown.stderr, "Error: Unknown field 'colour'\n");
});

test('xe <class>-param-get/set/add/remove/clear go through the API', async () => {
  assert.equal((await xe(host, 'vm-param-set', `uuid=${vmUuid}`, 'name-label=web02', 'other-config:foo=bar')).code, 0);
  assert.equal(await jsonCall(host.url, 'VM.get_name_label', [session, vm]), 'web02');
  assert.equal((await xe(host, 'vm-param-get', `uuid=${vmUuid}`, 'param-name=name-label')).stdout, 'web02\n');
  assert.equal((await xe(host, 'vm-param-get', `uuid=${vmUuid}`, 'param-name=other-config', 'param-key=foo')).stdout, 'bar\n');
  const missingKey = await xe(host, 'vm-param-get', `uuid=${vmUuid}`, 'param-name=other-config', 'param-key=nokey');
  assert.deepEqual([missingKey.code, missingKey.stderr], [1, 'Error: Key nokey not found in map\n']);
  assert.equal((await xe(host, 'vm-param-set', `uuid=${vmUuid}`, 'memory-static-max=1GiB')).code, 0);
  assert.equal(await jsonCall(host.url, 'VM.get_memory_static_max', [session, vm]), 2 ** 30);

  assert.equal((await xe(host, 'vm-param-add', `uuid=${vmUuid}`, 'param-name=tags', 'param-key=red')).code, 0);
  assert.deepEqual(await jsonCall(host.url, 'VM.get_tags', [session, vm]), ['blue', 'red']);
  assert.equal((await xe(host, 'vm-param-get', `uuid=${vmUuid}`, 'param-name=tags')).stdout, 'blue, red\n', 'tags are comma-separated');
  assert.equal((await xe(host, 'vm-param-remove', `uuid=${vmUuid}`, 'param-name=tags', 'param-key=blue')).code, 0);
  const notIn = await xe(host, 'vm-param-remove', `uuid=${vmUuid}`, 'param-name=tags', 'param-key=green');
  assert.deepEqual([notIn.code, notIn.stderr], [1, 'Error: Key green is not in the set\n']);
  assert.equal((await xe(host, 'vm-param-clear', `uuid=${vmUuid}`, 'param-name=other-config')).code, 0);
  assert.deepEqual(await jsonCall(host.url, 'VM.get_other_config', [session, vm]), {});

  const ro = await xe(host, 'vm-param-set', `uuid=${vmUuid}`, 'power-state=running');
  assert.deepEqual([ro.code, ro.stderr], [1, "Error: Field 'power-state' is read-only.\n"]);
  const setField = await xe(host, 'vm-param-set', `uuid=${vmUuid}`, 'tags:x=y');
  assert.deepEqual([setField.code, setField.stderr], [1, 'Error: Cannot param-set on set fields\n']);
  const bytes = await xe(host, 'vm-param-set', `uuid=${vmUuid}`, 'memory-static-max=lots');
  assert.equal(
    bytes.stderr,
    "Error: Failed to parse field 'memory-static-max': expecting an integer (possibly with suffix KiB, MiB, GiB, TiB), got 'lots'\n",
  );
  const noField = await xe(host, 'vm-param-get', `uuid=${vmUuid}`, 'param-name=colour');
  assert.deepEqual([noField.code, noField.stderr], [1, 'Error code: Missing parameter\nError parameters: colour\n']);
});

test('xe vm-param-list shows every visible field with its RO/RW/SRO/MRW marker, keys right-aligned', async () => {
  const r = await xe(host, 'vm-param-list', `uuid=${vmUuid}`);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  assert.ok(r.stdout.endsWith('\n\n\n'));
  const width = lines[0]!.indexOf(': ');
  assert.match(lines[0]!, new RegExp(`^uuid \\( RO\\) +: ${vmUuid}$`));
  for (const l of lines.slice(1).filter((x) => x !== '')) assert.equal(l.indexOf(': '), width, l);
  assert.ok(lines.some((l) => /^ +name-label \( RW\): web02$/.test(l)));
  assert.ok(lines.some((l) => /^ +tags \(SRW\): red$/.test(l)));
  assert.ok(lines.some((l) => /^ +other-config \(MRW\): $/.test(l)));
  assert.ok(lines.some((l) => /^ +allowed-operations \(SRO\): /.test(l)));
  assert.ok(lines.some((l) => /^ +ha-always-run \( RW\) \[DEPRECATED\]: false$/.test(l)));
  assert.ok(!lines.some((l) => /^ +(NVRAM|nomigrate) /.test(l)), 'hidden fields are left out');
  assert.ok(lines.some((l) => /^ +resident-on \( RO\): <not in database>$/.test(l)));
});

test('errors: datamodel text and parameters, authentication, unknown command, missing parameter, syntax', async () => {
  const invalid = await xe(host, 'vm-param-get', 'uuid=nope', 'param-name=uuid');
  assert.deepEqual([invalid.code, invalid.stdout, invalid.stderr], [1, '', 'The uuid you supplied was invalid.\ntype: VM\nuuid: nope\n']);
  const auth = await xeRaw(['-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', 'wrong', 'vm-list']);
  assert.deepEqual([auth.code, auth.stderr], [1, "Authentication failed\nFor usage run: 'xe help'\n"]);
  const noUser = await xeRaw(['-s', host.address, '-p', String(host.httpsPort), '-u', '', '-pw', 'wrong', 'vm-list']);
  assert.deepEqual([noUser.code, noUser.stderr], [1, "Username/password must be specified\nFor usage run: 'xe help'\n"]);
  const unknown = await xe(host, 'vm-fly');
  assert.deepEqual([unknown.code, unknown.stderr], [1, "Unknown command: vm-fly\nFor usage run: 'xe help'\n"]);
  const missing = await xe(host, 'vm-param-get', `uuid=${vmUuid}`);
  assert.deepEqual([missing.code, missing.stderr], [1, "Required parameter not found: param-name\nFor usage run: 'xe help'\n"]);
  const syntax = await xe(host, 'vm-list', '-q');
  assert.deepEqual([syntax.code, syntax.stderr], [1, "Syntax error: \nFor usage run: 'xe help'\n"]);
  const badBool = await xe(host, 'vm-list', 'minimal=perhaps');
  assert.equal(badBool.code, 1);
});

test('the client: -version, usage, password file, XE_EXTRA_ARGS, connection failures', async () => {
  assert.deepEqual(await xeRaw(['-version']), { code: 0, stdout: 'ThinCLI protocol: 0.2\n', stderr: '' });
  const usage = await xeRaw([]);
  assert.equal(usage.code, 0);
  assert.ok(usage.stderr.startsWith('Usage:\n  xe <command>\n'));
  assert.ok(usage.stderr.includes('    [ --minimal ]              Output only values in a comma-separated lists\n'));
  const { writeFile, mkdtemp, rm } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(join(tmpdir(), 'xe-'));
  try {
    await writeFile(join(dir, 'pw'), `root\n${PASSWORD}\n`);
    const pwf = await xeRaw([
      '-s',
      host.address,
      '-p',
      String(host.httpsPort),
      '-pwf',
      join(dir, 'pw'),
      'vm-list',
      `uuid=${vmUuid}`,
      '--minimal',
    ]);
    assert.deepEqual([pwf.code, pwf.stdout], [0, `${vmUuid}\n`]);
    await writeFile(join(dir, 'short'), 'root');
    const short = await xeRaw(['-pwf', join(dir, 'short'), 'vm-list']);
    assert.deepEqual(
      [short.code, short.stderr],
      [1, 'Error: password file format: expecting username on the first line, password on the second line\n'],
    );
    const noFile = await xeRaw(['-pwf', join(dir, 'absent'), 'vm-list']);
    assert.deepEqual([noFile.code, noFile.stderr], [1, `Error opening password file '${join(dir, 'absent')}'\n`]);
    // ~/.xe and XE_EXTRA_ARGS supply connection options; the command line wins.
    await writeFile(join(dir, '.xe'), `server=${host.address}\nport=${host.httpsPort}\nusername=root\n`);
    const rc = await xeRaw(['vm-list', `uuid=${vmUuid}`, '--minimal'], { HOME: dir, XE_EXTRA_ARGS: `password=${PASSWORD}` });
    assert.deepEqual([rc.code, rc.stdout], [0, `${vmUuid}\n`]);
    await writeFile(join(dir, '.xe'), 'not a setting\n');
    const badRc = await xeRaw(
      ['-s', host.address, '-p', String(host.httpsPort), '-u', 'root', '-pw', PASSWORD, 'vm-list', `uuid=${vmUuid}`, '--minimal'],
      { HOME: dir },
    );
    assert.deepEqual([badRc.code, badRc.stdout, badRc.stderr], [0, `${vmUuid}\n`, 'Error parsing rc file. No defaults loaded\n']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const badPort = await xeRaw(['-p', 'x', 'vm-list']);
  assert.equal(badPort.code, 0);
  assert.ok(badPort.stderr.startsWith('Port number must be an integer (0-65535)\nUsage:\n'));
  // Plain HTTP works too (--nossl); an HTTP port spoken to with TLS is no CLI server.
  const plain = await xeRaw([
    '-s',
    host.address,
    '-p',
    String(host.httpPort),
    '--nossl',
    '-u',
    'root',
    '-pw',
    PASSWORD,
    'vm-list',
    `uuid=${vmUuid}`,
    '--minimal',
  ]);
  assert.deepEqual([plain.code, plain.stdout], [0, `${vmUuid}\n`]);
  const refused = await xeRaw(['-s', host.address, '-p', '1', '--nossl', 'vm-list']);
  assert.deepEqual([refused.code, refused.stderr], [1, 'Unable to contact server. Please check server and port settings.\n']);
});

test('the /cli handler speaks the protocol straight after the body: no HTTP response line', async () => {
  const body = 'help\nnosuch\nusername=root\npassword=x';
  const got = await new Promise<Buffer>((resolve, reject) => {
    const s = connect({ host: host.address, port: host.httpPort }, () => {
      s.write(`POST /cli HTTP/1.0\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    });
    const chunks: Buffer[] = [];
    let sent = false;
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      const all = Buffer.concat(chunks);
      if (!sent && all.length >= 35) {
        sent = true;
        s.write(all.subarray(0, 35)); // our handshake back: the same prefix and version
      }
    });
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
  assert.equal(got.subarray(0, 27).toString(), 'XenSource thin CLI protocol');
  assert.deepEqual([got.readInt32LE(27), got.readInt32LE(31)], [0, 2]);
  // Print "Unknown command 'nosuch'" then Exit 0, each framed by its length.
  const text = "Unknown command 'nosuch'";
  const print = got.subarray(35);
  assert.equal(print.readInt32LE(0), 4 + 4 + 4 + text.length);
  assert.deepEqual([print.readInt32LE(4), print.readInt32LE(8), print.readInt32LE(12)], [9, 0, text.length]);
  assert.equal(print.subarray(16, 16 + text.length).toString(), text);
  const exit = print.subarray(16 + text.length);
  assert.deepEqual([exit.readInt32LE(0), exit.readInt32LE(4), exit.readInt32LE(8), exit.readInt32LE(12)], [12, 9, 4, 0]);
  assert.equal(exit.length, 16);
});

test('selector commands: vm= and field filters, no match, several without --multiple, failures listed', async () => {
  const a = (await jsonCall(host.url, 'VM.create', [session, vmRecord('sel-a', { memory: 128 * 2 ** 20 })])) as string;
  const b = (await jsonCall(host.url, 'VM.create', [session, vmRecord('sel-b', { memory: 128 * 2 ** 20 })])) as string;
  const aUuid = (await jsonCall(host.url, 'VM.get_uuid', [session, a])) as string;
  const bUuid = (await jsonCall(host.url, 'VM.get_uuid', [session, b])) as string;
  await jsonCall(host.url, 'VM.add_to_other_config', [session, a, 'group', 'sel']);
  await jsonCall(host.url, 'VM.add_to_other_config', [session, b, 'group', 'sel']);

  const none = await xe(host, 'vm-start', 'vm=no-such-vm');
  assert.deepEqual([none.code, none.stdout, none.stderr], [1, '', 'Error: No matching VMs found\n']);
  const started = await xe(host, 'vm-start', 'vm=sel-a');
  assert.deepEqual([started.code, started.stdout, started.stderr], [0, '', '']);
  assert.equal(await jsonCall(host.url, 'VM.get_power_state', [session, a]), 'Running');
  const byUuid = await xe(host, 'vm-start', `vm=${bUuid}`);
  assert.equal(byUuid.code, 0, byUuid.stderr);

  const several = await xe(host, 'vm-shutdown', 'other-config:group=sel');
  assert.deepEqual(
    [several.code, several.stderr],
    [1, 'Error: Multiple matches VMs found. --multiple required to complete the operation\n'],
  );
  const notField = await xe(host, 'vm-shutdown', 'colour=red');
  assert.deepEqual([notField.code, notField.stderr], [1, "Error: Unknown field 'colour'\n"]);
  const shut = await xe(host, 'vm-shutdown', 'other-config:group=sel', '--multiple', '--force');
  assert.deepEqual([shut.code, shut.stdout, shut.stderr], [0, '', '']);
  assert.equal(await jsonCall(host.url, 'VM.get_power_state', [session, a]), 'Halted');
  assert.equal(await jsonCall(host.url, 'VM.get_power_state', [session, b]), 'Halted');

  // Both halted: suspending each fails with the VM's own error, listed on stdout.
  const failed = await xe(host, 'vm-suspend', 'other-config:group=sel', '--multiple');
  assert.equal(failed.code, 1);
  assert.equal(failed.stderr, '');
  const lines = failed.stdout.split('\n').filter((l) => l.startsWith('operation failed on '));
  assert.deepEqual(
    lines.map((l) => l.slice('operation failed on '.length, 'operation failed on '.length + 36)).sort(),
    [aUuid, bUuid].sort(),
  );
  assert.match(
    failed.stdout,
    /operation failed on [0-9a-f-]{36}: You attempted an operation on a VM that was not in an appropriate power state at the time; for example, you attempted to start a VM that was already running\. The parameters returned are the VM's handle, and the expected and actual VM state at the time of the call\.\nvm: [0-9a-f-]{36} \(sel-[ab]\)\nexpected: running\nactual: halted\n/,
  );

  const destroyDom0 = await xe(
    host,
    'vm-destroy',
    `uuid=${(await xe(host, 'vm-list', 'is-control-domain=true', '--minimal')).stdout.trim()}`,
  );
  assert.equal(destroyDom0.code, 1);
  assert.equal(destroyDom0.stderr.split('\n')[1], 'reason: You cannot destroy a control domain via the CLI');
  assert.equal((await xe(host, 'vm-destroy', `uuid=${bUuid}`)).code, 0);
  assert.equal((await xe(host, 'vm-list', `uuid=${bUuid}`, '--minimal')).stdout, '\n');
});
