// glibc's malloc_trim(0), through the small addon in native/malloc-trim (built by `npm install`).
// glibc returns freed heap memory to the system only from the top of its heap, so what a busy
// spell allocated and freed below a block still in use stays resident: on an idle member of a
// 64-host pool, 6.7 of its 11.4 MB of malloc heap were free, and malloc_trim(0) gave 3.1 MiB of
// RSS back (measured by calling it from gdb). koffi, the usual FFI library, would do the same
// but adds 4.3 MiB of RSS to each process that loads it, more than the call gives back.
import { createRequire } from 'node:module';

const ADDON = '../../../native/malloc-trim/build/Release/malloc_trim.node';

/** The addon's trim, or the reason it could not be loaded (not built, not glibc). */
function load(): { trim: () => boolean } | { error: string } {
  try {
    return createRequire(import.meta.url)(ADDON) as { trim: () => boolean };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

const addon = load();

/** Why malloc memory cannot be trimmed here, or undefined when it can. */
export const mallocTrimUnavailable: string | undefined = 'error' in addon ? addon.error : undefined;

/** Gives the malloc heap's free pages back to the system; false when nothing was (or could be) given back. */
export function mallocTrim(): boolean {
  return 'trim' in addon ? addon.trim() : false;
}
