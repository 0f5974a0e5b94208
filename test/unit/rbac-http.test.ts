// The permissions of HTTP actions as xapi's RBAC makes them (gen_rbac.ml): "http/<action>" for
// every datamodel http action, "http/<action>/<sub-action>" for its sub-actions, each with the
// action's roles. The handlers check them under xapi's action names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { httpActionRoles, permissionsOfRoles } from '../../src/api/rbac.js';
import { schema } from '../../src/schema/schema.js';

test('a read-only session may read counters but not open consoles; a VM operator may open a VM console, not dom0s', () => {
  const s = schema();
  const readOnly = new Set(permissionsOfRoles(s, ['read-only']));
  for (const p of ['http/rrd_updates', 'http/host_rrd', 'http/vm_rrd']) assert.ok(readOnly.has(p), p);
  assert.ok(!readOnly.has('http/connect_console'));
  assert.ok(!readOnly.has('http/rrd'), 'putting an RRD is the pool admin’s');
  const operator = new Set(permissionsOfRoles(s, ['vm-operator']));
  assert.ok(operator.has('http/connect_console') && operator.has('http/connect_console_ws'));
  assert.ok(!operator.has('http/connect_console/host_console'));
  assert.deepEqual(httpActionRoles(s, 'connect_console/host_console'), ['pool-admin']);
  assert.deepEqual(httpActionRoles(s, 'rrd_updates'), [
    'pool-admin',
    'pool-operator',
    'vm-power-admin',
    'vm-admin',
    'vm-operator',
    'client-cert',
    'read-only',
  ]);
  assert.throws(() => httpActionRoles(s, 'no_such_action'));
});
