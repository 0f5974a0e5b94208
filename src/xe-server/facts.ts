// The facts xe's server side reads off the reference source (schema/xe-cli.json, written by
// tools/gen-xe-facts.mjs): the command table's names, parameters, help texts and flags, the text
// printed for each datamodel error, and the fields of xe's records per class.
import { readFileSync } from 'node:fs';

export interface CommandFacts {
  reqd: string[];
  optn: string[];
  help: string;
  /** Standard, Vm_selectors, Host_selectors, Sr_selectors, Hidden, Neverforward, Deprecated. */
  flags: string[];
  /** No_fd, With_fd, No_fd_local_session, With_fd_local_session. */
  impl: string;
}

/** One field of an xe record (records.ml), in xe's order. */
export interface RecordFieldFacts {
  name: string;
  /** Where the value comes from: the record, its metrics, its guest metrics, or code (`special`). */
  from: 'rec' | 'metrics' | 'guest_metrics' | 'special';
  /** The API field shown (wire name). */
  field?: string;
  /** How xe turns it into text: its getter with the field written X. */
  conv?: string;
  /** What a metrics field shows when the metrics object is missing. */
  none?: string;
  set?: boolean;
  add_to_set?: boolean;
  remove_from_set?: boolean;
  add_to_map?: boolean;
  remove_from_map?: boolean;
  clear_map?: boolean;
  set_in_map?: boolean;
  set_map?: boolean;
  get_set?: boolean;
  get_map?: boolean;
  expensive?: boolean;
  hidden?: boolean;
  deprecated?: boolean;
  case_insensitive?: boolean;
}

export interface XeFacts {
  commands: Record<string, CommandFacts>;
  errors: Record<string, { params: string[]; doc: string }>;
  records: Record<string, RecordFieldFacts[]>;
}

let loaded: XeFacts | undefined;

export function xeFacts(): XeFacts {
  loaded ??= JSON.parse(readFileSync(new URL('../../../schema/xe-cli.json', import.meta.url), 'utf8')) as XeFacts;
  return loaded;
}
