// host.* explicit messages (xapi's xapi_host.ml, xapi_plugins.ml). A call naming another host
// of the pool is forwarded to it.
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Ref } from '../schema/generated.js';
import { formatDateTime } from '../schema/types.js';
import type { Rpc } from '../rpc/rpc.js';
import { runOn } from './forward.js';
import { refreshPoolRestrictions } from './pool-derived.js';

/** The work runs on the host named (do_op_on); HANDLE_INVALID for no host at all. */
async function onHost(call: Call, host: Ref<'host'>, wire: string, args: Rpc[], local: () => Promise<string>): Promise<string> {
  if (host !== call.host.hostRef) await call.db.get('host', host);
  return (await runOn(call, host, wire, [host, ...args], local)) as string;
}

/** Local wall-clock time without a zone, as xapi's Date.localtime prints it. */
export function localDateTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function register(r: Registry): void {
  r.implement('host.get_servertime', (call, [host]) =>
    onHost(call, host, 'host.get_servertime', [], async () => formatDateTime(new Date(call.host.now()))),
  )
    .implement('host.get_server_localtime', (call, [host]) =>
      onHost(call, host, 'host.get_server_localtime', [], async () => localDateTime(call.host.now())),
    )
    // Plugins are the scripts in dom0's plugin directory; this host has none, so every name is
    // missing (xapi looks the name up among the directory's entries).
    .implement('host.call_plugin', (call, [host, plugin, fn, args]) =>
      onHost(call, host, 'host.call_plugin', [plugin, fn, args], async () => {
        throw new XapiError('XENAPI_MISSING_PLUGIN', [plugin]);
      }),
    )
    // A host's licensing sets what it may do; the pool may do what every host may.
    .implement('host.set_license_params', async (call, [self, value]) => {
      await call.db.update('host', self, { license_params: value });
      await refreshPoolRestrictions(call.db);
    });
}
