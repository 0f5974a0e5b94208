// How a host process is run: the node flags and environment every `xapi serve` gets, chosen for
// an idle host's memory (a pool of 64 hosts on one machine). bin/xapi.js's first line carries
// the same settings, so `npx xapi` and `./bin/xapi.js` run with them; whatever starts a host
// with `node bin/xapi.js` itself (the test harness, the benchmarks, the pool launcher) passes
// these. test/unit/host-process.test.ts keeps the two in step.

/**
 * glibc's malloc raises its mmap threshold to the size of the largest block freed so far (up to
 * 32 MiB), after which blocks that size are carved from the thread's arena and stay resident
 * when freed. scrypt (password checks, on libuv's pool threads) allocates 16 MiB each time, so
 * every login that lands on another pool thread left 16 MiB behind (an idle member: +40 MB).
 * Setting the threshold turns that adjustment off: big blocks are mapped and given back on free.
 * It is set to 32 KiB, under glibc's starting 128 KiB, so that the blocks a connection comes and
 * goes with (TLS record buffers of ~17 KiB each way, node's 64 KiB socket read buffers) are
 * mapped too rather than carved out of the heap between long-lived blocks: there, once freed,
 * they left holes too small for malloc_trim to give back (the coordinator of 64 hosts, a TLS
 * connection from a member every half second, held a 10 MiB malloc heap for 6.5 MB in use). Two
 * runs each of the 64-host pool: its coordinator 76.3 and 76.6 MiB at 128 KiB, 73.0 and 74.0 at
 * 32 KiB (members 68.1 / 68.3 against 67.6 / 67.6 mean); RPC rates within their noise.
 *
 * One arena for every thread (arena_max=1): each thread that mallocs (V8's compiler and GC
 * helpers, libuv's pool) otherwise gets an arena of its own, and what it frees stays resident
 * there, reusable by that thread only. The coordinator of 64 hosts kept 3.7 MiB so in one helper's
 * arena after the joins; with one arena the main thread reuses it: that coordinator's RSS after
 * forming was 77.1 MiB against 81.6 (members 70.4 / 71.0 mean).
 */
export const HOST_GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=32768:glibc.malloc.arena_max=1';

/**
 * V8's young generation: semi-spaces of up to 16 MiB each (V8's own ceiling for this heap, written
 * out so that it does not move with node's defaults). A reply built from thousands of fresh rows
 * keeps megabytes of text alive through its young generation: with 2 MiB semi-spaces the first
 * get_all_records of 10,000 networks took 12-13 scavenges and 15-22 ms of garbage collection,
 * with 16 MiB one scavenge and 4-8 ms. The young generation grown for a busy spell is not kept
 * once the host is idle: the idle collector's collection (src/util/idle-gc.ts) shrinks it back to
 * 1 MiB, so an idle host's RSS is the same either way (`npm run bench -- host-rss`).
 */
export const HOST_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

/** The environment of a host process: `env` with HOST_GLIBC_TUNABLES added to GLIBC_TUNABLES. */
export function hostEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const tunables = env.GLIBC_TUNABLES;
  return { ...env, GLIBC_TUNABLES: tunables ? `${tunables}:${HOST_GLIBC_TUNABLES}` : HOST_GLIBC_TUNABLES };
}
