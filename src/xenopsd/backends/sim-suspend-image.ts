// Suspend images of simulated guests: what a suspend writes and a resume reads back and checks.
//
// Layout: page 0 holds a JSON header (magic, VM id, memory size, vCPUs, boot count, sample
// offsets, SHA-256 of the sample pages); a few pages of pseudo-random "guest memory" (seeded by
// the VM id and boot count) sit at offsets spread over the image, the last at its very end; the
// rest is a hole. The file's logical size is the guest's memory, its allocation a few pages.
// The image is a plain file, or a suspend VDI (a .vhd xapi created at least as large as the
// memory).
import { createHash } from 'node:crypto';
import { mkdir, open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DomainError } from '../interface.js';
import { openDiskFile } from '../../storage/disk-file.js';
import type { OpenDisk } from '../../storage/driver.js';

const IMAGE_MAGIC = 'xapi-ts simulated suspend image';
const IMAGE_VERSION = 1;
const PAGE = 4096;
const SAMPLE_PAGES = 8;

interface ImageHeader {
  magic: string;
  version: number;
  vm: string;
  memory: number;
  vcpus: number;
  bootCount: number;
  domainType: string;
  offsets: number[];
  sha256: string;
}

/** A page of the guest's simulated memory: deterministic for (VM, boot, page number). */
function memoryPage(vm: string, bootCount: number, n: number): Buffer {
  const out = Buffer.alloc(PAGE);
  let block = createHash('sha256').update(`${vm}/${bootCount}/${n}`).digest();
  for (let off = 0; off < PAGE; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** Where the sample pages go: spread over [PAGE, memory), the last one at the end. */
function sampleOffsets(memory: number): number[] {
  const pages = Math.floor(memory / PAGE);
  if (pages < 2) return [];
  const count = Math.min(SAMPLE_PAGES, pages - 1);
  const offsets = new Set<number>();
  for (let i = 0; i < count; i++) offsets.add((1 + Math.floor(((pages - 2) * i) / Math.max(1, count - 1))) * PAGE);
  return [...offsets].sort((a, b) => a - b);
}

function samplesDigest(vm: string, bootCount: number, offsets: number[]): string {
  const sum = createHash('sha256');
  for (let i = 0; i < offsets.length; i++) sum.update(memoryPage(vm, bootCount, i));
  return sum.digest('hex');
}

/** Writes the suspend image of a guest with this memory, vCPUs and boot count to `path`. */
export async function writeImage(
  path: string,
  h: { vm: string; memory: number; vcpus: number; bootCount: number; domainType: string },
): Promise<void> {
  const offsets = sampleOffsets(h.memory);
  const header: ImageHeader = {
    magic: IMAGE_MAGIC,
    version: IMAGE_VERSION,
    ...h,
    offsets,
    sha256: samplesDigest(h.vm, h.bootCount, offsets),
  };
  const head = Buffer.alloc(PAGE);
  const json = Buffer.from(JSON.stringify(header));
  if (json.length > PAGE) throw new DomainError('Internal_error', ['suspend image header too large']);
  json.copy(head);
  if (path.endsWith('.vhd')) {
    // A suspend VDI: xapi made it at least as large as the memory. The header goes last, so an
    // image cut short by a crash never verifies.
    const disk = await openDiskFile(path, { readOnly: false });
    try {
      if (disk.size < h.memory) throw new DomainError('Internal_error', [`suspend VDI ${path} is smaller than the memory (${h.memory})`]);
      for (const [i, off] of offsets.entries()) await disk.write(off, memoryPage(h.vm, h.bootCount, i));
      await disk.write(0, head);
    } finally {
      await disk.close();
    }
    return;
  }
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.partial`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.truncate(h.memory); // the logical size: all of the guest's memory, as a hole
    for (const [i, off] of offsets.entries()) await fh.write(memoryPage(h.vm, h.bootCount, i), 0, PAGE, off);
    await fh.write(head, 0, PAGE, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  // a crash mid-write leaves the .partial file, never a plausible-looking truncated image
  await rename(tmp, path);
}

/** Reads and verifies a memory image; any damage is Internal_error (the VM stays Suspended). */
export async function readImage(path: string, vm: string): Promise<{ memory: number; vcpus: number; bootCount: number }> {
  const bad = (why: string) => new DomainError('Internal_error', [`suspend image ${path}: ${why}`]);
  let disk: OpenDisk;
  try {
    disk = await openDiskFile(path, { readOnly: true });
  } catch (e) {
    throw bad(`cannot open: ${(e as Error).message}`);
  }
  // A raw image file is exactly the memory; a suspend VDI may be larger (rounded to its blocks).
  const exact = !path.endsWith('.vhd');
  try {
    const size = disk.size;
    if (size < PAGE) throw bad('truncated (no header)');
    const head = await disk.read(0, PAGE);
    let h: ImageHeader;
    try {
      const end = head.indexOf(0);
      h = JSON.parse(head.subarray(0, end === -1 ? PAGE : end).toString('utf8')) as ImageHeader;
    } catch {
      throw bad('corrupt header');
    }
    if (h.magic !== IMAGE_MAGIC || h.version !== IMAGE_VERSION) throw bad('not a suspend image');
    if (h.vm !== vm) throw bad(`belongs to VM ${h.vm}`);
    if (exact ? size !== h.memory : size < h.memory) throw bad(`is ${size} bytes, the header says ${h.memory} (truncated?)`);
    if (JSON.stringify(h.offsets) !== JSON.stringify(sampleOffsets(h.memory))) throw bad('corrupt header');
    const sum = createHash('sha256');
    for (const off of h.offsets) sum.update(await disk.read(off, PAGE));
    const digest = sum.digest('hex');
    // the pages must match the header, and the header must match the memory the VM had
    if (digest !== h.sha256 || digest !== samplesDigest(vm, h.bootCount, h.offsets)) throw bad('checksum mismatch');
    return { memory: h.memory, vcpus: h.vcpus, bootCount: h.bootCount };
  } finally {
    await disk.close();
  }
}
