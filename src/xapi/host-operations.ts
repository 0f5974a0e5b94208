// Which host operations are allowed when (xapi's xapi_host_helpers.ml valid_operations), the
// host's current_operations around the work that needs them (with_host_operation; a VM start
// or resume marks its host as allocate_vm_to_host does), and host.enable / host.disable, which
// change what is allowed.
import type { Call, Registry } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import type { Db, Row } from '../db/interface.js';
import type { host_allowed_operations } from '../schema/generated.js';
import { NULL_REF } from '../schema/types.js';
import { hashtblFoldOrder } from './ocaml-order.js';
import { updatePoolAllowedOperations } from './pool-operations.js';
import { gateOf, retryWithGlobalLock, withGlobalLock } from './retry.js';
import { updateSrAllowedOperations, updateVdiAllowedOperations } from './storage-operations.js';
import { updateAllowedOperations as updateVmAllowedOperations } from './vm-lifecycle.js';
import { untilStored } from '../db/until-stored.js';
import { isForwardedHere, runOn } from './forward.js';
import { Mutex } from '../util/mutex.js';

type Op = host_allowed_operations;

/** Operations that bring VMs onto the host, and those that take them off it. */
const CREATING: Op[] = ['provision', 'vm_resume', 'vm_migrate'];
const REMOVING: Op[] = ['evacuate', 'reboot', 'shutdown'];
/** What a rolling upgrade still allows (the operations Miami hosts knew). */
const MIAMI: Op[] = ['evacuate', 'provision'];
/** The plugin xapi runs to power a host on; this host has no plugins. */
const POWER_ON_PLUGIN = 'power-on-host';

/** Record_util.host_operation_to_string: three are named after the VM call. */
const opString = (op: Op) => (op === 'vm_start' ? 'VM.start' : op === 'vm_resume' ? 'VM.resume' : op === 'vm_migrate' ? 'VM.migrate' : op);

/** valid_operations: every host operation with its first refusal (undefined when allowed). */
export async function hostOperationErrors(db: Db, ref: string, host: Row<'host'>): Promise<Map<Op, XapiError | undefined>> {
  const all = db.schema.enumValues('host_allowed_operations');
  const table = new Map<Op, XapiError | undefined>(all.map((op) => [op, undefined]));
  const setErrors = (code: string, params: string[], ops: Op[]) => {
    for (const op of ops) if (table.has(op) && table.get(op) === undefined) table.set(op, new XapiError(code, params));
  };
  const current = Object.entries(host.current_operations);
  const creating = current.find(([, op]) => CREATING.includes(op));
  const removing = current.find(([, op]) => REMOVING.includes(op));
  for (const op of all) {
    if (op === 'power_on') continue;
    const clash = CREATING.includes(op) ? removing : REMOVING.includes(op) ? creating : undefined;
    if (clash) setErrors('OTHER_OPERATION_IN_PROGRESS', ['host', ref, opString(clash[1]), clash[0]], [op]);
  }
  const exclusive: [Op, Op[]][] = [
    ['reboot', ['shutdown', 'apply_updates']],
    ['shutdown', ['reboot', 'apply_updates']],
    ['apply_updates', ['reboot', 'shutdown', 'enable']],
    // one provision at a time, to spare dom0
    ['provision', ['provision']],
  ];
  for (const [running, blocked] of exclusive) {
    const found = current.find(([, op]) => op === running);
    if (found) setErrors('OTHER_OPERATION_IN_PROGRESS', ['host', ref, running, found[0]], blocked);
  }
  if (host.enabled) setErrors('HOST_NOT_DISABLED', [], ['reboot', 'shutdown', 'apply_updates']);
  const metrics = host.metrics !== NULL_REF ? await db.tryGet('host_metrics', host.metrics) : undefined;
  if (metrics?.live) setErrors('HOST_IS_LIVE', [ref], ['power_on']);
  if (host.power_on_mode === '') setErrors('HOST_POWER_ON_MODE_DISABLED', [], ['power_on']);
  setErrors('XENAPI_MISSING_PLUGIN', [POWER_ON_PLUGIN], ['power_on']);
  // (xapi also holds hosts back while a clustered SR is degraded; no cluster stack runs here.)
  return table;
}

/** assert_operation_valid for a host. */
export async function hostOperationError(db: Db, ref: string, op: Op): Promise<XapiError | undefined> {
  return (await hostOperationErrors(db, ref, await db.get('host', ref))).get(op);
}

async function rollingUpgrade(db: Db): Promise<boolean> {
  const [pool] = await db.all('pool');
  return pool !== undefined && 'rolling_upgrade_in_progress' in pool[1].other_config;
}

/**
 * One recomputation of a host's allowed_operations at a time, per database and host. Each reads
 * what it depends on (the rolling-upgrade mark among them) and then writes: without this, one
 * that read the mark before a rolling upgrade ended (a heartbeat's, say) could write its list
 * after the end's recomputation, leaving the host's operations cut down for good.
 */
const hostUpdates = new WeakMap<Db, Map<string, Mutex>>();

function hostUpdateLock(db: Db, ref: string): Mutex {
  let locks = hostUpdates.get(db);
  if (!locks) {
    locks = new Map();
    hostUpdates.set(db, locks);
  }
  let lock = locks.get(ref);
  if (!lock) {
    lock = new Mutex();
    locks.set(ref, lock);
  }
  return lock;
}

/** update_allowed_operations for a host, listed in the order of xapi's Hashtbl. */
export function updateHostAllowedOperations(db: Db, ref: string): Promise<void> {
  return hostUpdateLock(db, ref).run(() => recomputeHostAllowedOperations(db, ref));
}

async function recomputeHostAllowedOperations(db: Db, ref: string): Promise<void> {
  const host = await db.tryGet('host', ref);
  if (!host) return;
  const table = await hostOperationErrors(db, ref, host);
  let allowed = hashtblFoldOrder([...table.keys()], 10).filter((op) => table.get(op as Op) === undefined) as Op[];
  if (await rollingUpgrade(db)) allowed = allowed.filter((op) => MIAMI.includes(op));
  if (host.allowed_operations.length !== allowed.length || host.allowed_operations.some((o, i) => o !== allowed[i])) {
    await db.update('host', ref, { allowed_operations: allowed });
  }
}

/**
 * Adds `op` to the host's current_operations (checked first) and recomputes; returns the undo.
 * For a VM start or resume this happens under the lock the VM operation's placement holds.
 */
async function markHost(call: Call, ref: string, op: Op): Promise<void> {
  const db = call.db;
  const err = await hostOperationError(db, ref, op);
  if (err) throw err;
  // During a rolling upgrade xapi checks but does not record the operations older hosts lack.
  if (!(await rollingUpgrade(db)) || MIAMI.includes(op)) {
    const host = await db.get('host', ref);
    await db.update('host', ref, { current_operations: { ...host.current_operations, [call.task]: op } });
  }
  await updateHostAllowedOperations(db, ref);
}

async function unmarkHost(call: Call, ref: string): Promise<void> {
  await withGlobalLock(call.host, async () => {
    const host = await call.db.tryGet('host', ref);
    if (host && call.task in host.current_operations) {
      const current = { ...host.current_operations };
      delete current[call.task];
      await call.db.update('host', ref, { current_operations: current });
    }
    await updateHostAllowedOperations(call.db, ref);
  }).catch((e) => call.host.log.warn({ err: e, host: ref }, 'unmarking a host operation failed'));
  gateOf(call.host).broadcast();
}

/** with_host_operation: waits while a conflicting operation runs, marks, runs `fn`, unmarks. */
export async function withHostOperation<T>(call: Call, ref: string, op: Op, fn: () => Promise<T>): Promise<T> {
  await retryWithGlobalLock(call, () => markHost(call, ref, op));
  try {
    return await fn();
  } finally {
    await unmarkHost(call, ref);
  }
}

/**
 * allocate_vm_to_host (message_forwarding.ml forward_to_suitable_host, reserve_memory_for_vm):
 * under the global lock the host is chosen (or checked), its host operation (vm_start,
 * vm_resume) checked and marked without waiting (an OTHER_OPERATION_IN_PROGRESS is the caller's
 * answer) and the VM reserved there (scheduled_to_be_resident_on, which free memory counts);
 * when `fn` ends, however it ends, both come off again. Coordinator only.
 */
export async function withVmPlacedOnHost<T>(
  call: Call,
  vmRef: string,
  choose: () => Promise<string>,
  op: Op,
  fn: (hostRef: string) => Promise<T>,
): Promise<T> {
  const hostRef = await withGlobalLock(call.host, async () => {
    const chosen = await choose();
    await markHost(call, chosen, op);
    await call.db.update('VM', vmRef, { scheduled_to_be_resident_on: chosen });
    return chosen;
  });
  try {
    return await fn(hostRef);
  } finally {
    await unmarkHost(call, hostRef);
    await untilStored(call.db, async () => {
      const vm = await call.db.tryGet('VM', vmRef);
      if (vm && vm.scheduled_to_be_resident_on !== NULL_REF) await call.db.update('VM', vmRef, { scheduled_to_be_resident_on: NULL_REF });
    }).catch((e) => call.host.log.warn({ err: e, vm: vmRef }, 'clearing a VM reservation failed'));
  }
}

/**
 * At start-up (xapi's cancel_tasks update_all_allowed_operations): nothing from a previous run
 * is still running, so every object's allowed_operations is recomputed from what is there now.
 */
export async function updateAllAllowedOperations(db: Db): Promise<void> {
  for (const [ref] of await db.all('VM')) await updateVmAllowedOperations(db, ref);
  for (const [ref] of await db.all('VDI')) await updateVdiAllowedOperations(db, ref);
  for (const [ref] of await db.all('SR')) await updateSrAllowedOperations(db, ref);
  for (const [ref] of await db.all('host')) await updateHostAllowedOperations(db, ref);
  for (const [ref] of await db.all('pool')) await updatePoolAllowedOperations(db, ref);
}

/** host.disable / host.enable: whether new VMs may start here; it decides reboot and shutdown. */
export function register(r: Registry): void {
  // Each runs on the host it names (do_op_on); the coordinator keeps enable's host operation.
  r.implement('host.disable', async (call, [host]) => {
    await call.db.get('host', host);
    await runOn(call, host, 'host.disable', [host], async () => {
      if ((await call.db.get('host', host)).enabled) await call.db.update('host', host, { enabled: false });
    });
    await updateHostAllowedOperations(call.db, host);
  }).implement('host.enable', async (call, [host]) => {
    await call.db.get('host', host);
    const enable = async () => {
      if (!(await call.db.get('host', host)).enabled) await call.db.update('host', host, { enabled: true });
    };
    if (isForwardedHere(call)) return enable();
    await withHostOperation(call, host, 'enable', () => runOn(call, host, 'host.enable', [host], enable));
    await updateHostAllowedOperations(call.db, host);
  });
}
