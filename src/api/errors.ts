// The API's errors, as the code above it imports them. They are defined in src/rpc/errors.ts,
// beneath the database, which raises them too.
export * from '../rpc/errors.js';
