// SM failures as the XenAPI errors xapi raises for them (Storage_utils.transform_storage_exn), and
// a write into an SR that found no space as SR_FULL.
import { XapiError } from '../rpc/errors.js';
import { SmError } from '../storage/driver.js';

/**
 * A driver's failure during a call on `srRef` (and `vdiRef`) as a XenAPI error: an SM error by
 * its code, anything else as SR_BACKEND_FAILURE. `hostRef` is this host, the one SR_NOT_SHARABLE
 * names when another pool owns the SR. XenAPI errors pass as they are.
 */
export function smErrorToXapi(e: unknown, hostRef: string, srRef: string, vdiRef?: string): unknown {
  if (e instanceof XapiError) return e;
  if (!(e instanceof SmError)) {
    const msg = e instanceof Error ? e.message : String(e);
    const err = new XapiError('SR_BACKEND_FAILURE', ['', msg, '']);
    err.cause = e; // the driver's own failure and its stack, for whoever logs this
    return err;
  }
  switch (e.code) {
    case 'VDI_MISSING':
      return new XapiError('VDI_MISSING', [srRef, vdiRef ?? e.params[0] ?? '']);
    case 'VDI_LOCATION_MISSING':
      return new XapiError('VDI_LOCATION_MISSING', [srRef, e.params[0] ?? '']);
    case 'LOCATION_NOT_UNIQUE':
      return new XapiError('LOCATION_NOT_UNIQUE', [srRef, e.params[0] ?? '']);
    case 'SR_OPERATION_NOT_SUPPORTED':
      return new XapiError('SR_OPERATION_NOT_SUPPORTED', [srRef]);
    case 'SR_OWNED_BY_ANOTHER_POOL':
      return new XapiError('SR_NOT_SHARABLE', [srRef, hostRef]);
    default:
      return new XapiError(e.code, e.params);
  }
}

/**
 * A write into an SR that found no space (ENOSPC) as SR_FULL [requested; maximum]: the bytes the
 * operation needed and those still free on the SR, as `free` reports them (nothing, if the SR
 * cannot say). Other failures are returned as they are.
 */
export async function srFullError(e: unknown, requested: number, free: () => Promise<number>): Promise<unknown> {
  if ((e as NodeJS.ErrnoException | undefined)?.code !== 'ENOSPC') return e;
  let left = 0;
  try {
    left = await free();
  } catch {
    // the SR cannot say: report nothing free
  }
  return new XapiError('SR_FULL', [String(requested), String(left)]);
}
