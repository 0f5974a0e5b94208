// The orders xapi's lists come out in, pinned to what the OCaml runtime (4.13) prints for the
// same variants: their integers, `compare`, and a Hashtbl.fold over a table filled in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareVariants, hashtblFoldOrder, variantHash } from '../../src/xapi/ocaml-order.js';

test('variant integers and compare as OCaml has them', () => {
  assert.equal(variantHash('clone'), -933031075);
  assert.equal(variantHash('vdi_list_changed_blocks'), 494850990);
  assert.equal(variantHash('a'), 97);
  const vdiOps = [
    'clone',
    'copy',
    'resize',
    'resize_online',
    'snapshot',
    'destroy',
    'forget',
    'update',
    'force_unlock',
    'generate_config',
    'blocked',
  ];
  assert.deepEqual([...vdiOps].sort(compareVariants), [
    'copy',
    'generate_config',
    'blocked',
    'clone',
    'resize_online',
    'forget',
    'update',
    'resize',
    'snapshot',
    'destroy',
    'force_unlock',
  ]);
});

test('Hashtbl.fold over host and SR operations lists them as OCaml does', () => {
  const host = [
    'provision',
    'evacuate',
    'shutdown',
    'reboot',
    'power_on',
    'vm_start',
    'vm_resume',
    'vm_migrate',
    'apply_updates',
    'enable',
  ];
  assert.deepEqual(hashtblFoldOrder(host, 10), [
    'vm_migrate',
    'provision',
    'vm_resume',
    'apply_updates',
    'enable',
    'power_on',
    'reboot',
    'evacuate',
    'vm_start',
    'shutdown',
  ]);
  const sr = [
    'scan',
    'destroy',
    'forget',
    'plug',
    'unplug',
    'vdi_create',
    'vdi_destroy',
    'vdi_resize',
    'vdi_clone',
    'vdi_snapshot',
    'vdi_mirror',
    'vdi_enable_cbt',
    'vdi_disable_cbt',
    'vdi_data_destroy',
    'vdi_list_changed_blocks',
    'vdi_set_on_boot',
    'vdi_introduce',
    'vdi_revert',
    'update',
    'pbd_create',
    'pbd_destroy',
  ];
  assert.deepEqual(hashtblFoldOrder(sr, 10), [
    'vdi_enable_cbt',
    'vdi_list_changed_blocks',
    'vdi_introduce',
    'destroy',
    'unplug',
    'plug',
    'pbd_create',
    'vdi_disable_cbt',
    'update',
    'pbd_destroy',
    'vdi_resize',
    'forget',
    'vdi_clone',
    'vdi_data_destroy',
    'scan',
    'vdi_snapshot',
    'vdi_mirror',
    'vdi_create',
    'vdi_revert',
    'vdi_destroy',
    'vdi_set_on_boot',
  ]);
});
