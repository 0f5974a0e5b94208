// The simulator's saved state (snapshot + journal): what a save wrote is there for the next
// process, whenever the previous one died, including half-way through a line or a compaction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SimStateStore } from '../../src/xenopsd/backends/sim-state.js';

type State = { n: number; pad?: string };

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'xapi-simstate-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A new store on a copy of `dir` as it is now: what a process started after a kill -9 reads. */
function reopen(dir: string): { lastDomid: number; vms: Map<string, State> } {
  const copy = `${dir}-copy`;
  rmSync(copy, { recursive: true, force: true });
  cpSync(dir, copy, { recursive: true });
  try {
    const store = new SimStateStore<State>(copy);
    const loaded = store.load();
    store.close();
    return loaded;
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
}

test('every save is there after a kill, across compactions', () =>
  withDir((dir) => {
    const store = new SimStateStore<State>(dir);
    assert.deepEqual(store.load(), { lastDomid: 0, vms: new Map() });
    const expected = new Map<string, State>();
    const pad = 'x'.repeat(2000); // ~1,000 saves of this outgrow the journal's 1 MiB: it compacts
    for (let i = 1; i <= 1500; i++) {
      const changed = new Map<string, State | undefined>();
      const id = `vm${i % 37}`;
      if (i % 11 === 0) {
        changed.set(id, undefined);
        expected.delete(id);
      } else {
        changed.set(id, { n: i, pad });
        expected.set(id, { n: i, pad });
      }
      store.save(i, changed);
      if (i % 250 === 0 || i === 1) assert.deepEqual(reopen(dir), { lastDomid: i, vms: expected }, `after save ${i}`);
    }
    assert.ok(readFileSync(join(dir, 'journal')).length < 1024 * 1024 + 4096, 'the journal was compacted');
    store.close();
  }));

test('a line cut short by the process dying is dropped; a snapshot left with its journal is replayed once', () =>
  withDir((dir) => {
    const store = new SimStateStore<State>(dir);
    store.load();
    store.save(1, new Map([['a', { n: 1 }]]));
    store.save(2, new Map([['b', { n: 2 }]]));
    store.close();
    // the process died in the middle of writing the next line
    appendFileSync(join(dir, 'journal'), '{"lastDomid":3,"vms":{"a":{"n"');
    assert.deepEqual(reopen(dir), {
      lastDomid: 2,
      vms: new Map([
        ['a', { n: 1 }],
        ['b', { n: 2 }],
      ]),
    });

    // a compaction that wrote its snapshot but died before emptying the journal
    const again = new SimStateStore<State>(dir);
    const loaded = again.load(); // compacts: snapshot of a and b, empty journal
    again.save(4, new Map([['a', undefined]]));
    again.close();
    const journal = readFileSync(join(dir, 'journal'));
    writeFileSync(join(dir, 'state.json'), JSON.stringify({ lastDomid: 4, vms: { b: { n: 2 } } }));
    writeFileSync(join(dir, 'journal'), journal);
    assert.deepEqual(loaded.vms.size, 2);
    assert.deepEqual(reopen(dir), { lastDomid: 4, vms: new Map([['b', { n: 2 }]]) });
  }));

test('state saved in the per-file layout of earlier versions is read, then replaced by a snapshot', () =>
  withDir((dir) => {
    mkdirSync(join(dir, 'vm'));
    mkdirSync(join(dir, 'domain'));
    writeFileSync(join(dir, 'host.json'), JSON.stringify({ lastDomid: 7 }));
    writeFileSync(join(dir, 'vm', 'a%2Fb.json'), JSON.stringify({ config: { id: 'a/b' }, status: { s: 1 } }));
    writeFileSync(join(dir, 'domain', 'a%2Fb.json'), JSON.stringify({ domid: 7 }));
    writeFileSync(join(dir, 'vm', 'c.json'), JSON.stringify({ config: { id: 'c' }, status: { s: 2 } }));
    writeFileSync(join(dir, 'vm', 'c.json.123.tmp'), '{"half');
    const store = new SimStateStore<unknown>(dir);
    const loaded = store.load();
    assert.equal(loaded.lastDomid, 7);
    assert.deepEqual(loaded.vms.get('a/b'), { config: { id: 'a/b' }, status: { s: 1 }, domain: { domid: 7 } });
    assert.deepEqual(loaded.vms.get('c'), { config: { id: 'c' }, status: { s: 2 } });
    store.close();
    assert.ok(!existsSync(join(dir, 'vm')) && !existsSync(join(dir, 'host.json')), 'the old files are gone');
    const again = new SimStateStore<unknown>(dir);
    assert.deepEqual(again.load(), loaded);
    again.close();
  }));

test('a snapshot that cannot be written leaves the journal in charge: saves go on and are read back', () =>
  withDir((dir) => {
    const first = new SimStateStore<State>(dir);
    first.load();
    first.save(1, new Map([['a', { n: 1 }]]));
    first.close();
    // the snapshot's temporary file cannot be made (as on a full disk)
    mkdirSync(join(dir, `state.json.${process.pid}.tmp`));
    const store = new SimStateStore<State>(dir);
    assert.deepEqual(store.load(), { lastDomid: 1, vms: new Map([['a', { n: 1 }]]) });
    store.save(2, new Map([['b', { n: 2 }]]));
    store.save(3, new Map([['a', undefined]]));
    store.close();
    assert.deepEqual(reopen(dir), { lastDomid: 3, vms: new Map([['b', { n: 2 }]]) });
    // room again: the next load folds everything into a snapshot
    rmSync(join(dir, `state.json.${process.pid}.tmp`), { recursive: true });
    const again = new SimStateStore<State>(dir);
    assert.deepEqual(again.load(), { lastDomid: 3, vms: new Map([['b', { n: 2 }]]) });
    again.close();
    assert.equal(readFileSync(join(dir, 'journal')).length, 0);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')), { lastDomid: 3, vms: { b: { n: 2 } } });
  }));
