// The file-based VHD SR drivers (the sm repo's FileSR, EXTSR, NFSSR): an SR is a directory
// `<base>/<sr-uuid>/` holding one VHD file per node, `<uuid>.vhd`. Leaves are VDIs (the file
// name is the VDI's location and uuid); hidden nodes are the read-only parents that snapshots
// and clones leave behind, removed or merged by the garbage collector (gc.ts).
//
// Types: `ext` (local; device_config `device` names the directory the SR lives under: xapi-ts
// does not format block devices), `file` (local; `location`), `nfs` (shared; `serverpath` is a
// path every host of the pool sees — the NFS mount is the operator's business). A shared SR
// records the pool that created it in `.sr.json`: a second pool plugging it is refused, because
// two pools would run two garbage collectors over one tree.
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, statfs, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Mutex } from '../util/mutex.js';
import { fsyncDir, writeFileAtomic } from '../util/files.js';
import { createDifferencing, createDynamic, open as openVhd, format, type Vhd } from './vhd/index.js';
import { listNodes, readNode, vhdPath, type VhdNode } from './file-layout.js';
import { recoverJournals, runGc } from './gc.js';
import { pauseLeaf } from './leaf-gate.js';
import { SmError, type OpenDisk, type SmDriver, type SrContext, type SrStat, type VdiInfo } from './driver.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** SM rounds VHD sizes up to whole 2 MiB blocks (vhdutil.validate_and_round_vhd_size). */
const BLOCK = 2 * 1024 * 1024;
/** The SM's "VDI Invalid size" (fault 79) is raised beyond the VHD maximum. */
const MAX_SIZE = format.MAX_VHD_SIZE;

export const VHD_FEATURES: Readonly<Record<string, number>> = {
  SR_PROBE: 1,
  SR_UPDATE: 1,
  SR_SUPPORTS_LOCAL_CACHING: 1,
  VDI_CREATE: 1,
  VDI_DELETE: 1,
  VDI_ATTACH: 1,
  VDI_DETACH: 1,
  VDI_UPDATE: 1,
  VDI_CLONE: 1,
  VDI_SNAPSHOT: 1,
  VDI_RESIZE: 1,
  VDI_GENERATE_CONFIG: 1,
  VDI_MIRROR: 1,
  VDI_RESET_ON_BOOT: 2,
  VDI_CONFIG_CBT: 1,
  ATOMIC_PAUSE: 1,
  THIN_PROVISIONING: 1,
};

interface SrMeta {
  uuid: string;
  pool: string;
  /** The physical_size given at SR.create (bytes), when the SR is to be smaller than its filesystem. */
  quota?: number;
}

const backendFailure = (n: number, reason: string) => new SmError(`SR_BACKEND_FAILURE_${n}`, ['', reason, '']);

export class FileSrDriver implements SmDriver {
  readonly features = VHD_FEATURES;
  /**
   * Tree changes of one SR (snapshot, clone, delete, GC steps) run one at a time; handing a
   * leaf out (attach, open, resize) waits for them too, so it never meets a step half done.
   */
  private readonly locks = new Map<string, Mutex>();

  constructor(readonly type: 'ext' | 'file' | 'nfs') {}

  lock(sr: SrContext): Mutex {
    let m = this.locks.get(sr.uuid);
    if (!m) {
      m = new Mutex();
      this.locks.set(sr.uuid, m);
    }
    return m;
  }

  /** The directory the SR's device_config names (under which `<sr-uuid>/` lives). */
  base(deviceConfig: Record<string, string>): string {
    const key = this.type === 'ext' ? 'device' : this.type === 'file' ? 'location' : 'serverpath';
    const v = deviceConfig[key];
    if (!v) throw new SmError('SR_BACKEND_FAILURE_1', ['', `The request is missing the ${key} parameter`, '']);
    if (this.type === 'nfs' && !deviceConfig.server)
      throw new SmError('SR_BACKEND_FAILURE_1', ['', 'The request is missing the server parameter', '']);
    return v;
  }

  dir(sr: SrContext): string {
    return join(this.base(sr.deviceConfig), sr.uuid);
  }

  /** A location names a node of this SR and nothing else (no `../` tricks). */
  private file(sr: SrContext, location: string): string {
    if (!UUID.test(location)) throw new SmError('VDI_LOCATION_MISSING', [location]);
    return vhdPath(this.dir(sr), location);
  }

  private async meta(sr: SrContext): Promise<SrMeta | undefined> {
    try {
      return JSON.parse(await readFile(join(this.dir(sr), '.sr.json'), 'utf8')) as SrMeta;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  async create(sr: SrContext, physicalSize: number): Promise<Record<string, string>> {
    const base = this.base(sr.deviceConfig);
    try {
      if (!(await stat(base)).isDirectory()) throw new Error('not a directory');
    } catch {
      throw backendFailure(this.type === 'nfs' ? 73 : 1, `${base} is not a directory this host can see`);
    }
    const dir = this.dir(sr);
    await mkdir(dir, { recursive: true });
    const meta: SrMeta = { uuid: sr.uuid, pool: sr.poolUuid, ...(physicalSize > 0 ? { quota: physicalSize } : {}) };
    await writeFileAtomic(join(dir, '.sr.json'), JSON.stringify(meta) + '\n');
    return { ...sr.deviceConfig };
  }

  async delete(sr: SrContext): Promise<void> {
    if ((await listNodes(this.dir(sr))).some((n) => !n.hidden)) throw new SmError('SR_NOT_EMPTY', []);
    await rm(this.dir(sr), { recursive: true, force: true });
  }

  async attach(sr: SrContext): Promise<void> {
    const meta = await this.meta(sr);
    if (!meta) throw backendFailure(this.type === 'nfs' ? 73 : 47, `The SR is not available: ${this.dir(sr)} holds no SR`);
    // The pool that made a shared SR owns it: a second pool's GC would corrupt the tree.
    if (sr.shared !== false && meta.pool !== sr.poolUuid) throw new SmError('SR_OWNED_BY_ANOTHER_POOL', [meta.pool]);
    await this.recover(sr);
    await recoverJournals(this.dir(sr), { lock: (fn) => this.lock(sr).run(fn) });
  }

  /**
   * The garbage collector (cleanup.py's job; gc.ts): drops unreferenced hidden nodes and
   * coalesces chains, leaving alone the leaves running domains use.
   */
  async gc(sr: SrContext, opts: { inUse(): Promise<ReadonlySet<string>> }): Promise<{ changed: boolean }> {
    // Locations are node uuids here, so xapi's answer is the GC's.
    const r = await runGc(this.dir(sr), { lock: (fn) => this.lock(sr).run(fn), inUse: () => opts.inUse() });
    return { changed: r.garbage.length + r.coalesced.length + r.leafCoalesced.length + r.recovered.length > 0 };
  }

  async detach(_sr: SrContext): Promise<void> {}

  async probe(deviceConfig: Record<string, string>): Promise<string> {
    const base = this.base(deviceConfig);
    let names: string[] = [];
    try {
      names = await readdir(base);
    } catch {
      throw backendFailure(this.type === 'nfs' ? 73 : 1, `${base} is not a directory this host can see`);
    }
    const srs: string[] = [];
    for (const n of names.filter((x) => UUID.test(x)).sort()) {
      try {
        const meta = JSON.parse(await readFile(join(base, n, '.sr.json'), 'utf8')) as SrMeta;
        srs.push(`<SR><UUID>${meta.uuid}</UUID></SR>`);
      } catch {
        // not an SR directory
      }
    }
    return `<?xml version="1.0" ?>\n<SRlist>${srs.join('')}</SRlist>\n`;
  }

  private info(n: VhdNode): VdiInfo {
    return {
      uuid: n.uuid,
      location: n.uuid,
      virtualSize: n.virtualSize,
      physicalUtilisation: n.allocated,
      readOnly: false,
      ...(n.parentUuid ? { vhdParent: n.parentUuid } : {}),
      vdiType: 'vhd',
    };
  }

  async scan(sr: SrContext): Promise<VdiInfo[]> {
    return (await listNodes(this.dir(sr))).filter((n) => !n.hidden).map((n) => this.info(n));
  }

  async stat(sr: SrContext): Promise<SrStat> {
    const dir = this.dir(sr);
    const meta = await this.meta(sr);
    let used = 0;
    for (const name of await readdir(dir)) {
      try {
        used += (await stat(join(dir, name))).blocks * 512;
      } catch {
        // removed meanwhile
      }
    }
    const fs = await statfs(dir);
    const fsTotal = fs.blocks * fs.bsize;
    const physicalSize = meta?.quota ?? fsTotal;
    const physicalUtilisation = Math.min(used, physicalSize);
    return { physicalSize, physicalUtilisation, free: Math.min(physicalSize - physicalUtilisation, fs.bavail * fs.bsize) };
  }

  private async assertSpace(sr: SrContext, size: number): Promise<void> {
    const { physicalSize, physicalUtilisation } = await this.stat(sr);
    const free = physicalSize - physicalUtilisation;
    if (size > free) throw new SmError('SR_FULL', [String(size), String(free)]);
  }

  async vdiCreate(sr: SrContext, size: number): Promise<VdiInfo> {
    const rounded = Math.ceil(size / BLOCK) * BLOCK;
    if (rounded <= 0 || rounded > MAX_SIZE) throw backendFailure(79, `VDI Invalid size: ${size}`);
    await this.assertSpace(sr, rounded);
    const uuid = randomUUID();
    const vhd = await createDynamic(this.file(sr, uuid), rounded);
    await vhd.close();
    return this.vdiStat(sr, uuid);
  }

  async vdiDelete(sr: SrContext, location: string): Promise<void> {
    const file = this.file(sr, location);
    await this.lock(sr).run(async () => {
      let vhd: Vhd;
      try {
        vhd = await openVhd(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      // SM only hides the node: a parent of others must stay; the GC removes what nobody needs.
      try {
        await vhd.setHidden(true);
      } finally {
        await vhd.close();
      }
    });
  }

  async vdiStat(sr: SrContext, location: string): Promise<VdiInfo> {
    this.file(sr, location);
    let n: VhdNode;
    try {
      n = await readNode(this.dir(sr), location);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new SmError('VDI_MISSING', [location]);
      throw e;
    }
    if (n.hidden) throw new SmError('VDI_MISSING', [location]);
    return this.info(n);
  }

  async vdiIntroduce(sr: SrContext, location: string): Promise<VdiInfo> {
    return this.vdiStat(sr, location);
  }

  async vdiResize(sr: SrContext, location: string, size: number): Promise<VdiInfo> {
    const rounded = Math.ceil(size / BLOCK) * BLOCK;
    if (rounded > MAX_SIZE) throw backendFailure(79, `VDI Invalid size: ${size}`);
    return this.lock(sr).run(async () => {
      const current = await this.vdiStat(sr, location);
      if (rounded < current.virtualSize) throw backendFailure(79, 'Shrinking is not supported');
      await this.assertSpace(sr, rounded - current.virtualSize);
      const vhd = await openVhd(this.file(sr, location));
      try {
        await vhd.resize(rounded);
      } finally {
        await vhd.close();
      }
      return this.vdiStat(sr, location);
    });
  }

  private journal(sr: SrContext, leaf: string): string {
    return join(this.dir(sr), '.journal', `snapshot-${leaf}.json`);
  }

  /**
   * Snapshot/clone of leaf L, as FileSR: L's file becomes a new hidden parent P and two empty
   * leaves go over it, L (same VDI) and the new one. A journal makes it crash-safe: recovery
   * (at SR attach) finishes the identity-keeping half and drops the half-made new leaf.
   */
  async vdiSnapshot(sr: SrContext, location: string, _kind: 'snapshot' | 'clone'): Promise<VdiInfo> {
    const fresh = randomUUID();
    await this.lock(sr).run(() => this.splitLeaf(sr, location, fresh));
    return this.vdiStat(sr, fresh);
  }

  /**
   * Under the SR lock: leaf L's file becomes a new hidden parent P, and L an empty leaf over it;
   * with `fresh`, a second empty leaf (the snapshot or clone) goes over P too. Journalled. A
   * running domain's I/O on L is paused meanwhile (its writes in flight land before the split).
   */
  private splitLeaf(sr: SrContext, location: string, fresh?: string): Promise<string> {
    return pauseLeaf(this.file(sr, location), () => this.splitPausedLeaf(sr, location, fresh));
  }

  private async splitPausedLeaf(sr: SrContext, location: string, fresh?: string): Promise<string> {
    const parent = randomUUID();
    const n = await readNode(this.dir(sr), location).catch(() => undefined);
    if (!n || n.hidden) throw new SmError('VDI_MISSING', [location]);
    await mkdir(join(this.dir(sr), '.journal'), { recursive: true });
    const journal = this.journal(sr, location);
    await writeFileAtomic(journal, JSON.stringify({ leaf: location, parent, fresh: fresh ?? '' }) + '\n');
    await rename(this.file(sr, location), this.file(sr, parent));
    await fsyncDir(this.dir(sr));
    await this.finishSnapshot(sr, location, parent);
    if (fresh) {
      await (await createDifferencing(this.file(sr, fresh), this.file(sr, parent))).close();
      await fsyncDir(this.dir(sr));
    }
    await rm(journal);
    return parent;
  }

  /**
   * VDI_RESET_ON_BOOT (SM's set_persistent false): the VDI's content now is what every boot
   * starts from. The leaf is split so a hidden parent holds that content; vdiReset empties the
   * leaf again at each attach. (The GC must leave such a leaf alone: xapi passes it as active.)
   */
  async vdiSetOnBoot(sr: SrContext, location: string, mode: 'persist' | 'reset'): Promise<void> {
    if (mode === 'reset') await this.lock(sr).run(async () => void (await this.splitLeaf(sr, location)));
  }

  /** An on_boot=reset VDI at attach: its leaf becomes empty again over the content it resets to. */
  async vdiReset(sr: SrContext, location: string): Promise<void> {
    await this.lock(sr).run(async () => {
      const n = await readNode(this.dir(sr), location).catch(() => undefined);
      if (!n || n.hidden) throw new SmError('VDI_MISSING', [location]);
      if (!n.parentUuid) return; // nothing to reset to (set_on_boot split it; a restored base is its own content)
      // A fresh empty leaf, renamed over the old one in one step: a crash leaves one or the other.
      const tmp = join(this.dir(sr), `${location}.reset`);
      await rm(tmp, { force: true });
      await (await createDifferencing(tmp, this.file(sr, n.parentUuid))).close();
      await pauseLeaf(this.file(sr, location), () => rename(tmp, this.file(sr, location)));
      await fsyncDir(this.dir(sr));
    });
  }

  /** The half of a snapshot that must complete once the leaf has moved: hide P, recreate L over it. */
  private async finishSnapshot(sr: SrContext, location: string, parent: string): Promise<void> {
    const p = await openVhd(this.file(sr, parent));
    try {
      if (!p.hidden) await p.setHidden(true);
    } finally {
      await p.close();
    }
    const leaf = this.file(sr, location);
    await rm(leaf, { force: true });
    await (await createDifferencing(leaf, this.file(sr, parent))).close();
    await fsyncDir(this.dir(sr));
  }

  /** Replays interrupted snapshots (journals) so every VDI reads as before the crash. */
  async recover(sr: SrContext): Promise<void> {
    const jdir = join(this.dir(sr), '.journal');
    await this.lock(sr).run(async () => {
      let names: string[] = [];
      try {
        names = await readdir(jdir);
      } catch {
        return;
      }
      for (const name of names.filter((n) => n.startsWith('snapshot-') && n.endsWith('.json'))) {
        const j = JSON.parse(await readFile(join(jdir, name), 'utf8')) as { leaf: string; parent: string; fresh: string };
        const moved = await stat(this.file(sr, j.parent)).then(
          () => true,
          () => false,
        );
        const leaf = await readNode(this.dir(sr), j.leaf).catch(() => undefined);
        if (moved && leaf?.parentUuid !== j.parent) await this.finishSnapshot(sr, j.leaf, j.parent);
        // The new leaf was never reported to xapi: nothing refers to it.
        if (j.fresh) await rm(this.file(sr, j.fresh), { force: true });
        await rm(join(jdir, name));
      }
    });
  }

  async vdiAttach(sr: SrContext, location: string): Promise<{ path: string; format: 'vhd' }> {
    return this.lock(sr).run(async () => {
      await this.vdiStat(sr, location);
      return { path: this.file(sr, location), format: 'vhd' as const };
    });
  }

  async vdiOpen(sr: SrContext, location: string, opts: { readOnly: boolean; deferSync?: boolean }): Promise<OpenDisk> {
    const vhd = await this.lock(sr).run(async () => {
      await this.vdiStat(sr, location);
      return openVhd(this.file(sr, location), { readOnly: opts.readOnly, deferSync: opts.deferSync });
    });
    return {
      size: vhd.virtualSize,
      vhd,
      read: (o, l) => vhd.read(o, l),
      write: (o, d) => vhd.write(o, d),
      close: () => vhd.close(),
    };
  }
}
