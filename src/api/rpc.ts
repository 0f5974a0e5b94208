// The untyped wire value tree, as the code above the API imports it (defined in src/rpc/rpc.ts,
// beneath the datamodel and the storage formats that use it too).
export * from '../rpc/rpc.js';
