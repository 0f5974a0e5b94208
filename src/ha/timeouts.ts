// xhad's timeouts, all derived from one base T in seconds (xapi_ha.ml Timeouts.derive; ha.md
// §2.3): heartbeats are cheap, so frequent (every (T+10)/10 s, at most 3); the statefile is
// slower, every T/20 s but at least 2; a host is silent too long after T on either channel;
// the statefile watchdog allows 15 s more than its timeout; joining may take T + 60 s.

/** xapi_globs ha_default_timeout_base, and the smallest T xapi accepts. */
export const DEFAULT_TIMEOUT_S = 60;
export const MINIMUM_TIMEOUT_S = 10;

/** xapi_globs: the xapi health check, not derived from T. */
export const XAPI_HEALTHCHECK_INTERVAL_S = 60;
export const XAPI_HEALTHCHECK_TIMEOUT_S = 120;
export const XAPI_RESTART_ATTEMPTS = 1;
export const XAPI_RESTART_TIMEOUT_S = 300;

/** Seconds, as xhad.conf's parameters. */
export interface Timeouts {
  heartbeatInterval: number;
  stateFileInterval: number;
  heartbeatTimeout: number;
  stateFileTimeout: number;
  heartbeatWatchdogTimeout: number;
  stateFileWatchdogTimeout: number;
  bootJoinTimeout: number;
  enableJoinTimeout: number;
  xapiHealthcheckInterval: number;
  xapiHealthcheckTimeout: number;
  xapiRestartAttempts: number;
  xapiRestartTimeout: number;
}

/** Timeouts.derive; T below 10 is refused as xapi's failwith words it. */
export function deriveTimeouts(t: number): Timeouts {
  if (t < MINIMUM_TIMEOUT_S) throw new Error('constraint violation: timeout >= 10');
  const bootJoin = t + 60;
  return {
    heartbeatInterval: Math.min(Math.trunc((t + 10) / 10), 3),
    stateFileInterval: Math.max(2, Math.trunc(t / 20)),
    heartbeatTimeout: t,
    stateFileTimeout: t,
    heartbeatWatchdogTimeout: t,
    stateFileWatchdogTimeout: t + 15,
    bootJoinTimeout: bootJoin,
    enableJoinTimeout: bootJoin,
    xapiHealthcheckInterval: XAPI_HEALTHCHECK_INTERVAL_S,
    xapiHealthcheckTimeout: XAPI_HEALTHCHECK_TIMEOUT_S,
    xapiRestartAttempts: XAPI_RESTART_ATTEMPTS,
    xapiRestartTimeout: XAPI_RESTART_TIMEOUT_S,
  };
}
