// An in-process host with a logged-in client and helpers to make VMs and wait on conditions,
// for the tests of VM operations.
import { memoryHost } from '../../src/host/memory-host.js';
import { newStruct, type Rpc, type RpcStruct } from '../../src/rpc/rpc.js';
import { apiClient } from './api-client.js';
import { waitUntil } from '../wait.js';
import { vmStruct } from '../vm-record.js';

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

/** Waits (polling, see test/wait.ts) until `cond` holds. */
export async function waitFor(cond: () => Promise<boolean>, what = 'the condition'): Promise<void> {
  await waitUntil(what, cond);
}

export async function vmHost(opts: { bootTimeMs?: number; shutdownTimeMs?: number; agentDelayMs?: number } = {}) {
  const h = await memoryHost({ rootPassword: 'pw', ...opts });
  h.xenops.start();
  const { call, ok, err } = apiClient(h);
  const s = (await ok('session.login_with_password', 'root', 'pw')) as string;
  const [network] = (await ok('network.get_by_name_label', s, 'Pool-wide network associated with eth0')) as string[];
  const makeVm = async (name: string, memory = 1 * GiB, extra: Record<string, Rpc> = {}) =>
    (await ok('VM.create', s, vmStruct(name, { memory, vcpus: 2 }, extra))) as string;
  const rec = async (cls: string, ref: string) => (await ok(`${cls}.get_record`, s, ref)) as RpcStruct;
  const vmRec = (vm: string) => rec('VM', vm);
  /** Until the guest agent has reported (an HVM guest needs its features for clean operations). */
  const waitAgent = (vm: string) => waitFor(async () => (await vmRec(vm)).guest_metrics !== 'OpaqueRef:NULL', 'the guest agent reporting');
  const waitTask = async (task: string) => {
    let r: RpcStruct = newStruct();
    await waitFor(async () => {
      r = await rec('task', task);
      return r.status !== 'pending';
    }, `task ${task} finishing`);
    return r;
  };
  const dom0 = Object.keys((await ok('VM.get_all_records_where', s, 'field "is_control_domain" = "true"')) as RpcStruct)[0]!;
  return { ...h, call, ok, err, s, network: network!, makeVm, rec, vmRec, waitAgent, waitTask, dom0 };
}
