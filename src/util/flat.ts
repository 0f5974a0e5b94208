// Flat strings. Text built by concatenation is a tree of fragments (crypto.randomUUID's result is
// one of about fifteen) until something needs its characters in one piece; V8 then copies them
// into one string and keeps it in place of the tree. A regular expression needs them so; ToNumber,
// surprisingly, flattens a copy and leaves the tree as it was.
const START = /^/;

/** The same string, stored flat from now on (a tree of fragments walked and freed once, here). */
export function flat(s: string): string {
  START.test(s);
  return s;
}
