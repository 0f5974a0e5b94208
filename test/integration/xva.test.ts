// Whole-VM export and import as XVA through Xen Orchestra's connector (getResource /
// putResource with its task handling): the archive has XenServer's layout (Python's tarfile
// reads it), imports back to a VM whose disk holds the same bytes; metadata export; a truncated
// archive fails its task and leaves nothing behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createWriteStream, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
// @ts-expect-error: the connector ships no type declarations
import { Xapi } from 'xen-api';
import { PASSWORD, startXapi, stopXapi } from './harness.js';

const MiB = 1024 * 1024;

function pattern(seed: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (seed * 131 + i * 17 + (i >> 9)) & 0xff;
  return b;
}

async function bodyOf(response: { body?: Readable } | Readable): Promise<Buffer> {
  const stream = (response as { body?: Readable }).body ?? (response as Readable);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}

const sized = (b: Buffer) => Object.assign(Readable.from([b]), { length: b.length });

test('XVA export and import through xen-api', { timeout: 120_000 }, async () => {
  const x = await startXapi();
  const xapi = new Xapi({ url: x.url, auth: { user: 'root', password: PASSWORD } });
  const dir = await mkdtemp(join(tmpdir(), 'xapi-xva-'));
  try {
    await xapi.connect();
    const [template] = (await xapi.call('VM.get_by_name_label', 'Debian Bookworm 12')) as string[];
    const vm = (await xapi.call('VM.clone', template, 'exported')) as string;
    await xapi.call('VM.provision', vm);
    const [vbd] = (await xapi.call('VM.get_VBDs', vm)) as string[];
    const vdi = (await xapi.call('VBD.get_VDI', vbd)) as string;
    // some data at the start of the 10 GiB disk, through the raw import handler
    const data = Buffer.concat([pattern(1, 3 * MiB), Buffer.alloc(2 * MiB), pattern(2, MiB + 4096)]);
    await xapi.putResource(sized(data), '/import_raw_vdi', { query: { vdi, format: 'raw' } });

    const xva = join(dir, 'vm.xva');
    const exported = await xapi.getResource('/export', { query: { ref: vm } });
    await pipeline((exported as { body: Readable }).body, createWriteStream(xva));

    // the layout XenServer expects: ova.xml first, then the disk's chunks, each with its xxhash
    const names = execFileSync('python3', ['-c', 'import sys,tarfile\nfor m in tarfile.open(sys.argv[1]): print(m.name)', xva], {
      encoding: 'utf8',
    })
      .trim()
      .split('\n');
    assert.equal(names[0], 'ova.xml');
    const diskId = names[1]!.split('/')[0]!;
    assert.match(names[1]!, /^Ref:\d+\/00000000$/);
    assert.equal(names[2], `${diskId}/00000000.xxhash`);
    assert.ok(names.includes(`${diskId}/00010239`), 'the last chunk of a 10 GiB disk is always there');
    assert.ok(names.length < 40, `zero chunks are left out (${names.length} members)`);
    assert.ok(statSync(xva).size < 64 * MiB);
    const ova = execFileSync(
      'python3',
      ['-c', 'import sys,tarfile\nprint(tarfile.open(sys.argv[1]).extractfile("ova.xml").read().decode())', xva],
      { encoding: 'utf8' },
    );
    assert.ok(ova.startsWith('<value><struct>'));
    for (const cls of ['VM', 'VBD', 'VDI', 'SR']) assert.ok(ova.includes(`<value>${cls}</value>`), cls);

    // back in as a new VM with its own disk holding the same bytes
    const imported = (await xapi.putResource(sized(readFileSync(xva)), '/import', {})) as string[];
    assert.equal(imported.length, 1);
    const newVm = imported[0]!;
    assert.notEqual(newVm, vm);
    assert.equal(await xapi.call('VM.get_name_label', newVm), 'exported');
    assert.notEqual(await xapi.call('VM.get_uuid', newVm), await xapi.call('VM.get_uuid', vm));
    const [newVbd] = (await xapi.call('VM.get_VBDs', newVm)) as string[];
    const newVdi = (await xapi.call('VBD.get_VDI', newVbd)) as string;
    assert.notEqual(newVdi, vdi);
    assert.equal(await xapi.call('VDI.get_virtual_size', newVdi), 10 * 1024 * MiB);
    // the start of the imported disk (the rest is zeros; a full raw read of 10 GiB is not needed)
    const raw = (await xapi.getResource('/export_raw_vdi', { query: { vdi: newVdi, format: 'raw' } })) as {
      body: Readable;
      headers: Record<string, string>;
    };
    assert.equal(raw.headers['content-length'], String(10 * 1024 * MiB));
    let head = Buffer.alloc(0);
    for await (const c of raw.body) {
      head = Buffer.concat([head, Buffer.from(c as Uint8Array)]);
      if (head.length >= data.length) break;
    }
    raw.body.destroy();
    assert.ok(head.subarray(0, data.length).equals(data), 'the imported disk holds the exported data');

    // metadata only: a tar holding just ova.xml
    const meta = await bodyOf(await xapi.getResource('/export_metadata', { query: { uuid: await xapi.call('VM.get_uuid', vm) } }));
    writeFileSync(join(dir, 'meta.tar'), meta);
    const metaNames = execFileSync(
      'python3',
      ['-c', 'import sys,tarfile\nfor m in tarfile.open(sys.argv[1]): print(m.name)', join(dir, 'meta.tar')],
      { encoding: 'utf8' },
    ).trim();
    assert.equal(metaNames, 'ova.xml');

    // a truncated archive: the task fails with the premature end, and nothing is left behind
    const vdisBefore = Object.keys((await xapi.call('VDI.get_all_records')) as object).length;
    const vmsBefore = Object.keys((await xapi.call('VM.get_all_records')) as object).length;
    const cut = readFileSync(xva).subarray(0, 4 * MiB);
    await assert.rejects(xapi.putResource(sized(cut), '/import', {}), (e: { code?: string }) => e.code === 'IMPORT_ERROR_PREMATURE_EOF');
    assert.equal(Object.keys((await xapi.call('VDI.get_all_records')) as object).length, vdisBefore);
    assert.equal(Object.keys((await xapi.call('VM.get_all_records')) as object).length, vmsBefore);

    // no import into an ISO library
    const isoDir = await mkdtemp(join(tmpdir(), 'xapi-iso-'));
    const host = ((await xapi.call('host.get_all')) as string[])[0];
    const iso = (await xapi.call('SR.create', host, { location: isoDir }, 0, 'ISOs', '', 'iso', 'iso', false, {})) as string;
    await assert.rejects(
      xapi.putResource(sized(readFileSync(xva)), '/import', { query: { sr_id: iso } }),
      (e: { code?: string; message?: string }) => e.code === 'SR_OPERATION_NOT_SUPPORTED' || /^400 /.test(e.message ?? ''),
    );
    await rm(isoDir, { recursive: true, force: true });
  } finally {
    await xapi.disconnect().catch(() => undefined);
    await stopXapi(x);
    await rm(dir, { recursive: true, force: true });
  }
});
