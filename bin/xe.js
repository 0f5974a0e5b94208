#!/usr/bin/env node
// The xe command line: see src/xe/main.ts. Runs the compiled output (npm ci builds it).
import { run } from '../dist/src/xe/main.js';

run();
