// A host with its database in memory only and no HTTP: the same API as a real host, for unit
// tests, benchmarks of the core and the coverage tool. Nothing here is durable.
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { SimulatorBackend } from '../xenopsd/backends/simulator.js';
import { schema as loadSchema, type Schema } from '../schema/schema.js';
import { LocalDb } from '../db/database.js';
import { typed } from '../db/interface.js';
import { Marshal } from '../api/marshal.js';
import type { HostContext } from '../api/context.js';
import { coordinatorUuid, syncDatabase } from './dbsync.js';
import { buildApi } from './host.js';
import { updateAllAllowedOperations } from '../xapi/host-operations.js';
import { simulatedMachine } from '../xenopsd/machine.js';
import { ensureLocalStorage } from './local-storage.js';
import { SimulatedNetworkd } from '../networkd/sim.js';
import { Nm } from '../xapi/nm.js';
import { firstStartNetworking, startNetworking } from '../xapi/pif-scan.js';

export async function memoryHost(
  opts: {
    rootPassword?: string;
    now?: () => number;
    schema?: Schema;
    logLimit?: number;
    stateDir?: string;
    bootTimeMs?: number;
    shutdownTimeMs?: number;
    /** From a guest's first unpause to its agent reporting (default bootTimeMs). */
    agentDelayMs?: number;
    /** A database of the caller's (e.g. over a store whose writes can be made to fail). */
    db?: LocalDb;
    /** Where the host logs (default: nowhere); tests that check what is logged pass their own. */
    log?: Logger;
    /** Whether simulated guests run an agent (PV drivers); default true. */
    guestAgent?: boolean;
  } = {},
) {
  // The simulated domains keep their own state on disk, like xenopsd's; a temporary directory
  // goes when the process exits.
  const stateDir = opts.stateDir ?? (await mkdtemp(join(tmpdir(), 'xapi-memhost-')));
  if (!opts.stateDir) process.once('exit', () => rmSync(stateDir, { recursive: true, force: true }));
  const schema = opts.schema ?? loadSchema();
  const db = opts.db ?? new LocalDb(schema, null, { logLimit: opts.logLimit });
  const machine = simulatedMachine({ seed: 'memory' });
  const uuid = (await coordinatorUuid(typed(db))) ?? randomUUID();
  const { hostRef, poolRef, firstStart } = await syncDatabase(typed(db), schema, {
    uuid,
    hostname: 'memhost',
    address: '127.0.0.1',
    machine,
  });
  const nm = new Nm(await SimulatedNetworkd.open(machine.nics, stateDir), stateDir);
  if (firstStart) await firstStartNetworking(typed(db), nm, hostRef, '127.0.0.1');
  await startNetworking(typed(db), nm, hostRef, () => undefined);
  await db.commit();
  let rootPassword = opts.rootPassword ?? 'secret';
  const restartRequests: string[] = [];
  const host: HostContext = {
    schema,
    db: typed(db),
    marshal: new Marshal(schema),
    log: opts.log ?? pino({ level: 'silent' }),
    config: { stateDir, address: '127.0.0.1', hostname: 'memhost', httpPort: 0, httpsPort: 0, backend: 'simulator' },
    hostRef,
    poolRef,
    verifyLocalPassword: async (user, password) => user === 'root' && password === rootPassword,
    role: { kind: 'master' },
    emergency: undefined,
    recheckInProgress: () => undefined,
    // An in-memory host has no process to restart: tests read what was asked.
    requestRestart: (reason) => void restartRequests.push(reason),
    changeRole: async (next, reason) => void restartRequests.push(`${reason} (${next.kind})`),
    writeRole: async () => undefined,
    localSessions: new Map(),
    poolSecrets: () => ['memory-pool-secret'],
    now: opts.now ?? (() => Date.now()),
    authFailureDelayMs: 0,
  };
  const domains = new SimulatorBackend({
    machine,
    stateDir,
    bootTimeMs: opts.bootTimeMs ?? 0,
    shutdownTimeMs: opts.shutdownTimeMs ?? 0,
    agentDelayMs: opts.agentDelayMs,
    guestAgent: opts.guestAgent,
  });
  const { registry, dispatcher, xenops, storage } = buildApi(
    host,
    db,
    async (_user, password) => {
      rootPassword = password;
    },
    domains,
    {},
    undefined,
    nm,
  );
  // Local storage, as on a real host: VHD files under the state directory.
  await ensureLocalStorage(storage, join(stateDir, 'storage'));
  await updateAllAllowedOperations(host.db);
  // Callers that run VMs start the update loop (xenops.start()) and close() at the end.
  const close = async () => {
    await storage.close();
    await xenops.stop();
    if (!opts.stateDir) await rm(stateDir, { recursive: true, force: true });
  };
  return { host, db, registry, dispatcher, xenops, domains, storage, nm, restartRequests, close };
}
