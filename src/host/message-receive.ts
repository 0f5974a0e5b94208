// PUT /messages?session_id=&cls=&uuid= (xapi_message.ml handler): the messages of an object that
// came from another pool (a VM migrated here), stored as sent. Only the coordinator stores them;
// a member redirects to it (302, the query kept). The object must be here (400 otherwise).
import type { HostContext } from '../api/context.js';
import { readBody } from '../http/body.js';
import type { HandlerTable } from '../http/handlers.js';
import { sendHttpError } from '../http/server.js';
import { poolSessionOr401 } from '../http/transfer.js';
import { MESSAGE_PUT_PATH, parseMessagesXml, storeMessages } from '../xapi/message-transfer.js';

/** The most a message upload may hold. */
const MESSAGES_LIMIT = 64 * 1024 * 1024;

/** The message classes an upload may name, and the datamodel class whose uuid it gives. */
const CLASSES: Record<string, 'VM' | 'host' | 'SR' | 'pool' | 'VDI'> = { VM: 'VM', Host: 'host', SR: 'SR', Pool: 'pool', VDI: 'VDI' };

export function registerMessageReceiver(table: HandlerTable, host: HostContext): void {
  table.add('PUT', MESSAGE_PUT_PATH, async (req, res, url) => {
    const uuid = url.searchParams.get('uuid');
    const cls = url.searchParams.get('cls');
    if (uuid === null || cls === null) {
      req.resume();
      sendHttpError(res, 400);
      return;
    }
    if (!(await poolSessionOr401(host, req, res, url))) return;
    if (host.role.kind === 'slave') {
      req.resume();
      const target = new URL(`https://${host.role.master}:${host.config.httpsPort}${url.pathname}${url.search}`);
      res.writeHead(302, { location: target.toString(), connection: 'close', 'content-length': 0 });
      res.end();
      return;
    }
    const target = CLASSES[cls];
    if (!target || !(await host.db.refByUuid(target, uuid))) {
      req.resume();
      sendHttpError(res, 400);
      return;
    }
    try {
      const body = await readBody(req, MESSAGES_LIMIT);
      // every message is the object's, whatever the body says
      const messages = parseMessagesXml(body.toString('utf8')).map(
        ([ref, m]) => [ref, { ...m, cls: cls as typeof m.cls, obj_uuid: uuid }] as [string, typeof m],
      );
      await storeMessages(host, messages);
      res.writeHead(200, { 'content-length': 0 });
      res.end();
    } catch (e) {
      host.log.warn({ err: e }, 'receiving messages failed');
      if (!res.headersSent) sendHttpError(res, 400);
      else res.end();
    }
  });
}
