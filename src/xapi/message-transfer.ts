// A VM's messages sent to the pool it migrated to (xapi_message.ml send_messages and handler):
// PUT /messages?session_id=&cls=&uuid= on the other pool's coordinator, the body one XML
// document per message (ref, name, priority, cls, obj_uuid, timestamp, uuid, body), as xapi's
// export_xml writes them. The receiver stores them as they are (refs and uuids kept); the
// sender then destroys its own.
import { request } from 'node:https';
import type { Call, HostContext } from '../api/context.js';
import type { Row } from '../db/interface.js';
import type { cls } from '../schema/generated.js';
import { formatDateTime, parseDateTime } from '../schema/types.js';

/** Where a pool's coordinator takes messages for one of its objects (Constants.message_put_uri). */
export const MESSAGE_PUT_PATH = '/messages';

const TAGS = ['ref', 'name', 'priority', 'cls', 'obj_uuid', 'timestamp', 'uuid', 'body'] as const;

const escapeXml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const unescapeXml = (s: string) =>
  s.replace(/&(amp|lt|gt|quot|apos|#x?[0-9a-fA-F]+);/g, (m, e: string) => {
    if (e === 'amp') return '&';
    if (e === 'lt') return '<';
    if (e === 'gt') return '>';
    if (e === 'quot') return '"';
    if (e === 'apos') return "'";
    const code = e.startsWith('#x') ? Number.parseInt(e.slice(2), 16) : Number.parseInt(e.slice(1), 10);
    return Number.isNaN(code) ? m : String.fromCodePoint(code);
  });

/** export_xml: one document per message, its timestamp in RFC 3339. */
export function messagesXml(messages: [string, Row<'message'>][]): string {
  return messages
    .map(([ref, m]) => {
      const at = parseDateTime(m.timestamp) ?? new Date(0);
      const values: Record<(typeof TAGS)[number], string> = {
        ref,
        name: m.name,
        priority: String(m.priority),
        cls: m.cls,
        obj_uuid: m.obj_uuid,
        timestamp: at.toISOString().replace(/\.\d+Z$/, 'Z'),
        uuid: m.uuid,
        body: m.body,
      };
      return `<?xml version="1.0" encoding="UTF-8"?>\n<message>${TAGS.map((t) => `<${t}>${escapeXml(values[t])}</${t}>`).join('')}</message>`;
    })
    .join('');
}

/** import_xml: the messages of such a body (an element missing keeps its default). */
export function parseMessagesXml(xml: string): [string, Row<'message'>][] {
  const out: [string, Row<'message'>][] = [];
  for (const [, inner] of xml.matchAll(/<message>([\s\S]*?)<\/message>/g)) {
    const get = (tag: string) => {
      const m = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>|<${tag}/>`).exec(inner!);
      return m ? unescapeXml(m[1] ?? '') : '';
    };
    const at = parseDateTime(get('timestamp'));
    out.push([
      get('ref'),
      {
        uuid: get('uuid'),
        name: get('name'),
        priority: Number(get('priority')) || 0,
        cls: (get('cls') || 'VM') as cls,
        obj_uuid: get('obj_uuid'),
        timestamp: formatDateTime(at ?? new Date(0)),
        body: get('body'),
      } as Row<'message'>,
    ]);
  }
  return out;
}

/** The handler's work: messages stored as sent (one already here, by ref or uuid, is left as it is). */
export async function storeMessages(host: HostContext, messages: [string, Row<'message'>][]): Promise<number> {
  let n = 0;
  for (const [ref, m] of messages) {
    if (!ref.startsWith('OpaqueRef:') || (await host.db.tryGet('message', ref)) || (m.uuid && (await host.db.refByUuid('message', m.uuid))))
      continue;
    await host.db.create('message', ref, m);
    n++;
  }
  await host.db.commit();
  return n;
}

/**
 * After a VM left for another pool (not a copy): its messages go to that pool's coordinator
 * with the map's session, then are destroyed here. A failure to send is the caller's to log:
 * the VM has moved either way.
 */
export async function sendVmMessages(call: Call, master: string, session: string, vmUuid: string): Promise<void> {
  const messages = await call.db.find('message', { cls: 'VM', obj_uuid: vmUuid });
  if (messages.length === 0) return;
  const body = Buffer.from(messagesXml(messages));
  const query = new URLSearchParams({ session_id: session, cls: 'VM', uuid: vmUuid });
  const host = master.includes(':') ? `[${master}]` : master;
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(
      `https://${host}:${call.host.config.httpsPort}${MESSAGE_PUT_PATH}?${query}`,
      { method: 'PUT', rejectUnauthorized: false, headers: { 'content-length': body.length } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
  if (status !== 200) throw new Error(`the other pool answered ${status} to the VM's messages`);
  for (const [ref] of messages) if (await call.db.tryGet('message', ref)) await call.db.destroy('message', ref);
  await call.db.commit();
}
