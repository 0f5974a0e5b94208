// The receiving host's HTTP end of a storage migration's disk: PUT /services/SM/mirror/<uuid of
// the new VDI> (src/xapi/disk-mirror.ts describes the conversation), authenticated as the
// memory's is, by a session of the pool. Only a VDI made for a migration (sm_config
// migrate_task) on an SR of this host is written. Answers 200 at once, then streams the reply
// while the sender streams the disk.
import type { HostContext } from '../api/context.js';
import type { HandlerTable } from '../http/handlers.js';
import { sendHttpError } from '../http/server.js';
import { poolSessionOr401 } from '../http/transfer.js';
import { DISK_MIRROR_PATH, receiveDisk } from '../xapi/disk-mirror.js';
import type { Storage } from '../xapi/storage.js';

export function registerDiskMirrorReceiver(table: HandlerTable, host: HostContext, storage: Storage): void {
  table.add('PUT', DISK_MIRROR_PATH, async (req, res, url) => {
    if (!(await poolSessionOr401(host, req, res, url))) return;
    const uuid = decodeURIComponent(url.pathname.slice(DISK_MIRROR_PATH.length));
    const ref = await host.db.refByUuid('VDI', uuid);
    const vdi = ref && (await host.db.tryGet('VDI', ref));
    if (!ref || !vdi || vdi.sm_config.migrate_task === undefined) {
      req.resume();
      sendHttpError(res, 404);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-cache, no-store' });
    res.flushHeaders();
    res.socket?.setNoDelay(true);
    try {
      await receiveDisk(storage, ref, { input: req, output: res });
    } catch (e) {
      host.log.warn({ err: e, vdi: uuid }, 'receiving a migrating disk failed');
    } finally {
      if (!res.writableEnded) res.end();
    }
  });
}
