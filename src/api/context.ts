// What a message implementation is handed. Explicit context, no singletons (DESIGN.md,
// principle 6): the host's services come in through HostContext; the call's own state
// (session, task, the message) through Call.
import type { Logger } from 'pino';
import type { Db, Row } from '../db/interface.js';
import type { MessageName, Messages } from '../schema/generated.js';
import type { MessageDef, Schema } from '../schema/schema.js';
import type { Marshal } from './marshal.js';

export interface HostConfig {
  stateDir: string;
  address: string;
  hostname: string;
  httpPort: number;
  httpsPort: number;
  backend: string;
  /** The release this host claims (X.Y.Z; absent: the build's default, src/xapi/version.ts). */
  platformVersion?: string;
}

/** What this host is in its pool, from pool.conf at start (fixed for the process's life). */
export type HostRole = { kind: 'master' } | { kind: 'slave'; master: string } | { kind: 'broken' };

export interface HostContext {
  readonly schema: Schema;
  readonly role: HostRole;
  readonly db: Db;
  readonly marshal: Marshal;
  readonly log: Logger;
  readonly config: HostConfig;
  /** This host's and its pool's refs (set by first start / start-up sync). */
  hostRef: string;
  poolRef: string;
  /** Checks a password for a local user; only root exists locally. */
  verifyLocalPassword(user: string, password: string): Promise<boolean>;
  /**
   * Sessions that live only on this host, never in the database (xapi's local sessions, made
   * by slave_local_login* for emergency mode), by ref.
   */
  readonly localSessions: Map<string, Row<'session'>>;
  /** Pool secrets accepted from other hosts (a list, to allow rotation). */
  poolSecrets(): string[];
  /**
   * Set while the host serves only the emergency calls (xapi's emergency mode: a member still
   * booting, or one that cannot reach its coordinator at start): every other call gets this error.
   */
  emergency: { code: string; params: string[] } | undefined;
  /**
   * While a coordinator whose event loop was stalled checks again that no other host took over,
   * the check's promise: calls outside the emergency set wait for it rather than run (or be
   * refused), so a starved coordinator answers late instead of failing.
   */
  recheckInProgress(): Promise<void> | undefined;
  /**
   * Asks for this host to be restarted in place (xapi exits with its restart code and is started
   * again): after a role change is written, the host closes and `xapi serve` starts it afresh.
   */
  requestRestart(reason: string): void;
  /**
   * Asks for this host's process to close the host and exit (host.shutdown); absent where the
   * host is not a process of its own.
   */
  requestShutdown?(reason: string): void;
  /**
   * Writes this host's new role (and, joining a pool, the pool's secret) where the next start
   * reads them, then restarts the host shortly after: the reply to the call that asked goes
   * out first (xapi's 10 s fuse, shortened).
   */
  changeRole(role: HostRole, reason: string, poolSecret?: string): Promise<void>;
  /** Writes the role the next start reads, without restarting (xapi's set_role). */
  writeRole(role: HostRole): Promise<void>;
  /**
   * Told when the coordinator has just called this host (pool.is_slave): on a member, database
   * calls waiting to retry try again at once. Absent where there is nothing to wake.
   */
  coordinatorContacted?(): void;
  /** Milliseconds since the epoch; injectable for tests. */
  now(): number;
  /** How long a failed login waits before answering (xapi: 5 s, against password guessing). */
  authFailureDelayMs: number;
}

export interface SessionInfo {
  ref: string;
  row: Row<'session'>;
}

export interface Call {
  readonly host: HostContext;
  readonly db: Db;
  /** The message called (none for work outside a call, e.g. an HTTP transfer). */
  readonly msg?: MessageDef;
  /** The method name as the client sent it (e.g. `Async.VM.start`). */
  readonly wireName: string;
  readonly session: SessionInfo | undefined;
  /** The DB task this call runs under, or a `DummyRef:|uuid|name` when it has none. */
  readonly task: string;
  /** Raises TASK_CANCELLED if someone asked to cancel this call's task. */
  checkCancelled(): Promise<void>;
  /** Records progress (0..1) on the call's task, if it has one. */
  setProgress(p: number): Promise<void>;
}

/** An implementation of a message chosen at run time: the arguments as dispatch decoded them. */
export type Impl = (call: Call, args: unknown[]) => Promise<unknown> | unknown;

/** An implementation of message W, typed by the schema (src/schema/generated.ts). */
export type MessageImpl<W extends MessageName> = (
  call: Call,
  args: Messages[W]['params'],
) => Promise<Messages[W]['result']> | Messages[W]['result'];

/** Message implementations by wire name; each src/xapi/<class>.ts registers its own. */
export class Registry {
  private readonly impls = new Map<string, Impl>();

  /** Implements a message of the schema; a name not in it, or an extra parameter, fails to compile. */
  implement<W extends MessageName>(wire: W, impl: MessageImpl<W>): this {
    // Dispatch passes exactly the message's parameters, each decoded by its schema type, which is
    // what MessageImpl<W> describes.
    this.impls.set(wire, impl as unknown as Impl);
    return this;
  }

  /** Implements a message named at run time (the generic implicit messages). */
  implementAny(wire: string, impl: Impl): this {
    this.impls.set(wire, impl);
    return this;
  }

  get(wire: string): Impl | undefined {
    return this.impls.get(wire);
  }

  has(wire: string): boolean {
    return this.impls.has(wire);
  }
}

export const isoNow = (host: HostContext) => new Date(host.now());
