// A small RFB 3.8 client for the tests (RFC 6143), written from the RFC and independent of the
// server's code but for the font, which it uses to read the screen back: it shakes hands with
// security type None, asks for a pixel format of its own (noVNC's: 32 bits, red in the low
// byte), keeps a framebuffer of the Raw rectangles it is sent, reads the text off it cell by
// cell, and types with KeyEvents.
import type { Duplex } from 'node:stream';
import {
  CELL_HEIGHT,
  CELL_WIDTH,
  GLYPH_HEIGHT,
  GLYPH_WIDTH,
  GLYPH_X,
  GLYPH_Y,
  PRINTABLE,
  SCALE,
  glyph,
} from '../src/xenopsd/console/font.js';

/** Buffered exact reads off a stream. */
export class Reader {
  private buf = Buffer.alloc(0);
  private want?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private ended?: Error;

  constructor(stream: Duplex) {
    stream.on('data', (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b]);
      this.serve();
    });
    const end = () => {
      this.ended = new Error('the stream ended');
      this.serve();
    };
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', (e) => {
      this.ended = e;
      this.serve();
    });
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.serve();
    });
  }

  /** Everything up to and including `marker`. */
  async until(marker: string): Promise<string> {
    let text = '';
    while (!text.endsWith(marker)) text += (await this.read(1)).toString('latin1');
    return text;
  }

  private serve(): void {
    const w = this.want;
    if (!w) return;
    if (this.buf.length >= w.n) {
      this.want = undefined;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(out);
    } else if (this.ended) {
      this.want = undefined;
      w.reject(this.ended);
    }
  }
}

export class RfbClient {
  width = 0;
  height = 0;
  name = '';
  /** The rectangles of the last update: [x, y, w, h]. */
  lastRects: [number, number, number, number][] = [];
  /** 0xRRGGBB per pixel. */
  private fb = new Uint32Array(0);
  private readonly reader: Reader;

  /** `reader`: one already reading the stream (that read a CONNECT's response head off it). */
  constructor(
    private readonly stream: Duplex,
    reader?: Reader,
  ) {
    this.reader = reader ?? new Reader(stream);
  }

  async handshake(): Promise<void> {
    const version = (await this.reader.read(12)).toString('latin1');
    if (version !== 'RFB 003.008\n') throw new Error(`server version ${JSON.stringify(version)}`);
    this.stream.write('RFB 003.008\n');
    const n = (await this.reader.read(1))[0]!;
    const types = [...(await this.reader.read(n))];
    if (!types.includes(1)) throw new Error(`no None security type in ${types}`);
    this.stream.write(Buffer.from([1]));
    const result = (await this.reader.read(4)).readUInt32BE(0);
    if (result !== 0) throw new Error(`security result ${result}`);
    this.stream.write(Buffer.from([1])); // shared
    const init = await this.reader.read(24);
    this.width = init.readUInt16BE(0);
    this.height = init.readUInt16BE(2);
    this.name = (await this.reader.read(init.readUInt32BE(20))).toString('utf8');
    this.fb = new Uint32Array(this.width * this.height);
    // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, red at bit 0 (as noVNC asks)
    const pf = Buffer.alloc(20);
    pf.writeUInt8(0, 0);
    pf.writeUInt8(32, 4);
    pf.writeUInt8(24, 5);
    pf.writeUInt8(0, 6);
    pf.writeUInt8(1, 7);
    pf.writeUInt16BE(255, 8);
    pf.writeUInt16BE(255, 10);
    pf.writeUInt16BE(255, 12);
    pf.writeUInt8(0, 14);
    pf.writeUInt8(8, 15);
    pf.writeUInt8(16, 16);
    // SetEncodings: Raw, and a pseudo-encoding (DesktopSize) the server may ignore
    const enc = Buffer.alloc(12);
    enc.writeUInt8(2, 0);
    enc.writeUInt16BE(2, 2);
    enc.writeInt32BE(0, 4);
    enc.writeInt32BE(-223, 8);
    this.stream.write(Buffer.concat([pf, enc]));
  }

  /** Asks for an update and applies it; an incremental one waits until something changed. */
  async update(incremental: boolean): Promise<number> {
    const req = Buffer.alloc(10);
    req.writeUInt8(3, 0);
    req.writeUInt8(incremental ? 1 : 0, 1);
    req.writeUInt16BE(this.width, 6);
    req.writeUInt16BE(this.height, 8);
    this.stream.write(req);
    const head = await this.reader.read(4);
    if (head[0] !== 0) throw new Error(`server message type ${head[0]}`);
    const rects = head.readUInt16BE(2);
    this.lastRects = [];
    for (let i = 0; i < rects; i++) {
      const r = await this.reader.read(12);
      const [x, y, w, h] = [r.readUInt16BE(0), r.readUInt16BE(2), r.readUInt16BE(4), r.readUInt16BE(6)];
      this.lastRects.push([x, y, w, h]);
      const encoding = r.readInt32BE(8);
      if (encoding !== 0) throw new Error(`encoding ${encoding}`);
      const pixels = await this.reader.read(w * h * 4);
      for (let row = 0; row < h; row++)
        for (let col = 0; col < w; col++) {
          const v = pixels.readUInt32LE((row * w + col) * 4);
          const [red, green, blue] = [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff];
          this.fb[(y + row) * this.width + x + col] = (red << 16) | (green << 8) | blue;
        }
    }
    return rects;
  }

  key(text: string): void {
    const out: Buffer[] = [];
    for (const ch of text) {
      const sym = ch === '\r' ? 0xff0d : ch.charCodeAt(0);
      for (const down of [1, 0]) {
        const k = Buffer.alloc(8);
        k.writeUInt8(4, 0);
        k.writeUInt8(down, 1);
        k.writeUInt32BE(sym, 4);
        out.push(k);
      }
    }
    this.stream.write(Buffer.concat(out));
  }

  /** The screen's text, read back glyph by glyph (a cell no glyph matches reads '\0'). */
  text(): string[] {
    const cols = Math.floor(this.width / CELL_WIDTH);
    const rows = Math.floor(this.height / CELL_HEIGHT);
    const lines: string[] = [];
    for (let r = 0; r < rows; r++) {
      let line = '';
      for (let c = 0; c < cols; c++) {
        const dots: number[] = [];
        for (let gy = 0; gy < GLYPH_HEIGHT; gy++) {
          let bits = 0;
          for (let gx = 0; gx < GLYPH_WIDTH; gx++) {
            const px = this.fb[(r * CELL_HEIGHT + GLYPH_Y + gy * SCALE) * this.width + c * CELL_WIDTH + GLYPH_X + gx * SCALE]!;
            if ((px & 0xff) > 0x80) bits |= 0x10 >> gx;
          }
          dots.push(bits);
        }
        line += [...PRINTABLE].find((ch) => glyph(ch).every((v, i) => v === dots[i])) ?? '\0';
      }
      lines.push(line.trimEnd());
    }
    return lines;
  }

  /** Applies updates until the screen's text satisfies `test`; returns the text. */
  async waitForText(test: (screen: string) => boolean, what: string, limit = 200): Promise<string> {
    let screen = this.text().join('\n');
    for (let i = 0; !test(screen); i++) {
      if (i >= limit) throw new Error(`the screen never showed ${what}; it shows:\n${screen}`);
      await this.update(true);
      screen = this.text().join('\n');
    }
    return screen;
  }
}
