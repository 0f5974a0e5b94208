// Conformance of every class on the wire: one object in every database table, then each class's
// get_all_records (or get_record where the class has no get_all) over XML-RPC and JSON-RPC must
// carry every datamodel field with the wire type xapi uses for its datamodel type.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { startHost, type RunningHost } from '../../src/host/host.js';
import { newRef } from '../../src/api/implicit.js';
import { untyped } from '../../src/db/interface.js';
import { RpcDateTime, isStruct, type Rpc } from '../../src/rpc/rpc.js';
import { parseXmlRpcResponse, xmlRpcRequest } from '../../src/rpc/xmlrpc.js';
import { parseJsonRpcResponse } from '../../src/rpc/jsonrpc.js';
import type { Type } from '../../src/schema/types.js';
import { PASSWORD, loopbackAddress, makeStateDir } from './harness.js';

let h: RunningHost;
let url: string;
let stateDir: string;
let session: string;
const refs = new Map<string, string>();

before(async () => {
  stateDir = await makeStateDir();
  const address = loopbackAddress();
  h = await startHost({ address, httpPort: 0, httpsPort: 0, stateDir, backend: 'simulator', rootPassword: PASSWORD, logLevel: 'warn' });
  url = `http://${address}:${h.httpPort}`;
  for (const cls of h.host.schema.dbClasses()) {
    if (cls.name === 'role') continue; // a static list, not rows (role.ts): one of it is checked
    const ref = newRef();
    await untyped(h.host.db).create(cls.name, ref, { uuid: randomUUID() });
    refs.set(cls.name, ref);
  }
  await h.host.db.commit();
  session = (await xml('session.login_with_password', ['root', PASSWORD])) as string;
  refs.set('role', ((await xml('role.get_all', [session])) as string[])[0]!);
});

after(async () => {
  await h.close();
  await rm(stateDir, { recursive: true, force: true });
});

function value(env: Rpc): Rpc {
  assert.ok(isStruct(env), 'envelope is a struct');
  assert.equal(env.Status, 'Success', `call failed: ${JSON.stringify(env.ErrorDescription)}`);
  return env.Value!;
}

async function xml(method: string, params: Rpc[]): Promise<Rpc> {
  const res = await fetch(url + '/', { method: 'POST', headers: { 'content-type': 'text/xml' }, body: xmlRpcRequest(method, params) });
  assert.equal(res.headers.get('content-type'), 'text/xml');
  return value(parseXmlRpcResponse(Buffer.from(await res.arrayBuffer())));
}

async function json(method: string, params: Rpc[]): Promise<Rpc> {
  const res = await fetch(url + '/jsonrpc', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  assert.equal(res.headers.get('content-type'), 'application/json');
  const r = parseJsonRpcResponse(Buffer.from(await res.arrayBuffer()));
  assert.ok(r.ok, `call failed: ${JSON.stringify(r.ok ? '' : String(r.error))}`);
  return r.value;
}

const DATETIME = /^\d{8}T\d{2}:\d{2}:\d{2}Z$/;

/** Checks a wire value against a datamodel type; returns a complaint or undefined. */
function check(wire: 'xml' | 'json', t: Type, v: Rpc, enums: Record<string, string[]>): string | undefined {
  switch (t.k) {
    case 'string':
    case 'ref':
      return typeof v === 'string' ? undefined : `expected a string, got ${typeof v}`;
    case 'enum':
      return typeof v === 'string' && enums[t.name]!.includes(v) ? undefined : `expected a ${t.name} value, got ${String(v)}`;
    case 'int':
      if (wire === 'xml')
        return typeof v === 'string' && /^-?\d+$/.test(v) ? undefined : `expected int64 as a decimal string, got ${typeof v}`;
      return typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v))
        ? undefined
        : `expected a JSON integer, got ${typeof v}`;
    case 'float':
      return typeof v === 'number' ? undefined : `expected a double, got ${typeof v}`;
    case 'bool':
      return typeof v === 'boolean' ? undefined : `expected a boolean, got ${typeof v}`;
    case 'datetime':
      if (wire === 'xml') return v instanceof RpcDateTime && DATETIME.test(v.text) ? undefined : 'expected dateTime.iso8601';
      return typeof v === 'string' && DATETIME.test(v) ? undefined : 'expected a datetime string';
    case 'set':
      if (!Array.isArray(v)) return 'expected an array';
      for (const x of v) {
        const bad = check(wire, t.of, x, enums);
        if (bad) return `element: ${bad}`;
      }
      return undefined;
    case 'map':
      if (!isStruct(v)) return 'expected a struct';
      for (const k of Object.keys(v)) {
        const bad = check(wire, t.val, v[k]!, enums);
        if (bad) return `member ${k}: ${bad}`;
      }
      return undefined;
    case 'option':
      return check(wire, t.of, v, enums);
    case 'record':
      return isStruct(v) ? undefined : 'expected a struct';
    default:
      return `unexpected type ${t.k}`;
  }
}

for (const wire of ['xml', 'json'] as const) {
  test(`every class's records carry every field with its wire type (${wire === 'xml' ? 'XML-RPC' : 'JSON-RPC'})`, async () => {
    const call = wire === 'xml' ? xml : json;
    const schema = h.host.schema;
    let classesChecked = 0;
    for (const cls of schema.dbClasses()) {
      const ref = refs.get(cls.name)!;
      let record: Rpc;
      const live = (m: string) => cls.messages.has(m) && cls.messages.get(m)!.lifecycle !== 'Removed';
      if (live('get_all_records')) {
        const all = await call(`${cls.name}.get_all_records`, [session]);
        assert.ok(isStruct(all), `${cls.name}.get_all_records returns a struct`);
        record = all[ref]!;
      } else if (live('get_record')) {
        record = await call(`${cls.name}.get_record`, [session, ref]);
      } else {
        continue;
      }
      assert.ok(isStruct(record), `${cls.name}: the object is in the result`);
      for (const f of cls.fields) {
        if (f.internal) {
          assert.ok(!(f.name in record), `${cls.name}.${f.name} is internal and must not be sent`);
          continue;
        }
        if (f.type.k === 'option' && !(f.name in record)) continue;
        assert.ok(f.name in record, `${cls.name}.${f.name} is missing`);
        const bad = check(wire, f.type, record[f.name]!, schema.enums);
        assert.equal(bad, undefined, `${cls.name}.${f.name} (${f.typeText}): ${bad}`);
      }
      classesChecked++;
    }
    assert.ok(classesChecked >= 55, `only ${classesChecked} classes checked`);
  });
}
