// message.* : alerts attached to objects (xapi's xapi_message.ml). xapi keeps them in a store
// beside the database; here they are rows of the message table, so they are durable and
// produce add/del events like any object.
import { randomUUID } from 'node:crypto';
import { XapiError } from '../rpc/errors.js';
import type { Call, MessageImpl, Registry } from '../api/context.js';
import { newRef, rowsWhere } from '../api/implicit.js';
import { formatDateTime, parseDateTime } from '../schema/types.js';
import type { Row } from '../db/interface.js';
import type { DbClassName, cls } from '../schema/generated.js';
import { MESSAGE_PRIORITIES } from './message-priorities.js';
import { rollingUpgradeInProgress } from './rpu.js';

/** The message `cls` enum value -> the datamodel class its obj_uuid names. */
const CLASS_OF: Partial<Record<cls, DbClassName>> = {
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

const since = (rows: [string, Row<'message'>][], t: string) => {
  const limit = parseDateTime(t)?.getTime() ?? 0;
  return rows.filter(([, r]) => (parseDateTime(r.timestamp)?.getTime() ?? 0) > limit);
};

/** message.create's work, for the host's own alerts too (perfmon's ALARM). */
export async function createMessage(
  call: Pick<Call, 'db' | 'host'>,
  name: string,
  priority: number,
  cls: cls,
  objUuid: string,
  body: string,
): Promise<string> {
  if (name === '') throw new XapiError('INVALID_VALUE', ['name', name]);
  const target = CLASS_OF[cls];
  if (target && !(await call.db.refByUuid(target, objUuid))) {
    throw new XapiError('UUID_INVALID', [cls, objUuid]);
  }
  const ref = newRef();
  // During a rolling upgrade the hosts' releases may rank an alert differently: the pool keeps
  // one ranking, the coordinator's, for the messages it knows.
  const known = Object.hasOwn(MESSAGE_PRIORITIES, name) ? MESSAGE_PRIORITIES[name] : undefined;
  const ranked = known !== undefined && (await rollingUpgradeInProgress(call.db)) ? known : priority;
  await call.db.create('message', ref, {
    uuid: randomUUID(),
    name,
    priority: ranked,
    cls,
    obj_uuid: objUuid,
    timestamp: formatDateTime(new Date(call.host.now())),
    body,
  });
  return ref;
}

const create: MessageImpl<'message.create'> = (call, [name, priority, cls, objUuid, body]) =>
  createMessage(call, name, priority, cls, objUuid, body);

export function register(r: Registry): void {
  r.implement('message.create', create)
    .implement('message.destroy', (call, [self]) => call.db.destroy('message', self))
    .implement('message.destroy_many', async (call, [refs]) => {
      for (const ref of refs) await call.db.destroy('message', ref);
    })
    .implement('message.get_record', (call, [self]) => call.db.get('message', self))
    .implement('message.get_by_uuid', async (call, [uuid]) => {
      const ref = await call.db.refByUuid('message', uuid);
      if (!ref) throw new XapiError('UUID_INVALID', ['message', uuid]);
      return ref;
    })
    .implement('message.get_all', async (call) => (await call.db.all('message')).map(([ref]) => ref))
    .implement('message.get_all_records', async (call) => Object.fromEntries(await call.db.all('message')))
    .implement('message.get_all_records_where', async (call, [expr]) => Object.fromEntries(await rowsWhere(call, 'message', expr)))
    .implement('message.get_since', async (call, [t]) => Object.fromEntries(since(await call.db.all('message'), t)))
    .implement('message.get', async (call, [c, objUuid, t]) =>
      Object.fromEntries(since(await call.db.find('message', { cls: c, obj_uuid: objUuid }), t)),
    );
}
