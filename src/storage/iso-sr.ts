// The ISO library SR (the sm repo's ISOSR): a directory of .iso files, one read-only VDI per
// file, the file name being the VDI's location. device_config `location` is the directory (a
// mount of server:/path or //server/share is the operator's business here). Nothing is written
// by attach or scan; a VDI can be created (an empty file to upload an image into) and deleted.
import { open as fsOpen, readdir, rm, stat, statfs, truncate } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { SmError, type OpenDisk, type SmDriver, type SrContext, type SrStat, type VdiInfo } from './driver.js';

const FEATURES: Readonly<Record<string, number>> = {
  VDI_CREATE: 1,
  VDI_DELETE: 1,
  VDI_ATTACH: 1,
  VDI_DETACH: 1,
  SR_SCAN: 1,
  SR_ATTACH: 1,
  SR_DETACH: 1,
};

/** An ISO file name: a plain name in the library directory, nothing that walks out of it. */
const isIsoName = (n: string) => n.toLowerCase().endsWith('.iso') && n === basename(n) && !n.startsWith('.') && !n.includes('\\');

export class IsoSrDriver implements SmDriver {
  readonly type = 'iso';
  readonly features = FEATURES;

  private dir(sr: SrContext | Record<string, string>): string {
    const dc = 'deviceConfig' in sr ? (sr as SrContext).deviceConfig : (sr as Record<string, string>);
    if (!dc.location) throw new SmError('SR_BACKEND_FAILURE_1', ['', 'The request is missing the location parameter', '']);
    return dc.location;
  }

  private file(sr: SrContext, location: string): string {
    if (!isIsoName(location)) throw new SmError('VDI_LOCATION_MISSING', [location]);
    return join(this.dir(sr), location);
  }

  private async assertDir(dir: string): Promise<void> {
    const ok = await stat(dir).then(
      (s) => s.isDirectory(),
      () => false,
    );
    if (!ok)
      throw new SmError('SR_BACKEND_FAILURE_222', ['', `Could not mount the directory specified in Device Configuration [${dir}]`, '']);
  }

  async create(sr: SrContext): Promise<Record<string, string>> {
    await this.assertDir(this.dir(sr));
    return { ...sr.deviceConfig };
  }

  async delete(): Promise<void> {}

  async attach(sr: SrContext): Promise<void> {
    await this.assertDir(this.dir(sr));
  }

  async detach(): Promise<void> {}

  async probe(): Promise<string> {
    throw new SmError('SR_BACKEND_FAILURE', ["Operation 'sr_probe' not supported by this SR type", '', '']);
  }

  async scan(sr: SrContext): Promise<VdiInfo[]> {
    const dir = this.dir(sr);
    await this.assertDir(dir);
    const out: VdiInfo[] = [];
    for (const name of (await readdir(dir)).filter(isIsoName).sort()) {
      try {
        out.push(await this.vdiStat(sr, name));
      } catch {
        // removed meanwhile
      }
    }
    return out;
  }

  async stat(sr: SrContext): Promise<SrStat> {
    const fs = await statfs(this.dir(sr));
    return { physicalSize: fs.blocks * fs.bsize, physicalUtilisation: (fs.blocks - fs.bavail) * fs.bsize };
  }

  async vdiCreate(sr: SrContext, size: number, hint: { nameLabel: string }): Promise<VdiInfo> {
    const name = hint.nameLabel;
    if (!isIsoName(name)) throw new SmError('SR_BACKEND_FAILURE_1', ['', `ISO VDI names must end in .iso: ${name}`, '']);
    const fh = await fsOpen(this.file(sr, name), 'wx').catch(() => {
      throw new SmError('LOCATION_NOT_UNIQUE', [name]);
    });
    await fh.close();
    await truncate(this.file(sr, name), size);
    return this.vdiStat(sr, name);
  }

  async vdiDelete(sr: SrContext, location: string): Promise<void> {
    await rm(this.file(sr, location), { force: true });
  }

  async vdiStat(sr: SrContext, location: string): Promise<VdiInfo> {
    const st = await stat(this.file(sr, location)).catch(() => {
      throw new SmError('VDI_MISSING', [location]);
    });
    if (!st.isFile()) throw new SmError('VDI_MISSING', [location]);
    return { uuid: '', location, virtualSize: st.size, physicalUtilisation: st.blocks * 512, readOnly: true, vdiType: 'iso' };
  }

  vdiIntroduce(sr: SrContext, location: string): Promise<VdiInfo> {
    return this.vdiStat(sr, location);
  }

  async vdiResize(): Promise<VdiInfo> {
    throw new SmError('SR_OPERATION_NOT_SUPPORTED', []);
  }

  async vdiSnapshot(): Promise<VdiInfo> {
    throw new SmError('SR_OPERATION_NOT_SUPPORTED', []);
  }

  async vdiAttach(sr: SrContext, location: string): Promise<{ path: string; format: 'raw' }> {
    await this.vdiStat(sr, location);
    return { path: this.file(sr, location), format: 'raw' };
  }

  async vdiOpen(sr: SrContext, location: string, opts: { readOnly: boolean }): Promise<OpenDisk> {
    const file = this.file(sr, location);
    const fh = await fsOpen(file, opts.readOnly ? 'r' : 'r+');
    const size = (await fh.stat()).size;
    return {
      size,
      async read(offset, length) {
        const buf = Buffer.alloc(Math.max(0, Math.min(length, size - offset)));
        let done = 0;
        while (done < buf.length) {
          const { bytesRead } = await fh.read(buf, done, buf.length - done, offset + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return length > buf.length ? Buffer.concat([buf, Buffer.alloc(length - buf.length)]) : buf;
      },
      async write(offset, data) {
        if (offset + data.length > size) throw new SmError('SR_BACKEND_FAILURE_1', ['', 'write beyond the end of the ISO', '']);
        await fh.write(data, 0, data.length, offset);
      },
      close: () => fh.close(),
    };
  }
}
