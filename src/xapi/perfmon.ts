// perfmon, xapi's alarm daemon, inside each host: every interval it reads this host's new
// /rrd_updates rows (AVERAGE at its rrd step, the host and the VMs running here), and for each
// object whose other_config:perfmon names variables — `<config><variable><name value="cpu_usage"/>
// <alarm_trigger_level value="0.5"/>...</variable></config>` — consolidates the matching data
// sources per row and counts down the trigger period while the level is crossed; at zero it
// raises an ALARM message (priority alarm_priority, body "value: ...\nconfig:\n<variable>")
// and stays quiet for alarm_auto_inhibit_period. Defaults are the perfmon script's.
import { SaxesParser } from 'saxes';
import type { HostContext } from '../api/context.js';
import type { Rrdd } from '../rrdd/service.js';
import { createMessage } from './message.js';

/** perfmon's default loop interval (s) and rrd step (s). */
export const PERFMON_INTERVAL_S = 300;
export const PERFMON_RRD_STEP_S = 60;

interface XmlElement {
  name: string;
  attrs: [string, string][];
  children: XmlElement[];
}

interface Variable {
  name: string;
  /** The <variable> element as written (the alarm's body quotes it). */
  text: string;
  regex: RegExp;
  consolidate: (values: number[]) => number;
  level: number;
  high: boolean;
  period: number;
  inhibit: number;
  priority: string;
  /** State: seconds of bad values still to go, and when the last alarm went (s). */
  countdown: number;
  lastAlarm: number;
}

type Kind = 'VM' | 'Host';

function defaultsOf(kind: Kind, name: string, tag: string): string {
  switch (tag) {
    case 'consolidation_fn':
      if (name === 'cpu_usage') return 'average';
      if (kind === 'VM' && name === 'fs_usage') return 'get_percent_fs_usage';
      if (kind === 'VM' && name === 'log_fs_usage') return 'get_percent_log_fs_usage';
      if (kind === 'VM' && name === 'mem_usage') return 'get_percent_mem_usage';
      return 'sum';
    case 'rrd_regex':
      if (name === 'cpu_usage') return 'cpu[0-9]+';
      if (kind === 'VM') {
        if (name === 'network_usage') return 'vif_[0-9]+_[rt]x';
        if (name === 'disk_usage') return 'vbd_(xvd|hd)[a-z]+_(read|write)';
        if (name === 'fs_usage' || name === 'log_fs_usage' || name === 'mem_usage') return '_$_DUMMY__';
        if (name === 'memory_internal_free') return name;
      } else {
        if (name === 'network_usage') return 'pif_eth[0-9]+_[rt]x';
        if (name === 'memory_free_kib') return name;
        if (/^sr_io_throughput_total_[0-9a-f]{8}$/.test(name)) return name.slice(3);
      }
      throw new Error(`variable ${name}: no default rrd_regex - please specify one`);
    case 'alarm_trigger_period':
      return '60';
    case 'alarm_auto_inhibit_period':
      return '3600';
    case 'alarm_trigger_level':
      if (kind === 'VM' && (name === 'fs_usage' || name === 'log_fs_usage')) return '0.9';
      if (kind === 'VM' && name === 'mem_usage') return '0.95';
      throw new Error(`variable ${name}: no default alarm_trigger_level - please specify one`);
    case 'alarm_trigger_sense':
      return name === (kind === 'VM' ? 'memory_internal_free' : 'memory_free_kib') ? 'low' : 'high';
    case 'alarm_priority':
      return '3';
  }
  throw new Error(`variable ${name}: no default available for tag ${tag}`);
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const CONSOLIDATIONS: Record<string, (xs: number[]) => number> = {
  sum,
  average: (xs) => (xs.length === 0 ? 0 : sum(xs) / xs.length),
  max: (xs) => Math.max(...xs),
  // what these read (the guest's file systems, squeezed's view) the simulator does not report
  get_percent_fs_usage: () => 0,
  get_percent_log_fs_usage: () => 0,
  get_percent_mem_usage: () => 0,
  get_percent_sr_usage: () => 0,
};

function parseXml(text: string): XmlElement {
  const parser = new SaxesParser();
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  parser.on('opentag', (t) => {
    const el: XmlElement = { name: t.name, attrs: Object.entries(t.attributes as Record<string, string>), children: [] };
    if (stack.length > 0) stack[stack.length - 1]!.children.push(el);
    else root = el;
    stack.push(el);
  });
  parser.on('closetag', () => void stack.pop());
  parser.write(text).close();
  if (!root) throw new Error('no document element');
  return root;
}

const escapeAttr = (v: string) => v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/"/g, '&quot;').replace(/>/g, '&gt;');

/** An element as Python's minidom toprettyxml writes it (tab indents, one element a line). */
function pretty(el: XmlElement, indent = ''): string {
  const attrs = el.attrs.map(([k, v]) => ` ${k}="${escapeAttr(v)}"`).join('');
  if (el.children.length === 0) return `${indent}<${el.name}${attrs}/>\n`;
  return `${indent}<${el.name}${attrs}>\n${el.children.map((c) => pretty(c, `${indent}\t`)).join('')}${indent}</${el.name}>\n`;
}

/** The variables of a perfmon configuration; a bad one is skipped with the reason given to `bad`. */
export function parseConfig(kind: Kind, xml: string, bad: (why: string) => void, now: number): Variable[] {
  const vars: Variable[] = [];
  for (const v of parseXml(xml).children.filter((c) => c.name === 'variable')) {
    try {
      const tag = (t: string) => v.children.find((c) => c.name === t)?.attrs.find(([k]) => k === 'value')?.[1];
      const name = tag('name');
      if (name === undefined) throw new Error("variable missing 'name' tag");
      const get = (t: string) => tag(t) ?? defaultsOf(kind, name, t);
      const fn = get('consolidation_fn');
      const consolidate = CONSOLIDATIONS[fn];
      if (!consolidate) throw new Error(`variable ${name}: consolidation function ${fn} not supported`);
      const period = Number.parseInt(get('alarm_trigger_period'), 10);
      const inhibit = Number.parseInt(get('alarm_auto_inhibit_period'), 10);
      const level = Number.parseFloat(get('alarm_trigger_level'));
      if (!Number.isFinite(period) || !Number.isFinite(inhibit) || Number.isNaN(level))
        throw new Error(`variable ${name}: a number does not read`);
      vars.push({
        name,
        text: pretty(v),
        regex: new RegExp(`^${get('rrd_regex')}$`),
        consolidate,
        level,
        high: get('alarm_trigger_sense') === 'high',
        period,
        inhibit,
        priority: get('alarm_priority'),
        countdown: period,
        lastAlarm: now - inhibit,
      });
    } catch (e) {
      bad(e instanceof Error ? e.message : String(e));
    }
  }
  return vars;
}

/** One monitored object: its configuration text and variables, kept while the text is unchanged. */
interface Monitor {
  config: string;
  vars: Variable[];
}

export interface PerfmonOptions {
  intervalMs?: number;
  rrdStepS?: number;
}

export class Perfmon {
  private readonly monitors = new Map<string, Monitor>();
  private timer?: NodeJS.Timeout;
  private from: number;
  private running?: Promise<void>;
  private readonly step: number;
  private readonly intervalMs: number;

  constructor(
    private readonly host: HostContext,
    private readonly rrdd: Rrdd,
    o: PerfmonOptions = {},
  ) {
    this.step = o.rrdStepS ?? PERFMON_RRD_STEP_S;
    this.intervalMs = o.intervalMs ?? PERFMON_INTERVAL_S * 1000;
    this.from = Math.trunc(Date.now() / 1000) - Math.trunc(this.intervalMs / 1000);
  }

  run(): void {
    this.timer = setInterval(() => {
      this.running ??= this.pass()
        .catch((e: unknown) => this.host.log.warn({ err: e }, 'perfmon pass failed'))
        .finally(() => (this.running = undefined));
    }, this.intervalMs);
    this.timer.unref();
  }

  /** One loop of perfmon: the new rows, each object's variables updated, alarms raised. */
  async pass(): Promise<void> {
    const x = this.rrdd.updates({ start: this.from, interval: this.step, cf: 'AVERAGE', host: true });
    this.from = x.end + 1;
    // columns per object: "AVERAGE:vm:<uuid>:<ds>"
    const byObject = new Map<string, { kind: Kind; columns: [string, number][] }>();
    x.legend.forEach((entry, i) => {
      const m = /^[A-Z]+:(host|vm):([^:]+):(.+)$/.exec(entry);
      if (!m) return;
      const key = m[2]!;
      const o = byObject.get(key) ?? { kind: m[1] === 'vm' ? ('VM' as Kind) : ('Host' as Kind), columns: [] };
      o.columns.push([m[3]!, i]);
      byObject.set(key, o);
    });
    for (const key of this.monitors.keys()) if (!byObject.has(key)) this.monitors.delete(key);
    const rows = [...x.rows].reverse(); // oldest first
    for (const [uuid, o] of byObject) {
      const vars = await this.variables(uuid, o.kind);
      for (const v of vars) {
        const cols = o.columns.filter(([ds]) => v.regex.test(ds)).map(([, i]) => i);
        for (const row of rows) await this.update(v, o.kind, uuid, v.consolidate(cols.map((i) => row.values[i]!)));
      }
    }
  }

  private async variables(uuid: string, kind: Kind): Promise<Variable[]> {
    const cls = kind === 'VM' ? 'VM' : 'host';
    const ref = await this.host.db.refByUuid(cls, uuid);
    const row = ref ? await this.host.db.tryGet(cls, ref) : undefined;
    const config = row?.other_config.perfmon ?? '';
    const known = this.monitors.get(uuid);
    if (known && known.config === config) return known.vars;
    let vars: Variable[] = [];
    if (config !== '') {
      try {
        vars = parseConfig(
          kind,
          config,
          (why) => this.host.log.warn({ uuid, why }, 'perfmon: a variable is misconfigured'),
          Date.now() / 1000,
        );
      } catch (e) {
        this.host.log.warn({ err: e, uuid }, 'perfmon: the configuration does not parse');
      }
      // a variable whose configuration is unchanged keeps its state
      for (const v of vars) {
        const old = known?.vars.find((o) => o.name === v.name && o.text === v.text);
        if (old) Object.assign(v, { countdown: old.countdown, lastAlarm: old.lastAlarm });
      }
    }
    this.monitors.set(uuid, { config, vars });
    return vars;
  }

  private async update(v: Variable, kind: Kind, uuid: string, value: number): Promise<void> {
    const bad = v.high ? value > v.level : value < v.level;
    if (!bad) {
      v.countdown = v.period;
      return;
    }
    v.countdown -= this.step;
    if (v.countdown > 0) return;
    v.countdown = v.period;
    const now = Date.now() / 1000;
    if (now - v.lastAlarm < v.inhibit) return;
    v.lastAlarm = now;
    const body = `value: ${value.toFixed(6)}\nconfig:\n${v.text}`;
    await createMessage({ db: this.host.db, host: this.host }, 'ALARM', Number.parseInt(v.priority, 10) || 0, kind, uuid, body);
    await this.host.db.commit();
    this.host.log.info({ uuid, variable: v.name, value }, 'perfmon: ALARM raised');
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}
