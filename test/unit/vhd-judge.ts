// Independent judges for VHD chains. qemu-img's vpc driver reads a differencing VHD as a
// standalone disk (it does not follow VHD parent locators: `qemu-img info --backing-chain`
// shows no backing file), so whole-chain content and parent identity are judged by libvhdi
// (Debian python3-libvhdi / libvhdi-utils), qemu-img still judges standalone files.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open } from '../../src/storage/vhd/vhd.js';

const PY = '/usr/bin/python3';

function haveVhdi(): boolean {
  return spawnSync(PY, ['-c', 'import pyvhdi']).status === 0 && spawnSync('vhdiinfo', ['-V']).status === 0;
}

function haveQemu(): boolean {
  return spawnSync('qemu-img', ['--version']).status === 0;
}

/** Install the judges if missing, or fail loudly (never skip). */
export function ensureJudges(): void {
  const missing: string[] = [];
  if (!haveQemu()) missing.push('qemu-utils');
  if (!haveVhdi()) missing.push('python3-libvhdi', 'libvhdi-utils');
  if (!missing.length) return;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
  const i = spawnSync('apt-get', ['install', '-y', ...missing], { stdio: 'inherit', env });
  if (!haveQemu() || !haveVhdi()) throw new Error(`VHD judges unavailable: apt-get install ${missing.join(' ')} exited ${i.status}`);
}

// Follows the chain by the header's parent name (libvhdi's view), checks each parent's
// identifier against the child's, and hashes the whole virtual disk.
const CHAIN_HASH = `
import sys, os, hashlib, pyvhdi
path = sys.argv[1]
files = []
f = pyvhdi.file(); f.open(path); files.append(f)
chain = [os.path.basename(path)]
while f.get_disk_type() == 4:
    pname = f.get_parent_filename()
    ppath = os.path.join(os.path.dirname(path), pname)
    p = pyvhdi.file(); p.open(ppath)
    if p.get_identifier() != f.get_parent_identifier():
        sys.exit('parent identifier mismatch for ' + pname)
    f.set_parent(p); files.append(p); chain.append(pname)
    f = p
top = files[0]
size = top.get_media_size()
h = hashlib.sha256()
off = 0
while off < size:
    n = min(1 << 20, size - off)
    h.update(top.read_buffer_at_offset(n, off))
    off += n
print(h.hexdigest())
print(' '.join(chain))
`;

/** sha256 of the whole virtual disk as libvhdi reads it through the chain, and the chain's file names. */
export function vhdiChain(leaf: string): { hash: string; chain: string[] } {
  const out = execFileSync(PY, ['-c', CHAIN_HASH, leaf], { encoding: 'utf8' }).trim().split('\n');
  return { hash: out[0]!, chain: out[1]!.split(' ') };
}

/** vhdiinfo's view of a file: identifier, parent identifier, parent file name. */
export function vhdiInfo(file: string): { id: string; parentId: string | null; parentName: string | null } {
  const out = execFileSync('vhdiinfo', [file], { encoding: 'utf8' });
  const get = (k: string) => out.match(new RegExp(`^\\s*${k}\\s*:\\s*(.+)$`, 'm'))?.[1]?.trim() ?? null;
  return { id: get('Identifier')!, parentId: get('Parent identifier'), parentName: get('Parent filename') };
}

/** sha256 of the whole virtual disk as our reader sees it through the chain. */
export async function ourHash(file: string): Promise<string> {
  const v = await open(file, { readOnly: true });
  try {
    const h = createHash('sha256');
    const step = 4 * 1024 * 1024;
    for (let off = 0; off < v.virtualSize; off += step) h.update(await v.read(off, Math.min(step, v.virtualSize - off)));
    return h.digest('hex');
  } finally {
    await v.close();
  }
}
