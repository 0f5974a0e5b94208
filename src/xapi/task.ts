// task.* explicit messages (xapi's xapi_task.ml). Acting on another user's task needs the
// extra permission task.destroy/any, as in xapi.
import { checkPermission } from '../api/rbac.js';
import type { Call, Registry } from '../api/context.js';
import type { TaskManager } from '../api/tasks.js';
import { untyped } from '../db/interface.js';
import { gateOf } from './retry.js';
import { isForwardedHere, runOn } from './forward.js';
import { NULL_REF } from '../schema/types.js';

/** xapi's "own task": created by a session of the same user. */
async function assertOwn(call: Call, task: string): Promise<void> {
  const s = call.session!;
  if (s.row.is_local_superuser === true) return;
  const owner = await call.db.tryGet('session', (await call.db.get('task', task)).session);
  if (owner && owner.auth_user_sid === s.row.auth_user_sid) return;
  const any = call.host.schema.extraPermissions.find((p) => p.name === 'task.destroy/any');
  checkPermission(call.host, s, 'task.destroy/any', any?.roles ?? []);
}

export function register(r: Registry, tasks: TaskManager): void {
  r.implement('task.create', (call, [label, description]) => tasks.create(call.session, label, false, description))
    .implement('task.destroy', async (call, [self]) => {
      const ref = self;
      const row = await call.db.get('task', ref);
      await assertOwn(call, ref);
      if (row.status === 'pending' || row.status === 'cancelling') {
        // Still running: marked, and the GC removes it once it completes.
        await call.db.update('task', ref, {
          current_operations: { ...row.current_operations, [call.task]: 'destroy' },
        });
      } else {
        await tasks.forget(ref);
      }
    })
    .implement('task.cancel', async (call, [task]) => {
      await assertOwn(call, task);
      // a task forwarded to a host is cancelled there, where its work runs (message_forwarding
      // Task.cancel); a forwarded cancel runs here
      const to = (await call.db.get('task', task)).forwarded_to;
      if (!isForwardedHere(call) && to !== NULL_REF && (await call.db.tryGet('host', to))) {
        await runOn(call, to, 'task.cancel', [task], () => cancelHere(call, tasks, task));
        return;
      }
      await cancelHere(call, tasks, task);
    });
  for (const field of ['status', 'progress', 'result', 'error_info'] as const) {
    r.implement(`task.set_${field}`, async (call, [self, value]) => {
      await call.db.get('task', self);
      await assertOwn(call, self);
      // value is the field's own type: each message sets the field it is named after
      await untyped(call.db).update('task', self, { [field]: value });
    });
  }
}

/** Records the cancel; the work notices it at its next check. */
async function cancelHere(call: Call, tasks: TaskManager, task: string): Promise<void> {
  await tasks.requestCancel(task, call.task);
  // A call sleeping until a busy object frees re-checks now rather than after its back-off
  // (xapi's sleeper notices at its next wake-up, up to 20 s later).
  gateOf(call.host).broadcast();
}
