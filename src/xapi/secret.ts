// secret.create and secret.destroy (xapi's xapi_secret.ml): xapi's hand-written constructor and
// destructor do exactly the database action (a new uuid; the row goes), so that is what runs.
// Also the storage messages' handling of passwords in a device_config: kept in secrets, named
// by uuid, never in the PBD's record.
import { randomUUID } from 'node:crypto';
import type { Call, Registry } from '../api/context.js';
import { genericImpl, newRef } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';
import { XapiError } from '../rpc/errors.js';

async function newSecret(call: Call, value: string): Promise<string> {
  const uuid = randomUUID();
  await call.db.create('secret', newRef(), { uuid, value, other_config: {} });
  return uuid;
}

/**
 * Xapi_secret.move_passwds_to_secrets: a device_config key ending in `password` is deprecated;
 * its value goes into a new secret and the key becomes `<key>_secret`, naming the secret's uuid.
 */
export async function movePasswordsToSecrets(call: Call, config: Record<string, string>): Promise<Record<string, string>> {
  const moved: Record<string, string> = {};
  for (const [key, value] of Object.entries(config)) {
    if (key.endsWith('password')) moved[`${key}_secret`] = await newSecret(call, value);
    else moved[key] = value;
  }
  return moved;
}

/**
 * Xapi_secret.duplicate_passwds: each `*password_secret` key gets a copy of the secret it names,
 * so that every PBD has secrets of its own (destroying one PBD's leaves the others'). A name
 * that is no secret's is refused as xapi's lookup refuses it (UUID_INVALID).
 */
export async function duplicatePasswordSecrets(call: Call, config: Record<string, string>): Promise<Record<string, string>> {
  const copied: Record<string, string> = {};
  for (const [key, value] of Object.entries(config)) {
    if (!key.endsWith('password_secret')) {
      copied[key] = value;
      continue;
    }
    const ref = await call.db.refByUuid('secret', value);
    if (!ref) throw new XapiError('UUID_INVALID', ['secret', value]);
    copied[key] = await newSecret(call, (await call.db.get('secret', ref)).value);
  }
  return copied;
}

export function register(r: Registry, schema: Schema): void {
  r.implement('secret.create', genericImpl(schema, 'secret.create')).implement('secret.destroy', genericImpl(schema, 'secret.destroy'));
}
