// vm-export and vm-import (cli_operations.ml vm_export / export_common / download_file, vm_import):
// the XVA moves over a separate HTTP connection the client opens, GET /export (or
// /export_metadata) and PUT /import (or /import_metadata), under a task the command made; the
// handlers (src/http/vm-transfer.ts) redirect to the host that holds the disks.
import { ExitWithError, CliFailure } from '../errors.js';
import { boolParam, has, mapParams, param, required } from '../parse.js';
import { doVmOp } from '../selectors.js';
import type { CommandTable } from '../table.js';
import { httpTransfer } from './storage.js';
import { byUuid, defaultSrUuid, uuidOf } from './util.js';

/** Compression_algorithms: of_string on compress=, to_string for the URL ("false" for none). */
function compression(v: string | undefined): string {
  if (v === 'true' || v === 'gzip') return 'gzip';
  if (v === 'zstd') return 'zstd';
  return 'false';
}

/** The refs of an XML-RPC `VM ref set` (a task's result). */
const refsOf = (xml: string): string[] => [...xml.matchAll(/OpaqueRef:[^<\s]+/g)].map((m) => m[0]);

export function addVmTransferCommands(table: CommandTable): void {
  table
    .define('vm-export', async (ctx) => {
      const filename = required(ctx.params, 'filename');
      const compress = compression(param(ctx.params, 'compress'));
      const preserve = boolParam(ctx.params, 'preserve-power-state');
      const metadata = boolParam(ctx.params, 'metadata');
      const snapshots = boolParam(ctx.params, 'include-snapshots');
      const extra = metadata ? `&excluded_device_types=${param(ctx.params, 'excluded-device-types') ?? ''}` : '';
      // Several VMs (--multiple): the second goes to <filename>2, the third to <filename>3...
      let n = 1;
      await doVmOp(
        ctx,
        { ignore: ['filename', 'metadata', 'compress', 'preserve-power-state', 'include-snapshots', 'excluded-device-types'] },
        async (vm) => {
          const num = n++;
          const file = num > 1 ? `${filename}${num}` : filename;
          const uuid = await uuidOf(ctx, 'VM', vm.ref);
          await httpTransfer(
            ctx,
            'Export of VM',
            'httpGet',
            file,
            (task) =>
              `${metadata ? '/export_metadata' : '/export'}?session_id=${ctx.session}&task_id=${task}&ref=${vm.ref}` +
              `&use_compression=${compress}&preserve_power_state=${preserve}&export_snapshots=${snapshots}${extra}`,
            uuid,
          );
          if (file !== '') ctx.channel.print('Export succeeded');
        },
      );
    })
    .define('vm-import', async (ctx) => {
      let sr: string;
      if (has(ctx.params, 'sr-uuid')) sr = await byUuid(ctx, 'SR', 'sr-uuid');
      else {
        const uuid = await defaultSrUuid(ctx);
        if (uuid === undefined) throw new CliFailure('No SR specified and Pool default SR is null');
        sr = String(await ctx.call('SR.get_by_uuid', uuid));
      }
      const restore = boolParam(ctx.params, 'preserve');
      const metadata = boolParam(ctx.params, 'metadata');
      const force = boolParam(ctx.params, 'force');
      const dryRun = boolParam(ctx.params, 'dry-run');
      const vdiMap = mapParams(ctx.params, 'vdi');
      if (has(ctx.params, 'url') && has(ctx.params, 'filename')) {
        ctx.channel.stderr("Invalid arguments. The 'url' and 'filename' parameters should not both be specified.\n");
        throw new ExitWithError(1);
      }
      // (type= other than the default, an import converted from VMware, is not built here.)
      if (has(ctx.params, 'url')) {
        const vms = (await ctx.call('VM.import', required(ctx.params, 'url'), sr, restore, force)) as string[];
        ctx.channel.print((await Promise.all(vms.map((v) => uuidOf(ctx, 'VM', v)))).join(','));
        return;
      }
      let filename = required(ctx.params, 'filename');
      if (!metadata && dryRun) {
        ctx.channel.stderr('Only metadata import function support dry-run\n');
        throw new ExitWithError(1);
      }
      // The user who named the archive's ova.xml meant the directory it is in.
      if (filename.toLowerCase().endsWith('ova.xml')) filename = filename.slice(0, -'ova.xml'.length);
      const result = await httpTransfer(
        ctx,
        'VM import',
        'httpPut',
        filename,
        (task) =>
          `${metadata ? '/import_metadata' : '/import'}?session_id=${ctx.session}&task_id=${task}` +
          `&restore=${restore}&force=${force}&dry_run=${dryRun}&sr_id=${sr}` +
          vdiMap.map(([k, v]) => `&vdi:${k}=${v}`).join(''),
      );
      const uuids = await Promise.all(refsOf(result).map((v) => uuidOf(ctx, 'VM', v)));
      ctx.channel.print((uuids.length === 0 && dryRun ? ['xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'] : uuids).join(','));
    });
}
