// The simulated guests' screens: each VM's text screen follows what happens to its domain,
// read off the VM's record every time the simulator announces a change of it (a boot log for
// a new domain, the login prompt when the OS is up, a line when it is paused, resumed, asked
// to shut down, given vCPUs or a new memory target, and the last words when it goes away).
// Screens live in memory only: a restarted backend shows a running guest's screen afresh.
import type { Duplex } from 'node:stream';
import { DomainError } from '../interface.js';
import { serveRfb, serveText } from '../console/rfb.js';
import { GuestScreen, GuestShell } from '../console/screen.js';
import type { Reason, Vm } from './sim-model.js';

/** What the screen last saw of the domain. */
interface Seen {
  domid?: number;
  paused: boolean;
  osUp: boolean;
  request?: string;
  vcpus: number;
  targetMib: number;
}

const LAST_WORDS: Record<Reason, string> = {
  halt: 'reboot: Power down',
  reboot: 'reboot: Restarting system',
  crash: 'Kernel panic - not syncing: Fatal exception',
  suspend: 'PM: suspended to disk',
};

export class SimScreens {
  private readonly guests = new Map<string, { shell: GuestShell; seen: Seen }>();

  /** The VM's record changed: its screen tells what that means for the guest. */
  observe(vm: Vm): void {
    const id = vm.config.id;
    let g = this.guests.get(id);
    if (!g) {
      if (!vm.domain) return; // no screen until there is a domain to draw it
      g = { shell: new GuestShell(new GuestScreen(), vm.config.name), seen: { paused: true, osUp: false, vcpus: 0, targetMib: 0 } };
      this.guests.set(id, g);
    }
    const { shell, seen } = g;
    const d = vm.domain;
    if (!d) {
      if (seen.domid !== undefined) {
        const reason = vm.status.lastShutdownReason;
        shell.halted(reason ? LAST_WORDS[reason] : 'domain left this host');
      }
      seen.domid = undefined;
      return;
    }
    const targetMib = Math.round(d.memoryTarget / 1048576);
    if (d.domid !== seen.domid) {
      if (!d.osUp && !d.built) {
        shell.boot({
          domid: d.domid,
          memoryBytes: d.memoryTarget,
          vcpus: d.vcpus,
          disks: vm.config.vbds
            .filter((v) => v.backend !== undefined)
            .map((v) => `xvd${String.fromCharCode(97 + Number(v.position ?? 0))}`),
          nics: vm.config.vifs.length,
          hvm: vm.config.domainType === 'hvm',
        });
      } else {
        // a domain that did not boot here: restored from a suspend image, arrived by a
        // migration, or running when this backend started
        shell.attached(`domain ${d.domid}: ${d.osUp ? 'running' : 'booting'}`, d.osUp);
      }
      Object.assign(seen, { domid: d.domid, paused: d.paused, osUp: d.osUp, request: undefined, vcpus: d.vcpus, targetMib });
      return;
    }
    if (d.paused !== seen.paused && d.built) {
      // the first unpause of a fresh domain is its boot going on, not news
      if (d.paused) shell.event('domain paused');
      else if (seen.osUp) shell.event('domain unpaused');
    }
    if (d.osUp && !seen.osUp) shell.up();
    const request = d.request && d.acked ? d.request : undefined;
    if (request && request !== seen.request)
      shell.event(
        request === 'suspend'
          ? 'PM: suspend requested'
          : `The system is going down for ${request === 'halt' ? 'power-off' : 'reboot'} NOW!`,
      );
    if (d.vcpus !== seen.vcpus) shell.event(`smpboot: ${d.vcpus} vCPU${d.vcpus === 1 ? '' : 's'} online`);
    if (targetMib !== seen.targetMib && d.osUp) shell.event(`xen:balloon: memory target ${targetMib} MiB`);
    Object.assign(seen, { paused: d.paused, osUp: d.osUp, request, vcpus: d.vcpus, targetMib });
  }

  forget(id: string): void {
    const g = this.guests.get(id);
    g?.shell.screen.powerOff();
    this.guests.delete(id);
  }

  /** Serves the running domain's console on `stream`. */
  attach(vm: Vm, protocol: 'rfb' | 'vt100', stream: Duplex): void {
    const g = this.guests.get(vm.config.id);
    if (!vm.domain || !g) throw new DomainError('Bad_power_state', [vm.domain ? 'Running' : 'Halted', 'Running']);
    if (protocol === 'vt100' && vm.config.domainType === 'hvm')
      throw new DomainError('Does_not_exist', ['console', `${vm.config.id}/vt100`]);
    if (protocol === 'rfb') serveRfb(stream, g.shell.screen, vm.config.name);
    else serveText(stream, g.shell.screen);
  }
}
