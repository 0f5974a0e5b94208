// The statefile (xha include/statefile.h; ha.md §3.1): 4096 bytes of global state, then one
// 4096-byte slot per possible host (64), 266,240 bytes in all. Each host writes only its own
// slot; the global part changes only for the pool state (and, later, the master lock). Words
// are little-endian; a block starts with a signature, its complement shifted, and a checksum
// (the wrapping sum of the words after it up to the end marker), and ends with an end marker,
// so a torn or foreign block is recognised and not believed.
import { open, type FileHandle } from 'node:fs/promises';

export const GLOBAL_SIZE = 4096;
export const SLOT_SIZE = 4096;
export const MAX_HOSTS = 64;
export const STATEFILE_SIZE = GLOBAL_SIZE + MAX_HOSTS * SLOT_SIZE;
const GLOBAL_LENGTH = 104;
const SLOT_LENGTH = 632;
const VERSION = 2;

export enum PoolState {
  None = 0,
  Init = 1,
  Active = 2,
  Invalid = 3,
}

export interface GlobalBlock {
  generation: string;
  poolState: PoolState;
  /** The master lock holder's uuid ('' none). */
  master: string;
  configHosts: number;
}

export interface Slot {
  sequence: number;
  index: number;
  uuid: string;
  excluded: boolean;
  starting: boolean;
  /** Host indices: the liveset, the proposed one, the hosts seen on each channel. */
  current: number[];
  proposed: number[];
  hbdomain: number[];
  sfdomain: number[];
  smPhase: number;
  weight: number;
}

/** A block whose signature, end marker or checksum is wrong. */
export class CorruptBlock extends Error {}

const SIG_GLOBAL = 'pool';
const END_GLOBAL = 'endp';
const SIG_HOST = 'host';
const END_HOST = 'endh';

function signature(buf: Buffer, at: number, text: string): void {
  buf.write(text, at, 'latin1');
  const word = buf.readUInt32LE(at);
  buf.writeUInt32LE((~word >>> 3) >>> 0, at + 4);
}

/** The wrapping sum of the words from `from` up to (not including) `to`. */
function checksum(buf: Buffer, from: number, to: number): number {
  let sum = 0;
  for (let at = from; at < to; at += 4) sum = (sum + buf.readUInt32LE(at)) >>> 0;
  return sum;
}

function seal(buf: Buffer, length: number, end: string): void {
  buf.write(end, length - 4, 'latin1');
  buf.writeUInt32LE(checksum(buf, 12, length - 4), 8);
}

function check(buf: Buffer, length: number, sig: string, end: string): void {
  if (buf.toString('latin1', 0, 4) !== sig || buf.toString('latin1', length - 4, length) !== end) throw new CorruptBlock('bad signature');
  if (buf.readUInt32LE(4) !== (~buf.readUInt32LE(0) >>> 3) >>> 0) throw new CorruptBlock('bad inverted signature');
  if (buf.readUInt32LE(8) !== checksum(buf, 12, length - 4)) throw new CorruptBlock('bad checksum');
}

function writeUuid(buf: Buffer, at: number, uuid: string): void {
  buf.fill(0, at, at + 32);
  buf.write(uuid.replaceAll('-', '').slice(0, 32), at, 'latin1');
}

function readUuid(buf: Buffer, at: number): string {
  const hex = buf.toString('latin1', at, at + 32).replace(/\0+$/, '');
  return hex.length === 32 ? `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}` : hex;
}

function writeMap(buf: Buffer, at: number, hosts: number[]): void {
  let map = 0n;
  for (const i of hosts) map |= 1n << BigInt(i);
  buf.writeBigUInt64LE(map, at);
}

function readMap(buf: Buffer, at: number): number[] {
  const map = buf.readBigUInt64LE(at);
  const hosts: number[] = [];
  for (let i = 0; i < MAX_HOSTS; i++) if ((map >> BigInt(i)) & 1n) hosts.push(i);
  return hosts;
}

export function encodeGlobal(g: GlobalBlock): Buffer {
  const buf = Buffer.alloc(GLOBAL_SIZE);
  signature(buf, 0, SIG_GLOBAL);
  buf.writeUInt32LE(VERSION, 12);
  buf.writeUInt32LE(GLOBAL_LENGTH, 16);
  buf.writeUInt32LE(SLOT_LENGTH, 20);
  buf.writeUInt32LE(MAX_HOSTS, 24);
  writeUuid(buf, 28, g.generation);
  buf.writeUInt32LE(g.poolState, 60);
  writeUuid(buf, 64, g.master);
  buf.writeUInt32LE(g.configHosts, 96);
  seal(buf, GLOBAL_LENGTH, END_GLOBAL);
  return buf;
}

export function decodeGlobal(buf: Buffer): GlobalBlock {
  check(buf, GLOBAL_LENGTH, SIG_GLOBAL, END_GLOBAL);
  if (buf.readUInt32LE(12) !== VERSION) throw new CorruptBlock('unknown statefile version');
  return {
    generation: readUuid(buf, 28),
    poolState: buf.readUInt32LE(60) as PoolState,
    master: readUuid(buf, 64),
    configHosts: buf.readUInt32LE(96),
  };
}

export function encodeSlot(s: Slot): Buffer {
  const buf = Buffer.alloc(SLOT_SIZE);
  signature(buf, 0, SIG_HOST);
  buf.writeUInt32LE(s.sequence >>> 0, 12);
  buf.writeUInt32LE(s.index, 16);
  writeUuid(buf, 20, s.uuid);
  buf.writeUInt32LE(s.excluded ? 1 : 0, 52);
  buf.writeUInt32LE(s.starting ? 1 : 0, 56);
  // Per-host ages are not kept: "none" everywhere.
  buf.fill(0xff, 60, 572);
  buf.writeUInt32LE(0xffffffff, 572);
  writeMap(buf, 576, s.current);
  writeMap(buf, 584, s.proposed);
  writeMap(buf, 592, s.hbdomain);
  writeMap(buf, 600, s.sfdomain);
  buf.writeUInt32LE(s.smPhase, 620);
  buf.writeUInt32LE(s.weight, 624);
  seal(buf, SLOT_LENGTH, END_HOST);
  return buf;
}

export function decodeSlot(buf: Buffer): Slot {
  check(buf, SLOT_LENGTH, SIG_HOST, END_HOST);
  return {
    sequence: buf.readUInt32LE(12),
    index: buf.readUInt32LE(16),
    uuid: readUuid(buf, 20),
    excluded: buf.readUInt32LE(52) !== 0,
    starting: buf.readUInt32LE(56) !== 0,
    current: readMap(buf, 576),
    proposed: readMap(buf, 584),
    hbdomain: readMap(buf, 592),
    sfdomain: readMap(buf, 600),
    smPhase: buf.readUInt32LE(620),
    weight: buf.readUInt32LE(624),
  };
}

/** writestatefile setinit: the whole file zeroed, the pool state INIT, every slot blank. */
export async function initStatefile(path: string, generation: string, configHosts: number): Promise<void> {
  const f = await open(path, 'w');
  try {
    await f.write(Buffer.alloc(STATEFILE_SIZE), 0, STATEFILE_SIZE, 0);
    await f.write(encodeGlobal({ generation, poolState: PoolState.Init, master: '', configHosts }), 0, GLOBAL_SIZE, 0);
    await f.sync();
  } finally {
    await f.close();
  }
}

/** The statefile opened for a daemon's reads and writes. */
export class StatefileIo {
  private constructor(private readonly f: FileHandle) {}

  static async open(path: string): Promise<StatefileIo> {
    return new StatefileIo(await open(path, 'r+'));
  }

  async readGlobal(): Promise<GlobalBlock> {
    const buf = Buffer.alloc(GLOBAL_SIZE);
    const { bytesRead } = await this.f.read(buf, 0, GLOBAL_SIZE, 0);
    if (bytesRead < GLOBAL_SIZE) throw new CorruptBlock('statefile too short');
    return decodeGlobal(buf);
  }

  async writeGlobal(g: GlobalBlock): Promise<void> {
    await this.f.write(encodeGlobal(g), 0, GLOBAL_SIZE, 0);
  }

  /** The slot of host `index`, undefined while blank (never written). */
  async readSlot(index: number): Promise<Slot | undefined> {
    const buf = Buffer.alloc(SLOT_SIZE);
    const at = GLOBAL_SIZE + index * SLOT_SIZE;
    const { bytesRead } = await this.f.read(buf, 0, SLOT_SIZE, at);
    if (bytesRead < SLOT_SIZE) throw new CorruptBlock('statefile too short');
    if (buf.readUInt32LE(0) === 0) return undefined;
    return decodeSlot(buf);
  }

  async writeSlot(slot: Slot): Promise<void> {
    await this.f.write(encodeSlot(slot), 0, SLOT_SIZE, GLOBAL_SIZE + slot.index * SLOT_SIZE);
  }

  async close(): Promise<void> {
    await this.f.close();
  }
}
