// The XML-RPC codec, as the code above the API imports it (defined in src/rpc/xmlrpc.ts, beneath
// the storage formats: an XVA's ova.xml is XML-RPC values).
export * from '../rpc/xmlrpc.js';
