// The whole command table: the generated commands and the hand-written ones, one file per family.
import type { Rpc } from '../../rpc/rpc.js';
import type { Api } from '../api.js';
import { addGenericCommands, blankFields } from '../generic.js';
import { CommandTable, type Ctx } from '../table.js';
import { addConsoleCommands } from './console.js';
import { addDataSourceCommands } from './data-source.js';
import { addDiagnosticCommands } from './diagnostic.js';
import { addHostCommands } from './host.js';
import { addNetworkCommands } from './network.js';
import { addPoolCommands } from './pool.js';
import { addPoolHaCommands } from './pool-ha.js';
import { addStorageCommands } from './storage.js';
import { addTaskCommands } from './task.js';
import { addVmPowerCommands } from './vm-power.js';
import { addVmConfigCommands } from './vm-config.js';
import { addVmTransferCommands } from './vm-transfer.js';

export function buildTable(api: Api): CommandTable {
  const table = new CommandTable();
  // Help's parameter lists are read off records with no object behind them; nothing is called.
  const blank: Ctx = {
    api,
    session: '',
    params: [],
    printer: undefined as never,
    channel: undefined as never,
    call: async (): Promise<Rpc> => {
      throw new Error('no calls while building the table');
    },
  };
  addGenericCommands(table, (kind) => blankFields(blank, kind));
  addVmPowerCommands(table);
  addVmConfigCommands(table);
  addVmTransferCommands(table);
  addHostCommands(table);
  addPoolCommands(table);
  addPoolHaCommands(table);
  addStorageCommands(table);
  addNetworkCommands(table);
  addTaskCommands(table);
  addDiagnosticCommands(table);
  addDataSourceCommands(table);
  addConsoleCommands(table);
  return table;
}
