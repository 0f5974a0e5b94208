// VMSS.create and VMSS.destroy (xapi's xapi_vmss.ml and map_check.ml): a snapshot schedule's
// schedule map is checked against the keys its frequency allows (hourly: min; daily: hour, min;
// weekly: hour, min, days), completed with their defaults and normalised; retained_snapshots is
// 1..10. A schedule that still has VMs cannot be destroyed; its messages go with it.
// (xapi also checks the VMSS licence feature, which XCP-ng's editions all enable.)
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import { constructorArgs, newRef } from '../api/implicit.js';
import type { Ref, VMSS_record, vmss_frequency } from '../schema/generated.js';
import { EPOCH } from '../schema/types.js';
import { ocamlInt } from './device-number.js';

type KeyRule =
  | { kind: 'enum' | 'enum-set'; values: string[]; default: string }
  | { kind: 'int'; min: number; max: number; default: string };

const MINUTES: KeyRule = { kind: 'enum', values: ['0', '15', '30', '45'], default: '0' };
const HOUR: KeyRule = { kind: 'int', min: 0, max: 23, default: '0' };
const DAYS: KeyRule = {
  kind: 'enum-set',
  values: ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'],
  default: 'Monday',
};

/** The schedule keys each frequency takes, in xapi's order. */
const SCHEDULE_KEYS: Record<vmss_frequency, [string, KeyRule][]> = {
  hourly: [['min', MINUTES]],
  daily: [
    ['hour', HOUR],
    ['min', MINUTES],
  ],
  weekly: [
    ['hour', HOUR],
    ['min', MINUTES],
    ['days', DAYS],
  ],
};

const invalid = (key: string, value: string) => new XapiError('INVALID_VALUE', [`schedule:${key}`, value]);

/** A value checked against its rule, in its canonical spelling (Map_check.assert_value). */
function checkValue(key: string, rule: KeyRule, value: string): string {
  const member = (v: string) => rule.kind !== 'int' && rule.values.find((x) => x.toLowerCase() === v.toLowerCase());
  switch (rule.kind) {
    case 'enum': {
      const v = member(value);
      if (!v) throw invalid(key, value);
      return v;
    }
    case 'enum-set': {
      // Right to left, as xapi folds; a day named twice refuses the whole value.
      let acc = '';
      for (const part of value.split(',').reverse()) {
        const v = member(part);
        if (!v) throw invalid(key, part);
        if (acc === '') acc = v;
        else if (acc.includes(v)) throw invalid(key, value);
        else acc = `${v},${acc}`;
      }
      return acc;
    }
    case 'int': {
      const n = ocamlInt(value);
      if (n === undefined || n < rule.min || n > rule.max) throw invalid(key, value);
      return value;
    }
  }
}

/** The schedule of a new VMSS: every key allowed and valid, missing ones defaulted (assert_keys, assert_all_keys). */
export function checkSchedule(frequency: vmss_frequency, schedule: Record<string, string>): Record<string, string> {
  const rules = SCHEDULE_KEYS[frequency];
  for (const [key, value] of Object.entries(schedule)) {
    const rule = rules.find(([k]) => k === key);
    if (!rule) throw invalid(key, value);
    checkValue(key, rule[1], value);
  }
  return Object.fromEntries(rules.map(([key, rule]) => [key, checkValue(key, rule, schedule[key] ?? rule.default)]));
}

async function createVmss(call: Call, record: Partial<VMSS_record>): Promise<Ref<'VMSS'>> {
  const rec = constructorArgs(call.db.schema, 'VMSS', record);
  const schedule = checkSchedule(rec.frequency, rec.schedule);
  if (rec.retained_snapshots < 1 || rec.retained_snapshots > 10) {
    throw new XapiError('INVALID_VALUE', ['retained_snapshots', String(rec.retained_snapshots)]);
  }
  const ref = newRef();
  await call.db.create('VMSS', ref, {
    uuid: randomUUID(),
    name_label: rec.name_label,
    name_description: rec.name_description,
    enabled: rec.enabled,
    type: rec.type,
    retained_snapshots: rec.retained_snapshots,
    frequency: rec.frequency,
    schedule,
    last_run_time: EPOCH,
  });
  return ref;
}

async function destroyVmss(call: Call, ref: Ref<'VMSS'>): Promise<void> {
  const vmss = await call.db.get('VMSS', ref);
  if (vmss.VMs.length > 0) throw new XapiError('VMSS_HAS_VM', []);
  for (const [message] of await call.db.find('message', { obj_uuid: vmss.uuid })) await call.db.destroy('message', message);
  await call.db.destroy('VMSS', ref);
}

export function register(r: Registry): void {
  r.implement('VMSS.create', (call, [record]) => createVmss(call, record)).implement('VMSS.destroy', (call, [self]) =>
    destroyVmss(call, self),
  );
}
