// ova.xml: the metadata document at the head of every XVA.
//
// xapi writes it with rpclib's Xmlrpc.to_string applied to Importexport.rpc_of_header (export.ml
// vm_metadata): one bare XML-RPC <value>, with no XML declaration and no methodResponse around it:
//
//   <value><struct>
//     <member><name>version</name><value><struct> hostname date product_version product_brand
//       build_number (strings) xapi_major xapi_minor export_vsn (ints) </struct></value></member>
//     <member><name>objects</name><value><array><data>
//       <value><struct> class (string) id ("Ref:<n>") snapshot (the record, any value) </struct></value> ...
//     </data></array></value></member>
//   </struct></value>
//
// rpclib writes ints untagged (<value>2</value>), so on the way back they arrive as strings, and
// version_of_rpc accepts both (Rpc.int_of_rpc). export_vsn is optional on import (0 if missing).
import { parseXmlRpcResponse, xmlRpcValue } from '../../rpc/xmlrpc.js';
import { isStruct, newStruct, type Rpc, type RpcStruct } from '../../rpc/rpc.js';

/** Importexport.version: identifies the exporting host; checked by the importer. */
export interface XvaHeader {
  hostname: string;
  date: string;
  product_version: string;
  product_brand: string;
  build_number: string;
  xapi_major: number;
  xapi_minor: number;
  /**
   * Format version. 2 (xapi's Xapi_globs.export_vsn) means inline per-chunk checksums and no
   * checksum table at the end; writeXva always produces that layout, so write 2.
   * On import: > 0 means inline checksums are verified; < 2 means a checksum table follows the disks.
   */
  export_vsn: number;
}

/** The export_vsn of the layout writeXva produces (xapi's Xapi_globs.export_vsn). */
export const XVA_EXPORT_VSN = 2;

/** Importexport.obj: one exported database record under its export-local reference. */
export interface XvaObject {
  /** Class name as in the datamodel ("VM", "VBD", "VDI", "SR", "network", ...). */
  class: string;
  /** Export-local reference, "Ref:<n>"; VDI disk data is stored under this name. */
  id: string;
  /** The record as an XML-RPC struct, references rewritten to export-local ids. */
  snapshot: Rpc;
}

export interface XvaMetadata {
  header: XvaHeader;
  objects: XvaObject[];
}

/** Raised when ova.xml is not a valid header document (the importer maps it to IMPORT_ERROR). */
export class OvaXmlError extends Error {}

/** The ova.xml document for a header and objects, byte-compatible with xapi's. */
export function buildOvaXml(header: XvaHeader, objects: readonly XvaObject[]): string {
  const version = newStruct();
  version['hostname'] = header.hostname;
  version['date'] = header.date;
  version['product_version'] = header.product_version;
  version['product_brand'] = header.product_brand;
  version['build_number'] = header.build_number;
  version['xapi_major'] = BigInt(header.xapi_major);
  version['xapi_minor'] = BigInt(header.xapi_minor);
  version['export_vsn'] = BigInt(header.export_vsn);
  // Built as one string per object so a large export does not need one huge intermediate tree.
  let s =
    '<value><struct><member><name>version</name>' + xmlRpcValue(version) + '</member><member><name>objects</name><value><array><data>';
  for (const o of objects) {
    const obj = newStruct();
    obj['class'] = o.class;
    obj['id'] = o.id;
    obj['snapshot'] = o.snapshot;
    s += xmlRpcValue(obj);
  }
  return s + '</data></array></value></member></struct></value>';
}

function find(map: RpcStruct, key: string, where: string): Rpc {
  // Wording of Importexport.find's failure.
  if (!(key in map)) throw new OvaXmlError(`Failed to find key '${key}' in ${where}`);
  return map[key]!;
}

function asString(v: Rpc, what: string): string {
  if (typeof v === 'string') return v;
  throw new OvaXmlError(`${what}: expected a string`);
}

/** Rpc.int_of_rpc: an Int, or a String holding an integer (what an untagged <value> parses to). */
function asInt(v: Rpc, what: string): number {
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'string' && /^[-+]?\d+$/.test(v.trim())) return Number(v.trim());
  throw new OvaXmlError(`${what}: expected an int`);
}

// An XML declaration (and BOM) may precede the value in documents written by other tools.
const XML_DECL = /^\uFEFF?\s*<\?xml[^>]*\?>/;

/** Parses ova.xml (also accepts a document wrapped in a methodResponse). */
export function parseOvaXml(xml: string): XvaMetadata {
  let body = xml.replace(XML_DECL, '').trim();
  let value: Rpc;
  try {
    // The project's XML-RPC parser reads methodResponse documents: wrap the bare <value>.
    if (!body.startsWith('<methodResponse')) body = '<methodResponse><params><param>' + body + '</param></params></methodResponse>';
    value = parseXmlRpcResponse(body);
  } catch (e) {
    throw new OvaXmlError(`ova.xml is not a valid XML-RPC value: ${(e as Error).message}`);
  }
  if (!isStruct(value)) throw new OvaXmlError('ova.xml: header is not a struct');
  const v = find(value, 'version', 'header');
  if (!isStruct(v)) throw new OvaXmlError(`version_of_rpc: malformed RPC`);
  const where = 'version data';
  let exportVsn = 0;
  try {
    exportVsn = asInt(find(v, 'export_vsn', where), 'export_vsn');
  } catch {
    exportVsn = 0; // as xapi: missing or malformed means 0
  }
  const header: XvaHeader = {
    hostname: asString(find(v, 'hostname', where), 'hostname'),
    date: asString(find(v, 'date', where), 'date'),
    product_version: asString(find(v, 'product_version', where), 'product_version'),
    product_brand: asString(find(v, 'product_brand', where), 'product_brand'),
    build_number: asString(find(v, 'build_number', where), 'build_number'),
    xapi_major: asInt(find(v, 'xapi_major', where), 'xapi_major'),
    xapi_minor: asInt(find(v, 'xapi_minor', where), 'xapi_minor'),
    export_vsn: exportVsn,
  };
  const objs = find(value, 'objects', 'header');
  if (!Array.isArray(objs)) throw new OvaXmlError('ova.xml: objects is not an array');
  const objects: XvaObject[] = objs.map((o, i) => {
    if (!isStruct(o)) throw new OvaXmlError(`ova.xml: object ${i} is not a struct`);
    return {
      class: asString(find(o, 'class', 'obj'), 'class'),
      id: asString(find(o, 'id', 'obj'), 'id'),
      snapshot: find(o, 'snapshot', 'obj'),
    };
  });
  return { header, objects };
}
