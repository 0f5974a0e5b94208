// Garbage collection and coalescing for a file-based VHD SR (the job of SM's cleanup.py).
//
// Tree model (see file-layout.ts): leaves are VDIs; every inner node is hidden. Deleting a VDI
// only hides its node; this GC then
//   (a) unlinks hidden nodes without children (garbage),
//   (b) coalesces a hidden inner node C into its parent P when P has no other child: C's data is
//       copied into P, C's children are re-parented onto P, C is unlinked,
//   (c) leaf-coalesces an idle leaf L into its hidden parent P when P has no other child: L's
//       data is copied into P, P is un-hidden and renamed over `<L>.vhd`, so the VDI keeps its uuid.
// It repeats until a pass changes nothing.
//
// Crash safety. Any kill -9 must leave every leaf reading what it read before. The invariant
// that makes this possible: a node P that has exactly one child C may hold any mix of its old
// data and C's data, because every sector C has shadows P's. So copying into P is always safe,
// and only the tree changes (re-parent, unlink, rename) need care. Those are journalled in
// `<dir>/.journal/<node>.json` (written atomically: temp file, fsync, rename, fsync dir):
//
//   coalesce C into P:  journal {op:'coalesce', phase:'copy'} -> copy C into P, fsync P ->
//                       journal {phase:'reparent'} -> setParent(P) on each child of C (each one
//                       atomic header write) -> unlink C, fsync dir -> remove journal.
//   leaf-coalesce L:    journal {op:'leaf', phase:'copy'} -> copy L into P, fsync P ->
//                       journal {phase:'commit', fingerprint of L} -> un-hide P ->
//                       rename P.vhd over L.vhd, fsync dir -> remove journal.
//
// recoverJournals: phase 'copy' (either op) needs nothing (P's extra data is shadowed), the
// journal is dropped and the next pass starts again. Phase 'reparent' is rolled forward: the
// copy is known complete, so the remaining children of C are re-parented and C unlinked.
// Phase 'commit' is rolled forward (un-hide, rename) unless L changed or is in use since the
// journal was written, in which case it is rolled back (P hidden again, L kept).
//
// Locking. opts.lock is the SR lock the driver takes for snapshot/clone/delete/attach/open.
// Tree changes always happen under it, after re-reading the tree and asking which nodes are in
// use right now (opts.inUse): an operation that starts using a leaf after that question waits
// for the lock, so it finds the step done. The journal directory is shared with the driver's
// snapshot journals (file-sr.ts), so the GC reads it only under the lock too (a snapshot's
// journal may be a temp file about to be renamed into place) and only ever touches its own
// entries: `<node>.json` and their temp files. The bulk copy of a non-leaf
// coalesce runs outside the lock: it only reads a hidden node and writes its hidden parent,
// which nothing else touches (the driver only snapshots leaves). A leaf-coalesce holds the
// lock for the whole step, copy included, because the leaf's data must not change between
// the copy and the rename (SM pauses the leaf's tapdisk for the same reason).
// One GC per SR directory at a time: a second concurrent runGc on the same directory in this
// process is refused; across processes the caller must serialise (SM uses a lock file).
import { mkdir, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import * as path from 'node:path';
import { fsyncDir, writeFileAtomic } from '../util/files.js';
import { buildTree, chainOf, listNodes, vhdPath, type VhdNode, type VhdTree } from './file-layout.js';
import { Vhd, coalesceInto } from './vhd/vhd.js';

export interface GcOptions {
  /** The SR lock; held around every change of the tree. */
  lock<T>(fn: () => Promise<T>): Promise<T>;
  /**
   * The nodes in use now (leaves attached to a VM, being written, reset at each boot, under an
   * operation): never re-parented or replaced. Asked under the lock before every step, never
   * remembered from one step to the next.
   */
  inUse(): ReadonlySet<string> | Promise<ReadonlySet<string>>;
  /** Coalesce idle leaves into their parent (default true). */
  leafCoalesce?: boolean;
  log?(msg: string, o?: object): void;
  /** Stops the GC between steps (and between copied runs; a partial copy is harmless). */
  signal?: AbortSignal;
  /**
   * Test instrumentation: called at every point between two durable effects, with a name.
   * The kill tests make the process SIGKILL itself at the k-th call.
   */
  crashPoint?(name: string): void | Promise<void>;
}

export interface GcReport {
  /** Hidden childless nodes unlinked. */
  garbage: string[];
  /** Hidden inner nodes coalesced into their parent (and then removed). */
  coalesced: string[];
  /** Leaves whose data now lives in their former parent's file (renamed to the leaf's uuid). */
  leafCoalesced: string[];
  /** Journals found at start and completed or rolled back. */
  recovered: Array<{ node: string; op: string; phase: string; action: 'rolled-forward' | 'rolled-back' | 'dropped' | 'deferred' }>;
  passes: number;
  aborted: boolean;
}

type Journal =
  | { v: 1; op: 'coalesce'; node: string; parent: string; phase: 'copy' | 'reparent'; time: string }
  | { v: 1; op: 'leaf'; node: string; parent: string; phase: 'copy' | 'commit'; time: string; leafSize?: number; leafMtimeNs?: string };

const JOURNAL_DIR = '.journal';
const MAX_PASSES = 10_000;
const running = new Set<string>();

function journalPath(dir: string, node: string): string {
  return path.join(dir, JOURNAL_DIR, `${node}.json`);
}

/** Atomic replace: a crash leaves either the old journal or the new one, never a torn one. */
async function writeJournal(dir: string, j: Journal): Promise<void> {
  const jdir = path.join(dir, JOURNAL_DIR);
  // A freshly made journal directory must itself survive a crash before its first entry counts.
  if (await mkdir(jdir, { recursive: true })) await fsyncDir(dir);
  await writeFileAtomic(journalPath(dir, j.node), JSON.stringify(j));
}

async function removeJournal(dir: string, node: string): Promise<void> {
  try {
    await unlink(journalPath(dir, node));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  await fsyncDir(path.join(dir, JOURNAL_DIR));
}

/** The GC's own journal entries, `<node-uuid>.json`, and writeFileAtomic's temp files of them. */
const GC_JOURNAL = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json$/;
const GC_JOURNAL_TMP = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json\.tmp-\d+-\d+$/;

/**
 * The GC's pending journals. Call only under the SR lock: every journal write (the GC's and
 * the driver's) happens under it, so a temp file seen here is a crash leftover, not a write
 * in progress.
 */
async function readJournals(dir: string): Promise<Journal[]> {
  const jdir = path.join(dir, JOURNAL_DIR);
  let names: string[];
  try {
    names = await readdir(jdir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: Journal[] = [];
  for (const n of names.sort()) {
    // The directory also holds file-sr.ts's snapshot journals, written under the SR lock while a
    // GC may be reading here: they (and their temp files) are that code's to replay or clean.
    if (n.startsWith('snapshot-')) continue;
    const p = path.join(jdir, n);
    // A journal update that never got renamed into place: the previous state stands.
    if (GC_JOURNAL_TMP.test(n)) {
      await unlink(p).catch(() => undefined);
      continue;
    }
    if (!GC_JOURNAL.test(n)) continue; // another writer's (the driver's snapshot journals)
    out.push(JSON.parse(await readFile(p, 'utf8')) as Journal);
  }
  return out;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

async function fingerprint(p: string): Promise<{ leafSize: number; leafMtimeNs: string }> {
  const st = await stat(p, { bigint: true });
  return { leafSize: Number(st.size), leafMtimeNs: st.mtimeNs.toString() };
}

async function withVhd<T>(p: string, readOnly: boolean, fn: (v: Vhd) => Promise<T>): Promise<T> {
  const v = await Vhd.open(p, { readOnly });
  try {
    return await fn(v);
  } finally {
    await v.close();
  }
}

async function scan(dir: string): Promise<VhdTree> {
  return buildTree(await listNodes(dir));
}

/** Re-parent every node whose parent is `from` onto `to`. */
async function reparentChildren(dir: string, tree: VhdTree, from: string, to: string, point: (n: string) => Promise<void>): Promise<void> {
  for (const child of tree.children.get(from) ?? []) {
    await withVhd(child.path, false, (v) => v.setParent(vhdPath(dir, to)));
    await point('reparented-one');
  }
}

export interface RecoverOptions {
  lock?<T>(fn: () => Promise<T>): Promise<T>;
  /** As GcOptions.inUse; defaults to nothing, true when called at SR attach before any VDI is used. */
  inUse?(): ReadonlySet<string> | Promise<ReadonlySet<string>>;
  log?(msg: string, o?: object): void;
  crashPoint?(name: string): void | Promise<void>;
}

/**
 * Complete or roll back the steps a killed GC left half done (see the file comment). Must run
 * before the SR's VDIs are used after a crash; runGc also calls it first. Idempotent: it may
 * itself be killed and re-run.
 */
export async function recoverJournals(dir: string, opts: RecoverOptions = {}): Promise<GcReport['recovered']> {
  const lock = opts.lock ?? (<T>(fn: () => Promise<T>) => fn());
  const log = opts.log ?? (() => undefined);
  const point = async (n: string) => {
    await opts.crashPoint?.(`recover:${n}`);
  };
  // One lock hold for the whole recovery: the journals are read under it, and each step is short.
  return lock(async () => {
    const out: GcReport['recovered'] = [];
    const journals = await readJournals(dir);
    const used = journals.length > 0 && opts.inUse ? await opts.inUse() : new Set<string>();
    for (const j of journals) {
      const action = await recoverOne(dir, j, (u) => used.has(u), point);
      log(`GC recovery: ${j.op} of ${j.node} (phase ${j.phase}) ${action}`, j);
      out.push({ node: j.node, op: j.op, phase: j.phase, action });
    }
    return out;
  });
}

/** Finishes or undoes one journalled step (under the SR lock). */
async function recoverOne(
  dir: string,
  j: Journal,
  isUsed: (uuid: string) => boolean,
  point: (n: string) => Promise<void>,
): Promise<GcReport['recovered'][number]['action']> {
  const parentPath = vhdPath(dir, j.parent);
  const nodePath = vhdPath(dir, j.node);
  if (j.phase === 'copy') {
    // The parent holds part of the child's data, shadowed by the child: nothing to undo.
    await removeJournal(dir, j.node);
    return 'dropped';
  }
  if (j.op === 'coalesce') {
    if (!(await exists(parentPath))) throw new Error(`GC recovery: parent ${j.parent} of coalesced ${j.node} is missing`);
    const tree = await scan(dir);
    const kids = tree.children.get(j.node) ?? [];
    if (kids.some((k) => isUsed(k.uuid))) return 'deferred'; // retried on the next run
    await reparentChildren(dir, tree, j.node, j.parent, point);
    if (await exists(nodePath)) {
      await unlink(nodePath);
      await fsyncDir(dir);
    }
    await removeJournal(dir, j.node);
    return 'rolled-forward';
  }
  // leaf, phase commit
  if (await exists(parentPath)) {
    const fp = (await exists(nodePath)) ? await fingerprint(nodePath) : null;
    const unchanged = fp !== null && fp.leafSize === j.leafSize && fp.leafMtimeNs === j.leafMtimeNs;
    if (!unchanged || isUsed(j.node)) {
      // The leaf moved on since the copy (or is in use): keep it, put the parent back as it was.
      await withVhd(parentPath, false, (v) => v.setHidden(true));
      await removeJournal(dir, j.node);
      return 'rolled-back';
    }
    await withVhd(parentPath, false, (v) => v.setHidden(false));
    await point('leaf-unhidden');
    await rename(parentPath, nodePath);
    await fsyncDir(dir);
  }
  await removeJournal(dir, j.node);
  return 'rolled-forward';
}

/** Nodes named by journals still pending: never picked by a pass until recovery finishes them. Under the SR lock. */
async function busyNodes(dir: string): Promise<Set<string>> {
  const s = new Set<string>();
  for (const j of await readJournals(dir)) {
    s.add(j.node);
    s.add(j.parent);
  }
  return s;
}

/** opts.inUse as a predicate, asked now (call under the lock). */
async function usedNow(opts: GcOptions): Promise<(uuid: string) => boolean> {
  const used = await opts.inUse();
  return (u) => used.has(u);
}

function onlyChild(tree: VhdTree, parent: string): VhdNode | null {
  const kids = tree.children.get(parent) ?? [];
  return kids.length === 1 ? kids[0]! : null;
}

/** C can be coalesced into its parent: hidden, has children, parent hidden with C as its only child. */
function coalesceTarget(tree: VhdTree, c: VhdNode, isUsed: (u: string) => boolean): VhdNode | null {
  if (!c.hidden || !c.parentUuid) return null;
  const kids = tree.children.get(c.uuid)!;
  if (kids.length === 0) return null;
  const p = tree.byUuid.get(c.parentUuid);
  if (!p?.hidden || onlyChild(tree, p.uuid)?.uuid !== c.uuid || tree.orphans.includes(c)) return null;
  // Re-parenting rewrites the children's headers: not under a VM that has the leaf open.
  if (kids.some((k) => isUsed(k.uuid))) return null;
  return p;
}

/** L can be leaf-coalesced: visible idle leaf whose hidden parent has no other child. */
function leafTarget(tree: VhdTree, l: VhdNode, isUsed: (u: string) => boolean): VhdNode | null {
  if (l.hidden || !l.parentUuid || (tree.children.get(l.uuid)?.length ?? 0) > 0 || isUsed(l.uuid)) return null;
  const p = tree.byUuid.get(l.parentUuid);
  if (!p?.hidden || onlyChild(tree, p.uuid)?.uuid !== l.uuid || tree.orphans.includes(l)) return null;
  // The VDI's size must not change: a parent larger than its leaf cannot take its place.
  if (p.virtualSize > l.virtualSize) return null;
  return p;
}

export async function runGc(dir: string, opts: GcOptions): Promise<GcReport> {
  const key = path.resolve(dir);
  if (running.has(key)) throw new Error(`GC already running on ${dir}`);
  running.add(key);
  try {
    return await gcLoop(dir, opts);
  } finally {
    running.delete(key);
  }
}

async function gcLoop(dir: string, opts: GcOptions): Promise<GcReport> {
  const log = opts.log ?? (() => undefined);
  const point = async (n: string) => {
    await opts.crashPoint?.(n);
  };
  const report: GcReport = { garbage: [], coalesced: [], leafCoalesced: [], recovered: [], passes: 0, aborted: false };
  report.recovered = await recoverJournals(dir, { lock: opts.lock, inUse: opts.inUse, log, crashPoint: opts.crashPoint });
  const aborted = () => opts.signal?.aborted === true;

  while (report.passes < MAX_PASSES) {
    if (aborted()) {
      report.aborted = true;
      break;
    }
    report.passes++;
    let changed = false;

    // (a) garbage, all at once under one lock hold: unlinking a childless hidden node cannot
    // change what any leaf reads. Its removal may expose new garbage: the loop takes it next pass.
    const removed = await opts.lock(async () => {
      const tree = await scan(dir);
      const busy = await busyNodes(dir);
      const used = await opts.inUse();
      const gone: string[] = [];
      for (const n of tree.leaves) {
        if (!n.hidden || busy.has(n.uuid) || used.has(n.uuid)) continue;
        await unlink(n.path);
        gone.push(n.uuid);
      }
      if (gone.length) await fsyncDir(dir);
      return gone;
    });
    if (removed.length) {
      log(`GC: removed garbage ${removed.join(', ')}`);
      report.garbage.push(...removed);
      changed = true;
      await point('garbage');
    }

    // (b) then (c): one step per pass, from a fresh scan, since each step reshapes the tree.
    // Read under the lock: a snapshot half done (leaf renamed, its journal being written) is
    // not a tree to plan from. The step itself re-checks its choice under the lock.
    const { tree, busy, used } = await opts.lock(async () => ({
      tree: await scan(dir),
      busy: await busyNodes(dir),
      used: await opts.inUse(),
    }));
    const isUsed = (u: string) => used.has(u);
    let did = false;
    // Root-most candidates first (deterministic; each merge also shortens every chain below it).
    const depth = (n: VhdNode) => chainOf(tree, n.uuid).length;
    const ordered = [...tree.byUuid.values()].sort((x, y) => depth(x) - depth(y) || x.uuid.localeCompare(y.uuid));
    for (const c of ordered) {
      const p = coalesceTarget(tree, c, isUsed);
      if (!p || busy.has(c.uuid) || busy.has(p.uuid)) continue;
      if (await coalesceNonLeaf(dir, c.uuid, p.uuid, opts, point)) {
        report.coalesced.push(c.uuid);
        did = true;
      }
      break;
    }
    if (!did && opts.leafCoalesce !== false && !aborted()) {
      for (const l of tree.leaves) {
        const p = leafTarget(tree, l, isUsed);
        if (!p || busy.has(l.uuid) || busy.has(p.uuid)) continue;
        if (await coalesceLeaf(dir, l.uuid, p.uuid, opts, point)) {
          report.leafCoalesced.push(l.uuid);
          did = true;
        }
        break;
      }
    }
    if (!changed && !did) break;
  }
  return report;
}

/** Run fn; if it throws (an abort, an I/O error) drop the copy-phase journal: nothing to undo. */
async function copyPhase(dir: string, node: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    await removeJournal(dir, node);
    throw e;
  }
}

function isAbort(e: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true && (e === signal.reason || (e as Error)?.name === 'AbortError');
}

async function coalesceNonLeaf(dir: string, c: string, p: string, opts: GcOptions, point: (n: string) => Promise<void>): Promise<boolean> {
  const log = opts.log ?? (() => undefined);
  const started = await opts.lock(async () => {
    const tree = await scan(dir);
    const node = tree.byUuid.get(c);
    if (!node || coalesceTarget(tree, node, await usedNow(opts))?.uuid !== p) return false;
    await writeJournal(dir, { v: 1, op: 'coalesce', node: c, parent: p, phase: 'copy', time: new Date().toISOString() });
    return true;
  });
  if (!started) return false;
  await point('coalesce:journal-copy');
  log(`GC: coalescing ${c} into ${p}`);
  try {
    await copyPhase(dir, c, async () => {
      await withVhd(vhdPath(dir, c), true, (child) =>
        withVhd(vhdPath(dir, p), false, async (parent) => {
          await coalesceInto(child, parent, { signal: opts.signal, onRun: () => point('coalesce:copy-run') });
          await parent.sync(); // the data must be durable before any child is pointed at it
        }),
      );
    });
  } catch (e) {
    if (isAbort(e, opts.signal)) return false;
    throw e;
  }
  await point('coalesce:copied');
  return opts.lock(async () => {
    const tree = await scan(dir);
    const node = tree.byUuid.get(c);
    if (!node || coalesceTarget(tree, node, await usedNow(opts))?.uuid !== p) {
      // The tree moved on (e.g. a child got attached): the copy stays harmlessly in P.
      await removeJournal(dir, c);
      return false;
    }
    await writeJournal(dir, { v: 1, op: 'coalesce', node: c, parent: p, phase: 'reparent', time: new Date().toISOString() });
    await point('coalesce:journal-reparent');
    // Each re-parent is one header write; in between, children on C and on P both read right.
    await reparentChildren(dir, tree, c, p, point);
    await unlink(vhdPath(dir, c));
    await fsyncDir(dir);
    await point('coalesce:unlinked');
    await removeJournal(dir, c);
    log(`GC: coalesced ${c} into ${p}`);
    return true;
  });
}

async function coalesceLeaf(dir: string, l: string, p: string, opts: GcOptions, point: (n: string) => Promise<void>): Promise<boolean> {
  const log = opts.log ?? (() => undefined);
  return opts.lock(async () => {
    const tree = await scan(dir);
    const node = tree.byUuid.get(l);
    if (!node || leafTarget(tree, node, await usedNow(opts))?.uuid !== p) return false;
    const leafPath = vhdPath(dir, l);
    const parentPath = vhdPath(dir, p);
    await writeJournal(dir, { v: 1, op: 'leaf', node: l, parent: p, phase: 'copy', time: new Date().toISOString() });
    await point('leaf:journal-copy');
    log(`GC: leaf-coalescing ${l} into ${p}`);
    try {
      await copyPhase(dir, l, async () => {
        await withVhd(leafPath, true, (leaf) =>
          withVhd(parentPath, false, async (parent) => {
            await coalesceInto(leaf, parent, { signal: opts.signal, onRun: () => point('leaf:copy-run') });
            await parent.sync();
          }),
        );
      });
    } catch (e) {
      if (isAbort(e, opts.signal)) return false;
      throw e;
    }
    await point('leaf:copied');
    await writeJournal(dir, {
      v: 1,
      op: 'leaf',
      node: l,
      parent: p,
      phase: 'commit',
      time: new Date().toISOString(),
      ...(await fingerprint(leafPath)),
    });
    await point('leaf:journal-commit');
    // Un-hide before the rename: once renamed, `<l>.vhd` is complete even if the journal were lost.
    await withVhd(parentPath, false, (v) => v.setHidden(false));
    await point('leaf:unhidden');
    await rename(parentPath, leafPath);
    await fsyncDir(dir);
    await point('leaf:renamed');
    await removeJournal(dir, l);
    log(`GC: leaf-coalesced ${l} (now the file of former ${p})`);
    return true;
  });
}
