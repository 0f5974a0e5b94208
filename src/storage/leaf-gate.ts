// A domain using a leaf file and the SR driver changing that leaf exclude each other, as SM
// pauses a VDI's tapdisk around a snapshot of a running VM: the I/O in flight finishes first,
// new I/O waits until the change is done. Without it a guest write that opened the leaf just
// before a snapshot renamed it would land in the new hidden parent (changing the snapshot after
// the fact), and its metadata writes would race the driver's (hiding the parent).
//
// Users are the handles openDiskFile gives out (the domain's view of a VDI: the simulator's
// guest I/O and memory images). Changes are the driver's renames of a leaf (snapshot, reset).
import { resolve } from 'node:path';

interface Gate {
  users: number;
  /** Set while a change waits for the users to finish or runs. */
  paused?: Promise<void>;
  /** Called when the last user leaves during a pause. */
  drained?: () => void;
}

const gates = new Map<string, Gate>();

function gate(key: string): Gate {
  let g = gates.get(key);
  if (!g) {
    g = { users: 0 };
    gates.set(key, g);
  }
  return g;
}

function forget(key: string): void {
  const g = gates.get(key);
  if (g && g.users === 0 && !g.paused) gates.delete(key);
}

/** Starts using a leaf (waiting while it is paused); the returned function ends the use. */
export async function useLeaf(path: string): Promise<() => void> {
  const key = resolve(path);
  for (let g = gates.get(key); g?.paused; g = gates.get(key)) await g.paused;
  const g = gate(key);
  g.users++;
  let ended = false;
  return () => {
    if (ended) return;
    ended = true;
    g.users--;
    if (g.users === 0) g.drained?.();
    forget(key);
  };
}

/** Runs `fn` once nobody uses the leaf, keeping new users out until it is done. */
export async function pauseLeaf<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const key = resolve(path);
  for (let g = gates.get(key); g?.paused; g = gates.get(key)) await g.paused;
  const g = gate(key);
  let unpause!: () => void;
  g.paused = new Promise<void>((r) => (unpause = r));
  try {
    if (g.users > 0) await new Promise<void>((r) => (g.drained = r));
    g.drained = undefined;
    return await fn();
  } finally {
    g.paused = undefined;
    unpause();
    forget(key);
  }
}

/** Whether a change holds or waits for the leaf (for tests that must act while it waits). */
export function leafPaused(path: string): boolean {
  return gates.get(resolve(path))?.paused !== undefined;
}
