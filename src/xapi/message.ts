// message.* : alerts attached to objects (xapi's xapi_message.ml). xapi keeps them in a store
// beside the database; here they are rows of the message table, so they are durable and
// produce add/del events like any object.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../api/errors.js';
import type { Call, Registry } from '../api/context.js';
import { newRef, where } from '../api/implicit.js';
import { formatDateTime, parseDateTime } from '../schema/types.js';
import type { Row } from '../db/interface.js';

/** The message `cls` enum value -> the datamodel class its obj_uuid names. */
const CLASS_OF: Record<string, string> = {
  VM: 'VM',
  Host: 'host',
  SR: 'SR',
  Pool: 'pool',
  VMPP: 'VMPP',
  VMSS: 'VMSS',
  PVS_proxy: 'PVS_proxy',
  VDI: 'VDI',
  Certificate: 'Certificate',
};

const since = (rows: [string, Row][], t: string) => {
  const limit = parseDateTime(t)?.getTime() ?? 0;
  return rows.filter(([, r]) => (parseDateTime(r.timestamp as string)?.getTime() ?? 0) > limit);
};

async function create(call: Call, [name, priority, cls, objUuid, body]: unknown[]): Promise<string> {
  if (String(name) === '') throw new XapiError('INVALID_VALUE', ['name', String(name)]);
  const target = CLASS_OF[String(cls)];
  if (target && !(await call.db.refByUuid(target, String(objUuid)))) {
    throw new XapiError('UUID_INVALID', [String(cls), String(objUuid)]);
  }
  const ref = newRef();
  await call.db.create('message', ref, {
    uuid: randomUUID(),
    name,
    priority,
    cls,
    obj_uuid: objUuid,
    timestamp: formatDateTime(new Date(call.host.now())),
    body,
  });
  return ref;
}

export function register(r: Registry): void {
  r.implement('message.create', create)
    .implement('message.destroy', (call, [self]) => call.db.destroy('message', self as string))
    .implement('message.destroy_many', async (call, [refs]) => {
      for (const ref of refs as string[]) await call.db.destroy('message', ref);
    })
    .implement('message.get_record', (call, [self]) => call.db.get('message', self as string))
    .implement('message.get_by_uuid', async (call, [uuid]) => {
      const ref = await call.db.refByUuid('message', uuid as string);
      if (!ref) throw new XapiError('UUID_INVALID', ['message', uuid as string]);
      return ref;
    })
    .implement('message.get_all', async (call) => (await call.db.all('message')).map(([ref]) => ref))
    .implement('message.get_all_records', async (call) => Object.fromEntries(await call.db.all('message')))
    .implement('message.get_all_records_where', async (call, [expr]) =>
      Object.fromEntries(await where(call, call.host.schema.cls('message'), expr as string)),
    )
    .implement('message.get_since', async (call, [t]) => Object.fromEntries(since(await call.db.all('message'), t as string)))
    .implement('message.get', async (call, [c, objUuid, t]) =>
      Object.fromEntries(since(await call.db.find('message', { cls: c, obj_uuid: objUuid }), t as string)),
    );
}
