// xapi's inventory file (/etc/xensource-inventory; here `<state-dir>/inventory`): KEY='value'
// lines. The host's uuid (INSTALLATION_UUID) and its management interface live there:
// MANAGEMENT_INTERFACE holds the management network's bridge ("" when disabled) and
// MANAGEMENT_ADDRESS_TYPE its address type (IPv4 or IPv6).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/files.js';

export const MANAGEMENT_INTERFACE = 'MANAGEMENT_INTERFACE';
export const MANAGEMENT_ADDRESS_TYPE = 'MANAGEMENT_ADDRESS_TYPE';

const file = (stateDir: string) => join(stateDir, 'inventory');

export async function readInventory(stateDir: string): Promise<Record<string, string>> {
  let text: string;
  try {
    text = await readFile(file(stateDir), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw e;
  }
  const keys: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z0-9_]+)='?(.*?)'?$/.exec(line.trim());
    if (m) keys[m[1]!] = m[2]!;
  }
  return keys;
}

/** Sets some keys, keeping the others (one atomic write). */
export async function writeInventoryKeys(stateDir: string, keys: Record<string, string>): Promise<void> {
  const all = { ...(await readInventory(stateDir)), ...keys };
  const text = Object.entries(all)
    .map(([k, v]) => `${k}='${v}'\n`)
    .join('');
  await writeFileAtomic(file(stateDir), text, 0o644);
}
