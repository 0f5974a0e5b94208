// The JSON-RPC codec, as the code above the API imports it (defined in src/rpc/jsonrpc.ts, beside
// the XML-RPC codec it shares its checks with).
export * from '../rpc/jsonrpc.js';
