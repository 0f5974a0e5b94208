// From a decoded call to a result, as xapi's generated server does it: method lookup (with the
// `Async.` prefix and the `<class>_<message>` alternative names), parameter count, session
// check, RBAC, typed unmarshalling, then the implementation — inline, or on a task for Async.
// The wire codecs sit on one side and the message implementations on the other; neither sees
// the other (DESIGN.md).
import { randomUUID } from 'node:crypto';
import type { Rpc } from '../rpc/rpc.js';
import { XapiError, errorDescription } from '../rpc/errors.js';
import type { Registry, Call, HostContext, SessionInfo } from './context.js';
import { implicitImpl } from './implicit.js';
import { checkSession } from './session-check.js';
import { checkPermission } from './rbac.js';
import { TaskManager } from './tasks.js';
import type { MessageDef } from '../schema/schema.js';
import type { Row } from '../db/interface.js';
import { NULL_REF, RPC_TYPE, type Type } from '../schema/types.js';

const STRING_SET: Type = { k: 'set', of: { k: 'string' } };
const TASK_REF: Type = { k: 'ref', cls: 'task' };

/**
 * A call's result as a datamodel value with its type: the wire handler encodes it straight to
 * XML-RPC or JSON text (Marshal.xml/json), never through an intermediate tree.
 */
export type Outcome = ({ ok: true; type: Type; value: unknown; bare?: boolean } | { ok: false; error: string[] }) & {
  /** The task the call ran under, if it had one (for the call log). */
  task?: string;
  /** The calling session's uuid (for the call log: the ref itself is a credential). */
  session?: string;
};

export class Dispatcher {
  private readonly byAlternative = new Map<string, MessageDef>();
  private readonly emergencyCalls: Set<string>;
  readonly tasks: TaskManager;

  constructor(
    readonly host: HostContext,
    readonly registry: Registry,
  ) {
    for (const m of host.schema.messages.values()) {
      this.byAlternative.set(`${m.cls.name}_${m.name}`, m);
      // Where xapi has hand-written code for an implicit message (checks, side effects), the
      // generic database action would skip them: such a message is served by src/xapi or
      // answers NOT_IMPLEMENTED, never generically.
      if (m.implicit && !m.handWritten && !registry.has(m.wire)) {
        const impl = implicitImpl(m);
        if (impl) registry.implementAny(m.wire, impl);
      }
    }
    this.tasks = new TaskManager(host);
    this.emergencyCalls = new Set(host.schema.emergencyCalls);
  }

  /** Names served, as system.listMethods gives them: every sync wire name. */
  listMethods(): string[] {
    return [...this.host.schema.messages.values()].filter((m) => m.cls.name !== 'system').map((m) => m.wire);
  }

  /**
   * `forwardedTask`: the `task-id` header of a call the coordinator forwarded here, naming its
   * own task (see run).
   */
  async dispatch(method: string, params: Rpc[], forwardedTask?: string): Promise<Outcome> {
    const state: { task?: string; session?: string } = {};
    try {
      return await this.run(method, params, state, forwardedTask);
    } catch (e) {
      if (!(e instanceof XapiError)) this.host.log.error({ err: e, method }, 'internal error');
      return { ok: false, error: errorDescription(e), task: state.task, session: state.session };
    }
  }

  private async run(method: string, params: Rpc[], state: { task?: string; session?: string }, forwardedTask?: string): Promise<Outcome> {
    // A flush failing while the call runs may undo writes it made: then it must not succeed.
    const epoch = this.host.db.epoch();
    if (method === 'system.listMethods') return { ok: true, type: STRING_SET, value: this.listMethods(), bare: true };
    if (method.startsWith('system.isAlive')) return { ok: true, type: RPC_TYPE, value: params[0] ?? '' };

    let name = method;
    let async = false;
    if (name.startsWith('Async.')) {
      async = true;
      name = name.slice(6);
    } else if (name.startsWith('InternalAsync.')) {
      async = true;
      name = name.slice(14);
    }
    const msg = this.host.schema.messages.get(name) ?? this.byAlternative.get(name);
    if (!msg) {
      if (params.length >= 1) {
        const session = await checkSession(this.host, params[0]!);
        const ext = this.host.schema.messages.get('host.call_extension');
        checkPermission(this.host, session, 'host.call_extension', ext?.roles ?? []);
      }
      throw new XapiError('MESSAGE_METHOD_UNKNOWN', [method]);
    }
    if (async && !msg.async) {
      throw new XapiError('Fault', [`No async mode for this operation (rpc: ${method})`]);
    }

    if (!this.emergencyCalls.has(msg.wire)) {
      const recheck = this.host.recheckInProgress();
      if (recheck) await recheck;
      const emergency = this.host.emergency;
      if (emergency) throw new XapiError(emergency.code, emergency.params);
    }

    const offset = msg.sessionChecked ? 1 : 0;
    const received = params.length - offset;
    if (received < msg.requiredCount || received > msg.params.length) {
      throw new XapiError('MESSAGE_PARAMETER_COUNT_MISMATCH', [msg.wire, msg.requiredCount, Math.max(received, 0)]);
    }

    // The task a forwarded call names is read while its session is checked (on a pool member
    // both are reads from the coordinator, and reads made together share a request).
    const namedTask = forwardedTask ? this.host.db.tryGet('task', forwardedTask) : undefined;
    namedTask?.catch(() => undefined); // awaited below only if the call adopts it: never unhandled
    let session: SessionInfo | undefined;
    if (msg.sessionChecked) {
      session = await checkSession(this.host, params[0]!);
      state.session = session.row.uuid;
      if (msg.lifecycle === 'Removed') throw new XapiError('MESSAGE_REMOVED', []);
    }

    const args: unknown[] = [];
    for (let i = 0; i < msg.params.length; i++) {
      const p = msg.params[i]!;
      const raw = params[i + offset];
      args.push(raw === undefined ? structuredClone(p.default) : this.host.marshal.fromRpc(p.type, raw, p.name));
    }
    if (session) checkPermission(this.host, session, msg.wire, msg.roles, msg, args);

    const impl = this.registry.get(msg.wire);
    if (!impl) throw new XapiError('NOT_IMPLEMENTED', [msg.wire]);

    if (async) {
      const task = await this.tasks.create(session, method, false);
      await this.host.db.commit(epoch);
      void this.tasks.run(task, () => impl(this.makeCall(msg, method, session, task), args), msg.result);
      return { ok: true, type: TASK_REF, value: task, task, session: state.session };
    }
    let task = NULL_REF;
    // A call the coordinator forwarded here runs under the coordinator's task (xapi's
    // from_forwarded_task): progress is written to that row, but the coordinator completes it
    // when the call returns, so it is neither made nor forgotten here.
    const adopted = await this.adoptForwardedTask(session, forwardedTask, namedTask);
    if (adopted) state.task = adopted;
    else if (msg.syncTask) state.task = task = await this.tasks.create(session, method, false);
    // A call without a database task still needs an identity for current_operations: xapi's
    // dummy refs.
    const call = this.makeCall(msg, method, session, adopted ?? (task === NULL_REF ? `DummyRef:|${randomUUID()}|${msg.wire}` : task));
    let result: unknown;
    try {
      result = await impl(call, args);
    } catch (e) {
      if (task !== NULL_REF) await this.tasks.forgetQuietly(task);
      // the call failed whatever the flush does; its own error says more
      await this.host.db.commit().catch(() => undefined);
      throw e;
    }
    if (task !== NULL_REF) {
      // xapi destroys a sync call's task when the call returns (Context.finally_destroy_context)
      await this.tasks.forgetQuietly(task);
    }
    // event.from/next write nothing, and wait long enough that a failure during the wait is
    // likely: they only wait for what they read to be stored.
    await this.host.db.commit(msg.cls.name === 'event' && msg.name !== 'inject' ? undefined : epoch);
    return { ok: true, type: msg.result, value: result, task: state.task, session: state.session };
  }

  /**
   * The coordinator's task a forwarded call runs under: only a pool session (the coordinator's,
   * minted for the call) may name one, and only a pending task of the database.
   */
  private async adoptForwardedTask(
    session: SessionInfo | undefined,
    task: string | undefined,
    read: Promise<Row<'task'> | undefined> | undefined,
  ): Promise<string | undefined> {
    if (!task || session?.row.pool !== true) return undefined;
    const row = await (read ?? this.host.db.tryGet('task', task));
    return row?.status === 'pending' ? task : undefined;
  }

  /** A Call for work that runs on a task outside any message (the HTTP data handlers). */
  taskCall(session: SessionInfo, task: string): Call {
    return this.makeCall(undefined, 'http', session, task);
  }

  private makeCall(msg: MessageDef | undefined, wireName: string, session: SessionInfo | undefined, task: string): Call {
    const tasks = this.tasks;
    return {
      host: this.host,
      db: this.host.db,
      msg,
      wireName,
      session,
      task,
      checkCancelled: () => tasks.checkCancelled(task),
      setProgress: (p: number) => tasks.setProgress(task, p),
    };
  }
}
