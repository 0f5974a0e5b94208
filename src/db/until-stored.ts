// Clean-up writes that must land even while the database refuses writes (a full disk): an
// operation's mark taken off an object, a task's outcome. Tried at once; if refused (or undone by
// a failed flush), tried again every second in the background until the store takes writes.
import { setTimeout as sleep } from 'node:timers/promises';
import { WriteRefused, type Db } from './interface.js';

const RETRY_MS = 1000;

/**
 * Runs `write`. If the store refuses it, or the flush that carries it fails, it is retried in the
 * background until stored; any other failure is thrown at once, as before. Resolves after the
 * first attempt, without waiting for its flush (the caller's own commit waits for that one).
 */
export async function untilStored(db: Db, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (e) {
    if (!(e instanceof WriteRefused)) throw e;
    retry(db, write);
    return;
  }
  db.commit().catch((e: unknown) => {
    if (e instanceof WriteRefused) retry(db, write);
  });
}

function retry(db: Db, write: () => Promise<void>): void {
  void (async () => {
    for (;;) {
      await sleep(RETRY_MS, undefined, { ref: false });
      try {
        await write();
        await db.commit();
        return;
      } catch (e) {
        if (!(e instanceof WriteRefused)) return;
      }
    }
  })();
}
