// The one error type of the API: a XenAPI error code with its string parameters, sent to the
// client as ErrorDescription [code, ...params]. Anything else thrown inside a call is reported
// as INTERNAL_ERROR, as xapi does for exceptions it has no mapping for.

export class XapiError extends Error {
  readonly params: string[];
  constructor(
    readonly code: string,
    params: readonly unknown[] = [],
  ) {
    super(`${code}(${params.join(', ')})`);
    this.params = params.map((p) => String(p));
  }

  get description(): string[] {
    return [this.code, ...this.params];
  }
}

/** The ErrorDescription for any thrown value. */
export function errorDescription(e: unknown): string[] {
  if (e instanceof XapiError) return e.description;
  const msg = e instanceof Error ? e.message : String(e);
  return ['INTERNAL_ERROR', msg];
}

export const handleInvalid = (cls: string, ref: string) => new XapiError('HANDLE_INVALID', [cls, ref]);
export const internalError = (msg: string) => new XapiError('INTERNAL_ERROR', [msg]);
