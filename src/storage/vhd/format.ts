// On-disk structures of the VHD format (Microsoft VHD spec v1.0, as blktap/XenServer writes it).
// Everything here is pure encode/decode on small Buffers; file I/O lives in vhd.ts.
import { randomUUID } from 'node:crypto';

export const SECTOR = 512;
export const FOOTER_SIZE = 512;
export const HEADER_SIZE = 1024;
export const HEADER_OFFSET = 512; // dynamic header follows the footer copy at 0
export const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
export const BAT_UNUSED = 0xffffffff;
export const MAX_VHD_SIZE = 2040 * 1024 * 1024 * 1024; // xapi Constants.max_vhd_size

export const DISK_FIXED = 2;
export const DISK_DYNAMIC = 3;
export const DISK_DIFFERENCING = 4;

// Parent locator platform codes
export const PLAT_NONE = 0;
export const PLAT_W2RU = 0x57327275; // relative Windows path, UTF-16LE
export const PLAT_W2KU = 0x57326b75; // absolute Windows path, UTF-16LE
export const PLAT_MACX = 0x4d616358; // file URL, UTF-8

// Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z).
const VHD_EPOCH = 946684800;

export function vhdTime(unixMs: number = Date.now()): number {
  return Math.max(0, Math.floor(unixMs / 1000) - VHD_EPOCH) >>> 0;
}

export function newUuid(): Buffer {
  return Buffer.from(randomUUID().replace(/-/g, ''), 'hex');
}

export function uuidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** One's complement of the byte sum, with the checksum field counted as zero. */
export function checksum(buf: Buffer, fieldOffset: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) {
    if (i >= fieldOffset && i < fieldOffset + 4) continue;
    sum = (sum + buf[i]!) >>> 0;
  }
  return ~sum >>> 0;
}

/** CHS geometry exactly as the VHD spec's appendix computes it. */
export function geometry(size: number): { cylinders: number; heads: number; sectors: number } {
  let total = Math.floor(size / SECTOR);
  if (total > 65535 * 16 * 255) total = 65535 * 16 * 255;
  let spt: number, heads: number, cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.floor((cth + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectors: spt };
}

export interface Footer {
  features: number;
  dataOffset: bigint; // header offset; all-ones for fixed disks
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorOs: number;
  originalSize: number;
  currentSize: number;
  diskType: number;
  uuid: Buffer;
  savedState: number;
  hidden: number; // blktap extension: byte 85
}

export function encodeFooter(f: Footer): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  b.write('conectix', 0, 'latin1');
  b.writeUInt32BE(f.features, 8);
  b.writeUInt32BE(0x00010000, 12);
  b.writeBigUInt64BE(f.dataOffset, 16);
  b.writeUInt32BE(f.timestamp >>> 0, 24);
  b.write(f.creatorApp.padEnd(4, '\0').slice(0, 4), 28, 'latin1');
  b.writeUInt32BE(f.creatorVersion >>> 0, 32);
  b.writeUInt32BE(f.creatorOs >>> 0, 36);
  b.writeBigUInt64BE(BigInt(f.originalSize), 40);
  b.writeBigUInt64BE(BigInt(f.currentSize), 48);
  const g = geometry(f.currentSize);
  b.writeUInt16BE(g.cylinders, 56);
  b.writeUInt8(g.heads, 58);
  b.writeUInt8(g.sectors, 59);
  b.writeUInt32BE(f.diskType, 60);
  f.uuid.copy(b, 68, 0, 16);
  b.writeUInt8(f.savedState, 84);
  b.writeUInt8(f.hidden, 85);
  b.writeUInt32BE(checksum(b, 64), 64);
  return b;
}

export function decodeFooter(b: Buffer): Footer {
  if (b.length < FOOTER_SIZE || b.toString('latin1', 0, 8) !== 'conectix') throw new Error('VHD: bad footer cookie');
  if (b.readUInt32BE(64) !== checksum(b.subarray(0, FOOTER_SIZE), 64)) throw new Error('VHD: bad footer checksum');
  return {
    features: b.readUInt32BE(8),
    dataOffset: b.readBigUInt64BE(16),
    timestamp: b.readUInt32BE(24),
    creatorApp: b.toString('latin1', 28, 32),
    creatorVersion: b.readUInt32BE(32),
    creatorOs: b.readUInt32BE(36),
    originalSize: Number(b.readBigUInt64BE(40)),
    currentSize: Number(b.readBigUInt64BE(48)),
    diskType: b.readUInt32BE(60),
    uuid: Buffer.from(b.subarray(68, 84)),
    savedState: b.readUInt8(84),
    hidden: b.readUInt8(85),
  };
}

export interface Locator {
  code: number;
  space: number; // bytes reserved (blktap/MSFT write bytes here, not sectors)
  length: number; // bytes used
  offset: number; // absolute file offset
}

export interface Header {
  tableOffset: number;
  maxTableEntries: number;
  blockSize: number;
  parentUuid: Buffer;
  parentTimestamp: number;
  parentName: string;
  locators: Locator[]; // always 8
}

export function emptyLocators(): Locator[] {
  return Array.from({ length: 8 }, () => ({ code: PLAT_NONE, space: 0, length: 0, offset: 0 }));
}

export function encodeHeader(h: Header): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write('cxsparse', 0, 'latin1');
  b.writeBigUInt64BE(0xffffffffffffffffn, 8);
  b.writeBigUInt64BE(BigInt(h.tableOffset), 16);
  b.writeUInt32BE(0x00010000, 24);
  b.writeUInt32BE(h.maxTableEntries, 28);
  b.writeUInt32BE(h.blockSize, 32);
  h.parentUuid.copy(b, 40, 0, 16);
  b.writeUInt32BE(h.parentTimestamp >>> 0, 56);
  // Parent unicode name: UTF-16 big-endian, at most 512 bytes
  const le = Buffer.from(h.parentName, 'utf16le').subarray(0, 512);
  for (let i = 0; i + 1 < le.length; i += 2) {
    b[64 + i] = le[i + 1]!;
    b[64 + i + 1] = le[i]!;
  }
  for (let i = 0; i < 8; i++) {
    const l = h.locators[i] ?? { code: 0, space: 0, length: 0, offset: 0 };
    const o = 576 + i * 24;
    b.writeUInt32BE(l.code >>> 0, o);
    b.writeUInt32BE(l.space, o + 4);
    b.writeUInt32BE(l.length, o + 8);
    b.writeBigUInt64BE(BigInt(l.offset), o + 16);
  }
  b.writeUInt32BE(checksum(b, 36), 36);
  return b;
}

export function decodeHeader(b: Buffer): Header {
  if (b.length < HEADER_SIZE || b.toString('latin1', 0, 8) !== 'cxsparse') throw new Error('VHD: bad dynamic header cookie');
  if (b.readUInt32BE(36) !== checksum(b.subarray(0, HEADER_SIZE), 36)) throw new Error('VHD: bad dynamic header checksum');
  const nameBe = b.subarray(64, 576);
  const swapped = Buffer.alloc(512);
  for (let i = 0; i < 512; i += 2) {
    swapped[i] = nameBe[i + 1]!;
    swapped[i + 1] = nameBe[i]!;
  }
  const parentName = swapped.toString('utf16le').replace(/\0+$/, '').split('\0')[0] ?? '';
  const locators: Locator[] = [];
  for (let i = 0; i < 8; i++) {
    const o = 576 + i * 24;
    locators.push({
      code: b.readUInt32BE(o),
      space: b.readUInt32BE(o + 4),
      length: b.readUInt32BE(o + 8),
      offset: Number(b.readBigUInt64BE(o + 16)),
    });
  }
  return {
    tableOffset: Number(b.readBigUInt64BE(16)),
    maxTableEntries: b.readUInt32BE(28),
    blockSize: b.readUInt32BE(32),
    parentUuid: Buffer.from(b.subarray(40, 56)),
    parentTimestamp: b.readUInt32BE(56),
    parentName,
    locators,
  };
}

/** Bytes of the per-block sector bitmap, padded to whole sectors. */
export function bitmapSize(blockSize: number): number {
  const bytes = Math.ceil(blockSize / SECTOR / 8);
  return Math.ceil(bytes / SECTOR) * SECTOR;
}

export const roundUp = (n: number, m: number): number => Math.ceil(n / m) * m;

// Bitmap bit order is MSB first: sector s -> byte s>>3, bit 7-(s&7).
export const testBit = (bm: Buffer, s: number): boolean => (bm[s >> 3]! & (0x80 >> (s & 7))) !== 0;
export const setBit = (bm: Buffer, s: number): void => {
  bm[s >> 3] = bm[s >> 3]! | (0x80 >> (s & 7));
};
