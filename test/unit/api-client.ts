// Calls into an in-process host's dispatcher, with results as wire trees (what a client sees).
import assert from 'node:assert/strict';
import type { Dispatcher } from '../../src/api/dispatch.js';
import type { HostContext } from '../../src/api/context.js';
import { newStruct, type Rpc, type RpcStruct } from '../../src/rpc/rpc.js';

export function apiClient(h: { dispatcher: Dispatcher; host: HostContext }) {
  const call = (method: string, ...params: Rpc[]) => h.dispatcher.dispatch(method, params);
  /** The result of a call that must succeed. */
  const ok = async (method: string, ...params: Rpc[]): Promise<Rpc> => {
    const o = await call(method, ...params);
    if (!o.ok) assert.fail(`${method} failed: ${o.error.join(' ')}`);
    return h.host.marshal.toRpc(o.type, o.value);
  };
  /** The ErrorDescription of a call that must fail. */
  const err = async (method: string, ...params: Rpc[]): Promise<string[]> => {
    const o = await call(method, ...params);
    if (o.ok) assert.fail(`${method} succeeded`);
    return o.error;
  };
  return { call, ok, err };
}

export const struct = (o: Record<string, Rpc>): RpcStruct => Object.assign(newStruct(), o);
