// `xe help` (cli_frontend.ml rio_help): answered before any login. Without a command name, the
// usage block and the command names packed into lines; with names, one record per command.
import type { Params } from './parse.js';
import type { Printer } from './printer.js';
import type { CommandTable } from './table.js';

const VM_SELECTORS_INFO =
  " VMs can be specified by filtering the full list of VMs on the values of zero or more fields. For example, specifying 'uuid=<some_uuid>' will select only the VM with that uuid, and 'power-state=halted' will select only VMs whose 'power-state' field is equal to 'halted'. The special pseudo-field 'vm' matches either of name-label or uuid. Where multiple VMs are matching, the option '--multiple' must be specified to perform the operation. The full list of fields that can be matched can be obtained by the command 'xe vm-list params=all'. If no parameters to select VMs are given, the operation will be performed on all VMs.";
const HOST_SELECTORS_INFO =
  " Hosts can be specified by filtering the full list of hosts on the values of zero or more fields. For example, specifying 'uuid=<some_uuid>' will select only the host with that uuid, and 'enabled=true' will select only hosts whose 'enabled' field is equal to 'true'. The special pseudo-field 'host' matches any of hostname, name-label or uuid. Where multiple hosts are matching, and the operation can be performed on multiple hosts, the option '--multiple' must be specified to perform the operation. The full list of fields that can be matched can be obtained by the command 'xe host-list params=all'. If no parameters to select hosts are given, the operation will be performed on all hosts.";
const SR_SELECTORS_INFO =
  " SRs can be specified by filtering the full list of SRs on the values of zero or more fields. For example, specifying 'uuid=<some_uuid>' will select only the sr with that uuid, and 'enabled=true' will select only srs whose 'enabled' field is equal to 'true'. The special pseudo-field 'sr' matches either of name-label or uuid. Where multiple SRs are matching, and the operation can be performed on multiple SRs, the option '--multiple' must be specified to perform the operation. The full list of fields that can be matched can be obtained by the command 'xe sr-list params=all'. If no parameters to select SRs are given, the operation will be performed on all SRs.";

const USAGE = `Usage:
  xe <command>
    [ -s <server> ]            XenServer host
    [ -p <port> ]              XenServer port number
    [ -u <username> -pw <password> | -pwf <password file> ]
                               User authentication (password or file)
    [ --nossl ]                Disable SSL/TLS
    [ --debug ]                Enable debug output
    [ --debug-on-fail ]        Enable debug output only on failure
    [ --traceparent <value> ]  Distributed tracing context
    [ <other arguments> ... ]  Command-specific options

To get help on a specific command:
  xe help <command>

`;

/** Names packed into lines of at most ~78 columns, each line indented by 4 (make_list). */
export function packNames(names: string[]): string[] {
  const lines: string[] = [];
  let cur = `    ${names[0] ?? ''}`;
  for (const n of names.slice(1)) {
    if (cur.length + n.length > 74) {
      lines.push(cur);
      cur = `    ${n}`;
    } else cur = `${cur}, ${n}`;
  }
  lines.push(cur);
  return lines;
}

const NOT_COMMANDS = new Set(['server', 'username', 'password', 'port', 'minimal', 'all']);

export function help(table: CommandTable, params: Params, printer: Printer): void {
  const asked = params.filter(([k]) => !NOT_COMMANDS.has(k)).map(([k]) => k);
  if (asked.length > 0) {
    for (const name of asked) {
      const spec = table.get(name);
      if (!spec) {
        printer.list([`Unknown command '${name}'`]);
        continue;
      }
      const vm = spec.flags.includes('Vm_selectors');
      const host = spec.flags.includes('Host_selectors');
      const sr = spec.flags.includes('Sr_selectors');
      const optional = [
        ...spec.optn,
        ...(vm ? ['<vm-selectors>'] : []),
        ...(sr ? ['<sr-selectors>'] : []),
        ...(host ? ['<host-selectors>'] : []),
      ];
      const selectors = Number(vm) + Number(host) + Number(sr);
      const desc = selectors !== 1 ? spec.help : spec.help + (vm ? VM_SELECTORS_INFO : host ? HOST_SELECTORS_INFO : SR_SELECTORS_INFO);
      printer.table([
        [
          ['command name        ', name],
          ['reqd params     ', spec.reqd.join(', ')],
          ['optional params ', optional.join(', ')],
          ['description     ', desc],
        ],
      ]);
    }
    return;
  }
  const visible = [...table.commands.values()]
    .filter((c) => !c.flags.includes('Hidden'))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const all = params.some(([k, v]) => k === 'all' && v === 'true');
  if (all) {
    const names = visible.map((c) => c.name);
    if (printer.minimal) {
      printer.list(names);
      return;
    }
    const hostCmds = names.filter((n) => n.startsWith('host-'));
    const vmCmds = names.filter((n) => !n.startsWith('host-') && n.startsWith('vm-'));
    const other = names.filter((n) => !n.startsWith('host-') && !n.startsWith('vm-'));
    printer.list([`${USAGE}Full command list\n-----------------\n`]);
    printer.list(packNames(hostCmds));
    printer.list(packNames(['']));
    printer.list(packNames(vmCmds));
    printer.list(packNames(['']));
    printer.list(packNames(other));
    return;
  }
  const names = visible.filter((c) => c.flags.includes('Standard')).map((c) => c.name);
  if (printer.minimal) {
    printer.list(names);
    return;
  }
  printer.list([`${USAGE}To get a full listing of commands:\n  xe help --all\n\nCommon command list\n-------------------\n`]);
  printer.list(packNames(names));
}
