// Host.reboot and Host.shutdown (message_forwarding.ml, xapi_host.ml shutdown_and_reboot_common,
// prepare_for_poweroff; vm_evacuation.ml ensure_no_vms). The coordinator marks the host operation
// and forwards the call to the host, which refuses unless it is disabled (HOST_NOT_DISABLED), says
// yes, and only then goes: the reply must reach the caller first (xapi waits 10 s).
//
// What the simulator's host does: it empties itself of running VMs as xapi does before powering
// off (Host.evacuate asked of the coordinator; what could not leave is shut down cleanly, then
// hard), and then its `xapi serve` process either starts the host again in place ("reboot": its
// domains are gone, its storage is plugged again and, as any start does, it enables itself) or
// closes and exits ("shutdown": a member's last heartbeat says it is going, so the coordinator
// marks it not live at once; the process stays gone until someone starts it again).
import type { Call, HostContext, Registry } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import { NULL_REF } from '../schema/types.js';
import { callOn, isForwardedHere, runOn } from './forward.js';
import { withHostOperation } from './host-operations.js';

/** How long after its reply the host starts going down (xapi's 10 s, shortened as the role-change fuse is). */
export const POWER_OFF_FUSE_MS = 1000;

type PowerOff = 'reboot' | 'shutdown';

/** The address of the pool's coordinator, as the database names it. */
async function coordinatorOf(host: HostContext): Promise<[string, string]> {
  const [pool] = await host.db.all('pool');
  const master = pool![1].master;
  return [master, (await host.db.get('host', master)).address];
}

/** The user VMs on this host that are running or paused. */
async function liveVms(host: HostContext): Promise<string[]> {
  const out: string[] = [];
  for (const ref of (await host.db.get('host', host.hostRef)).resident_VMs) {
    const vm = await host.db.tryGet('VM', ref);
    if (vm && !vm.is_control_domain && (vm.power_state === 'Running' || vm.power_state === 'Paused')) out.push(ref);
  }
  return out;
}

/** ensure_no_vms: evacuate if possible, then clean shutdowns, then hard ones; each failure logged and passed over. */
async function ensureNoVms(host: HostContext): Promise<void> {
  if ((await liveVms(host)).length === 0) return;
  const [master, address] = await coordinatorOf(host);
  const ask = (wire: string, ...args: (string | number)[]) =>
    callOn(host, master, address, wire, args).catch((e: unknown) => host.log.warn({ err: e, wire, args }, 'before powering off'));
  await ask('host.evacuate', host.hostRef, NULL_REF, 0);
  for (const vm of await liveVms(host)) {
    const allowed = (await host.db.get('VM', vm)).allowed_operations;
    if (allowed.includes('clean_shutdown')) await ask('VM.clean_shutdown', vm);
  }
  for (const vm of await liveVms(host)) await ask('VM.hard_shutdown', vm);
}

/** The host's half: the check, then the power-off after the reply. */
async function powerOffHere(call: Call, hostRef: string, kind: PowerOff): Promise<void> {
  const host = call.host;
  if ((await call.db.get('host', hostRef)).enabled) throw new XapiError('HOST_NOT_DISABLED', []);
  host.log.info({ kind }, 'the host is going down');
  setTimeout(() => {
    void (async () => {
      await ensureNoVms(host).catch((e: unknown) => host.log.warn({ err: e }, 'emptying the host before it goes down failed'));
      if (kind === 'reboot') host.requestRestart('host.reboot');
      else if (host.requestShutdown) host.requestShutdown('host.shutdown');
      else host.log.warn('this host cannot stop its process: host.shutdown did nothing');
    })();
  }, POWER_OFF_FUSE_MS).unref();
}

export function register(r: Registry): void {
  for (const kind of ['reboot', 'shutdown'] as const) {
    const wire = kind === 'reboot' ? 'host.reboot' : 'host.shutdown';
    r.implement(wire, async (call, [host]) => {
      await call.db.get('host', host);
      if (isForwardedHere(call)) return powerOffHere(call, host, kind);
      await withHostOperation(call, host, kind, () => runOn(call, host, wire, [host], () => powerOffHere(call, host, kind)));
    });
  }
}
