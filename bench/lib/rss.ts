// A process's resident memory as the memory benchmarks read it, and issue 10's aim for an idle
// host: under 80 MB (decimal megabytes, as the issue writes it: 76.3 MiB).
import { readFile } from 'node:fs/promises';

/** The aim, in MiB: 80 MB. */
export const AIM_MIB = 80e6 / 2 ** 20;

/**
 * A process's resident memory (MiB): all of it, its anonymous (V8's heap, malloc, stacks) and
 * file-backed (node's binary, shared libraries) parts, and its PSS: the file-backed pages shared
 * by N processes counted 1/N in each, so what the process adds to the machine's memory.
 */
export interface RssParts {
  rss: number;
  anon: number;
  file: number;
  pss: number;
}

export async function rssParts(pid: number): Promise<RssParts> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kib = (text: string, field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)![1]) / 1024;
  return {
    rss: kib(status, 'VmRSS'),
    anon: kib(status, 'RssAnon'),
    file: kib(status, 'RssFile') + kib(status, 'RssShmem'),
    pss: kib(rollup, 'Pss'),
  };
}

/** Resident set size of a process, in MiB. */
export async function rssMiB(pid: number): Promise<number> {
  return (await rssParts(pid)).rss;
}
