// Storage through the API, in-process: the local SR of first start, SR/PBD/VDI life cycles on
// file-based SRs with real VHD files (judged by qemu-img), ISO libraries, xapi's storage errors
// with their parameters, VM disks (provision, clone, copy, snapshot, revert) and a simulated
// guest writing to its disk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync, unlinkSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct, type RpcStruct } from '../../src/rpc/rpc.js';
import { apiClient, struct } from './api-client.js';
import { openDiskFile } from '../../src/storage/disk-file.js';
import type { FileSrDriver } from '../../src/storage/file-sr.js';
import { SmError } from '../../src/storage/driver.js';
import { DomainError } from '../../src/xenopsd/interface.js';
import { leafPaused } from '../../src/storage/leaf-gate.js';
import { openVdi } from '../../src/xapi/vdi.js';
import { countCalls, waitUntil, within } from '../wait.js';

const MiB = 1024 ** 2;
const NULL = 'OpaqueRef:NULL';

async function setup(opts: { log?: Logger } = {}) {
  const h = await memoryHost({ rootPassword: 'pw', ...opts });
  h.xenops.start();
  const { ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const pool = ((await ok('pool.get_all', s)) as string[])[0]!;
  const localSr = (await ok('pool.get_default_SR', s, pool)) as string;
  const dirs: string[] = [];
  const tmp = () => {
    const d = mkdtempSync(join(tmpdir(), 'xapi-sr-'));
    dirs.push(d);
    return d;
  };
  const rec = async (cls: string, ref: string) => (await ok(`${cls}.get_record`, s, ref)) as RpcStruct;
  const vdiCreate = async (sr: string, size: number, name = 'disk', extra: Record<string, unknown> = {}) =>
    (await ok(
      'VDI.create',
      s,
      struct({
        name_label: name,
        name_description: '',
        SR: sr,
        virtual_size: BigInt(size),
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: newStruct(),
        xenstore_data: newStruct(),
        sm_config: newStruct(),
        tags: [],
        ...(extra as RpcStruct),
      }),
    )) as string;
  const srDir = async (sr: string) => {
    const r = await rec('SR', sr);
    const pbd = await rec('PBD', (r.PBDs as string[])[0]!);
    const dc = pbd.device_config as Record<string, string>;
    return join(dc.device ?? dc.location ?? dc.serverpath!, r.uuid as string);
  };
  const vhdFile = async (vdi: string) => {
    const r = await rec('VDI', vdi);
    return join(await srDir(r.SR as string), `${r.location as string}.vhd`);
  };
  const fileSr = async (name: string, physicalSize = 0, type = 'file', shared = false) => {
    const dir = tmp();
    const dc: Record<string, string> = type === 'nfs' ? { server: '127.0.0.1', serverpath: dir } : { location: dir };
    return (await ok(
      'SR.create',
      s,
      h.host.hostRef,
      struct(dc),
      BigInt(physicalSize),
      name,
      '',
      type,
      'user',
      shared,
      newStruct(),
    )) as string;
  };
  /** A VM from the Debian template, provisioned: one 10 GiB system disk on the default SR. */
  const provisionedVm = async (name: string) => {
    const [template] = (await ok('VM.get_by_name_label', s, 'Debian Bookworm 12')) as string[];
    const vm = (await ok('VM.clone', s, template!, name)) as string;
    await ok('VM.provision', s, vm);
    return vm;
  };
  const close = async () => {
    await h.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  };
  return { ...h, ok, err, s, pool, localSr, tmp, rec, vdiCreate, vhdFile, srDir, fileSr, provisionedVm, close };
}

const qemuInfo = (file: string) =>
  JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'vpc', file], { encoding: 'utf8' })) as {
    'virtual-size': number;
    format: string;
  };

/** The sha256 of a disk's content (of its first `limit` bytes: the 10 GiB template disks are written near the start). */
async function contentHash(file: string, limit = 64 * MiB): Promise<string> {
  const d = await openDiskFile(file, { readOnly: true });
  try {
    const h = createHash('sha256');
    const end = Math.min(d.size, limit);
    for (let o = 0; o < end; o += 4 * MiB) h.update(await d.read(o, Math.min(4 * MiB, end - o)));
    return h.digest('hex');
  } finally {
    await d.close();
  }
}

const pattern = (seed: number, len: number) => {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
};

test('first start: a plugged Local storage SR is the pool default; SM records for every driver', async () => {
  const t = await setup();
  try {
    const sr = await t.rec('SR', t.localSr);
    assert.equal(sr.name_label, 'Local storage');
    assert.equal(sr.type, 'ext');
    assert.equal(sr.shared, false);
    assert.ok(Number(sr.physical_size) > 0);
    const [pbd] = sr.PBDs as string[];
    const p = await t.rec('PBD', pbd!);
    assert.equal(p.currently_attached, true);
    assert.equal(p.host, t.host.hostRef);
    assert.ok(!('SRmaster' in (p.device_config as object)));
    assert.equal(await t.ok('pool.get_suspend_image_SR', t.s, t.pool), t.localSr);
    const types = new Set(Object.values((await t.ok('SM.get_all_records', t.s)) as Record<string, RpcStruct>).map((r) => r.type));
    for (const ty of ['ext', 'file', 'nfs', 'iso']) assert.ok(types.has(ty), ty);
    assert.deepEqual([...((await t.ok('SR.get_supported_types', t.s)) as string[])].sort(), ['ext', 'file', 'iso', 'nfs']);
    assert.ok((sr.allowed_operations as string[]).includes('vdi_create'));
  } finally {
    await t.close();
  }
});

test('VDIs: create, resize, snapshot, clone, destroy as VHD files that qemu-img reads', async () => {
  const t = await setup();
  try {
    const vdi = await t.vdiCreate(t.localSr, 30 * MiB + 1);
    const r = await t.rec('VDI', vdi);
    assert.equal(r.virtual_size, BigInt(32 * MiB), 'rounded up to whole 2 MiB blocks');
    assert.equal(r.managed, true);
    assert.equal((r.sm_config as Record<string, string>).vdi_type, 'vhd');
    const file = await t.vhdFile(vdi);
    assert.equal(qemuInfo(file)['virtual-size'], 32 * MiB);
    assert.equal((await t.rec('SR', t.localSr)).virtual_allocation, BigInt(32 * MiB));

    // data written through the disk is what every later node reads
    const used = Number((await t.rec('SR', t.localSr)).physical_utilisation);
    const d = await openDiskFile(file, { readOnly: false });
    await d.write(3 * MiB, pattern(1, MiB));
    await d.close();
    const before = await contentHash(file);
    // SR.update and VDI.update learn what the data now takes
    await t.ok('SR.update', t.s, t.localSr);
    assert.ok(Number((await t.rec('SR', t.localSr)).physical_utilisation) >= used + MiB);
    await t.ok('VDI.update', t.s, vdi);
    assert.ok(Number((await t.rec('VDI', vdi)).physical_utilisation) >= MiB);

    await t.ok('VDI.resize', t.s, vdi, BigInt(64 * MiB));
    assert.equal((await t.rec('VDI', vdi)).virtual_size, BigInt(64 * MiB));
    assert.equal(qemuInfo(file)['virtual-size'], 64 * MiB);
    const grown = await contentHash(file);

    const snap = (await t.ok('VDI.snapshot', t.s, vdi, newStruct())) as string;
    const sr = await t.rec('VDI', snap);
    assert.equal(sr.is_a_snapshot, true);
    assert.equal(sr.snapshot_of, vdi);
    assert.equal(sr.name_label, 'disk');
    assert.deepEqual((await t.rec('VDI', vdi)).snapshots, [snap]);
    const parent = ((await t.rec('VDI', vdi)).sm_config as Record<string, string>)['vhd-parent'];
    assert.ok(parent, 'the source now sits over a hidden parent');
    assert.equal((sr.sm_config as Record<string, string>)['vhd-parent'], parent);
    assert.equal(await contentHash(await t.vhdFile(snap)), grown);
    assert.equal(await contentHash(file), grown);
    // the hidden parent is no VDI
    assert.deepEqual(await t.ok('VDI.get_all_records_where', t.s, `field "location" = "${parent}"`), newStruct());

    // writes after the snapshot go to the source only
    const d2 = await openDiskFile(file, { readOnly: false });
    await d2.write(0, pattern(2, 4096));
    await d2.close();
    assert.equal(await contentHash(await t.vhdFile(snap)), grown);
    assert.notEqual(await contentHash(file), grown);

    const clone = (await t.ok('VDI.clone', t.s, snap, newStruct())) as string;
    const c = await t.rec('VDI', clone);
    assert.equal(c.is_a_snapshot, false);
    assert.equal(await contentHash(await t.vhdFile(clone)), grown);

    // shrinking is refused by the driver; a destroyed VDI's record goes
    assert.equal((await t.err('VDI.resize', t.s, vdi, BigInt(2 * MiB)))[0], 'SR_BACKEND_FAILURE_79');
    await t.ok('VDI.destroy', t.s, snap);
    assert.deepEqual(await t.err('VDI.get_record', t.s, snap), ['HANDLE_INVALID', 'VDI', snap]);
    assert.equal(before.length, 64);
  } finally {
    await t.close();
  }
});

test('SR life: create with a size, SR_FULL, scan finds and loses files, destroy and forget rules', async () => {
  const t = await setup();
  try {
    const sr = await t.fileSr('small', 64 * MiB);
    const r = await t.rec('SR', sr);
    assert.equal(r.physical_size, BigInt(64 * MiB));
    assert.equal(r.type, 'file');
    const [pbd] = r.PBDs as string[];
    assert.equal((await t.rec('PBD', pbd!)).currently_attached, true);
    const [code, requested, maximum] = await t.err(
      'VDI.create',
      t.s,
      struct({
        name_label: 'big',
        name_description: '',
        SR: sr,
        virtual_size: BigInt(1024 * MiB),
        type: 'user',
        sharable: false,
        read_only: false,
        other_config: newStruct(),
        xenstore_data: newStruct(),
        sm_config: newStruct(),
        tags: [],
      }),
    );
    assert.equal(code, 'SR_FULL');
    assert.equal(requested, String(1024 * MiB));
    assert.ok(Number(maximum) <= 64 * MiB);
    assert.equal(Object.keys((await t.rec('SR', sr)).VDIs as object).length, 0, 'nothing half-made');

    const vdi = await t.vdiCreate(sr, 8 * MiB);
    // a VHD that appears in the directory is found by scan; one that vanishes loses its record
    const dir = await t.srDir(sr);
    execFileSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'vpc',
      '-o',
      'subformat=dynamic',
      join(dir, '0b0b0b0b-1111-4222-8333-444455556666.vhd'),
      '4M',
    ]);
    await t.ok('SR.scan', t.s, sr);
    const found = (await t.ok('VDI.get_by_uuid', t.s, '0b0b0b0b-1111-4222-8333-444455556666')) as string;
    assert.equal((await t.rec('VDI', found)).location, '0b0b0b0b-1111-4222-8333-444455556666');
    unlinkSync(join(dir, '0b0b0b0b-1111-4222-8333-444455556666.vhd'));
    await t.ok('SR.scan', t.s, sr);
    assert.deepEqual(await t.err('VDI.get_record', t.s, found), ['HANDLE_INVALID', 'VDI', found]);

    // VHD SRs have no VDI_INTRODUCE (as EXTSR/FileSR); a record made in the database alone
    // cannot point the driver outside the SR
    const loc = (await t.rec('VDI', vdi)).location as string;
    assert.deepEqual(
      await t.err(
        'VDI.introduce',
        t.s,
        '',
        'x',
        '',
        sr,
        'user',
        false,
        false,
        newStruct(),
        loc,
        newStruct(),
        newStruct(),
        true,
        0n,
        0n,
        NULL,
        false,
        '19700101T00:00:00Z',
        NULL,
      ),
      ['SR_OPERATION_NOT_SUPPORTED', sr],
    );
    const bogus = (await t.ok(
      'VDI.db_introduce',
      t.s,
      '0c0c0c0c-1111-4222-8333-444455556666',
      'evil',
      '',
      sr,
      'user',
      false,
      false,
      newStruct(),
      '../../etc/passwd',
      newStruct(),
      newStruct(),
      true,
      0n,
      0n,
      NULL,
      false,
      '19700101T00:00:00Z',
      NULL,
      false,
    )) as string;
    assert.deepEqual(await t.err('VDI.update', t.s, bogus), ['VDI_LOCATION_MISSING', sr, '../../etc/passwd']);
    assert.deepEqual(
      await t.err(
        'VDI.db_introduce',
        t.s,
        'not-a-uuid',
        'x',
        '',
        sr,
        'user',
        false,
        false,
        newStruct(),
        'y',
        newStruct(),
        newStruct(),
        true,
        0n,
        0n,
        NULL,
        false,
        '19700101T00:00:00Z',
        NULL,
        false,
      ),
      ['UUID_INVALID', 'VDI', 'not-a-uuid'],
    );
    await t.ok('VDI.db_forget', t.s, bogus);
    // forget drops the record only; a scan finds the disk again
    await t.ok('VDI.forget', t.s, vdi);
    await t.ok('SR.scan', t.s, sr);
    const back = (await t.ok('VDI.get_by_uuid', t.s, loc)) as string;
    assert.equal((await t.rec('VDI', back)).virtual_size, BigInt(8 * MiB));

    assert.deepEqual(await t.err('SR.forget', t.s, sr), ['SR_HAS_PBD', sr]);
    assert.deepEqual(await t.err('SR.destroy', t.s, sr), ['SR_HAS_PBD', sr]);
    assert.deepEqual(await t.err('PBD.destroy', t.s, pbd!), ['OPERATION_NOT_ALLOWED', 'PBD is currently attached']);
    await t.ok('PBD.unplug', t.s, pbd!);
    assert.deepEqual(await t.err('SR.destroy', t.s, sr), ['SR_NOT_EMPTY']);
    assert.deepEqual(
      await t.err(
        'VDI.create',
        t.s,
        struct({
          name_label: 'x',
          name_description: '',
          SR: sr,
          virtual_size: 1n,
          type: 'user',
          sharable: false,
          read_only: false,
          other_config: newStruct(),
          xenstore_data: newStruct(),
          sm_config: newStruct(),
          tags: [],
        }),
      ),
      ['SR_HAS_NO_PBDS', sr],
    );
    await t.ok('PBD.plug', t.s, pbd!);
    await t.ok('VDI.destroy', t.s, back);
    await t.ok('PBD.unplug', t.s, pbd!);
    await t.ok('SR.destroy', t.s, sr);
    assert.equal(existsSync(dir), false);
    assert.deepEqual(await t.err('SR.get_record', t.s, sr), ['HANDLE_INVALID', 'SR', sr]);
    assert.deepEqual(
      await t
        .err('PBD.create', t.s, struct({ host: t.host.hostRef, SR: t.localSr, device_config: struct({}), other_config: newStruct() }))
        .then((e) => e.slice(0, 3)),
      ['PBD_EXISTS', t.localSr, t.host.hostRef],
    );
    assert.deepEqual(
      await t.err(
        'SR.create',
        t.s,
        t.host.hostRef,
        struct({ location: '/nonexistent/x' }),
        0n,
        'n',
        '',
        'no-such-type',
        'user',
        false,
        newStruct(),
      ),
      ['SR_UNKNOWN_DRIVER', 'no-such-type'],
    );
    const uuid = (await t.rec('SR', t.localSr)).uuid as string;
    assert.deepEqual(await t.err('SR.introduce', t.s, uuid, 'dup', '', 'ext', 'user', false, newStruct()), ['SR_UUID_EXISTS', uuid]);
  } finally {
    await t.close();
  }
});

test('ISO library: one read-only VDI per .iso file; names cannot leave the directory', async () => {
  const t = await setup();
  try {
    const dir = t.tmp();
    writeFileSync(join(dir, 'debian.iso'), pattern(3, 2 * MiB));
    writeFileSync(join(dir, 'notes.txt'), 'not an image');
    const sr = (await t.ok(
      'SR.create',
      t.s,
      t.host.hostRef,
      struct({ location: dir }),
      0n,
      'ISOs',
      '',
      'iso',
      'iso',
      false,
      newStruct(),
    )) as string;
    const vdis = (await t.rec('SR', sr)).VDIs as string[];
    assert.equal(vdis.length, 1);
    const iso = await t.rec('VDI', vdis[0]!);
    assert.equal(iso.location, 'debian.iso');
    assert.equal(iso.name_label, 'debian.iso');
    assert.equal(iso.read_only, true);
    assert.equal(iso.virtual_size, BigInt(2 * MiB));
    writeFileSync(join(dir, 'second.iso'), pattern(4, MiB));
    await t.ok('SR.scan', t.s, sr);
    assert.equal(((await t.rec('SR', sr)).VDIs as string[]).length, 2);
    assert.deepEqual(await t.err('VDI.snapshot', t.s, vdis[0]!, newStruct()), ['SR_OPERATION_NOT_SUPPORTED', sr]);
    assert.deepEqual(await t.err('SR.probe', t.s, t.host.hostRef, struct({ location: dir }), 'iso', newStruct()), [
      'SR_BACKEND_FAILURE',
      "Operation 'sr_probe' not supported by this SR type",
      '',
      '',
    ]);
  } finally {
    await t.close();
  }
});

test('VM disks: provision, a guest writing its disk, PBD.unplug refused in use, snapshot, revert, clone, copy', async () => {
  const t = await setup();
  try {
    const vm = await t.provisionedVm('deb');
    const [vbd] = (await t.rec('VM', vm)).VBDs as string[];
    const v = await t.rec('VBD', vbd!);
    assert.equal(v.userdevice, '0');
    assert.equal(v.bootable, true);
    const disk = v.VDI as string;
    const d = await t.rec('VDI', disk);
    assert.equal(d.virtual_size, BigInt(10 * 1024 * MiB));
    assert.equal(d.type, 'system');
    assert.equal(d.SR, t.localSr);

    await t.ok('VM.start', t.s, vm, false, false);
    const uuid = (await t.rec('VM', vm)).uuid as string;
    const vbdUuid = v.uuid as string;
    // the guest writes a pattern; it lands in the VHD file
    await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 5 * MiB, write: pattern(5, MiB) });
    const file = await t.vhdFile(disk);
    const written = await contentHash(file);
    const read = await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 5 * MiB, length: MiB });
    assert.ok(read.equals(pattern(5, MiB)));

    const [pbd] = (await t.rec('SR', t.localSr)).PBDs as string[];
    assert.deepEqual(await t.err('PBD.unplug', t.s, pbd!), ['VDI_IN_USE', disk]);
    assert.deepEqual(await t.err('VDI.destroy', t.s, disk), ['VDI_IN_USE', disk, 'destroy']);

    // a snapshot of the running VM; the guest writes on, then the VM is reverted
    const snap = (await t.ok('VM.snapshot', t.s, vm, 'before', [])) as string;
    const sv = await t.rec('VM', snap);
    assert.equal(sv.is_a_snapshot, true);
    assert.equal(sv.is_a_template, true);
    assert.equal(sv.snapshot_of, vm);
    assert.equal((sv.snapshot_info as Record<string, string>)['power-state-at-snapshot'], 'Running');
    assert.equal((await t.rec('VM', vm)).parent, snap);
    assert.deepEqual((await t.rec('VM', vm)).snapshots, [snap]);
    const snapDisk = (await t.rec('VBD', (sv.VBDs as string[])[0]!)).VDI as string;
    assert.equal((await t.rec('VDI', snapDisk)).snapshot_of, disk);
    await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 5 * MiB, write: pattern(6, MiB) });
    assert.notEqual(await contentHash(file), written);
    assert.equal(await contentHash(await t.vhdFile(snapDisk)), written);

    await t.ok('VM.revert', t.s, snap);
    const after = await t.rec('VM', vm);
    assert.equal(after.power_state, 'Halted');
    const newDisk = (await t.rec('VBD', (after.VBDs as string[])[0]!)).VDI as string;
    assert.notEqual(newDisk, disk);
    assert.deepEqual(await t.err('VDI.get_record', t.s, disk), ['HANDLE_INVALID', 'VDI', disk]);
    assert.equal(await contentHash(await t.vhdFile(newDisk)), written);
    assert.equal((await t.rec('VDI', snapDisk)).snapshot_of, newDisk, 'the snapshot now belongs to the new disk');

    // clone shares the tree; copy to another SR is a full, independent disk
    const clone = (await t.ok('VM.clone', t.s, vm, 'deb-clone')) as string;
    const cloneDisk = (await t.rec('VBD', ((await t.rec('VM', clone)).VBDs as string[])[0]!)).VDI as string;
    assert.equal(await contentHash(await t.vhdFile(cloneDisk)), written);
    const other = await t.fileSr('other');
    const copy = (await t.ok('VM.copy', t.s, vm, 'deb-copy', other)) as string;
    const copyDisk = (await t.rec('VBD', ((await t.rec('VM', copy)).VBDs as string[])[0]!)).VDI as string;
    const cd = await t.rec('VDI', copyDisk);
    assert.equal(cd.SR, other);
    assert.equal((cd.sm_config as Record<string, string>)['vhd-parent'], undefined, 'a copy has no parent');
    assert.equal(await contentHash(await t.vhdFile(copyDisk)), written);
    // the copy is a standalone dynamic VHD, which qemu-img reads on its own
    assert.equal(qemuInfo(await t.vhdFile(copyDisk))['virtual-size'], 10 * 1024 * MiB);
  } finally {
    await t.close();
  }
});

test('a VM.revert that fails answers VM_REVERT_FAILED [snapshot, vm] and logs what failed, with its stack', async () => {
  const lines: string[] = [];
  const t = await setup({ log: pino({ level: 'error' }, { write: (line: string) => void lines.push(line) }) });
  try {
    const vm = await t.provisionedVm('deb');
    const snap = (await t.ok('VM.snapshot', t.s, vm, 'before', [])) as string;
    const snapDisk = (await t.rec('VBD', ((await t.rec('VM', snap)).VBDs as string[])[0]!)).VDI as string;
    unlinkSync(await t.vhdFile(snapDisk)); // the snapshot's data goes behind xapi's back
    assert.deepEqual(await t.err('VM.revert', t.s, snap), ['VM_REVERT_FAILED', snap, vm]);
    const logged = lines.map((l) => JSON.parse(l) as { msg: string; snapshot?: string; err?: { message: string; stack: string } });
    const entry = logged.find((r) => r.msg === 'VM.revert failed');
    assert.ok(entry, 'the failure is logged');
    assert.equal(entry.snapshot, snap);
    assert.match(entry.err!.message, /^VDI_MISSING/, 'the cause, not VM_REVERT_FAILED');
    assert.match(entry.err!.stack, /\n\s+at /, 'with its stack');
  } finally {
    await t.close();
  }
});

test('VDI.copy with a base writes only the difference', async () => {
  const t = await setup();
  try {
    const src = await t.vdiCreate(t.localSr, 16 * MiB, 'src');
    const f = await openDiskFile(await t.vhdFile(src), { readOnly: false });
    await f.write(0, pattern(7, 4 * MiB));
    await f.close();
    const base = (await t.ok('VDI.snapshot', t.s, src, newStruct())) as string;
    const f2 = await openDiskFile(await t.vhdFile(src), { readOnly: false });
    await f2.write(8 * MiB, pattern(8, MiB));
    await f2.close();
    const other = await t.fileSr('backup');
    const full = (await t.ok('VDI.copy', t.s, base, other, NULL, NULL)) as string;
    await t.ok('VDI.copy', t.s, src, NULL, base, full);
    assert.equal(await contentHash(await t.vhdFile(full)), await contentHash(await t.vhdFile(src)));
    assert.deepEqual(await t.err('VDI.copy', t.s, src, NULL, NULL, await t.vdiCreate(other, 2 * MiB)).then((e) => e[0]), 'VDI_TOO_SMALL');
  } finally {
    await t.close();
  }
});

test('garbage collection: deleted snapshots are removed and the chain coalesces back into one file', async () => {
  const t = await setup();
  try {
    const sr = await t.fileSr('gc');
    const vdi = await t.vdiCreate(sr, 16 * MiB);
    const snaps: string[] = [];
    for (let i = 0; i < 3; i++) {
      const d = await openDiskFile(await t.vhdFile(vdi), { readOnly: false });
      await d.write(i * 2 * MiB, pattern(10 + i, MiB));
      await d.close();
      snaps.push((await t.ok('VDI.snapshot', t.s, vdi, newStruct())) as string);
    }
    const content = await contentHash(await t.vhdFile(vdi));
    const dir = await t.srDir(sr);
    const vhds = () => readdirSync(dir).filter((f) => f.endsWith('.vhd')).length;
    assert.equal(vhds(), 7, 'three hidden parents, three snapshots, one leaf');
    for (const snap of snaps) await t.ok('VDI.destroy', t.s, snap);
    await t.storage.runGc(sr);
    assert.equal(vhds(), 1, 'only the VDI is left');
    assert.equal(await contentHash(await t.vhdFile(vdi)), content);
    const r = await t.rec('VDI', vdi);
    assert.equal((r.sm_config as Record<string, string>)['vhd-parent'], undefined);
    assert.equal(qemuInfo(await t.vhdFile(vdi))['virtual-size'], 16 * MiB);
  } finally {
    await t.close();
  }
});

test('the GC asks what is in use before every step: a disk opened for writing while it waits is left alone', async () => {
  const t = await setup();
  try {
    const sr = await t.fileSr('gc-live');
    await t.storage.settleGc(sr); // the GC the plug kicked
    const vdi = await t.vdiCreate(sr, 16 * MiB);
    const d = await openDiskFile(await t.vhdFile(vdi), { readOnly: false });
    await d.write(0, pattern(40, MiB));
    await d.close();
    // reset then persist: the leaf sits alone over a hidden parent, what a leaf-coalesce merges
    await t.ok('VDI.set_on_boot', t.s, vdi, 'reset');
    await t.ok('VDI.set_on_boot', t.s, vdi, 'persist');
    const dir = await t.srDir(sr);
    const vhds = () => readdirSync(dir).filter((f) => f.endsWith('.vhd')).length;
    assert.equal(vhds(), 2);
    // The SR lock is held (as by a snapshot) until the GC is waiting for it; then the disk is
    // opened for writing. The GC's steps come after that, so they must see the writer.
    const { ctx } = await t.storage.context(sr);
    const lock = (t.storage.driver('file') as FileSrDriver).lock(ctx);
    let release!: () => void;
    const held = lock.run(() => new Promise<void>((r) => (release = r)));
    const asked = countCalls(lock, 'run');
    const gc = t.storage.runGc(sr);
    await within('the GC to ask for the lock', asked.calls(1));
    asked.restore();
    const location = (await t.rec('VDI', vdi)).location as string;
    const opening = openVdi(t.storage, vdi, false);
    await waitUntil('the writer is registered', async () => (await t.storage.inUse(sr)).has(location));
    release();
    await held;
    const disk = await opening;
    await gc;
    assert.equal(vhds(), 2, 'the leaf being written was not merged into its parent');
    await disk.write(2 * MiB, pattern(41, MiB));
    await disk.close();
    const content = await contentHash(await t.vhdFile(vdi));
    await t.storage.runGc(sr);
    assert.equal(vhds(), 1, 'once closed, the leaf is merged');
    assert.equal(await contentHash(await t.vhdFile(vdi)), content);
  } finally {
    await t.close();
  }
});

test('a snapshot of a disk in use waits for the I/O in flight, and later I/O goes to the new leaf (tapdisk pause)', async () => {
  const t = await setup();
  try {
    const vdi = await t.vdiCreate(t.localSr, 16 * MiB);
    const file = await t.vhdFile(vdi);
    const io = await openDiskFile(file, { readOnly: false }); // a domain's I/O under way
    const snapping = t.ok('VDI.snapshot', t.s, vdi, newStruct());
    await waitUntil('the snapshot to wait for the I/O in flight', () => leafPaused(file));
    await io.write(2 * MiB, pattern(50, MiB));
    await io.close();
    const snap = (await snapping) as string;
    const readAt = async (v: string) => {
      const d = await openDiskFile(await t.vhdFile(v), { readOnly: true });
      try {
        return await d.read(2 * MiB, MiB);
      } finally {
        await d.close();
      }
    };
    // the write landed before the split: the snapshot and the disk both hold it
    assert.ok((await readAt(snap)).equals(pattern(50, MiB)), 'the snapshot holds the write in flight');
    assert.ok((await readAt(vdi)).equals(pattern(50, MiB)));
    // I/O after the snapshot changes the disk only
    const after = await openDiskFile(file, { readOnly: false });
    await after.write(2 * MiB, pattern(51, MiB));
    await after.close();
    assert.ok((await readAt(snap)).equals(pattern(50, MiB)), 'the snapshot does not change');
    assert.ok((await readAt(vdi)).equals(pattern(51, MiB)));
    // the new parent stayed hidden: a scan finds the two VDIs and nothing else
    await t.ok('SR.scan', t.s, t.localSr);
    assert.deepEqual([...((await t.rec('SR', t.localSr)).VDIs as string[])].sort(), [vdi, snap].sort());
  } finally {
    await t.close();
  }
});

test('VM.checkpoint keeps the memory image with the disks; reverting to it gives a suspended VM that resumes', async () => {
  const t = await setup();
  try {
    const vm = await t.provisionedVm('cp');
    // set_memory keeps static_min (the template's is above 256 MiB): all four limits at once
    await t.ok('VM.set_memory_limits', t.s, vm, BigInt(256 * MiB), BigInt(256 * MiB), BigInt(256 * MiB), BigInt(256 * MiB));
    await t.ok('VM.start', t.s, vm, false, false);
    // a checkpoint suspends the guest: an HVM guest needs its agent's feature-suspend first
    await waitUntil('the guest agent to report', async () => (await t.rec('VM', vm)).guest_metrics !== 'OpaqueRef:NULL');
    const cp = (await t.ok('VM.checkpoint', t.s, vm, 'with memory')) as string;
    const c = await t.rec('VM', cp);
    assert.equal(c.power_state, 'Suspended');
    assert.equal(c.is_a_snapshot, true);
    const image = await t.rec('VDI', c.suspend_VDI as string);
    assert.equal(image.type, 'suspend');
    assert.equal(image.is_a_snapshot, true);
    const r = await t.rec('VM', vm);
    assert.equal(r.power_state, 'Running', 'the VM runs on after its checkpoint');
    assert.equal(r.suspend_VDI, NULL);

    await t.ok('VM.revert', t.s, cp);
    const back = await t.rec('VM', vm);
    assert.equal(back.power_state, 'Suspended');
    assert.notEqual(back.suspend_VDI, NULL);
    assert.notEqual(back.suspend_VDI, c.suspend_VDI);
    await t.ok('VM.resume', t.s, vm, false, false);
    assert.equal((await t.rec('VM', vm)).power_state, 'Running');
    await t.ok('VM.hard_shutdown', t.s, vm);
    // a snapshot of a halted VM is Halted; reverting a running VM to it stops the VM
    const snap = (await t.ok('VM.snapshot', t.s, vm, 'halted', [])) as string;
    await t.ok('VM.start', t.s, vm, false, false);
    await t.ok('VM.revert', t.s, snap);
    assert.equal((await t.rec('VM', vm)).power_state, 'Halted');
    assert.deepEqual(await t.err('VM.revert', t.s, vm), ['ONLY_REVERT_SNAPSHOT']);
  } finally {
    await t.close();
  }
});

test('VM.checkpoint resumes the VM whether or not its snapshot was taken; a resume that fails is VM_CHECKPOINT_RESUME_FAILED', async () => {
  const t = await setup();
  try {
    const vm = await t.provisionedVm('cp-fail');
    await t.ok('VM.set_memory_limits', t.s, vm, BigInt(256 * MiB), BigInt(256 * MiB), BigInt(256 * MiB), BigInt(256 * MiB));
    await t.ok('VM.start', t.s, vm, false, false);
    await waitUntil('the guest agent to report', async () => (await t.rec('VM', vm)).guest_metrics !== 'OpaqueRef:NULL');
    const driver = t.storage.driver((await t.rec('SR', t.localSr)).type as string) as FileSrDriver;
    const backend = t.xenops.backend;
    const failSnapshot = () => {
      driver.vdiSnapshot = async () => {
        throw new SmError('SR_BACKEND_FAILURE_1', ['', 'injected snapshot failure', '']);
      };
    };
    const failResume = () => {
      backend.resume = async () => {
        throw new DomainError('Internal_error', ['injected resume failure']);
      };
    };
    const heal = () => {
      delete (driver as Partial<FileSrDriver>).vdiSnapshot;
      delete (backend as Partial<typeof backend>).resume;
    };
    try {
      // the disk snapshot fails, the resume works: the caller hears the snapshot's failure, the VM runs on
      failSnapshot();
      assert.deepEqual(await t.err('VM.checkpoint', t.s, vm, 'no disk'), ['SR_BACKEND_FAILURE_1', '', 'injected snapshot failure', '']);
      assert.equal((await t.rec('VM', vm)).power_state, 'Running');
      assert.deepEqual((await t.rec('VM', vm)).snapshots, []);
      // both fail: the VM stays suspended, and that is what the caller hears
      failResume();
      assert.deepEqual(await t.err('VM.checkpoint', t.s, vm, 'neither'), ['VM_CHECKPOINT_RESUME_FAILED', vm]);
      assert.equal((await t.rec('VM', vm)).power_state, 'Suspended');
      assert.deepEqual((await t.rec('VM', vm)).snapshots, []);
      heal();
      await t.ok('VM.resume', t.s, vm, false, false);
      // the snapshot is taken, the resume fails: the checkpoint exists, the VM stays suspended
      failResume();
      assert.deepEqual(await t.err('VM.checkpoint', t.s, vm, 'no resume'), ['VM_CHECKPOINT_RESUME_FAILED', vm]);
      assert.equal((await t.rec('VM', vm)).power_state, 'Suspended');
      assert.equal(((await t.rec('VM', vm)).snapshots as string[]).length, 1);
    } finally {
      heal();
    }
  } finally {
    await t.close();
  }
});

test('CD drives: insert and eject an ISO on a running VM; disks are not ejectable', async () => {
  const t = await setup();
  try {
    const dir = t.tmp();
    writeFileSync(join(dir, 'tools.iso'), pattern(9, MiB));
    const sr = (await t.ok(
      'SR.create',
      t.s,
      t.host.hostRef,
      struct({ location: dir }),
      0n,
      'ISOs',
      '',
      'iso',
      'iso',
      false,
      newStruct(),
    )) as string;
    const [iso] = (await t.rec('SR', sr)).VDIs as string[];
    const vm = await t.provisionedVm('cd');
    const cd = (await t.ok(
      'VBD.create',
      t.s,
      struct({
        VM: vm,
        VDI: NULL,
        userdevice: '3',
        bootable: false,
        mode: 'RO',
        type: 'CD',
        unpluggable: true,
        empty: true,
        other_config: newStruct(),
        qos_algorithm_type: '',
        qos_algorithm_params: newStruct(),
      }),
    )) as string;
    await t.ok('VM.start', t.s, vm, false, false);
    await t.ok('VBD.insert', t.s, cd, iso!);
    assert.equal((await t.rec('VBD', cd)).VDI, iso);
    assert.equal((await t.rec('VBD', cd)).empty, false);
    // the guest reads the image through its CD drive
    const uuid = (await t.rec('VM', vm)).uuid as string;
    const read = await t.domains.guestDiskIo(uuid, (await t.rec('VBD', cd)).uuid as string, { offset: 0, length: 4096 });
    assert.ok(read.equals(pattern(9, MiB).subarray(0, 4096)));
    assert.deepEqual(await t.err('VBD.insert', t.s, cd, iso!), ['VBD_NOT_EMPTY', cd]);
    await t.ok('VBD.eject', t.s, cd);
    assert.equal((await t.rec('VBD', cd)).empty, true);
    assert.deepEqual(await t.err('VBD.eject', t.s, cd), ['VBD_IS_EMPTY', cd]);
    const [disk] = ((await t.rec('VM', vm)).VBDs as string[]).filter((v) => v !== cd);
    assert.deepEqual(await t.err('VBD.eject', t.s, disk!), ['VBD_NOT_REMOVABLE_MEDIA', disk!]);
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});

test('a snapshot cut short by a crash is finished or dropped when the SR is attached again', async () => {
  const t = await setup();
  try {
    const sr = await t.fileSr('crash');
    const vdi = await t.vdiCreate(sr, 8 * MiB);
    const file = await t.vhdFile(vdi);
    const d = await openDiskFile(file, { readOnly: false });
    await d.write(MiB, pattern(12, MiB));
    await d.close();
    const before = await contentHash(file);
    const dir = await t.srDir(sr);
    const location = (await t.rec('VDI', vdi)).location as string;
    // the state a kill -9 leaves right after the leaf became the hidden parent: a journal, the
    // leaf renamed, no new leaves yet
    const parent = '0d0d0d0d-1111-4222-8333-444455556666';
    const fresh = '0e0e0e0e-1111-4222-8333-444455556666';
    mkdirSync(join(dir, '.journal'), { recursive: true });
    writeFileSync(join(dir, '.journal', `snapshot-${location}.json`), JSON.stringify({ leaf: location, parent, fresh }));
    renameSync(file, join(dir, `${parent}.vhd`));
    const [pbd] = (await t.rec('SR', sr)).PBDs as string[];
    await t.ok('PBD.unplug', t.s, pbd!);
    await t.ok('PBD.plug', t.s, pbd!);
    assert.equal(await contentHash(file), before, 'the VDI reads as before');
    assert.equal(existsSync(join(dir, `${fresh}.vhd`)), false);
    assert.deepEqual(
      readdirSync(join(dir, '.journal')).filter((f) => f.startsWith('snapshot-')),
      [],
      'the snapshot journal is done with',
    );
    assert.equal(((await t.rec('SR', sr)).VDIs as string[]).length, 1, 'the hidden parent is no VDI');
    // The plug kicked the GC, which may already be merging the leaf into the recovered parent:
    // once it is done, the VDI is one file again, reading the same.
    await t.storage.settleGc(sr);
    assert.deepEqual(readdirSync(join(dir, '.journal')), []);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith('.vhd')),
      [`${location}.vhd`],
    );
    assert.equal(((await t.rec('VDI', vdi)).sm_config as Record<string, string>)['vhd-parent'], undefined);
    assert.equal(await contentHash(file), before, 'and reads as before');
  } finally {
    await t.close();
  }
});

test('SR.forget keeps the data: introduce, a new PBD and a plug bring the SR and its VDIs back', async () => {
  const t = await setup();
  try {
    const sr = await t.fileSr('roaming');
    const vdi = await t.vdiCreate(sr, 8 * MiB, 'keep me');
    const d = await openDiskFile(await t.vhdFile(vdi), { readOnly: false });
    await d.write(0, pattern(13, MiB));
    await d.close();
    const content = await contentHash(await t.vhdFile(vdi));
    const rec = await t.rec('SR', sr);
    const pbd = await t.rec('PBD', (rec.PBDs as string[])[0]!);
    const dc = pbd.device_config as Record<string, string>;
    const location = (await t.rec('VDI', vdi)).location as string;
    await t.ok('PBD.unplug', t.s, (rec.PBDs as string[])[0]!);
    await t.ok('SR.forget', t.s, sr);
    assert.deepEqual(await t.err('SR.get_record', t.s, sr), ['HANDLE_INVALID', 'SR', sr]);
    assert.deepEqual(await t.err('VDI.get_record', t.s, vdi), ['HANDLE_INVALID', 'VDI', vdi]);

    const again = (await t.ok('SR.introduce', t.s, rec.uuid as string, 'roaming', '', 'file', 'user', false, newStruct())) as string;
    const r = await t.rec('SR', again);
    assert.equal(r.physical_size, -1n);
    const newPbd = (await t.ok(
      'PBD.create',
      t.s,
      struct({ host: t.host.hostRef, SR: again, device_config: struct(dc), other_config: newStruct() }),
    )) as string;
    assert.deepEqual(
      await t.err(
        'PBD.create',
        t.s,
        struct({ host: t.host.hostRef, SR: again, device_config: struct({ SRmaster: 'true', ...dc }), other_config: newStruct() }),
      ),
      ['VALUE_NOT_SUPPORTED', 'SRmaster', 'true', 'This key is for internal use only'],
    );
    await t.ok('PBD.plug', t.s, newPbd);
    const [back] = (await t.rec('SR', again)).VDIs as string[];
    assert.equal((await t.rec('VDI', back!)).location, location);
    assert.equal(await contentHash(await t.vhdFile(back!)), content);
    assert.ok(Number((await t.rec('SR', again)).physical_size) > 0);
  } finally {
    await t.close();
  }
});

test('PBD.set_device_config: only the SR backend session may call it; passwords move to secrets; SRmaster refused', async () => {
  const t = await setup();
  try {
    const sr = await t.fileSr('reconfigured');
    const pbd = ((await t.rec('SR', sr)).PBDs as string[])[0]!;
    const dc = (await t.rec('PBD', pbd)).device_config as Record<string, string>;
    const bogus = 'OpaqueRef:00000000-0000-0000-0000-000000000000';
    assert.deepEqual(await t.err('PBD.set_device_config', t.s, bogus, struct({})), ['HANDLE_INVALID', 'PBD', bogus]);
    // a client's session, even the pool admin's: refused, nothing changed, no secret made
    assert.deepEqual(await t.err('PBD.set_device_config', t.s, pbd, struct({ location: '/elsewhere' })), ['PERMISSION_DENIED', '']);
    // xapi's SM sessions carry `_sm_session` naming their SR; another SR's is refused too
    await t.ok('session.add_to_other_config', t.s, t.s, '_sm_session', t.localSr);
    assert.deepEqual(await t.err('PBD.set_device_config', t.s, pbd, struct({ location: '/elsewhere' })), ['PERMISSION_DENIED', '']);
    assert.deepEqual((await t.rec('PBD', pbd)).device_config, dc);
    assert.deepEqual(await t.ok('secret.get_all', t.s), []);
    await t.ok('session.remove_from_other_config', t.s, t.s, '_sm_session');
    await t.ok('session.add_to_other_config', t.s, t.s, '_sm_session', sr);
    assert.deepEqual(await t.err('PBD.set_device_config', t.s, pbd, struct({ ...dc, SRmaster: 'true' })), [
      'VALUE_NOT_SUPPORTED',
      'SRmaster',
      'true',
      'This key is for internal use only',
    ]);
    await t.ok('PBD.set_device_config', t.s, pbd, struct({ ...dc, chappassword: 'hunter2' }));
    const stored = (await t.rec('PBD', pbd)).device_config as Record<string, string>;
    const secretUuid = stored.chappassword_secret!;
    assert.deepEqual({ ...stored }, { ...dc, chappassword_secret: secretUuid });
    const secret = (await t.ok('secret.get_by_uuid', t.s, secretUuid)) as string;
    assert.equal(await t.ok('secret.get_value', t.s, secret), 'hunter2');
  } finally {
    await t.close();
  }
});

test('SR.create and PBD.create keep passwords in secrets of their own; SR.make is deprecated', async () => {
  const t = await setup();
  try {
    const secretValue = async (uuid: string) => t.ok('secret.get_value', t.s, (await t.ok('secret.get_by_uuid', t.s, uuid)) as string);
    const dir = t.tmp();
    const sr = (await t.ok(
      'SR.create',
      t.s,
      t.host.hostRef,
      struct({ location: dir, password: 'hunter2' }),
      0n,
      'with a password',
      '',
      'file',
      'user',
      false,
      newStruct(),
    )) as string;
    const [pbd] = (await t.rec('SR', sr)).PBDs as string[];
    const dc = (await t.rec('PBD', pbd!)).device_config as Record<string, string>;
    assert.deepEqual(Object.keys(dc).sort(), ['location', 'password_secret']);
    assert.equal(await secretValue(dc.password_secret!), 'hunter2');

    // A new PBD naming that secret gets a copy of its own; a password in the clear, a new secret.
    await t.ok('PBD.unplug', t.s, pbd!);
    await t.ok('PBD.destroy', t.s, pbd!);
    const again = (await t.ok(
      'PBD.create',
      t.s,
      struct({ host: t.host.hostRef, SR: sr, device_config: struct({ ...dc, chappassword: 's3cret' }), other_config: newStruct() }),
    )) as string;
    const dc2 = (await t.rec('PBD', again)).device_config as Record<string, string>;
    assert.deepEqual(Object.keys(dc2).sort(), ['chappassword_secret', 'location', 'password_secret']);
    assert.notEqual(dc2.password_secret, dc.password_secret);
    assert.equal(await secretValue(dc2.password_secret!), 'hunter2');
    assert.equal(await secretValue(dc2.chappassword_secret!), 's3cret');
    await t.ok('PBD.destroy', t.s, again);
    const missing = '00000000-0000-0000-0000-000000000000';
    assert.deepEqual(
      await t.err(
        'PBD.create',
        t.s,
        struct({
          host: t.host.hostRef,
          SR: sr,
          device_config: struct({ location: dir, password_secret: missing }),
          other_config: newStruct(),
        }),
      ),
      ['UUID_INVALID', 'secret', missing],
    );

    const bogus = 'OpaqueRef:00000000-0000-0000-0000-000000000000';
    const make = (host: string) => t.err('SR.make', t.s, host, struct({ location: t.tmp() }), 0n, 'made', '', 'file', 'user', newStruct());
    assert.deepEqual(await make(bogus), ['HANDLE_INVALID', 'host', bogus]);
    assert.deepEqual(await make(t.host.hostRef), ['MESSAGE_DEPRECATED']);
  } finally {
    await t.close();
  }
});

test('on_boot=reset: every boot starts from the content the disk had when reset was set', async () => {
  const t = await setup();
  try {
    const vm = await t.provisionedVm('kiosk');
    const [vbd] = (await t.rec('VM', vm)).VBDs as string[];
    const disk = (await t.rec('VBD', vbd!)).VDI as string;
    const vbdUuid = (await t.rec('VBD', vbd!)).uuid as string;
    const uuid = (await t.rec('VM', vm)).uuid as string;
    // the golden image
    await t.ok('VM.start', t.s, vm, false, false);
    await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 0, write: pattern(20, MiB) });
    await t.ok('VM.hard_shutdown', t.s, vm);
    const golden = await contentHash(await t.vhdFile(disk));
    await t.ok('VDI.set_on_boot', t.s, disk, 'reset');
    assert.equal((await t.rec('VDI', disk)).on_boot, 'reset');
    assert.deepEqual(await t.err('VDI.snapshot', t.s, disk, newStruct()), ['VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION']);
    for (let boot = 0; boot < 2; boot++) {
      await t.ok('VM.start', t.s, vm, false, false);
      // what the guest sees at boot is the golden image
      const head = await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 0, length: MiB });
      assert.ok(head.equals(pattern(20, MiB)), `boot ${boot} starts from the saved content`);
      await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 0, write: pattern(30 + boot, MiB) });
      await t.ok('VM.hard_shutdown', t.s, vm);
      assert.notEqual(await contentHash(await t.vhdFile(disk)), golden, 'the run wrote to the disk');
      // the GC does not merge the run's writes into the saved content
      await t.storage.runGc(t.localSr);
    }
    await t.ok('VDI.set_on_boot', t.s, disk, 'persist');
    await t.ok('VM.start', t.s, vm, false, false);
    const kept = await t.domains.guestDiskIo(uuid, vbdUuid, { offset: 0, length: MiB });
    assert.ok(kept.equals(pattern(31, MiB)), "with persist the last run's writes stay");
    await t.ok('VM.hard_shutdown', t.s, vm);
  } finally {
    await t.close();
  }
});
