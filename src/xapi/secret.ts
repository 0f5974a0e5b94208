// secret.create and secret.destroy (xapi's xapi_secret.ml): xapi's hand-written constructor and
// destructor do exactly the database action (a new uuid; the row goes), so that is what runs.
import type { Registry } from '../api/context.js';
import { genericImpl } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';

export function register(r: Registry, schema: Schema): void {
  r.implement('secret.create', genericImpl(schema, 'secret.create')).implement('secret.destroy', genericImpl(schema, 'secret.destroy'));
}
