// The destination's HTTP end of a live migration: PUT /services/xenops/migrate/vm/<vm uuid>
// (migration-wire.ts describes the conversation), authenticated as xapi's /services/xenops is,
// by a session of the pool (`session_id` in the query or a cookie; the source passes its call's
// session, as xapi does). It answers 200 at once and then streams the replies while the source
// streams the memory. Here and not in src/http because it hands the connection to the domain
// manager through xapi (src/xapi/vm-migrate.ts), which the wire layer does not reach.
import type { HostContext } from '../api/context.js';
import type { HandlerTable } from '../http/handlers.js';
import { sendHttpError } from '../http/server.js';
import { poolSessionOr401 } from '../http/transfer.js';
import type { MigrationChannel } from '../xenopsd/interface.js';
import { MIGRATION_PATH } from '../xenopsd/migration-wire.js';

export function registerMigrationReceiver(
  table: HandlerTable,
  host: HostContext,
  receive: (vmUuid: string, channel: MigrationChannel, vdiMap: Record<string, string>) => Promise<void>,
): void {
  table.add('PUT', MIGRATION_PATH, async (req, res, url) => {
    if (!(await poolSessionOr401(host, req, res, url))) return;
    const uuid = decodeURIComponent(url.pathname.slice(MIGRATION_PATH.length));
    // a storage migration's disks: the VDIs the VM's disks are here (old VDI ref -> new), as
    // xapi passes xenopsd its vdi_map
    let vdiMap: Record<string, string> = {};
    try {
      const given = url.searchParams.get('vdi_map');
      if (given) vdiMap = JSON.parse(given) as Record<string, string>;
      if (typeof vdiMap !== 'object' || vdiMap === null || Object.values(vdiMap).some((v) => typeof v !== 'string')) throw new Error();
    } catch {
      req.resume();
      sendHttpError(res, 400);
      return;
    }
    if (!(await host.db.refByUuid('VM', uuid))) {
      req.resume();
      sendHttpError(res, 404);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-cache, no-store' });
    res.flushHeaders();
    res.socket?.setNoDelay(true);
    try {
      await receive(uuid, { input: req, output: res }, vdiMap);
    } catch (e) {
      host.log.warn({ err: e, vm: uuid }, 'receiving a migration failed');
    } finally {
      if (!res.writableEnded) res.end();
    }
  });
}
