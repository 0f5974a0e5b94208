// xhad's exit codes (include/mtcerrno.def; xapi's xha_errno.ml), which its scripts return and
// xapi turns into XenAPI errors.
export const XHA_ERRNO = {
  ok: 0,
  systemError: 2,
  invalidConfig: 7,
  statefileAccess: 8,
  invalidStatefile: 9,
  generationMismatch: 10,
  invalidPoolState: 11,
  joinTimeout: 12,
  cannotJoin: 13,
  daemonAbsent: 14,
  daemonPresent: 15,
  invalidHostState: 17,
} as const;

export class HaError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`xhad error ${code}: ${message}`);
    this.name = 'HaError';
  }
}
