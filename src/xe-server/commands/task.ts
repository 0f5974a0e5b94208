// task-cancel and event-wait (cli_operations.ml task_cancel, event_wait).
import { isStruct, type RpcStruct } from '../../rpc/rpc.js';
import { CliFailure } from '../errors.js';
import { allObjects } from '../generic.js';
import { required, STD_PARAMS } from '../parse.js';
import { RECORD_CLASSES, safeGet } from '../records.js';
import type { CommandTable, Ctx } from '../table.js';
import { byUuid } from './util.js';

/** Whether some object of the class has every field as asked (`k=v`, or `k=/=v` for "not v"). */
async function anyMatches(ctx: Ctx, kind: string, filters: [string, string][]): Promise<boolean> {
  for (const o of await allObjects(ctx, kind)) {
    let all = true;
    for (const [k, v] of filters) {
      const f = o.fields.find((x) => x.name === k);
      if (!f) throw new CliFailure(`key missing: ${k}`);
      const value = await safeGet(f);
      if (v.startsWith('/=') ? value === v.slice(2) : value !== v) {
        all = false;
        break;
      }
    }
    if (all) return true;
  }
  return false;
}

export function addTaskCommands(table: CommandTable): void {
  table
    .define('task-cancel', async (ctx) => {
      await ctx.call('task.cancel', await byUuid(ctx, 'task', 'uuid'));
    })
    .define('event-wait', async (ctx) => {
      const cls = required(ctx.params, 'class');
      const kind = Object.keys(RECORD_CLASSES).find((k) => k === cls);
      if (!kind) throw new CliFailure(`Cli listening for class '${cls}' not currently implemented`);
      const filters = ctx.params.filter(([k]) => k !== 'class' && !STD_PARAMS.includes(k));
      // Checked once, then again at every event on the class (events 30 s at a time).
      let token = '';
      while (!(await anyMatches(ctx, kind, filters))) {
        const ev = await ctx.call('event.from', [RECORD_CLASSES[kind]!.cls.toLowerCase()], token, 30);
        token = String(isStruct(ev) ? ((ev as RpcStruct).token ?? '') : '');
      }
    });
}
