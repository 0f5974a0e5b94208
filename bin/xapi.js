#!/usr/bin/env node
// The host daemon: see src/cli/xapi.ts. Runs the compiled output (npm ci builds it).
import { main } from '../dist/src/cli/xapi.js';

await main(process.argv.slice(2));
