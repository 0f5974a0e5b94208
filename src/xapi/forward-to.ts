// Host choices for forwarded calls beyond forward.ts: the host a running VM is resident on
// (message_forwarding.ml forward_vm_op), and by the storage a call needs (forward_to_access_srs,
// forward_sr_multiple_op, forward_sr_all_op, choose_pbds_for_sr with unplugged PBDs): the host
// must see (have plugged) every SR the work touches, or be every host that holds a PBD of it.
import { XapiError } from '../rpc/errors.js';
import type { Rpc } from '../rpc/rpc.js';
import type { Call } from '../api/context.js';
import { NULL_REF } from '../schema/types.js';
import { isForwardedHere, runOn, seesSrs } from './forward.js';

/**
 * forward_vm_op: work on a Running or Paused VM runs on the host it is resident on; on a VM
 * that is not running, here. The member's half of a forwarded call runs here.
 */
export async function runOnResident<T>(call: Call, vmRef: string, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T> {
  if (isForwardedHere(call)) return local();
  const vm = await call.db.get('VM', vmRef);
  if (vm.power_state !== 'Running' && vm.power_state !== 'Paused') return local();
  return (await runOn(call, vm.resident_on, wire, args, local)) as T;
}

/**
 * xapi's choose_host with assert_can_see_specified_SRs: a live host that has every SR plugged,
 * picked at random (the coordinator left out when others qualify and `preferMembers`);
 * NO_HOSTS_AVAILABLE [] if there is none.
 */
export async function hostSeeing(call: Call, srs: string[], preferMembers = false): Promise<string> {
  const able: string[] = [];
  for (const [ref, host] of await call.db.all('host')) {
    const live = ref === call.host.hostRef || (await call.db.tryGet('host_metrics', host.metrics))?.live === true;
    if (live && (await seesSrs(call, ref, srs))) able.push(ref);
  }
  const choices = preferMembers && able.length > 1 ? able.filter((h) => h !== call.host.hostRef) : able;
  const chosen = choices[Math.floor(Math.random() * choices.length)];
  if (chosen === undefined) throw new XapiError('NO_HOSTS_AVAILABLE', []);
  return chosen;
}

/**
 * The SRs a VM's disks are on (assert_can_see_SRs): every non-empty VBD's VDI, and the
 * suspend image of a Suspended VM.
 */
export async function vmSrs(call: Call, vmRef: string): Promise<string[]> {
  const vm = await call.db.get('VM', vmRef);
  const vdis: string[] = [];
  for (const ref of vm.VBDs) {
    const vbd = await call.db.get('VBD', ref);
    if (vbd.empty !== true && vbd.VDI !== NULL_REF) vdis.push(vbd.VDI);
  }
  if (vm.power_state === 'Suspended' && vm.suspend_VDI !== NULL_REF) vdis.push(vm.suspend_VDI);
  const srs = new Set<string>();
  for (const vdi of vdis) {
    const row = await call.db.tryGet('VDI', vdi);
    if (row) srs.add(row.SR);
  }
  return [...srs];
}

/**
 * Runs `local` on a live host seeing `srs` (here for the member's half of a forwarded call),
 * else forwards `wire(...args)` there.
 */
export async function runOnHostSeeing<T>(
  call: Call,
  srs: string[],
  wire: string,
  args: Rpc[],
  local: () => Promise<T>,
  preferMembers = false,
): Promise<T> {
  if (isForwardedHere(call)) return local();
  return (await runOn(call, await hostSeeing(call, srs, preferMembers), wire, args, local)) as T;
}

/** forward_to_access_srs: a VM's disk work on a live host that sees all the VM's SRs. */
export async function runOnAccessSrs<T>(call: Call, vmRef: string, wire: string, args: Rpc[], local: () => Promise<T>): Promise<T> {
  if (isForwardedHere(call)) return local();
  return runOnHostSeeing(call, await vmSrs(call, vmRef), wire, args, local);
}

/**
 * choose_pbds_for_sr counting unplugged PBDs too, as SR.destroy and SR.forget do: the hosts of
 * the SR's PBDs; for an SR with several, the coordinator's first (it must have one, else
 * SR_HAS_NO_PBDS [sr]).
 */
export async function srPbdHosts(call: Call, srRef: string): Promise<string[]> {
  const sr = await call.db.get('SR', srRef);
  const hosts: string[] = [];
  for (const ref of sr.PBDs) {
    const pbd = await call.db.tryGet('PBD', ref);
    if (pbd) hosts.push(pbd.host);
  }
  if (hosts.length > 1) {
    if (!hosts.includes(call.host.hostRef)) throw new XapiError('SR_HAS_NO_PBDS', [srRef]);
    return [call.host.hostRef, ...hosts.filter((h) => h !== call.host.hostRef)];
  }
  if (hosts.length === 0) throw new XapiError('SR_HAS_NO_PBDS', [srRef]);
  return hosts;
}

/**
 * forward_sr_all_op: `wire` on every host that holds a PBD of the SR, one after the other; a
 * host that is offline is skipped, and an SR with no PBD to go by is left alone.
 */
export async function runOnAllSrHosts(call: Call, srRef: string, wire: string, local: () => Promise<void>): Promise<void> {
  if (isForwardedHere(call)) return local();
  let hosts: string[];
  try {
    hosts = await srPbdHosts(call, srRef);
  } catch (e) {
    if (e instanceof XapiError && e.code === 'SR_HAS_NO_PBDS') return;
    throw e;
  }
  for (const host of hosts) {
    try {
      await runOn(call, host, wire, [srRef], local);
    } catch (e) {
      if (!(e instanceof XapiError && e.code === 'HOST_OFFLINE')) throw e;
    }
  }
}
