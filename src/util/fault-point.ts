// Named points in the code where a fault test can make this process die or freeze, so that a
// crash lands at a chosen step (between a merge and the role write, between two phases of a
// commit...) rather than wherever a timer happens to fall. Inert unless the environment variable
// XAPI_TEST_FAULT_POINT names the point:
//
//   XAPI_TEST_FAULT_POINT=<name>[:<signal>][@<n>]
//
// The n-th time (default the first) the process reaches faultPoint(<name>) it writes
// "fault point <name> reached (<signal>)" on stderr (synchronously, so the test can see it even
// for SIGKILL) and sends itself <signal> (default SIGKILL; SIGSTOP freezes it until SIGCONT).
// Every point fires at most once per process. The points in use are listed in
// docs/architecture.md ("Fault tests").
import { writeSync } from 'node:fs';

let reached = 0;
let fired = false;

export function faultPoint(name: string): void {
  const spec = process.env.XAPI_TEST_FAULT_POINT;
  if (!spec || fired) return;
  const m = /^([^:@]+)(?::([A-Z0-9]+))?(?:@(\d+))?$/.exec(spec);
  if (!m || m[1] !== name) return;
  if (++reached < Number(m[3] ?? 1)) return;
  fired = true;
  const signal = m[2] ?? 'SIGKILL';
  writeSync(2, `fault point ${name} reached (${signal})\n`);
  process.kill(process.pid, signal);
}
