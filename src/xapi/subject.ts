// subject.create and subject.destroy (xapi's xapi_subject.ml). A subject is a user or group of an
// external directory, whose details xapi asks the directory for; with external authentication
// disabled (this host's only mode) that query fails with AUTH_IS_DISABLED, after the duplicate
// check, and nothing is created. Destroying a subject removes the row (the hook script xapi then
// runs is skipped while external authentication is disabled).
import { XapiError } from '../rpc/errors.js';
import type { Registry } from '../api/context.js';
import { constructorArgs, genericImpl } from '../api/implicit.js';
import type { Schema } from '../schema/schema.js';

export function register(r: Registry, schema: Schema): void {
  r.implement('subject.create', async (call, [record]) => {
    const rec = constructorArgs(call.db.schema, 'subject', record);
    if ((await call.db.find('subject', { subject_identifier: rec.subject_identifier })).length > 0) {
      throw new XapiError('SUBJECT_ALREADY_EXISTS', []);
    }
    const authType = (await call.db.get('host', call.host.hostRef)).external_auth_type;
    if (authType === '') throw new XapiError('AUTH_IS_DISABLED', []);
    // No directory service is implemented to resolve the subject with.
    throw new XapiError('NOT_IMPLEMENTED', ['subject.create']);
  }).implement('subject.destroy', genericImpl(schema, 'subject.destroy'));
}
