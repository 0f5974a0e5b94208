// GC/coalesce of a file-based VHD SR: results judged by our reader, libvhdi (chains) and
// qemu-img (standalone files), and crash safety judged by killing a GC child process.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDifferencing, createDynamic, open } from '../../src/storage/vhd/vhd.js';
import { buildTree, chainOf, listNodes, vhdPath } from '../../src/storage/file-layout.js';
import { recoverJournals, runGc, type GcOptions } from '../../src/storage/gc.js';
import { ensureJudges, ourHash, vhdiChain } from './vhd-judge.js';
import { Mutex } from '../../src/util/mutex.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'sr-gc-child.js');
let root = '';

before(() => {
  ensureJudges();
  root = mkdtempSync(path.join(tmpdir(), 'sr-gc-test-'));
});
after(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

let seedCounter = 1;
/** Offset-dependent bytes, different for every call. 4 KiB-aligned writes only: see vhd-judge.ts. */
function pattern(len: number): Buffer {
  const seed = seedCounter++;
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed * 131 + (i >> 12)) & 0xff || 1;
  return b;
}

type Name = 'R' | 'A' | 'B' | 'L1' | 'L2' | 'G' | 'S' | 'L3' | 'T' | 'L4' | 'D' | 'E';
interface Sr {
  dir: string;
  ids: Record<Name, string>;
  leaves: Name[]; // visible leaves (VDIs)
  active: Set<string>;
}

/**
 * R(h) <- A(h) <- B(h) <- {L1, L2, G(h, deleted leaf)}      A, B coalesce into R; G is garbage
 * S(h) <- L3 (resized larger than S)                        L3 leaf-coalesces into S
 * T(h) <- L4 (active: attached to a running VM)             left alone
 * D(h) <- E(h)                                              E then D are garbage
 */
async function buildSr(dir: string): Promise<Sr> {
  mkdirSync(dir, { recursive: true });
  const names: Name[] = ['R', 'A', 'B', 'L1', 'L2', 'G', 'S', 'L3', 'T', 'L4', 'D', 'E'];
  const ids = Object.fromEntries(names.map((n) => [n, randomUUID()])) as Record<Name, string>;
  const p = (n: Name) => vhdPath(dir, ids[n]);
  const mk = async (n: Name, parent: Name | null, writes: Array<[number, number]>, hidden: boolean, grow?: number) => {
    const v = parent ? await createDifferencing(p(n), p(parent)) : await createDynamic(p(n), SIZE);
    try {
      if (grow) await v.resize(grow);
      for (const [off, len] of writes) await v.write(off, pattern(len));
      if (hidden) await v.setHidden(true);
    } finally {
      await v.close();
    }
  };
  const K = 1024;
  await mk(
    'R',
    null,
    [
      [0, 2 * MiB],
      [5 * MiB, 512 * K],
    ],
    true,
  );
  await mk(
    'A',
    'R',
    [
      [MiB, MiB],
      [3 * MiB + 4 * K, 2 * MiB],
    ],
    true,
  ); // crosses a block boundary
  await mk(
    'B',
    'A',
    [
      [MiB + 4 * K, 8 * K],
      [6 * MiB, MiB],
      [3 * MiB + 512 * K, 64 * K],
    ],
    true,
  );
  await mk(
    'L1',
    'B',
    [
      [0, 8 * K],
      [7 * MiB, 512 * K],
    ],
    false,
  );
  await mk('L2', 'B', [[2 * MiB + 256 * K, MiB]], false);
  await mk('G', 'B', [[6 * MiB, 512 * K]], true);
  await mk('S', null, [[0, 2 * MiB]], true);
  await mk(
    'L3',
    'S',
    [
      [MiB, 2 * MiB],
      [SIZE + MiB, 512 * K],
    ],
    false,
    SIZE + 2 * MiB,
  );
  await mk('T', null, [[0, MiB]], true);
  await mk('L4', 'T', [[4 * K, 4 * K]], false);
  await mk('D', null, [[0, 512 * K]], true);
  await mk('E', 'D', [[0, 4 * K]], true);
  return { dir, ids, leaves: ['L1', 'L2', 'L3', 'L4'], active: new Set([ids.L4]) };
}

async function leafHashes(sr: Sr): Promise<Record<string, string>> {
  const hashes = await Promise.all(sr.leaves.map((n) => ourHash(vhdPath(sr.dir, sr.ids[n]))));
  return Object.fromEntries(sr.leaves.map((n, i) => [n, hashes[i]!]));
}

function gcOpts(sr: Sr, extra: Partial<GcOptions> = {}): GcOptions {
  let chain: Promise<unknown> = Promise.resolve();
  return {
    // A real mutex, as the SR driver's would be.
    lock: <T>(fn: () => Promise<T>): Promise<T> => {
      const r = chain.then(fn, fn);
      chain = r.catch(() => undefined);
      return r;
    },
    inUse: () => sr.active,
    ...extra,
  };
}

/** Copy an SR tree into a new directory (file names carry the identity; relative locators follow). */
function cloneSr(sr: Sr, dir: string): Sr {
  cpSync(sr.dir, dir, { recursive: true });
  return { ...sr, dir, active: new Set(sr.active) };
}

/** The shape every complete GC must reach from buildSr's tree. */
async function assertFinalShape(sr: Sr): Promise<void> {
  const { ids } = sr;
  const files = readdirSync(sr.dir)
    .filter((f) => f.endsWith('.vhd'))
    .sort();
  assert.deepEqual(files, [ids.R, ids.L1, ids.L2, ids.L3, ids.T, ids.L4].map((u) => `${u}.vhd`).sort(), 'files left');
  const tree = buildTree(await listNodes(sr.dir));
  assert.deepEqual(chainOf(tree, ids.L1), [ids.L1, ids.R]);
  assert.deepEqual(chainOf(tree, ids.L2), [ids.L2, ids.R]);
  assert.deepEqual(chainOf(tree, ids.L3), [ids.L3], 'leaf-coalesced into a standalone disk');
  assert.deepEqual(chainOf(tree, ids.L4), [ids.L4, ids.T], 'active leaf untouched');
  const l3 = tree.byUuid.get(ids.L3)!;
  assert.equal(l3.hidden, false);
  assert.equal(l3.type, 'dynamic');
  assert.equal(l3.virtualSize, SIZE + 2 * MiB);
  assert.equal(tree.byUuid.get(ids.R)!.hidden, true);
  assert.equal(tree.orphans.length, 0);
  const jdir = path.join(sr.dir, '.journal');
  assert.deepEqual(existsSync(jdir) ? readdirSync(jdir) : [], [], 'no journal left');
}

async function assertHashes(sr: Sr, want: Record<string, string>, when: string): Promise<void> {
  const got = await leafHashes(sr);
  for (const n of sr.leaves) assert.equal(got[n], want[n], `${n} content ${when}`);
}

let template: Sr;
let templateHashes: Record<string, string>;

test('file-layout lists nodes and builds the tree from locators', async () => {
  template = await buildSr(path.join(root, 'template'));
  templateHashes = await leafHashes(template);
  const { ids } = template;
  const nodes = await listNodes(template.dir);
  assert.equal(nodes.length, 12);
  const tree = buildTree(nodes);
  assert.deepEqual(tree.roots.map((n) => n.uuid).sort(), [ids.R, ids.S, ids.T, ids.D].sort());
  assert.deepEqual(tree.leaves.map((n) => n.uuid).sort(), [ids.L1, ids.L2, ids.G, ids.L3, ids.L4, ids.E].sort());
  assert.deepEqual(
    tree.children
      .get(ids.B)!
      .map((n) => n.uuid)
      .sort(),
    [ids.L1, ids.L2, ids.G].sort(),
  );
  assert.deepEqual(chainOf(tree, ids.L1), [ids.L1, ids.B, ids.A, ids.R]);
  const b = tree.byUuid.get(ids.B)!;
  assert.equal(b.hidden, true);
  assert.equal(b.parentUuid, ids.A);
  assert.equal(b.parentVhdUuid, tree.byUuid.get(ids.A)!.vhdUuid);
  assert.equal(b.virtualSize, SIZE);
  assert.ok(b.size > 2 * MiB && b.allocated > 0);
  // libvhdi reads the same content through the same chains (L3 is resized: libvhdi only knows
  // the original size, see vhd-judge.ts, so it is judged by qemu after it becomes standalone).
  for (const n of ['L1', 'L2', 'L4'] as const) {
    const j = vhdiChain(vhdPath(template.dir, ids[n]));
    assert.equal(j.hash, templateHashes[n], `libvhdi ${n}`);
  }
  assert.equal(vhdiChain(vhdPath(template.dir, ids.L1)).chain.length, 4);
});

test('runGc removes garbage, coalesces hidden chains, leaf-coalesces idle leaves; content unchanged', async () => {
  const sr = cloneSr(template, path.join(root, 'gc1'));
  const { ids } = sr;
  // Expected L3 content as a raw image, for qemu-img to judge the standalone result.
  const raw = path.join(root, 'l3.raw');
  const v = await open(vhdPath(sr.dir, ids.L3), { readOnly: true });
  writeFileSync(raw, await v.read(0, v.virtualSize));
  await v.close();

  const logs: string[] = [];
  const report = await runGc(sr.dir, gcOpts(sr, { log: (m) => logs.push(m) }));
  assert.deepEqual(report.garbage.sort(), [ids.G, ids.E, ids.D].sort());
  assert.deepEqual(report.coalesced, [ids.A, ids.B]);
  assert.deepEqual(report.leafCoalesced, [ids.L3]);
  assert.deepEqual(report.recovered, []);
  assert.equal(report.aborted, false);
  assert.ok(logs.length > 0);
  await assertFinalShape(sr);
  await assertHashes(sr, templateHashes, 'after GC');
  for (const n of ['L1', 'L2', 'L4'] as const) {
    const j = vhdiChain(vhdPath(sr.dir, ids[n]));
    assert.equal(j.hash, templateHashes[n], `libvhdi ${n} after GC`);
    assert.equal(j.chain.length, 2);
  }
  // qemu-img: the leaf-coalesced VDI is now a standalone dynamic disk with the same content,
  // and qemu sees no backing chain for any file (its vpc driver has none).
  const l3 = vhdPath(sr.dir, ids.L3);
  execFileSync('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', l3, raw]);
  for (const n of ['L1', 'L3'] as const) {
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', '-f', 'vpc', vhdPath(sr.dir, ids[n])], { encoding: 'utf8' }),
    ) as unknown[];
    assert.equal(info.length, 1);
  }
  // A second run has nothing to do.
  const again = await runGc(sr.dir, gcOpts(sr));
  assert.deepEqual([again.garbage, again.coalesced, again.leafCoalesced], [[], [], []]);
  assert.equal(again.passes, 1);
});

test('leafCoalesce:false keeps leaves; a concurrent runGc on the same SR is refused', async () => {
  const sr = cloneSr(template, path.join(root, 'gc2'));
  const p = runGc(sr.dir, gcOpts(sr, { leafCoalesce: false }));
  await assert.rejects(runGc(sr.dir, gcOpts(sr)), /already running/);
  const report = await p;
  assert.deepEqual(report.leafCoalesced, []);
  assert.deepEqual(report.coalesced, [sr.ids.A, sr.ids.B]);
  assert.ok(existsSync(vhdPath(sr.dir, sr.ids.S)));
  await assertHashes(sr, templateHashes, 'without leaf-coalesce');
});

test("a snapshot writing its journal under the SR lock: the GC waits for the lock and leaves the driver's journal alone", async () => {
  const sr = cloneSr(template, path.join(root, 'gc-foreign-journal'));
  const jdir = path.join(sr.dir, '.journal');
  mkdirSync(jdir, { recursive: true });
  const journal = path.join(jdir, `snapshot-${sr.ids.L1}.json`);
  const tmp = `${journal}.tmp-${process.pid}-1`;
  const lock = new Mutex();
  // The driver's snapshot holds the SR lock with its journal still a temp file (writeFileAtomic
  // between write and rename) until `finish` is called.
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  let wrote!: () => void;
  const written = new Promise<void>((r) => (wrote = r));
  const snapshot = lock.run(async () => {
    writeFileSync(tmp, JSON.stringify({ leaf: sr.ids.L1, parent: randomUUID(), fresh: '' }));
    wrote();
    await finished;
    renameSync(tmp, journal);
  });
  await written;
  let askedForLock!: () => void;
  const gcWaiting = new Promise<void>((r) => (askedForLock = r));
  const gc = runGc(sr.dir, {
    lock: (fn) => {
      askedForLock();
      return lock.run(fn);
    },
    inUse: () => sr.active,
  });
  await gcWaiting;
  assert.ok(existsSync(tmp), 'the journal being written is still there when the GC first needs the lock');
  finish();
  await snapshot;
  await gc;
  assert.ok(existsSync(journal), "the driver's journal is not the GC's to recover or remove");
  rmSync(journal); // the driver's recovery would
  await assertFinalShape(sr);
  await assertHashes(sr, templateHashes, 'after a GC beside a snapshot journal');
});

test('abort signal stops the GC between steps with a consistent tree', async () => {
  const sr = cloneSr(template, path.join(root, 'gc3'));
  const ac = new AbortController();
  let runs = 0;
  const report = await runGc(
    sr.dir,
    gcOpts(sr, {
      signal: ac.signal,
      crashPoint: (n) => {
        if (n === 'coalesce:copy-run' && ++runs === 2) ac.abort();
      },
    }),
  );
  assert.equal(report.aborted, true);
  assert.deepEqual(report.coalesced, []);
  assert.deepEqual(readdirSync(path.join(sr.dir, '.journal')), [], 'copy-phase journal dropped');
  await assertHashes(sr, templateHashes, 'after abort');
  await runGc(sr.dir, gcOpts(sr));
  await assertFinalShape(sr);
  await assertHashes(sr, templateHashes, 'after the rerun');
});

/** Simulated crash in-process: throw at the named point (the durable state is what a kill leaves). */
class Crash extends Error {}
const crashAt = (name: string, nth = 1): GcOptions['crashPoint'] => {
  let seen = 0;
  return (n) => {
    if (n === name && ++seen === nth) throw new Crash(name);
  };
};

test('recovery rolls a re-parent forward, and rolls a leaf commit back if the leaf changed', async () => {
  const sr = cloneSr(template, path.join(root, 'gc4'));
  const { ids } = sr;
  // Crash after the first of B's children was re-parented onto R (A, root-most, went first).
  await assert.rejects(runGc(sr.dir, gcOpts(sr, { crashPoint: crashAt('reparented-one', 2) })), Crash);
  await assertHashes(sr, templateHashes, 'mid re-parent, before recovery');
  const rec = await recoverJournals(sr.dir);
  assert.deepEqual(
    rec.map((r) => [r.node, r.phase, r.action]),
    [[ids.B, 'reparent', 'rolled-forward']],
  );
  assert.ok(!existsSync(vhdPath(sr.dir, ids.B)));
  await assertHashes(sr, templateHashes, 'after re-parent recovery');

  // Crash right after the leaf-commit journal, then the VDI is written before recovery runs.
  await assert.rejects(runGc(sr.dir, gcOpts(sr, { crashPoint: crashAt('leaf:unhidden') })), Crash);
  await assertHashes(sr, templateHashes, 'leaf commit, before recovery');
  const l3 = await open(vhdPath(sr.dir, ids.L3));
  const fresh = pattern(4096);
  await l3.write(7 * MiB, fresh);
  await l3.close();
  const changed = await ourHash(vhdPath(sr.dir, ids.L3));
  const rec2 = await recoverJournals(sr.dir);
  assert.deepEqual(
    rec2.map((r) => [r.node, r.phase, r.action]),
    [[ids.L3, 'commit', 'rolled-back']],
  );
  assert.equal(await ourHash(vhdPath(sr.dir, ids.L3)), changed, 'the new write survives');
  const tree = buildTree(await listNodes(sr.dir));
  assert.equal(tree.byUuid.get(ids.S)!.hidden, true, 'parent hidden again');
  // And the next GC leaf-coalesces the changed leaf properly.
  const r = await runGc(sr.dir, gcOpts(sr));
  assert.deepEqual(r.leafCoalesced, [ids.L3]);
  assert.equal(await ourHash(vhdPath(sr.dir, ids.L3)), changed);
  await assertFinalShape(sr);
});

interface ChildResult {
  signal: NodeJS.Signals | null;
  code: number | null;
  out: string;
}

/** Run the GC child (sr-gc-child.ts; `env` says where it kills itself, if anywhere). */
function runChild(dir: string, env: Record<string, string>): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dir], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0 && signal === null) reject(new Error(`GC child failed (${code}): ${err}`));
      else resolve({ code, signal, out });
    });
  });
}

/** After a kill: leaves read the same before any recovery, and recovery + GC reach the final shape. */
async function checkAfterKill(sr: Sr, label: string): Promise<void> {
  await assertHashes(sr, templateHashes, `${label}, before recovery`);
  await recoverJournals(sr.dir, { inUse: () => sr.active });
  await runGc(sr.dir, gcOpts(sr));
  await assertFinalShape(sr);
  await assertHashes(sr, templateHashes, `${label}, after GC`);
}

test('kill -9 at every instrumented crash point loses nothing (and a second kill during recovery)', { timeout: 300_000 }, async () => {
  const active = { GC_ACTIVE: template.ids.L4 };
  // A clean child run tells how many crash points a whole GC passes, and how many changes to files it makes.
  const clean = cloneSr(template, path.join(root, 'kill-clean'));
  const res = await runChild(clean.dir, active);
  const { points, changes } = JSON.parse(res.out) as { points: string[]; changes: number };
  await assertFinalShape(clean);
  assert.ok(points.length > 20, `enough crash points (${points.length})`);
  for (const must of [
    'coalesce:copy-run',
    'coalesce:journal-reparent',
    'reparented-one',
    'coalesce:unlinked',
    'leaf:copy-run',
    'leaf:journal-commit',
    'leaf:unhidden',
    'leaf:renamed',
    'garbage',
  ]) {
    assert.ok(points.includes(must), `crash point ${must} reached`);
  }
  for (let k = 1; k <= points.length; k++) {
    // Between the first and last run of one copy every kill leaves the same kind of state: keep the runtime down.
    if (points[k - 1] === points[k - 2] && points[k - 1] === points[k] && points[k - 1]!.endsWith(':copy-run')) continue;
    const sr = cloneSr(template, path.join(root, `kill-${k}`));
    const r = await runChild(sr.dir, { ...active, GC_CRASH_AT: String(k) });
    assert.equal(r.signal, 'SIGKILL', `child killed at point ${k} (${points[k - 1]})`);
    if (existsSync(path.join(sr.dir, '.journal')) && readdirSync(path.join(sr.dir, '.journal')).some((f) => f.endsWith('.json'))) {
      // Kill the recovery (and the GC after it) too, at its first crash point.
      const r2 = await runChild(sr.dir, { ...active, GC_CRASH_AT: '1' });
      assert.ok(r2.signal === 'SIGKILL' || r2.code === 0);
    }
    await checkAfterKill(sr, `killed at ${k} (${points[k - 1]})`);
    rmSync(sr.dir, { recursive: true, force: true });
  }
  // Kills between the instrumented points: just before a file-system change, at seven changes
  // spread over the whole run (the first, before anything changed, to the last).
  assert.ok(changes > 20, `enough changes to files (${changes})`);
  for (let i = 0; i <= 6; i++) {
    const k = 1 + Math.round(((changes - 1) * i) / 6);
    const sr = cloneSr(template, path.join(root, `kill-c${i}`));
    const r = await runChild(sr.dir, { ...active, GC_KILL_AT_CHANGE: String(k) });
    assert.equal(r.signal, 'SIGKILL', `child killed before change ${k} of ${changes}`);
    await checkAfterKill(sr, `killed before change ${k} of ${changes}`);
    rmSync(sr.dir, { recursive: true, force: true });
  }
});
