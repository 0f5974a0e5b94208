// Rows carry a slot for the text the wires write from them. A row is frozen and replaced on every
// write (database.ts), so text written from it never goes stale: the marshaller keeps it in the
// row's slot (marshal.ts) and a row fetched again is not written again. The slot is made with the
// row, so keeping text is one store: kept in a WeakMap keyed by the row instead, each row's first
// text cost about a microsecond more (8-10 ms of the first get_all_records of 10,000 rows).

/** The key of a row's slot: a symbol, and not enumerable, so no copy or serialisation sees it. */
export const ROW_TEXT = Symbol('row text');

/** Text written from one row, per wire, with the writer that wrote it (a mark of its own). */
export class RowTextSlot {
  json: string | undefined = undefined;
  jsonBy: object | undefined = undefined;
  xml: string | undefined = undefined;
  xmlBy: object | undefined = undefined;
}

/** The row, frozen, with an empty slot: how the database makes every row it keeps. */
export function frozenRow<T extends Record<string, unknown>>(row: T): Readonly<T> {
  Object.defineProperty(row, ROW_TEXT, { value: new RowTextSlot() });
  return Object.freeze(row);
}

/**
 * Empties the slot of a row the database is replacing or removing. The marshaller lists the slots
 * it filled until its budget is spent (marshal.ts), so without this a superseded row's text would
 * stay alive there; a reader still holding the old row just writes it again.
 */
export function forgetRowText(row: object): void {
  const slot = (row as { [ROW_TEXT]?: RowTextSlot })[ROW_TEXT];
  if (slot === undefined) return;
  slot.json = slot.jsonBy = slot.xml = slot.xmlBy = undefined;
}
