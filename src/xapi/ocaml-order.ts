// The order in which xapi lists operations. xapi's enums are OCaml polymorphic variants: a
// variant is an integer (a hash of its name), `compare` orders variants by that integer, and a
// Hashtbl keyed by variants hands its keys back in an order fixed by the hash of that integer.
// Lists xapi builds from a Set or a Hashtbl (SR, VDI and host allowed_operations, the SR
// operation reported as in progress) come out in those orders, so to answer with the same lists
// we compute the same integers (the OCaml runtime's hash_variant and caml_hash).

const mul32 = (a: number, b: number) => Math.imul(a, b) >>> 0;
const rotl32 = (x: number, n: number) => ((x << n) | (x >>> (32 - n))) >>> 0;

/** The integer OCaml represents the variant `name by (the runtime's caml_hash_variant). */
export function variantHash(name: string): number {
  let h = 0; // kept modulo 2^31, which is all that survives the final masking
  for (let i = 0; i < name.length; i++) h = (Math.imul(223, h) + name.charCodeAt(i)) & 0x7fffffff;
  return h >= 0x40000000 ? h - 0x80000000 : h; // read back as a signed 31-bit int
}

/** OCaml's `compare` on two constant variants. */
export const compareVariants = (a: string, b: string): number => variantHash(a) - variantHash(b);

/** Hashtbl.hash of a constant variant (caml_hash over one immediate, seed 0). */
function hashtblHash(name: string): number {
  const tagged = 2 * variantHash(name) + 1; // the value as the runtime stores it; fits in 32 bits
  let d = tagged >>> 0;
  d = mul32(d, 0xcc9e2d51);
  d = rotl32(d, 15);
  d = mul32(d, 0x1b873593);
  let h = (0 ^ d) >>> 0;
  h = rotl32(h, 13);
  h = (mul32(h, 5) + 0xe6546b64) >>> 0;
  h ^= h >>> 16;
  h = mul32(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = mul32(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) & 0x3fffffff;
}

/**
 * The keys of `Hashtbl.create initialSize`, filled with `keys` in order by replace, as xapi's
 * `Hashtbl.fold (fun k _ acc -> k :: acc)` lists them: buckets in index order, each newest
 * first, the whole visit reversed by the consing. (No resize happens below twice the buckets.)
 */
export function hashtblFoldOrder(keys: readonly string[], initialSize: number): string[] {
  let buckets = 16;
  while (buckets < initialSize) buckets *= 2;
  if (keys.length > 2 * buckets) throw new Error('hashtblFoldOrder: the table would have been resized');
  const table: string[][] = Array.from({ length: buckets }, () => []);
  for (const k of keys) {
    const b = table[hashtblHash(k) & (buckets - 1)]!;
    if (!b.includes(k)) b.unshift(k);
  }
  return table.flat().reverse();
}
