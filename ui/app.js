// The pool's web page: log in, the hosts and VMs at a glance (polled through the XenAPI's
// JSON-RPC), VM power actions, live charts from /rrd_updates, and a VM's console through noVNC
// over the host's /console WebSocket. Plain ES modules: preact + htm for the views, uPlot for
// the charts, noVNC for the console, all served by the host from its node_modules.
import { h, render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import htm from 'htm';
import uPlot from 'uplot';

const html = htm.bind(h);
const POLL_MS = 2000;
const CHART_MS = 5000;
const SESSION_KEY = 'xapi-ts-session';

class XapiError extends Error {
  constructor(code, params) {
    super([code, ...params].join(' '));
    this.code = code;
    this.params = params;
  }
}

let nextId = 0;
async function rpc(method, params) {
  const reply = await fetch('/jsonrpc', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: ++nextId, method, params }),
  });
  const body = await reply.json();
  if (body.error) throw new XapiError(body.error.message, body.error.data ?? []);
  return body.result;
}

function Login({ onLogin }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    setBusy(true);
    setError(null);
    try {
      const session = await rpc('session.login_with_password', [form.get('username'), form.get('password'), '2.21', 'xapi-ts web page']);
      onLogin(session);
    } catch (e) {
      if (e.code === 'HOST_IS_SLAVE') {
        const there = `${location.protocol}//${e.params[0]}${location.port ? `:${location.port}` : ''}/ui/`;
        setError(html`This host is a pool member: log in on the pool's coordinator, <a href=${there}>${e.params[0]}</a>.`);
      } else setError(e.code === 'SESSION_AUTHENTICATION_FAILED' ? 'Wrong user name or password.' : String(e.message));
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="login" onSubmit=${submit}>
    <h1>xapi-ts</h1>
    <label for="username">User name</label>
    <input id="username" name="username" autocomplete="username" value="root" />
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" />
    <button type="submit" disabled=${busy}>Log in</button>
    ${error && html`<p class="error">${error}</p>`}
  </form>`;
}

const mib = (bytes) => `${Math.round(Number(bytes) / 1048576).toLocaleString()} MiB`;

function Hosts({ hosts, metrics }) {
  return html`<section>
    <h2>Hosts</h2>
    <table>
      <thead><tr><th>Name</th><th>Address</th><th>State</th><th>Memory free / total</th></tr></thead>
      <tbody>
        ${hosts.map(([ref, host]) => {
          const m = metrics[host.metrics];
          const state = !m ? 'unknown' : m.live ? (host.enabled ? 'live' : 'live, disabled') : 'not live';
          return html`<tr key=${ref} data-host=${host.uuid}>
            <td>${host.name_label}</td>
            <td>${host.address}</td>
            <td class="host-state">${state}</td>
            <td>${m ? `${mib(m.memory_free)} / ${mib(m.memory_total)}` : ''}</td>
          </tr>`;
        })}
      </tbody>
    </table>
  </section>`;
}

function Vms({ vms, hostsByRef, session, onConsole, onError }) {
  const [busy, setBusy] = useState({});
  const act = async (ref, method, params) => {
    setBusy((b) => ({ ...b, [ref]: method }));
    try {
      await rpc(method, [session, ref, ...params]);
    } catch (e) {
      onError(`${method}: ${e.message}`);
    } finally {
      setBusy((b) => ({ ...b, [ref]: undefined }));
    }
  };
  return html`<section>
    <h2>VMs</h2>
    <table>
      <thead><tr><th>Name</th><th>Power state</th><th>Host</th><th>Actions</th></tr></thead>
      <tbody>
        ${vms.map(([ref, vm]) => {
          const running = vm.power_state === 'Running';
          const doing = busy[ref];
          return html`<tr key=${ref} data-vm=${vm.uuid}>
            <td class="vm-name">${vm.name_label}</td>
            <td class=${`power-state state-${vm.power_state}`}>${doing ? `${vm.power_state} (${doing.split('.')[1]}...)` : vm.power_state}</td>
            <td>${hostsByRef[vm.resident_on]?.name_label ?? ''}</td>
            <td>
              <button disabled=${!!doing || vm.power_state !== 'Halted'} onClick=${() => act(ref, 'VM.start', [false, false])}>Start</button>
              <button disabled=${!!doing || !running} onClick=${() => act(ref, 'VM.clean_shutdown', [])}>Shut down</button>
              <button disabled=${!!doing || !running} onClick=${() => act(ref, 'VM.clean_reboot', [])}>Reboot</button>
              <button disabled=${!running} onClick=${() => onConsole(vm)}>Console</button>
            </td>
          </tr>`;
        })}
      </tbody>
    </table>
  </section>`;
}

/** One uPlot chart, fed new data on every render. */
function Chart({ title, series, data }) {
  const box = useRef(null);
  const plot = useRef(null);
  const shape = series.join('\n');
  useEffect(() => {
    const p = new uPlot(
      {
        title,
        width: 420,
        height: 200,
        // at least two minutes across, so a young host's few values do not stretch over years
        scales: { x: { time: true, range: (_u, min, max) => [Math.min(min, max - 120), max] } },
        axes: [{}, { size: 70 }],
        series: [{}, ...series.map((label, i) => ({ label, stroke: `hsl(${(i * 67) % 360} 60% 45%)` }))],
      },
      data,
      box.current,
    );
    plot.current = p;
    return () => p.destroy();
  }, [shape]);
  useEffect(() => plot.current?.setData(data), [data]);
  // how many values the chart shows (for the page's test, and anyone curious)
  const points = data.slice(1).reduce((n, column) => n + column.filter((v) => v !== null).length, 0);
  return html`<div class="chart" data-points=${points} ref=${box}></div>`;
}

/** The counters of each host and of the VMs it runs, from its /rrd_updates (JSON). */
function Charts({ session, hosts, vmNames }) {
  const [updates, setUpdates] = useState({});
  useEffect(() => {
    let stopped = false;
    const load = async () => {
      // ten minutes back, less one step: exactly ten would fall outside the 5-second archive
      // whenever the host's last sample is in the same second, and a young host's 1-minute
      // archive has no values yet (rrdd picks the finest archive that holds `start`)
      const start = Math.floor(Date.now() / 1000) - 595;
      const found = {};
      for (const [, host] of hosts) {
        const here = host.address === location.hostname;
        const origin = here ? '' : `${location.protocol}//${host.address}${location.port ? `:${location.port}` : ''}`;
        try {
          const reply = await fetch(
            `${origin}/rrd_updates?start=${start}&cf=AVERAGE&host=true&json=true&session_id=${encodeURIComponent(session)}`,
          );
          if (reply.ok) found[host.uuid] = await reply.json();
        } catch {
          // another host the browser cannot reach (its certificate, say): no charts for it
        }
      }
      if (!stopped) setUpdates(found);
    };
    load();
    const timer = setInterval(load, CHART_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [session, hosts.map(([, h]) => h.uuid).join()]);

  const charts = [];
  for (const [, host] of hosts) {
    const u = updates[host.uuid];
    if (!u || u.data.length === 0) continue;
    const rows = [...u.data].sort((a, b) => a.t - b.t);
    const times = rows.map((r) => r.t);
    const column = (i, f = (v) => v) => rows.map((r) => (typeof r.values[i] === 'number' ? f(r.values[i]) : null));
    const legend = u.meta.legend.map((l) => l.split(':'));
    const hostCol = (name) => legend.findIndex(([, kind, , ds]) => kind === 'host' && ds === name);
    const cpu = hostCol('cpu_avg');
    const free = hostCol('memory_free_kib');
    if (cpu >= 0)
      charts.push({
        key: `${host.uuid}-cpu`,
        title: `${host.name_label}: CPU %`,
        series: ['cpu_avg'],
        data: [times, column(cpu, (v) => v * 100)],
      });
    if (free >= 0)
      charts.push({
        key: `${host.uuid}-mem`,
        title: `${host.name_label}: free memory (MiB)`,
        series: ['memory_free'],
        data: [times, column(free, (v) => v / 1024)],
      });
    const vmCpus = legend.map((l, i) => [l, i]).filter(([[, kind, , ds]]) => kind === 'vm' && ds === 'cpu0');
    if (vmCpus.length > 0)
      charts.push({
        key: `${host.uuid}-vms`,
        title: `${host.name_label}: VM vCPU 0 %`,
        series: vmCpus.map(([[, , uuid]]) => vmNames[uuid] ?? uuid),
        data: [times, ...vmCpus.map(([, i]) => column(i, (v) => v * 100))],
      });
  }
  // a young host's archive is mostly rows without values: the charts start at its first value
  for (const c of charts) {
    const first = c.data[0].findIndex((_, k) => c.data.slice(1).some((column) => column[k] !== null));
    if (first > 0) c.data = c.data.map((column) => column.slice(first));
  }
  return html`<section>
    <h2>Counters</h2>
    <div class="charts">${charts.length === 0 ? html`<p>Waiting for counters...</p>` : charts.map((c) => html`<${Chart} ...${c} />`)}</div>
  </section>`;
}

/** A VM's console: noVNC on the page's own host, which forwards to the VM's host if need be. */
function Console({ vm, session, onClose }) {
  const screen = useRef(null);
  const [status, setStatus] = useState('connecting');
  useEffect(() => {
    let rfb;
    let gone = false;
    (async () => {
      const { default: RFB } = await import('novnc');
      if (gone) return;
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const url = `${scheme}//${location.host}/console?uuid=${vm.uuid}&session_id=${encodeURIComponent(session)}`;
      rfb = new RFB(screen.current, url, { wsProtocols: ['binary'] });
      rfb.scaleViewport = true;
      rfb.addEventListener('connect', () => {
        setStatus('connected');
        rfb.focus();
      });
      rfb.addEventListener('disconnect', (e) => setStatus(e.detail.clean ? 'disconnected' : 'connection lost'));
    })().catch((e) => setStatus(`failed: ${e.message}`));
    return () => {
      gone = true;
      rfb?.disconnect();
    };
  }, [vm.uuid, session]);
  return html`<section class="console">
    <h2>Console: ${vm.name_label} <small class="console-status">(${status})</small> <button onClick=${onClose}>Close</button></h2>
    <div class="console-screen" ref=${screen}></div>
  </section>`;
}

function Pool({ session, onLogout }) {
  const [state, setState] = useState(null);
  const [error, setError] = useState(null);
  const [consoleVm, setConsoleVm] = useState(null);
  useEffect(() => {
    let stopped = false;
    const poll = async () => {
      try {
        const [hosts, metrics, vms] = await Promise.all([
          rpc('host.get_all_records', [session]),
          rpc('host_metrics.get_all_records', [session]),
          rpc('VM.get_all_records', [session]),
        ]);
        if (!stopped) setState({ hosts, metrics, vms });
      } catch (e) {
        if (e.code === 'SESSION_INVALID') onLogout();
        else if (!stopped) setError(e.message);
      }
    };
    poll();
    const timer = setInterval(poll, POLL_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [session]);
  if (!state) return html`<p>Loading...</p>`;
  const byName = (a, b) => a[1].name_label.localeCompare(b[1].name_label);
  const hosts = Object.entries(state.hosts).sort(byName);
  const vms = Object.entries(state.vms)
    .filter(([, vm]) => !vm.is_a_template && !vm.is_control_domain && !vm.is_a_snapshot)
    .sort(byName);
  const vmNames = Object.fromEntries(vms.map(([, vm]) => [vm.uuid, vm.name_label]));
  const shown = consoleVm && vms.find(([, vm]) => vm.uuid === consoleVm.uuid)?.[1];
  const logout = async () => {
    await rpc('session.logout', [session]).catch(() => undefined);
    onLogout();
  };
  return html`<header><span>xapi-ts: ${hosts.length} host${hosts.length === 1 ? '' : 's'}, ${vms.length} VMs</span><button onClick=${logout}>Log out</button></header>
    <main>
      ${error && html`<p class="error">${error} <button onClick=${() => setError(null)}>Dismiss</button></p>`}
      <${Hosts} hosts=${hosts} metrics=${state.metrics} />
      <${Vms} vms=${vms} hostsByRef=${state.hosts} session=${session} onConsole=${setConsoleVm} onError=${setError} />
      ${shown && html`<${Console} vm=${shown} session=${session} onClose=${() => setConsoleVm(null)} />`}
      <${Charts} session=${session} hosts=${hosts} vmNames=${vmNames} />
    </main>`;
}

function App() {
  const [session, setSession] = useState(() => sessionStorage.getItem(SESSION_KEY));
  const login = (s) => {
    sessionStorage.setItem(SESSION_KEY, s);
    setSession(s);
  };
  const logout = () => {
    sessionStorage.removeItem(SESSION_KEY);
    setSession(null);
  };
  return session ? html`<${Pool} session=${session} onLogout=${logout} />` : html`<${Login} onLogin=${login} />`;
}

render(html`<${App} />`, document.getElementById('app'));
