// `xapi serve`: the host daemon's command line (and `xapi pool`, src/cli/pool.ts, which runs
// several). The flag names are a contract that scripts and tests depend on: --address,
// --http-port, --https-port, --state-dir, --backend, --root-password-file,
// --host-assumed-dead-interval (src/cli/flags.ts); root's password may also come from
// XAPI_ROOT_PASSWORD. Two environment variables, for tests only and not in the usage text,
// shorten the liveness timings: XAPI_HEARTBEAT_INTERVAL_MS (a member's heartbeat period, 30 s)
// and XAPI_DB_GC_INTERVAL_MS (the database GC and liveness check period, 30 s).
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { startHost, type HostOptions, type RunningHost } from '../host/host.js';
import { roleText } from '../host/pool-role.js';
import { ListenError } from '../http/server.js';
import { StoreFormatError } from '../db/store.js';
import { collectAllAvailableGarbage, IdleCollector } from '../util/idle-gc.js';
import { mallocTrim, mallocTrimUnavailable } from '../util/malloc-trim.js';
import { SERVE_OPTIONS, UsageError, hostOptions } from './flags.js';
import { POOL_USAGE, pool } from './pool.js';

const USAGE = `usage: xapi serve [--address A] [--http-port P] [--https-port Q] [--state-dir D]
                  [--backend simulator] [--root-password-file F] [--host-assumed-dead-interval S]
                  [--sim-cpus N] [--sim-memory-mib M] [--sim-nics eth0,eth1]
                  [--sim-boot-ms T] [--sim-shutdown-ms T] [--log-level L]
                  [--rpc-body-timeout-ms T] [--upload-idle-timeout-ms T]
                  [--pool-db-sync-interval S] [--platform-version X.Y.Z]
                  [--rrd-sample-interval-ms T] [--perfmon-interval S] [--perfmon-rrd-step 5|60]
defaults: --address 0.0.0.0 --http-port 80 --https-port 443 --state-dir ./state --backend simulator
          --host-assumed-dead-interval 600 (seconds) --platform-version 3.4.0
          --rrd-sample-interval-ms 5000 --perfmon-interval 300 --perfmon-rrd-step 60
--sim-nics: each NIC as device[:mac=xx-xx-xx-xx-xx-xx][:mtu=N][:speed=MBIT][:carrier=up|down]
--platform-version: the release the host claims (software_version: platform X.Y.Z, product (X+5).Y.Z,
          xapi (X+22).Y.Z). To upgrade a pool host by host, restart each host (coordinator first)
          alone with its state directory and a higher version: a pool of mixed versions is in a
          rolling upgrade (Pool.other_config:rolling_upgrade_in_progress) until all match.
root's password: XAPI_ROOT_PASSWORD, or --root-password-file; otherwise generated on first start

${POOL_USAGE}`;

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: SERVE_OPTIONS, strict: true });
  const options: HostOptions = hostOptions(values);
  let rootPassword = process.env.XAPI_ROOT_PASSWORD;
  if (values['root-password-file']) rootPassword = (await readFile(values['root-password-file'], 'utf8')).replace(/\r?\n$/, '');

  // Started by `xapi pool` with an IPC channel: when the launcher goes (even by SIGKILL, or under
  // a wrapper such as npx that does not pass signals on), the channel closes and this host stops,
  // so no host outlives its launcher.
  let parentGone = false;
  let onParentGone = () => {
    parentGone = true;
  };
  if (process.send) process.on('disconnect', () => onParentGone());

  const start = async (): Promise<RunningHost> => {
    try {
      return await startHost({ ...options, rootPassword });
    } catch (e) {
      if (e instanceof ListenError || e instanceof StoreFormatError) {
        console.error(`xapi: ${e.message}`);
        process.exit(1);
      }
      throw e;
    }
  };
  const shown = options.address === '0.0.0.0' ? '127.0.0.1' : options.address;
  const announce = (r: RunningHost) =>
    console.log(
      `xapi: host ready (${roleText(r.host.role)}): http://${shown}:${r.httpPort}/ and https://${shown}:${r.httpsPort}/ (user root, state in ${options.stateDir})`,
    );

  let running = await start();
  announce(running);
  // The garbage of a busy spell (start-up, a join, a backup) is collected once the host is idle,
  // with what the database store cached meanwhile, and the malloc heap's free pages given back.
  if (mallocTrimUnavailable)
    running.host.log.warn({ reason: mallocTrimUnavailable }, 'malloc_trim unavailable: an idle host keeps freed malloc memory');
  new IdleCollector({
    collect: async () => {
      running.releaseMemory();
      await collectAllAvailableGarbage();
      mallocTrim();
    },
    onError: (e) => console.error('xapi: the idle garbage collection failed', e),
  }).start();
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
  onParentGone = () => stop('launcher gone');
  if (parentGone) stop('launcher gone');

  // xapi restarts itself when its role changes (joining a pool, an eject, a transition) and the
  // simulated host "reboots" so (host.reboot): the host closes and starts again in this process,
  // reading its new role; there is no supervisor. host.shutdown closes it and exits.
  for (;;) {
    const reason = await running.restartRequested;
    if (stopping) return;
    if (running.shutdownRequested) {
      stop(reason);
      return;
    }
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
    if (command === 'pool') return await pool(rest);
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
