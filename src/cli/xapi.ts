// `xapi serve`: the host daemon's command line. The flag names are a contract that scripts and
// tests depend on: --address, --http-port, --https-port, --state-dir, --backend,
// --root-password-file, --host-assumed-dead-interval; root's password may also come from
// XAPI_ROOT_PASSWORD. Two environment variables, for tests only and not in the usage text,
// shorten the liveness timings: XAPI_HEARTBEAT_INTERVAL_MS (a member's heartbeat period, 30 s)
// and XAPI_DB_GC_INTERVAL_MS (the database GC and liveness check period, 30 s).
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startHost, type HostOptions, type RunningHost } from '../host/host.js';
import { roleText } from '../host/pool-role.js';
import { ListenError } from '../http/server.js';
import { StoreFormatError } from '../db/store.js';

const USAGE = `usage: xapi serve [--address A] [--http-port P] [--https-port Q] [--state-dir D]
                  [--backend simulator] [--root-password-file F] [--host-assumed-dead-interval S]
                  [--sim-cpus N] [--sim-memory-mib M] [--sim-nics eth0,eth1]
                  [--sim-boot-ms T] [--sim-shutdown-ms T] [--log-level L]
                  [--rpc-body-timeout-ms T] [--upload-idle-timeout-ms T]
defaults: --address 0.0.0.0 --http-port 80 --https-port 443 --state-dir ./state --backend simulator
          --host-assumed-dead-interval 600 (seconds)
root's password: XAPI_ROOT_PASSWORD, or --root-password-file; otherwise generated on first start`;

function port(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new UsageError(`${flag} takes a port number (0-65535), not ${JSON.stringify(text)}`);
  return n;
}

function positive(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} takes a positive whole number, not ${JSON.stringify(text)}`);
  return n;
}

function nonNegative(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag} takes a whole number of milliseconds, not ${JSON.stringify(text)}`);
  return n;
}

/** A duration in seconds: positive, fractions allowed (tests use short intervals). */
function seconds(text: string, flag: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n <= 0)
    throw new UsageError(`${flag} takes a positive number of seconds, not ${JSON.stringify(text)}`);
  return n;
}

/** A test-only timing from the environment (milliseconds, positive), or undefined. */
function envMs(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0)
    throw new UsageError(`${name} takes a positive whole number of milliseconds, not ${JSON.stringify(text)}`);
  return n;
}

class UsageError extends Error {}

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string', default: '0.0.0.0' },
      'http-port': { type: 'string', default: '80' },
      'https-port': { type: 'string', default: '443' },
      'state-dir': { type: 'string', default: './state' },
      backend: { type: 'string', default: 'simulator' },
      'root-password-file': { type: 'string' },
      'host-assumed-dead-interval': { type: 'string', default: '600' },
      'sim-cpus': { type: 'string' },
      'sim-memory-mib': { type: 'string' },
      'sim-nics': { type: 'string' },
      'sim-boot-ms': { type: 'string' },
      'sim-shutdown-ms': { type: 'string' },
      'rpc-body-timeout-ms': { type: 'string' },
      'upload-idle-timeout-ms': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
    },
    strict: true,
  });
  if (values.backend !== 'simulator') throw new UsageError(`unknown --backend ${values.backend}: the available backend is "simulator"`);
  let rootPassword = process.env.XAPI_ROOT_PASSWORD;
  if (values['root-password-file']) rootPassword = (await readFile(values['root-password-file'], 'utf8')).replace(/\r?\n$/, '');

  const options: HostOptions = {
    address: values.address!,
    httpPort: port(values['http-port']!, '--http-port'),
    httpsPort: port(values['https-port']!, '--https-port'),
    stateDir: resolve(values['state-dir']!),
    backend: 'simulator',
    rootPassword,
    logLevel: values['log-level'],
    hostAssumedDeadIntervalS: seconds(values['host-assumed-dead-interval']!, '--host-assumed-dead-interval'),
    timing: { heartbeatIntervalMs: envMs('XAPI_HEARTBEAT_INTERVAL_MS'), dbGcIntervalMs: envMs('XAPI_DB_GC_INTERVAL_MS') },
    sim: {
      cpus: positive(values['sim-cpus'], '--sim-cpus'),
      memoryMiB: positive(values['sim-memory-mib'], '--sim-memory-mib'),
      nics: values['sim-nics']?.split(',').filter(Boolean),
    },
    simTiming: {
      bootTimeMs: nonNegative(values['sim-boot-ms'], '--sim-boot-ms'),
      shutdownTimeMs: nonNegative(values['sim-shutdown-ms'], '--sim-shutdown-ms'),
    },
    http: {
      rpcBodyTimeoutMs: positive(values['rpc-body-timeout-ms'], '--rpc-body-timeout-ms'),
      uploadIdleTimeoutMs: positive(values['upload-idle-timeout-ms'], '--upload-idle-timeout-ms'),
    },
  };
  const start = async (): Promise<RunningHost> => {
    try {
      return await startHost(options);
    } catch (e) {
      if (e instanceof ListenError || e instanceof StoreFormatError) {
        console.error(`xapi: ${e.message}`);
        process.exit(1);
      }
      throw e;
    }
  };
  const shown = values.address === '0.0.0.0' ? '127.0.0.1' : values.address;
  const announce = (r: RunningHost) =>
    console.log(
      `xapi: host ready (${roleText(r.host.role)}): http://${shown}:${r.httpPort}/ and https://${shown}:${r.httpsPort}/ (user root, state in ${options.stateDir})`,
    );

  let running = await start();
  announce(running);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`xapi: ${signal}: shutting down`);
    running.close().then(
      () => process.exit(0),
      (e) => {
        console.error('xapi: error during shutdown', e);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  // xapi restarts itself when its role changes (joining a pool, an eject, a transition): the host
  // closes and starts again in this process, reading its new role; there is no supervisor.
  for (;;) {
    const reason = await running.restartRequested;
    if (stopping) return;
    console.log(`xapi: restarting: ${reason}`);
    await running.close();
    if (stopping) return;
    running = await start();
    announce(running);
  }
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    if (command === 'serve') return await serve(rest);
    console.error(USAGE);
    process.exit(command === undefined || command === 'help' || command === '--help' ? 0 : 2);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`xapi: ${(e as Error).message}\n${USAGE}`);
      process.exit(2);
    }
    throw e;
  }
}
