// A disk image file opened for I/O whatever its format: a VHD (through its chain) or a raw
// file. This is the domain manager's view of an attached VDI (what tapdisk gives a real
// domain): the simulator writes suspend images and guest workloads through it.
import { open as fsOpen } from 'node:fs/promises';
import { open as openVhd } from './vhd/index.js';
import type { OpenDisk } from './driver.js';
import { useLeaf } from './leaf-gate.js';
import { mirrorWrite } from './mirror.js';

export async function openDiskFile(path: string, opts: { readOnly: boolean }): Promise<OpenDisk> {
  // In use until closed: a snapshot of this leaf waits for the close (see leaf-gate.ts).
  const release = await useLeaf(path);
  try {
    const disk = await openFile(path, opts);
    return {
      ...disk,
      // a storage migration under way mirrors what the domain writes (mirror.ts)
      write: async (offset, data) => {
        await disk.write(offset, data);
        await mirrorWrite(path, offset, data.length, disk.size, disk.read);
      },
      close: () => disk.close().finally(release),
    };
  } catch (e) {
    release();
    throw e;
  }
}

async function openFile(path: string, opts: { readOnly: boolean }): Promise<OpenDisk> {
  if (path.endsWith('.vhd')) {
    const vhd = await openVhd(path, { readOnly: opts.readOnly });
    return { size: vhd.virtualSize, vhd, read: (o, l) => vhd.read(o, l), write: (o, d) => vhd.write(o, d), close: () => vhd.close() };
  }
  const fh = await fsOpen(path, opts.readOnly ? 'r' : 'r+');
  const size = (await fh.stat()).size;
  return {
    size,
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break; // beyond the end reads as zeros
        done += bytesRead;
      }
      return buf;
    },
    async write(offset, data) {
      await fh.write(data, 0, data.length, offset);
    },
    close: () => fh.close(),
  };
}
