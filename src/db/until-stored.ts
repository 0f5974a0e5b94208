// Clean-up writes that must land even while the database refuses writes (a full disk): an
// operation's mark taken off an object, a task's outcome. Tried at once; if refused, tried
// again every second in the background until the store takes writes again.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Db } from './interface.js';
import { WriteRefused } from '../api/errors.js';

const RETRY_MS = 1000;

/**
 * Runs `write` and makes it durable. If the store refuses (or undoes) it, retries in the
 * background until it is stored; any other failure is thrown at once, as before. Resolves after
 * the first attempt.
 */
export async function untilStored(db: Db, write: () => Promise<void>): Promise<void> {
  const attempt = async () => {
    await write();
    await db.commit();
  };
  try {
    await attempt();
    return;
  } catch (e) {
    if (!(e instanceof WriteRefused)) throw e;
  }
  void (async () => {
    for (;;) {
      await sleep(RETRY_MS, undefined, { ref: false });
      try {
        await attempt();
        return;
      } catch (e) {
        if (!(e instanceof WriteRefused)) return;
      }
    }
  })();
}
