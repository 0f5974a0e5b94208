// Every acknowledged write survives kill -9: writers run flat out, the process is killed with
// SIGKILL once a hundred writes were acknowledged (at no particular point of any write), and
// after a restart every write that had been acknowledged is there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { jsonCall, login } from './client.js';
import { within } from '../wait.js';

test('acknowledged writes survive kill -9', { timeout: 120_000 }, async () => {
  const first = await startXapi();
  const url = first.url;
  const session = await login(url, PASSWORD);
  const acked: { ref: string; label: string }[] = [];
  // The kill comes once this many writes are acknowledged (whenever that is on this machine),
  // while the writers are still going flat out.
  const KILL_AFTER = 300;
  let enough!: () => void;
  const enoughAcked = new Promise<void>((r) => (enough = r));
  const acknowledged = (a: { ref: string; label: string }) => {
    acked.push(a);
    if (acked.length >= KILL_AFTER) enough();
  };
  let stop = false;
  const writer = async (w: number) => {
    for (let i = 0; !stop; i++) {
      const label = `w${w}-${i}`;
      try {
        const ref = (await jsonCall(url, 'network.create', [
          session,
          { name_label: label, name_description: 'crash test', MTU: 1500, other_config: { writer: String(w) } },
        ])) as string;
        acknowledged({ ref, label });
        await jsonCall(url, 'network.add_to_other_config', [session, ref, 'second', label]);
        acknowledged({ ref, label: `${label}+` });
      } catch {
        return; // the process is gone: anything not acknowledged may be lost
      }
    }
  };
  const writers = Array.from({ length: 16 }, (_, w) => writer(w));
  await within(`${KILL_AFTER} acknowledged writes`, enoughAcked, 60_000);
  first.kill('SIGKILL');
  stop = true;
  await Promise.all(writers);
  assert.equal(await first.exited, 'SIGKILL');
  assert.ok(acked.length >= KILL_AFTER, `only ${acked.length} writes were acknowledged`);

  const second = await startXapi({ stateDir: first.stateDir, address: first.address });
  try {
    const s2 = await login(second.url, PASSWORD);
    const records = (await jsonCall(second.url, 'network.get_all_records', [s2])) as Record<
      string,
      { name_label: string; other_config: Record<string, string> }
    >;
    for (const a of acked) {
      const rec = records[a.ref];
      assert.ok(rec, `acknowledged network ${a.label} (${a.ref}) was lost`);
      if (a.label.endsWith('+')) assert.equal(rec.other_config.second, a.label.slice(0, -1));
      else assert.equal(rec.name_label, a.label);
    }
    // the sessions written before the crash survive too
    assert.ok(Array.isArray(await jsonCall(second.url, 'host.get_all', [session])));
  } finally {
    await stopXapi(second);
    await rm(first.stateDir, { recursive: true, force: true });
  }
});
