#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.mmap_threshold=32768:glibc.malloc.arena_max=1 node --max-semi-space-size=16
// The host daemon: see src/cli/xapi.ts. Runs the compiled output (npm ci builds it).
// The first line sets how a host process runs (src/cli/host-process.ts says why).
import { main } from '../dist/src/cli/xapi.js';

await main(process.argv.slice(2));
