// user.create and user.destroy (xapi's xapi_user.ml, a deprecated class): xapi's hand-written
// constructor and destructor do exactly the database action, so that is what runs.
import type { Registry } from '../api/context.js';
import { genericImpl } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';

export function register(r: Registry, schema: Schema): void {
  r.implement('user.create', genericImpl(schema, 'user.create')).implement('user.destroy', genericImpl(schema, 'user.destroy'));
}
