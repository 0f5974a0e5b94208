// A VM's messages as they cross to another pool (xapi_message.ml export_xml / import_xml): one
// XML document per message, escaped text, RFC 3339 timestamps; read back as they were.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Row } from '../../src/db/interface.js';
import { messagesXml, parseMessagesXml } from '../../src/xapi/message-transfer.js';

const message = (name: string, body: string): Row<'message'> =>
  ({
    uuid: `00000000-0000-0000-0000-00000000000${name.length}`,
    name,
    priority: 3,
    cls: 'VM',
    obj_uuid: 'c0ffee00-0000-0000-0000-000000000001',
    timestamp: '20260102T03:04:05Z',
    body,
  }) as Row<'message'>;

test('messages written as xapi writes them and read back', () => {
  const sent: [string, Row<'message'>][] = [
    ['OpaqueRef:1', message('FIRST', 'a <body> & "quotes"')],
    ['OpaqueRef:2', message('SECOND', '')],
  ];
  const xml = messagesXml(sent);
  assert.equal(xml.split('<?xml version="1.0" encoding="UTF-8"?>').length - 1, 2, 'one document per message');
  assert.ok(xml.includes('<timestamp>2026-01-02T03:04:05Z</timestamp>'), xml);
  assert.ok(xml.includes('<body>a &lt;body&gt; &amp; &quot;quotes&quot;</body>'), xml);
  assert.deepEqual(parseMessagesXml(xml), sent);
  // xapi's own form of an empty element
  assert.equal(parseMessagesXml('<message><ref>OpaqueRef:3</ref><name>X</name><body/></message>')[0]![1].body, '');
});
