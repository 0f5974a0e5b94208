// Local account passwords, stored hashed (scrypt, from node:crypto) in <state>/passwd and never
// logged. Only root exists locally, as on a XenServer host without external authentication.
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/files.js';

const scrypt = (pwd: string, salt: Buffer, len: number, opts: ScryptOptions) =>
  new Promise<Buffer>((resolve, reject) => scryptCb(pwd, salt, len, opts, (e, k) => (e ? reject(e) : resolve(k))));

const PARAMS = { N: 16384, r: 8, p: 1 };

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, 32, PARAMS);
  return `scrypt$${PARAMS.N}$${PARAMS.r}$${PARAMS.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = stored.split('$');
  if (kind !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64');
  const key = await scrypt(password, Buffer.from(salt, 'base64'), expected.length, { N: +n!, r: +r!, p: +p! });
  return timingSafeEqual(key, expected);
}

export class PasswordFile {
  private entries: Record<string, string> = {};
  constructor(private readonly path: string) {}

  static at(stateDir: string): PasswordFile {
    return new PasswordFile(join(stateDir, 'passwd'));
  }

  async load(): Promise<boolean> {
    try {
      this.entries = JSON.parse(await readFile(this.path, 'utf8')) as Record<string, string>;
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  has(user: string): boolean {
    return user in this.entries;
  }

  async set(user: string, password: string): Promise<void> {
    this.entries = { ...this.entries, [user]: await hashPassword(password) };
    await writeFileAtomic(this.path, JSON.stringify(this.entries) + '\n', 0o600);
  }

  async verify(user: string, password: string): Promise<boolean> {
    const stored = Object.hasOwn(this.entries, user) ? this.entries[user] : undefined;
    return stored !== undefined && verifyPassword(password, stored);
  }
}
