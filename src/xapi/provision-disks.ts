// other_config "disks": the <provision> document in which a template describes the disks
// VM.provision makes for it (xapi_templates.ml). The default templates write one such document
// each (src/host/templates.ts); clients may write their own, so it is parsed strictly.
import type { vdi_type } from '../schema/generated.js';

export interface ProvisionDisk {
  device: string;
  size: number;
  sr: string;
  bootable: boolean;
  type: vdi_type;
}

/** The VDI types a template's disk may ask for. */
const VDI_TYPES: ReadonlySet<string> = new Set<vdi_type>(['system', 'user', 'ephemeral', 'suspend', 'crashdump']);
const isDiskType = (t: string | undefined): t is vdi_type => t !== undefined && VDI_TYPES.has(t);

class DisksXmlError extends Error {
  constructor(reason: string, xml: string) {
    const shown = xml.length > 120 ? `${xml.slice(0, 120)}...` : xml;
    super(`other_config:disks is not a valid <provision> document (${reason}): ${JSON.stringify(shown)}`);
    this.name = 'DisksXmlError';
  }
}

function decodeEntities(s: string, fail: (why: string) => never): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);|&/g, (m, ent: string | undefined) => {
    if (ent === undefined) fail('unescaped "&" in an attribute');
    if (ent.startsWith('#x')) return String.fromCodePoint(parseInt(ent.slice(2), 16));
    if (ent.startsWith('#')) return String.fromCodePoint(parseInt(ent.slice(1), 10));
    const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    const v = named[ent];
    if (v === undefined) fail(`unknown entity ${m}`);
    return v;
  });
}

/**
 * Parses a template's other_config "disks": `<provision>` holding `<disk device= size= sr=
 * bootable= type=/>` elements, attributes in any order. As xapi: device, size, sr and bootable
 * are required, bootable is true only for "true", a missing or unknown type means "system".
 */
export function parseDisksXml(xml: string): ProvisionDisk[] {
  const fail = (why: string): never => {
    throw new DisksXmlError(why, xml);
  };
  let i = 0;
  const skipMisc = () => {
    for (;;) {
      while (i < xml.length && /\s/.test(xml[i]!)) i++;
      if (xml.startsWith('<?', i)) {
        const end = xml.indexOf('?>', i);
        if (end < 0) fail('unterminated processing instruction');
        i = end + 2;
      } else if (xml.startsWith('<!--', i)) {
        const end = xml.indexOf('-->', i + 4);
        if (end < 0) fail('unterminated comment');
        i = end + 3;
      } else return;
    }
  };
  // One tag: returns its name, attributes and whether it closes itself, or a closing tag.
  const readTag = (): { name: string; attrs: Map<string, string>; selfClosing: boolean; closing: boolean } => {
    if (xml[i] !== '<') fail(`expected "<" at offset ${i}`);
    i++;
    const closing = xml[i] === '/';
    if (closing) i++;
    const nameMatch = /^[A-Za-z_][\w.-]*/.exec(xml.slice(i));
    if (!nameMatch) fail(`expected an element name at offset ${i}`);
    const name = nameMatch![0];
    i += name.length;
    const attrs = new Map<string, string>();
    for (;;) {
      const ws = /^\s*/.exec(xml.slice(i))![0].length;
      i += ws;
      if (i >= xml.length) fail(`unterminated <${name}> tag`);
      if (xml[i] === '>') {
        i++;
        return { name, attrs, selfClosing: false, closing };
      }
      if (xml.startsWith('/>', i)) {
        if (closing) fail(`malformed closing tag </${name}>`);
        i += 2;
        return { name, attrs, selfClosing: true, closing };
      }
      if (closing) fail(`unexpected content in closing tag </${name}>`);
      if (ws === 0 && attrs.size > 0) fail(`attributes of <${name}> must be separated by spaces`);
      const a = /^([A-Za-z_][\w.-]*)\s*=\s*("([^"<]*)"|'([^'<]*)')/.exec(xml.slice(i));
      if (!a) fail(`malformed attribute in <${name}> at offset ${i}`);
      const key = a![1]!;
      if (attrs.has(key)) fail(`duplicate attribute ${key} in <${name}>`);
      attrs.set(key, decodeEntities(a![3] ?? a![4] ?? '', fail));
      i += a![0].length;
    }
  };

  skipMisc();
  if (i >= xml.length) fail('empty document');
  const root = readTag();
  if (root.closing || root.name !== 'provision') fail(`the root element must be <provision>, not <${root.closing ? '/' : ''}${root.name}>`);
  if (root.attrs.size > 0) fail('<provision> takes no attributes');
  const disks: ProvisionDisk[] = [];
  if (!root.selfClosing) {
    for (;;) {
      skipMisc();
      if (i >= xml.length) fail('missing </provision>');
      if (xml[i] !== '<') fail(`unexpected text inside <provision> at offset ${i}`);
      const tag = readTag();
      if (tag.closing) {
        if (tag.name !== 'provision') fail(`unexpected </${tag.name}>`);
        break;
      }
      if (tag.name !== 'disk') fail(`unexpected <${tag.name}> inside <provision> (only <disk> is allowed)`);
      if (!tag.selfClosing) {
        skipMisc();
        const end = i < xml.length && xml[i] === '<' ? readTag() : fail('<disk> must be empty');
        if (!end.closing || end.name !== 'disk') fail('<disk> must be empty');
      }
      disks.push(diskOf(tag.attrs, fail));
    }
  }
  skipMisc();
  if (i < xml.length) fail(`trailing content after </provision> at offset ${i}`);
  return disks;
}

function diskOf(attrs: Map<string, string>, fail: (why: string) => never): ProvisionDisk {
  const need = (k: string): string => attrs.get(k) ?? fail(`<disk> has no ${k} attribute`);
  const device = need('device');
  const sizeText = need('size').trim();
  if (!/^\d+$/.test(sizeText)) fail(`<disk> size ${JSON.stringify(sizeText)} is not a number of bytes`);
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) fail(`<disk> size ${sizeText} is too large`);
  const sr = need('sr');
  const bootable = need('bootable') === 'true';
  const t = attrs.get('type');
  return { device, size, sr, bootable, type: isDiskType(t) ? t : 'system' };
}
