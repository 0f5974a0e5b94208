// The host's watchdog, a process of its own (as Xen's is part of the hypervisor, not of dom0's
// daemons): if it is not petted in time, or is told to fence, it does what a watchdog reboot
// does to a host, at once: the xapi process is killed (SIGKILL works on a stopped process too)
// and the host's simulated domains end (the simulator's saved state loses every domain, so
// nothing of them comes back when the host starts again).
//
// Usage: node watchdog-main.js <xapi pid> <simulator state dir>. Commands on stdin, a line each:
//   pet <instance> <ms>   the instance (hb, sf) must be petted again within ms
//   fence                 fire now
//   disarm                close every instance and exit (an orderly stop)
// Its stdin closing (the xapi process died) changes nothing: the instances still run out, as
// Xen's watchdog outlives a dead xhad.
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { SimStateStore } from '../xenopsd/backends/sim-state.js';

const [pidText, simDir] = process.argv.slice(2);
const pid = Number(pidText);
if (!Number.isInteger(pid) || !simDir) {
  process.stderr.write('usage: watchdog-main <xapi pid> <simulator state dir>\n');
  process.exit(2);
}

const deadlines = new Map<string, NodeJS.Timeout>();

/** The host "reboots": its xapi gone, its domains gone. Never returns. */
function fire(reason: string): never {
  process.stderr.write(`watchdog: ${reason}: fencing the host\n`);
  // Frozen first, so it writes nothing more, its domains ended, and only then killed: whoever
  // sees the process gone sees the host as a reboot leaves it.
  signal('SIGSTOP');
  try {
    endDomains();
  } catch (e) {
    // the state directory removed meanwhile (a test's clean-up): nothing left to end
    process.stderr.write(`watchdog: ending the domains: ${String(e)}\n`);
  }
  signal('SIGKILL');
  process.exit(0);
}

function signal(sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

function endDomains(): void {
  if (!existsSync(simDir!)) return;
  const store = new SimStateStore<{ domain?: unknown; incoming?: unknown }>(simDir!);
  const saved = store.load();
  const changed = new Map<string, { domain?: unknown; incoming?: unknown } | undefined>();
  for (const [id, vm] of saved.vms) {
    if (vm.domain === undefined && vm.incoming === undefined) continue;
    const { domain: _d, incoming: _i, ...rest } = vm;
    changed.set(id, rest);
  }
  store.save(saved.lastDomid, changed);
  store.close();
}

function pet(instance: string, ms: number): void {
  clearTimeout(deadlines.get(instance));
  deadlines.set(
    instance,
    setTimeout(() => fire(`instance ${instance} not petted within ${ms} ms`), ms),
  );
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const [cmd, instance, ms] = line.trim().split(' ');
  if (cmd === 'pet' && instance && Number(ms) > 0) pet(instance, Number(ms));
  else if (cmd === 'fence') fire('self-fence requested');
  else if (cmd === 'disarm') {
    for (const t of deadlines.values()) clearTimeout(t);
    process.exit(0);
  }
});
// stdin closed: keep running until an instance runs out (or none is armed).
lines.on('close', () => {
  if (deadlines.size === 0) process.exit(0);
});
