// host.* explicit messages (xapi's xapi_host.ml, xapi_plugins.ml). A call naming another host
// would be forwarded to it by xapi; a single host can only say it cannot reach it.
import { XapiError } from '../rpc/errors.js';
import type { Call, Registry } from '../api/context.js';
import type { Ref } from '../schema/generated.js';
import { formatDateTime } from '../schema/types.js';

/** The work runs here if `host` is this host (do_op_on); HANDLE_INVALID for no host at all. */
async function onThisHost(call: Call, host: Ref<'host'>): Promise<void> {
  if (host === call.host.hostRef) return;
  await call.db.get('host', host);
  throw new XapiError('CANNOT_CONTACT_HOST', [host]);
}

/** Local wall-clock time without a zone, as xapi's Date.localtime prints it. */
export function localDateTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function register(r: Registry): void {
  r.implement('host.get_servertime', async (call, [host]) => {
    await onThisHost(call, host);
    return formatDateTime(new Date(call.host.now()));
  })
    .implement('host.get_server_localtime', async (call, [host]) => {
      await onThisHost(call, host);
      return localDateTime(call.host.now());
    })
    // Plugins are the scripts in dom0's plugin directory; this host has none, so every name is
    // missing (xapi looks the name up among the directory's entries).
    .implement('host.call_plugin', async (call, [host, plugin]) => {
      await onThisHost(call, host);
      throw new XapiError('XENAPI_MISSING_PLUGIN', [plugin]);
    });
}
