// Small durable-file helpers for the state directory.
import { open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Writes via a temporary file, fsync and rename, so a crash leaves the old or the new file. */
export async function writeFileAtomic(path: string, data: string, mode = 0o644): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
