// console.create and console.destroy: consoles are the domain manager's to make and remove (see
// xenops-sync.ts); xapi refuses both calls outright, naming them with a capital C
// (api_server_common.ml), and so does this server.
import { XapiError } from '../rpc/errors.js';
import type { Registry } from '../api/context.js';

export function register(r: Registry): void {
  r.implement('console.create', () => {
    throw new XapiError('NOT_IMPLEMENTED', ['Console.create']);
  }).implement('console.destroy', () => {
    throw new XapiError('NOT_IMPLEMENTED', ['Console.destroy']);
  });
}
