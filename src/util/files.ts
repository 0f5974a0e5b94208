// Durable-file helpers for the state directory.
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Writes made so far in this process: each names its own temporary file. */
let writes = 0;

/**
 * Writes via a temporary file in the same directory, fsync, rename and an fsync of the directory:
 * after a crash the file is the old one or the new one, never torn.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  mode = 0o644,
  /** Runs once the new content is durable, just before it replaces the old file. */
  beforeRename?: () => Promise<void>,
): Promise<void> {
  // Its own temporary file per write: two writes of the same file at once (a backup and a
  // coordinator's database both replacing xapi.db) must not rename each other's file away.
  const tmp = `${path}.tmp-${process.pid}-${++writes}`;
  await rm(tmp, { force: true }); // a crash's leftover (the same pid again) could carry other permissions
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await beforeRename?.();
  await rename(tmp, path);
  await fsyncDir(dirname(path));
}

/** Makes a directory's entries durable (after a create, rename or unlink in it). */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
