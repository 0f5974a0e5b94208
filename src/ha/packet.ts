// A network heartbeat (xhad's HB_PACKET, in JSON: only hosts of this project read it). Besides
// "I am alive" it carries what its sender sees, so a peer can judge partitions: its liveset, the
// one it proposes during a fault, the hosts on each of its channels, whether it reaches the
// statefile, and whether it asks the hosts left out of its proposal to fence themselves.
export interface Packet {
  generation: string;
  uuid: string;
  index: number;
  sequence: number;
  phase: 'starting' | 'online';
  liveset: number[];
  proposed: number[];
  hbdomain: number[];
  sfdomain: number[];
  sfAccess: boolean;
  fenceRequest: boolean;
}

const SIGNATURE = 'hahx';

export function encodePacket(p: Packet): Buffer {
  return Buffer.from(JSON.stringify({ sig: SIGNATURE, ...p }));
}

const isIndexList = (x: unknown): x is number[] => Array.isArray(x) && x.every((i) => Number.isInteger(i));

/** The packet, or undefined for anything that is not one (dropped, as xhad drops bad packets). */
export function decodePacket(data: Buffer): Packet | undefined {
  let p: Record<string, unknown>;
  try {
    p = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (p === null || typeof p !== 'object' || p.sig !== SIGNATURE) return undefined;
  if (typeof p.generation !== 'string' || typeof p.uuid !== 'string' || !Number.isInteger(p.index) || !Number.isInteger(p.sequence))
    return undefined;
  if (p.phase !== 'starting' && p.phase !== 'online') return undefined;
  if (![p.liveset, p.proposed, p.hbdomain, p.sfdomain].every(isIndexList)) return undefined;
  return {
    generation: p.generation,
    uuid: p.uuid,
    index: p.index as number,
    sequence: p.sequence as number,
    phase: p.phase,
    liveset: p.liveset as number[],
    proposed: p.proposed as number[],
    hbdomain: p.hbdomain as number[],
    sfdomain: p.sfdomain as number[],
    sfAccess: p.sfAccess === true,
    fenceRequest: p.fenceRequest === true,
  };
}
