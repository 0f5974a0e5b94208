// Which pool operations are allowed when (xapi's xapi_pool_helpers.ml compute_valid_operations):
// a blocking operation (HA, clustering, updates...) in progress refuses the others with its own
// "in progress" error; a waiting one (certificates, eject...) makes everything wait; with none
// in progress, HA and cluster state decide.
import { XapiError } from '../rpc/errors.js';
import type { Db, Row } from '../db/interface.js';
import type { pool_allowed_operations } from '../schema/generated.js';
import type { Call } from '../api/context.js';
import { gateOf, retryWithGlobalLock, withGlobalLock } from './retry.js';

type Op = pool_allowed_operations;

/** The blocking operations with the error each gives the others, in xapi's order. */
const BLOCKING: [Op, string][] = [
  ['ha_enable', 'HA_ENABLE_IN_PROGRESS'],
  ['ha_disable', 'HA_DISABLE_IN_PROGRESS'],
  ['cluster_create', 'CLUSTER_CREATE_IN_PROGRESS'],
  ['designate_new_master', 'DESIGNATE_NEW_MASTER_IN_PROGRESS'],
  ['tls_verification_enable', 'TLS_VERIFICATION_ENABLE_IN_PROGRESS'],
  ['configure_repositories', 'CONFIGURE_REPOSITORIES_IN_PROGRESS'],
  ['sync_updates', 'SYNC_UPDATES_IN_PROGRESS'],
  ['apply_updates', 'APPLY_UPDATES_IN_PROGRESS'],
];
const WAITING: Op[] = [
  'cert_refresh',
  'exchange_certificates_on_join',
  'exchange_ca_certificates_on_join',
  'copy_primary_host_certs',
  'eject',
  'get_updates',
];
/** xapi's all_operations: blocking then waiting; allowed_operations keeps this order. */
const ALL: Op[] = [...BLOCKING.map(([op]) => op), ...WAITING];

/** compute_valid_operations: every pool operation with its refusal (undefined when allowed). */
export async function poolOperationErrors(db: Db, ref: string, pool: Row<'pool'>): Promise<Map<Op, XapiError | undefined>> {
  const table = new Map<Op, XapiError | undefined>(ALL.map((op) => [op, undefined]));
  const setErrors = (ops: Op[], code: string, params: string[]) => {
    for (const op of ops) if (table.get(op) === undefined) table.set(op, new XapiError(code, params));
  };
  const current = Object.entries(pool.current_operations);
  const blocking = BLOCKING.find(([op]) => current.some(([, c]) => c === op));
  const waiting = current.find(([, c]) => WAITING.includes(c));
  const inProgress = ['OTHER_OPERATION_IN_PROGRESS', ['pool', ref, ...(waiting ? [waiting[1], waiting[0]] : [])]] as const;
  if (blocking) {
    setErrors(
      BLOCKING.map(([op]) => op),
      blocking[1],
      [],
    );
    setErrors(WAITING, inProgress[0], [...inProgress[1]]);
  } else if (waiting) {
    setErrors(ALL, inProgress[0], [...inProgress[1]]);
  } else {
    if (pool.ha_enabled) {
      setErrors(['ha_enable'], 'HA_IS_ENABLED', []);
      setErrors(['tls_verification_enable'], 'HA_IS_ENABLED', []);
    } else {
      setErrors(['ha_disable'], 'HA_NOT_ENABLED', []);
    }
    if ('rolling_upgrade_in_progress' in pool.other_config) {
      setErrors(['cluster_create'], 'NOT_SUPPORTED_DURING_UPGRADE', []);
      setErrors(['tls_verification_enable'], 'NOT_SUPPORTED_DURING_UPGRADE', []);
    }
    const clusters = await db.count('Cluster');
    if (clusters === 1) setErrors(['cluster_create'], 'CLUSTER_ALREADY_EXISTS', []);
    else if (clusters === 0 && pool.ha_enabled) setErrors(['cluster_create'], 'INCOMPATIBLE_CLUSTER_STACK_ACTIVE', [pool.ha_cluster_stack]);
  }
  return table;
}

/** update_allowed_operations for the pool. */
export async function updatePoolAllowedOperations(db: Db, ref: string): Promise<void> {
  const pool = await db.tryGet('pool', ref);
  if (!pool) return;
  const table = await poolOperationErrors(db, ref, pool);
  const allowed = ALL.filter((op) => table.get(op) === undefined);
  if (pool.allowed_operations.length !== allowed.length || pool.allowed_operations.some((o, i) => o !== allowed[i])) {
    await db.update('pool', ref, { allowed_operations: allowed });
  }
}

/**
 * with_pool_operation: waits while another pool operation makes this one wait, refuses it during
 * a pool secret rotation or when another refuses it, marks it on the pool for the call's task,
 * runs `fn` and unmarks, waking whoever waits on the pool.
 */
export async function withPoolOperation<T>(call: Call, ref: string, op: Op, fn: () => Promise<T>): Promise<T> {
  const db = call.db;
  await retryWithGlobalLock(call, async () => {
    const pool = await db.get('pool', ref);
    if (pool.is_psr_pending) throw new XapiError('POOL_SECRET_ROTATION_PENDING', []);
    const refusal = (await poolOperationErrors(db, ref, pool)).get(op);
    if (refusal) throw refusal;
    await db.update('pool', ref, { current_operations: { ...pool.current_operations, [call.task]: op } });
  });
  await updatePoolAllowedOperations(db, ref);
  try {
    return await fn();
  } finally {
    await withGlobalLock(call.host, async () => {
      const pool = await db.tryGet('pool', ref);
      if (pool && call.task in pool.current_operations) {
        const current = { ...pool.current_operations };
        delete current[call.task];
        await db.update('pool', ref, { current_operations: current });
      }
      await updatePoolAllowedOperations(db, ref);
    }).catch((e) => call.host.log.warn({ err: e, pool: ref, op }, 'unmarking a pool operation failed'));
    gateOf(call.host).broadcast();
  }
}
