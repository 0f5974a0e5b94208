// Who survives a fault (xha daemon/sm.c test_Survival_Rule; ha.md §4.4). Pure: a host's own
// views (the hosts it hears on the network, the hosts whose statefile slots move) and what the
// others published, in, a verdict out. Hosts are their indices in the configuration.

export interface Published {
  hbdomain: number[];
  sfdomain: number[];
  weight: number;
}

export interface SurvivalInput {
  me: number;
  liveset: number[];
  /** Hosts I hear heartbeats from (me included). */
  hbdomain: number[];
  /** Hosts whose slots move (me included while I can read and write the statefile). */
  sfdomain: number[];
  /** My weight (1 + class weights; xapi sets none, so 1). */
  weight: number;
  /** Each host's domains as its statefile slot last showed them. */
  published: Map<number, Published>;
  /** Whether each host I hear has statefile access, as its heartbeats say (me: mine). */
  statefileAccess: Map<number, boolean>;
  excluded: Set<number>;
}

export type Verdict = { survive: true; rule: '1a' | '1b' | '2' } | { survive: false };

const intersect = (a: number[], b: number[]) => a.filter((x) => b.includes(x));

/** 1 + 256·weight per host in the partition a host sees on both channels. */
function partitionSize(hb: number[], sf: number[], weight: number): number {
  return intersect(sf, hb).length * (1 + 256 * weight);
}

export function survives(x: SurvivalInput): Verdict {
  const hbd = intersect(x.hbdomain, x.liveset);
  const sfd = intersect(x.sfdomain, x.liveset);
  // 1a: some host on the statefile, and every one of them heard on the network.
  if (sfd.length > 0 && sfd.every((h) => hbd.includes(h))) return { survive: true, rule: '1a' };
  // 1b: the largest partition as published, ties to the lowest index.
  let winner: number | undefined;
  let best = -1;
  for (const i of [...x.sfdomain].sort((a, b) => a - b)) {
    const size =
      i === x.me
        ? partitionSize(x.hbdomain, x.sfdomain, x.weight)
        : partitionSize(x.published.get(i)?.hbdomain ?? [], x.published.get(i)?.sfdomain ?? [], x.published.get(i)?.weight ?? 1);
    if (size > best) {
      best = size;
      winner = i;
    }
  }
  if (winner !== undefined) {
    if (winner === x.me) return { survive: true, rule: '1b' };
    const theirs = x.published.get(winner);
    if (theirs?.hbdomain.includes(x.me) && theirs.sfdomain.includes(x.me) && x.hbdomain.includes(winner) && x.sfdomain.includes(winner)) {
      return { survive: true, rule: '1b' };
    }
  }
  // 2: the statefile is lost for everyone I hear, and everyone I do not hear left cleanly.
  const heard = x.hbdomain.includes(x.me) ? x.hbdomain : [...x.hbdomain, x.me];
  const allLost = heard.every((h) => x.statefileAccess.get(h) === false);
  const unheardExcluded = x.liveset.filter((h) => !heard.includes(h)).every((h) => x.excluded.has(h));
  if (allLost && unheardExcluded) return { survive: true, rule: '2' };
  return { survive: false };
}
