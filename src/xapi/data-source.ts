// host.* and VM.* data-source calls (get_data_sources, record_data_source, query_data_source,
// forget_data_source_archives): answered by the xcp-rrdd of the host that has the RRD, the
// host named or the one the VM runs on (message_forwarding's do_op_on / forward_vm_op). The VM
// calls other than query take the data_source_op mark (so need a running VM); query asserts
// Running or Paused. rrdd's own failures reach the client as xapi lets them: INTERNAL_ERROR
// with the printed Rrdd_error.
import type { Call, Registry } from '../api/context.js';
import { XapiError } from '../rpc/errors.js';
import type { data_source_record } from '../schema/generated.js';
import { type DataSourceInfo, type Rrdd, RrddError } from '../rrdd/service.js';
import { runOn } from './forward.js';
import { runOnResident } from './forward-to.js';
import { withVmOperation } from './vm-lifecycle.js';

function record(d: DataSourceInfo): data_source_record {
  return {
    name_label: d.name,
    name_description: d.description,
    enabled: d.enabled,
    standard: d.standard,
    units: d.units,
    min: d.min,
    max: d.max,
    value: 0,
  };
}

/** rrdd's exception as xapi's dispatcher reports an exception it does not know. */
async function rrddCall<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof RrddError) throw new XapiError('INTERNAL_ERROR', [e.message]);
    throw e;
  }
}

export function register(r: Registry, rrdd: Rrdd): void {
  const onHost = <T>(call: Call, host: string, wire: string, args: string[], fn: () => T) =>
    runOn(call, host, wire, args, () => rrddCall(fn)) as Promise<T>;
  const vmUuid = async (call: Call, vm: string) => (await call.db.get('VM', vm)).uuid;
  const onVm = <T>(call: Call, vm: string, wire: string, args: string[], fn: (uuid: string) => T) =>
    withVmOperation(call, vm, 'data_source_op', () =>
      runOnResident(call, vm, wire, args, () => rrddCall(async () => fn(await vmUuid(call, vm)))),
    );

  r.implement('host.get_data_sources', (call, [host]) =>
    onHost(call, host, 'host.get_data_sources', [host], () => rrdd.dataSources().map(record)),
  )
    .implement('host.record_data_source', (call, [host, ds]) =>
      onHost(call, host, 'host.record_data_source', [host, ds], () => rrdd.record(undefined, ds)),
    )
    .implement('host.query_data_source', (call, [host, ds]) =>
      onHost(call, host, 'host.query_data_source', [host, ds], () => rrdd.query(undefined, ds)),
    )
    .implement('host.forget_data_source_archives', (call, [host, ds]) =>
      onHost(call, host, 'host.forget_data_source_archives', [host, ds], () => rrdd.forget(undefined, ds)),
    )
    .implement('VM.get_data_sources', (call, [vm]) => onVm(call, vm, 'VM.get_data_sources', [vm], (u) => rrdd.dataSources(u).map(record)))
    .implement('VM.record_data_source', (call, [vm, ds]) => onVm(call, vm, 'VM.record_data_source', [vm, ds], (u) => rrdd.record(u, ds)))
    .implement('VM.forget_data_source_archives', (call, [vm, ds]) =>
      onVm(call, vm, 'VM.forget_data_source_archives', [vm, ds], (u) => rrdd.forget(u, ds)),
    )
    .implement('VM.query_data_source', async (call, [vm, ds]) => {
      const row = await call.db.get('VM', vm);
      if (row.power_state !== 'Running' && row.power_state !== 'Paused') {
        throw new XapiError('VM_BAD_POWER_STATE', [vm, 'running;paused', row.power_state.toLowerCase()]);
      }
      return runOnResident(call, vm, 'VM.query_data_source', [vm, ds], () => rrddCall(() => rrdd.query(row.uuid, ds)));
    });
}
