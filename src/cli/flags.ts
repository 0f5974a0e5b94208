// The flags of `xapi serve`, shared with `xapi pool` (which passes every serve flag on to each of
// its hosts and checks them first, so a typo is one usage error rather than N dead hosts).
import { resolve } from 'node:path';
import { simulatedNic } from '../xenopsd/machine.js';
import type { HostOptions } from '../host/host.js';
import { isPlatformVersion } from '../xapi/version.js';

/** A command line that cannot be run as given: reported with the usage text, exit status 2. */
export class UsageError extends Error {}

/** xapi's host_assumed_dead_interval (xapi_globs.ml: 10 minutes). */
export const DEFAULT_HOST_ASSUMED_DEAD_INTERVAL_S = 600;

/** serve's options, in node:util parseArgs form. */
export const SERVE_OPTIONS = {
  address: { type: 'string', default: '0.0.0.0' },
  'http-port': { type: 'string', default: '80' },
  'https-port': { type: 'string', default: '443' },
  'state-dir': { type: 'string', default: './state' },
  backend: { type: 'string', default: 'simulator' },
  'root-password-file': { type: 'string' },
  'host-assumed-dead-interval': { type: 'string', default: String(DEFAULT_HOST_ASSUMED_DEAD_INTERVAL_S) },
  'sim-cpus': { type: 'string' },
  'sim-memory-mib': { type: 'string' },
  'sim-nics': { type: 'string' },
  'sim-boot-ms': { type: 'string' },
  'sim-shutdown-ms': { type: 'string' },
  'rpc-body-timeout-ms': { type: 'string' },
  'upload-idle-timeout-ms': { type: 'string' },
  'pool-db-sync-interval': { type: 'string' },
  'platform-version': { type: 'string' },
  'rrd-sample-interval-ms': { type: 'string' },
  'perfmon-interval': { type: 'string' },
  'perfmon-rrd-step': { type: 'string' },
  'log-level': { type: 'string', default: 'info' },
} as const;

export type ServeFlag = keyof typeof SERVE_OPTIONS;
export type ServeValues = { [K in ServeFlag]?: string };

export function port(text: string, flag: string): number {
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

/** The release a host claims: X.Y.Z, three whole numbers. */
function platformVersion(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  if (!isPlatformVersion(text))
    throw new UsageError(`--platform-version takes a version X.Y.Z (three whole numbers), not ${JSON.stringify(text)}`);
  return text;
}

/** perfmon's rrd step: the 5 s or the 1 min archive, as its -s flag allows. */
function perfmonStep(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (text !== '5' && text !== '60') throw new UsageError(`--perfmon-rrd-step takes 5 or 60 (seconds), not ${JSON.stringify(text)}`);
  return Number(text);
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

/** The host's options from serve's flags (defaults filled in); root's password is the caller's. */
/** --sim-nics: each NIC's description checked here, so a bad one is a usage error. */
function nics(text: string | undefined): string[] | undefined {
  const specs = text?.split(',').filter(Boolean);
  for (const spec of specs ?? []) {
    try {
      simulatedNic(spec, '');
    } catch (e) {
      throw new UsageError(`--sim-nics: ${(e as Error).message}`);
    }
  }
  return specs;
}

export function hostOptions(given: ServeValues): HostOptions {
  const v: ServeValues = { ...defaults(), ...given };
  if (v.backend !== 'simulator') throw new UsageError(`unknown --backend ${v.backend}: the available backend is "simulator"`);
  return {
    address: v.address!,
    httpPort: port(v['http-port']!, '--http-port'),
    httpsPort: port(v['https-port']!, '--https-port'),
    stateDir: resolve(v['state-dir']!),
    backend: 'simulator',
    logLevel: v['log-level'],
    hostAssumedDeadIntervalS: seconds(v['host-assumed-dead-interval']!, '--host-assumed-dead-interval'),
    timing: { heartbeatIntervalMs: envMs('XAPI_HEARTBEAT_INTERVAL_MS'), dbGcIntervalMs: envMs('XAPI_DB_GC_INTERVAL_MS') },
    poolDbSyncIntervalMs:
      v['pool-db-sync-interval'] === undefined ? undefined : 1000 * seconds(v['pool-db-sync-interval'], '--pool-db-sync-interval'),
    platformVersion: platformVersion(v['platform-version']),
    sim: {
      cpus: positive(v['sim-cpus'], '--sim-cpus'),
      memoryMiB: positive(v['sim-memory-mib'], '--sim-memory-mib'),
      nics: nics(v['sim-nics']),
    },
    simTiming: {
      bootTimeMs: nonNegative(v['sim-boot-ms'], '--sim-boot-ms'),
      shutdownTimeMs: nonNegative(v['sim-shutdown-ms'], '--sim-shutdown-ms'),
    },
    metrics: {
      sampleIntervalMs: positive(v['rrd-sample-interval-ms'], '--rrd-sample-interval-ms'),
      perfmonIntervalMs: v['perfmon-interval'] === undefined ? undefined : 1000 * seconds(v['perfmon-interval'], '--perfmon-interval'),
      perfmonRrdStepS: perfmonStep(v['perfmon-rrd-step']),
    },
    http: {
      rpcBodyTimeoutMs: positive(v['rpc-body-timeout-ms'], '--rpc-body-timeout-ms'),
      uploadIdleTimeoutMs: positive(v['upload-idle-timeout-ms'], '--upload-idle-timeout-ms'),
    },
  };
}

function defaults(): ServeValues {
  const out: Record<string, string> = {};
  for (const [name, o] of Object.entries(SERVE_OPTIONS)) if ('default' in o) out[name] = o.default;
  return out;
}
