// The on-disk layout of a file-based VHD SR (as SM's FileSR/NFSSR): one directory, one
// `<uuid>.vhd` per node of the VHD trees. For a leaf the uuid is its VDI's uuid; hidden inner
// nodes get fresh uuids when a snapshot/clone turns a leaf into a parent. A child names its
// parent through its locators (`./<parent-uuid>.vhd` first), so the tree is built from file
// names, not from the VHD-internal unique ids (those stay with the file across renames, e.g.
// after a leaf-coalesce the VDI's file carries its former parent's internal id).
import { readdir, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { readInfo, type VhdType } from './vhd/vhd.js';

export const VHD_EXT = '.vhd';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function vhdPath(dir: string, uuid: string): string {
  return path.join(dir, `${uuid}${VHD_EXT}`);
}

/** uuid named by a `<uuid>.vhd` path, or null for anything else. */
export function uuidOfPath(p: string): string | null {
  const base = path.basename(p);
  if (!base.endsWith(VHD_EXT)) return null;
  const u = base.slice(0, -VHD_EXT.length);
  return UUID_RE.test(u) ? u : null;
}

export interface VhdNode {
  /** From the file name: the VDI uuid for leaves. */
  uuid: string;
  path: string;
  /** The VHD's own unique id (footer). */
  vhdUuid: string;
  type: VhdType;
  hidden: boolean;
  virtualSize: number;
  /** uuid (file name) of the parent this node's locators name; null for a base (dynamic) disk. */
  parentUuid: string | null;
  /** The parent's VHD unique id recorded in this node's header (to check the locator's target). */
  parentVhdUuid: string | null;
  /** File length in bytes. */
  size: number;
  /** Bytes actually allocated on the filesystem (files are sparse). */
  allocated: number;
}

/** One node's footer and header (no chain opened); its parent is the file its locators name in `dir`. */
export async function readNode(dir: string, uuid: string): Promise<VhdNode> {
  const p = vhdPath(dir, uuid);
  const [info, st] = await Promise.all([readInfo(p), stat(p)]);
  let parentUuid: string | null = null;
  if (info.type === 'differencing') {
    // The first candidate naming a `<uuid>.vhd` in this directory, as Vhd.open resolves it
    // (relative locator first). A parent outside the SR is not part of the tree.
    for (const c of info.parentCandidates) {
      const pu = uuidOfPath(c);
      if (pu && path.resolve(path.dirname(c)) === path.resolve(dir)) {
        parentUuid = pu;
        break;
      }
    }
    if (!parentUuid) throw new Error(`no parent locator inside the SR (${info.parentCandidates.join(', ')})`);
  }
  return {
    uuid,
    path: p,
    vhdUuid: info.uuid,
    type: info.type,
    hidden: info.hidden,
    virtualSize: info.virtualSize,
    parentUuid,
    parentVhdUuid: info.parentUuid,
    size: st.size,
    allocated: st.blocks * 512,
  };
}

/**
 * Read every `<uuid>.vhd` of the SR directory: footer and header only, no chain is opened.
 * Files that cannot be parsed are reported in `errors` rather than failing the whole scan.
 */
export async function listNodes(dir: string, errors?: Array<{ path: string; error: string }>): Promise<VhdNode[]> {
  const out: VhdNode[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const uuid = uuidOfPath(name);
    if (!uuid) continue;
    try {
      out.push(await readNode(dir, uuid));
    } catch (e) {
      // A file may vanish between readdir and open (another step unlinked it): not an error.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      errors?.push({ path: vhdPath(dir, uuid), error: (e as Error).message });
    }
  }
  return out;
}

export interface VhdTree {
  byUuid: Map<string, VhdNode>;
  /** Children of each node (every node has an entry, possibly empty). */
  children: Map<string, VhdNode[]>;
  roots: VhdNode[];
  leaves: VhdNode[];
  /** Nodes whose parent file is missing or whose parent's VHD id does not match: never touched by GC. */
  orphans: VhdNode[];
}

export function buildTree(nodes: VhdNode[]): VhdTree {
  const byUuid = new Map(nodes.map((n) => [n.uuid, n] as const));
  const children = new Map<string, VhdNode[]>(nodes.map((n) => [n.uuid, []]));
  const roots: VhdNode[] = [];
  const orphans: VhdNode[] = [];
  for (const n of nodes) {
    if (n.parentUuid === null) {
      roots.push(n);
      continue;
    }
    const p = byUuid.get(n.parentUuid);
    if (!p || p.vhdUuid !== n.parentVhdUuid) {
      orphans.push(n);
      continue;
    }
    children.get(p.uuid)!.push(n);
  }
  const leaves = nodes.filter((n) => children.get(n.uuid)!.length === 0);
  return { byUuid, children, roots, leaves, orphans };
}

/** uuids from a node up to its root (the node first). */
export function chainOf(tree: VhdTree, uuid: string): string[] {
  const out: string[] = [];
  let n = tree.byUuid.get(uuid);
  while (n && !out.includes(n.uuid)) {
    out.push(n.uuid);
    n = n.parentUuid ? tree.byUuid.get(n.parentUuid) : undefined;
  }
  return out;
}
