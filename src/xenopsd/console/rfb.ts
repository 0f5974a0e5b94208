// The consoles of a simulated guest, served on a byte stream (the CONNECT'ed socket, or a
// WebSocket's stream): an RFB 3.8 server (RFC 6143) drawing the guest's text screen, as qemu's
// VNC server does for a real guest, and the vt100 text console (xenconsoled's).
//
// RFB: versions 3.3, 3.7 and 3.8; one security type, None (the CONNECT in front of it is what
// is authenticated, as with xapi's consoles); FramebufferUpdate in Raw encoding, whatever
// true-colour pixel format the client sets (8, 16 or 32 bits per pixel, either byte order);
// incremental updates send the rows that changed since the client last saw them, held until
// something changes; KeyEvent types on the screen; PointerEvent and ClientCutText are read and
// ignored. A message the server does not know ends the connection (its length is unknown).
import type { Duplex } from 'node:stream';
import { CELL_HEIGHT, CELL_WIDTH, CURSOR_HEIGHT, GLYPH_HEIGHT, GLYPH_WIDTH, GLYPH_X, GLYPH_Y, SCALE, glyph } from './font.js';
import { COLS, type GuestScreen, ROWS } from './screen.js';

export const WIDTH = COLS * CELL_WIDTH;
export const HEIGHT = ROWS * CELL_HEIGHT;
const FOREGROUND: Rgb = [0xd0, 0xd0, 0xd0];
const BACKGROUND: Rgb = [0x10, 0x18, 0x20];

type Rgb = [number, number, number];

export interface PixelFormat {
  bitsPerPixel: number;
  depth: number;
  bigEndian: boolean;
  trueColour: boolean;
  redMax: number;
  greenMax: number;
  blueMax: number;
  redShift: number;
  greenShift: number;
  blueShift: number;
}

/** The server's own format (ServerInit): 32 bits, 0x00RRGGBB little-endian. */
export const SERVER_FORMAT: PixelFormat = {
  bitsPerPixel: 32,
  depth: 24,
  bigEndian: false,
  trueColour: true,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
};

export function encodePixelFormat(f: PixelFormat): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(f.bitsPerPixel, 0);
  b.writeUInt8(f.depth, 1);
  b.writeUInt8(f.bigEndian ? 1 : 0, 2);
  b.writeUInt8(f.trueColour ? 1 : 0, 3);
  b.writeUInt16BE(f.redMax, 4);
  b.writeUInt16BE(f.greenMax, 6);
  b.writeUInt16BE(f.blueMax, 8);
  b.writeUInt8(f.redShift, 10);
  b.writeUInt8(f.greenShift, 11);
  b.writeUInt8(f.blueShift, 12);
  return b;
}

export function decodePixelFormat(b: Buffer): PixelFormat {
  return {
    bitsPerPixel: b.readUInt8(0),
    depth: b.readUInt8(1),
    bigEndian: b.readUInt8(2) !== 0,
    trueColour: b.readUInt8(3) !== 0,
    redMax: b.readUInt16BE(4),
    greenMax: b.readUInt16BE(6),
    blueMax: b.readUInt16BE(8),
    redShift: b.readUInt8(10),
    greenShift: b.readUInt8(11),
    blueShift: b.readUInt8(12),
  };
}

/** One colour as the client's pixel format writes it. */
export function pixel(f: PixelFormat, [r, g, b]: Rgb): Buffer {
  const scale = (v: number, max: number) => Math.round((v * max) / 255);
  const value = ((scale(r, f.redMax) << f.redShift) | (scale(g, f.greenMax) << f.greenShift) | (scale(b, f.blueMax) << f.blueShift)) >>> 0;
  const bytes = f.bitsPerPixel / 8;
  const out = Buffer.alloc(bytes);
  if (bytes === 1) out.writeUInt8(value & 0xff, 0);
  else if (bytes === 2) f.bigEndian ? out.writeUInt16BE(value & 0xffff, 0) : out.writeUInt16LE(value & 0xffff, 0);
  else f.bigEndian ? out.writeUInt32BE(value, 0) : out.writeUInt32LE(value, 0);
  return out;
}

/** Rows `from`..`to` of the screen, drawn in the client's pixel format (full width). */
export function renderRows(screen: GuestScreen, from: number, to: number, f: PixelFormat): Buffer {
  const bpp = f.bitsPerPixel / 8;
  const height = (to - from + 1) * CELL_HEIGHT;
  const out = Buffer.alloc(WIDTH * height * bpp);
  out.fill(pixel(f, BACKGROUND));
  const fg = pixel(f, FOREGROUND);
  const dot = (x: number, y: number) => {
    for (let dy = 0; dy < SCALE; dy++) for (let dx = 0; dx < SCALE; dx++) fg.copy(out, ((y + dy) * WIDTH + x + dx) * bpp);
  };
  for (let r = from; r <= to; r++) {
    const top = (r - from) * CELL_HEIGHT;
    const text = screen.text(r);
    for (let c = 0; c < text.length && c < COLS; c++) {
      if (text[c] === ' ') continue;
      const rows = glyph(text[c]);
      for (let gy = 0; gy < GLYPH_HEIGHT; gy++)
        for (let gx = 0; gx < GLYPH_WIDTH; gx++)
          if (rows[gy] & (0x10 >> gx)) dot(c * CELL_WIDTH + GLYPH_X + gx * SCALE, top + GLYPH_Y + gy * SCALE);
    }
    if (r === screen.row && screen.col < COLS)
      for (let y = CELL_HEIGHT - CURSOR_HEIGHT; y < CELL_HEIGHT; y++)
        for (let x = 0; x < CELL_WIDTH; x++) fg.copy(out, ((top + y) * WIDTH + screen.col * CELL_WIDTH + x) * bpp);
  }
  return out;
}

/** X keysyms of the keys the guest understands beyond printable ASCII (which is its own keysym). */
const KEYS: Record<number, string> = { 65293: '\r', 65421: '\r', 65288: '\b', 65535: '\x7f', 65289: ' ' };

/** Serves RFB on `stream` for `screen`, until either side ends. */
export function serveRfb(stream: Duplex, screen: GuestScreen, name: string): void {
  let buf: Buffer = Buffer.alloc(0);
  let phase: 'version' | 'security' | 'init' | 'normal' = 'version';
  let minor = 8;
  let format = SERVER_FORMAT;
  /** The row versions this client has been sent. */
  const sent = Array.from({ length: ROWS }, () => -1);
  /** An incremental request waiting for a change: the rows it covers. */
  let waiting: { from: number; to: number } | undefined;

  const sendRows = (rows: number[]) => {
    // consecutive rows go as one rectangle
    const bands: [number, number][] = [];
    for (const r of rows) {
      const last = bands.at(-1);
      if (last && last[1] === r - 1) last[1] = r;
      else bands.push([r, r]);
    }
    const parts: Buffer[] = [];
    const head = Buffer.alloc(4);
    head.writeUInt8(0, 0); // FramebufferUpdate
    head.writeUInt16BE(bands.length, 2);
    parts.push(head);
    for (const [from, to] of bands) {
      for (let r = from; r <= to; r++) sent[r] = screen.versions[r];
      const rect = Buffer.alloc(12);
      rect.writeUInt16BE(0, 0);
      rect.writeUInt16BE(from * CELL_HEIGHT, 2);
      rect.writeUInt16BE(WIDTH, 4);
      rect.writeUInt16BE((to - from + 1) * CELL_HEIGHT, 6);
      rect.writeInt32BE(0, 8); // Raw
      parts.push(rect, renderRows(screen, from, to, format));
    }
    stream.write(Buffer.concat(parts));
  };
  const changedRows = (from: number, to: number) => {
    const rows: number[] = [];
    for (let r = from; r <= to; r++) if (sent[r] !== screen.versions[r]) rows.push(r);
    return rows;
  };
  const onChange = () => {
    if (!waiting) return;
    const rows = changedRows(waiting.from, waiting.to);
    if (rows.length === 0) return;
    waiting = undefined;
    sendRows(rows);
  };
  const onOff = () => stream.end();
  screen.on('change', onChange);
  screen.on('off', onOff);
  const stop = () => {
    screen.off('change', onChange);
    screen.off('off', onOff);
  };
  stream.on('close', stop);
  stream.on('error', stop);

  const fail = (reason: string) => {
    stop();
    stream.destroy(new Error(`RFB: ${reason}`));
  };

  /** Handles the message at the start of `buf`; returns its length, or 0 until it has all arrived. */
  const message = (): number => {
    switch (phase) {
      case 'version': {
        if (buf.length < 12) return 0;
        const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(buf.subarray(0, 12).toString('latin1'));
        if (!m || Number(m[1]) !== 3) {
          fail('not an RFB 3.x client');
          return 0;
        }
        minor = Number(m[2]) >= 8 ? 8 : Number(m[2]) === 7 ? 7 : 3;
        if (minor === 3) {
          const t = Buffer.alloc(4);
          t.writeUInt32BE(1, 0); // None, chosen by the server
          stream.write(t);
          phase = 'init';
        } else {
          stream.write(Buffer.from([1, 1])); // one type: None
          phase = 'security';
        }
        return 12;
      }
      case 'security': {
        const chosen = buf[0];
        if (chosen !== 1) {
          if (minor === 8) {
            const reason = Buffer.from('security type not offered');
            const r = Buffer.alloc(8);
            r.writeUInt32BE(1, 0);
            r.writeUInt32BE(reason.length, 4);
            stream.end(Buffer.concat([r, reason]));
          } else stream.end();
          stop();
          return 0;
        }
        if (minor === 8) stream.write(Buffer.alloc(4)); // SecurityResult: OK
        phase = 'init';
        return 1;
      }
      case 'init': {
        // ClientInit's shared flag: every client shares the one screen anyway
        const nameBytes = Buffer.from(name, 'utf8');
        const init = Buffer.alloc(24);
        init.writeUInt16BE(WIDTH, 0);
        init.writeUInt16BE(HEIGHT, 2);
        encodePixelFormat(SERVER_FORMAT).copy(init, 4);
        init.writeUInt32BE(nameBytes.length, 20);
        stream.write(Buffer.concat([init, nameBytes]));
        phase = 'normal';
        return 1;
      }
      case 'normal':
        return clientMessage();
    }
  };

  const clientMessage = (): number => {
    switch (buf[0]) {
      case 0: {
        // SetPixelFormat
        if (buf.length < 20) return 0;
        const f = decodePixelFormat(buf.subarray(4, 20));
        if (!f.trueColour || ![8, 16, 32].includes(f.bitsPerPixel)) {
          fail(`pixel format not served (${f.bitsPerPixel} bits, true colour ${f.trueColour})`);
          return 0;
        }
        format = f;
        sent.fill(-1); // what the client has is in the old format
        return 20;
      }
      case 2: {
        // SetEncodings: Raw is always understood, and it is all this server sends
        if (buf.length < 4) return 0;
        const n = buf.readUInt16BE(2);
        return buf.length < 4 + 4 * n ? 0 : 4 + 4 * n;
      }
      case 3: {
        // FramebufferUpdateRequest
        if (buf.length < 10) return 0;
        const incremental = buf[1] !== 0;
        const y = buf.readUInt16BE(4);
        const h = buf.readUInt16BE(8);
        const from = Math.min(ROWS - 1, Math.floor(y / CELL_HEIGHT));
        const to = Math.min(ROWS - 1, Math.max(from, Math.floor((y + Math.max(h, 1) - 1) / CELL_HEIGHT)));
        const rows = incremental ? changedRows(from, to) : Array.from({ length: to - from + 1 }, (_, i) => from + i);
        if (rows.length > 0) {
          waiting = undefined;
          sendRows(rows);
        } else waiting = { from, to };
        return 10;
      }
      case 4: {
        // KeyEvent
        if (buf.length < 8) return 0;
        const down = buf[1] !== 0;
        const key = buf.readUInt32BE(4);
        if (down) {
          const text = key >= 0x20 && key <= 0x7e ? String.fromCharCode(key) : KEYS[key];
          if (text) screen.type(text);
        }
        return 8;
      }
      case 5:
        // PointerEvent: the text screen has no pointer
        return buf.length < 6 ? 0 : 6;
      case 6: {
        // ClientCutText
        if (buf.length < 8) return 0;
        const n = buf.readUInt32BE(4);
        return buf.length < 8 + n ? 0 : 8 + n;
      }
      default:
        fail(`unknown client message type ${buf[0]}`);
        return 0;
    }
  };

  stream.on('data', (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    while (buf.length > 0 && !stream.destroyed) {
      const used = message();
      if (used === 0) break;
      buf = buf.subarray(used);
    }
  });
  stream.write(Buffer.from('RFB 003.008\n', 'latin1'));
}

/**
 * The vt100 console: the screen's rows as text, then whatever the guest writes; bytes typed
 * are keyboard input (\r is Enter).
 */
export function serveText(stream: Duplex, screen: GuestScreen): void {
  const rows = screen.snapshot().slice(0, screen.row + 1);
  stream.write(rows.join('\r\n'));
  const onOutput = (text: string) => stream.write(text);
  const onOff = () => stream.end();
  screen.on('output', onOutput);
  screen.on('off', onOff);
  const stop = () => {
    screen.off('output', onOutput);
    screen.off('off', onOff);
  };
  stream.on('close', stop);
  stream.on('error', stop);
  stream.on('data', (chunk: Buffer) => screen.type(chunk.toString('latin1')));
}
