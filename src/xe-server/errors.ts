// The failures a command raises, each rendered as xapi's CLI renders it (see render.ts).

/** A CLI-level failure: printed as `Error: <message>` (Cli_util.Cli_failure, Record_failure). */
export class CliFailure extends Error {}

/** Printed as `Syntax error: <text>` and the usage hint. */
export class ParseError extends Error {}

/** A required parameter is missing: `Required parameter not found: <name>` and the usage hint. */
export class ParamNotFound extends Error {}

export class UnknownCommand extends Error {}

/** A record has no field of that name (records.ml CLI_failed_to_find_param): `Missing parameter`. */
export class MissingField extends Error {
  constructor(readonly field: string) {
    super(field);
  }
}

/** Several objects of a --multiple command failed: one stdout line per failure. */
export class MultipleFailure extends Error {
  constructor(readonly failures: [uuid: string, message: string][]) {
    super('multiple failures');
  }
}

/** Ends the command with this exit code, the diagnostics already sent. */
export class ExitWithError extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}
