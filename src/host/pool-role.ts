// The two small files that say who a host is and what it is in its pool, as xapi keeps them in
// /etc/xensource: pool.conf (`master`, `slave:<coordinator address>` or `broken`; xapi's
// pool_role.ml) and the inventory's INSTALLATION_UUID (the host's uuid, which is how a host
// finds its own row in whichever database it reads: its own, or its coordinator's).
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { HostRole } from '../api/context.js';
import { writeFileAtomic } from '../util/files.js';
import { writeInventoryKeys } from '../xapi/inventory.js';

const roleFile = (stateDir: string) => join(stateDir, 'pool.conf');
const inventoryFile = (stateDir: string) => join(stateDir, 'inventory');

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/**
 * The role written in pool.conf. A fresh host has none and is the coordinator of its own pool of
 * one; text that is none of the three forms reads as broken, as xapi's does.
 */
export async function readPoolRole(stateDir: string): Promise<HostRole> {
  const text = (await readOptional(roleFile(stateDir)))?.trim();
  if (text === undefined || text === 'master') return { kind: 'master' };
  if (text.startsWith('slave:') && text.length > 6) return { kind: 'slave', master: text.slice(6) };
  return { kind: 'broken' };
}

export function roleText(role: HostRole): string {
  return role.kind === 'slave' ? `slave:${role.master}` : role.kind;
}

export async function writePoolRole(stateDir: string, role: HostRole): Promise<void> {
  await writeFileAtomic(roleFile(stateDir), roleText(role) + '\n', 0o600);
}

/** The host's uuid from the inventory, or undefined before the first start wrote it. */
export async function readInstallationUuid(stateDir: string): Promise<string | undefined> {
  const text = await readOptional(inventoryFile(stateDir));
  return text?.match(/^INSTALLATION_UUID='?([0-9a-f-]{36})'?$/m)?.[1];
}

export async function writeInstallationUuid(stateDir: string, uuid: string = randomUUID()): Promise<string> {
  await writeInventoryKeys(stateDir, { INSTALLATION_UUID: uuid });
  return uuid;
}
