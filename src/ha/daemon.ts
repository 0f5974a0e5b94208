// One host's HA daemon (xhad's role; ha.md §1-4): network heartbeats to every peer over UDP,
// statefile heartbeats in this host's slot of the shared statefile, the liveset formed at start
// and shrunk by the fault handler as xhad does (largest partition, ties to the lowest index,
// statefile-loss rule), fencing through a watchdog process of its own. xapi talks to it as to
// xhad's scripts (start, query_liveset, set_pool_state, disarm_fencing, stop) and hears each
// liveset change as it happens (the 'liveset' event) instead of polling.
//
// It runs inside the xapi process: a stopped or hung xapi stops its pets too, and the watchdog
// fences the host after Wh (hb) or Ws (sf), where xhad would first notice a failed health check.
import { createSocket, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { HaError, XHA_ERRNO } from './errors.js';
import { decodePacket, encodePacket, type Packet } from './packet.js';
import { CorruptBlock, PoolState, StatefileIo, type GlobalBlock, type Slot } from './statefile.js';
import { survives, type Published } from './survival.js';
import type { Timeouts } from './timeouts.js';
import { Watchdog } from './watchdog.js';

/** xhad.conf, as the daemon needs it (xapi writes it at preconfigure). */
export interface HaConfig {
  generation: string;
  udpPort: number;
  /** Every host of the pool, in the order xapi lists them: a host's index is its position. */
  hosts: Array<{ uuid: string; address: string }>;
  localUuid: string;
  statefile: string;
  timeouts: Timeouts;
}

export interface LivesetHost {
  uuid: string;
  index: number;
  liveness: boolean;
  master: boolean;
  statefileAccess: boolean;
  statefileCorrupted: boolean;
  excluded: boolean;
}

/** query_liveset's answer (the parts of xhad's XML that xapi reads). */
export interface LivesetInfo {
  status: 'Online' | 'Starting';
  localhost: { uuid: string; index: number };
  hosts: LivesetHost[];
  /** Surviving by the statefile-loss rule (warning statefile_lost). */
  statefileLost: boolean;
}

export interface DaemonOptions {
  /** The simulator's state directory of this host: what a fence ends. */
  simDir: string;
  /** A JSON file `{"dropHeartbeats": [host uuid...]}`: heartbeats to and from those hosts are dropped. */
  faultFile?: string;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void; error(o: object, m: string): void };
}

type Phase = 'starting' | 'online' | 'stopped';

const CHECK_MS = 200;

export class HaDaemon extends EventEmitter {
  readonly index: number;
  private phase: Phase = 'stopped';
  private socket: Socket | undefined;
  private io: StatefileIo | undefined;
  private readonly watchdog: Watchdog;
  private armed = false;
  private timers: NodeJS.Timeout[] = [];
  /** Heartbeat and slot sequence: from the clock, so a restarted daemon's numbers still grow. */
  private sequence = Date.now();
  private liveset: number[] = [];
  private proposed: number[] = [];
  private fenceRequest = false;
  private faultHandling = false;
  private sr2 = false;
  private dropped = new Set<number>();
  /** Last valid heartbeat from each peer: when (monotonic ms) and what it said. */
  private readonly heard = new Map<number, { at: number; packet: Packet }>();
  /** Each host's slot as last read, and when its sequence last moved. */
  private readonly slots = new Map<number, { slot: Slot; changedAt: number | undefined; changes: number }>();
  private statefileOkAt: number | undefined;
  private statefileCorrupted = false;
  private global: GlobalBlock | undefined;
  private pendingPoolState: { state: PoolState; done: Array<() => void> } | undefined;
  private sfLoop: Promise<void> | undefined;
  private stopping = new AbortController();

  constructor(
    readonly config: HaConfig,
    private readonly opts: DaemonOptions,
  ) {
    super();
    this.index = config.hosts.findIndex((h) => h.uuid === config.localUuid);
    if (this.index < 0) throw new HaError(XHA_ERRNO.invalidConfig, 'this host is not in the configuration');
    this.watchdog = new Watchdog(opts.simDir);
  }

  /** The phase as it is now (it changes under awaits; TypeScript's narrowing does not know). */
  private currentPhase(): Phase {
    return this.phase;
  }

  private get t(): Timeouts {
    return this.config.timeouts;
  }

  private get all(): number[] {
    return this.config.hosts.map((_, i) => i);
  }

  /** ha_start_daemon: resolves once this host is in the liveset (Online), or rejects with xhad's exit code. */
  async start(): Promise<void> {
    if (this.phase !== 'stopped') throw new HaError(XHA_ERRNO.daemonPresent, 'the daemon is running');
    try {
      this.io = await StatefileIo.open(this.config.statefile);
      this.global = await this.io.readGlobal();
    } catch (e) {
      await this.io?.close().catch(() => undefined);
      this.io = undefined;
      throw new HaError(XHA_ERRNO.statefileAccess, `cannot read the statefile: ${String(e)}`);
    }
    const g = this.global;
    if (g.generation !== this.config.generation)
      throw await this.abort(XHA_ERRNO.generationMismatch, 'the statefile is of another generation');
    if (g.poolState === PoolState.None) throw await this.abort(XHA_ERRNO.statefileAccess, 'the statefile holds no pool state');
    if (g.poolState === PoolState.Invalid) throw await this.abort(XHA_ERRNO.invalidPoolState, 'the pool state is invalid');
    const initial = g.poolState;
    this.phase = 'starting';
    this.stopping = new AbortController();
    await this.bindSocket();
    this.sfLoop = this.statefileLoop();
    this.every(this.t.heartbeatInterval * 1000, () => this.heartbeatTick());
    this.heartbeatTick();
    const deadline = performance.now() + (initial === PoolState.Init ? this.t.enableJoinTimeout : this.t.bootJoinTimeout) * 1000;
    while (this.phase === 'starting') {
      if (this.tryToForm()) break;
      if (performance.now() > deadline) {
        throw await this.abort(initial === PoolState.Init ? XHA_ERRNO.joinTimeout : XHA_ERRNO.cannotJoin, 'no liveset formed in time');
      }
      await sleep(CHECK_MS);
    }
    if (this.currentPhase() !== 'online') throw await this.abort(XHA_ERRNO.invalidPoolState, 'stopped while starting');
    this.arm();
    this.every(CHECK_MS, () => this.check());
    this.opts.log.info({ liveset: this.uuids(this.liveset) }, 'HA: in the liveset, fencing armed');
    this.emit('liveset', this.uuids(this.liveset));
  }

  /** query_liveset. */
  query(): LivesetInfo {
    const now = performance.now();
    const hb = this.hbdomain(now);
    const hosts = this.config.hosts.map((h, i): LivesetHost => {
      const access = i === this.index ? this.hasStatefileAccess(now) : (this.heard.get(i)?.packet.sfAccess ?? false);
      return {
        uuid: h.uuid,
        index: i,
        liveness: this.liveset.includes(i),
        master: false,
        statefileAccess: hb.includes(i) && access,
        statefileCorrupted: i === this.index ? this.statefileCorrupted : false,
        excluded: this.slots.get(i)?.slot.excluded ?? false,
      };
    });
    return {
      status: this.phase === 'online' ? 'Online' : 'Starting',
      localhost: { uuid: this.config.localUuid, index: this.index },
      hosts,
      statefileLost: this.sr2,
    };
  }

  /** The hosts heard on the network now (uuids), for host.ha_network_peers. */
  networkPeers(): string[] {
    return this.uuids(this.hbdomain(performance.now()));
  }

  /** The hosts `uuid` hears on the network, as it last told (its heartbeat, else its slot). */
  peersOf(uuid: string): string[] {
    const i = this.config.hosts.findIndex((h) => h.uuid === uuid);
    if (i === this.index) return this.networkPeers();
    const seen = this.heard.get(i)?.packet.hbdomain ?? this.slots.get(i)?.slot.hbdomain ?? [];
    return this.uuids(seen);
  }

  hasStatefileAccessNow(): boolean {
    return this.hasStatefileAccess(performance.now());
  }

  /** ha_set_pool_state through the daemon: written at the next statefile cycle. */
  setPoolState(state: PoolState): Promise<void> {
    if (this.phase === 'stopped') return Promise.reject(new HaError(XHA_ERRNO.daemonAbsent, 'no daemon'));
    return new Promise((resolve) => {
      if (this.pendingPoolState) this.pendingPoolState = { state, done: [...this.pendingPoolState.done, resolve] };
      else this.pendingPoolState = { state, done: [resolve] };
    });
  }

  /** ha_disarm_fencing: self-fencing becomes a no-op, the watchdog closes, the liveset no longer shrinks. */
  async disarm(): Promise<void> {
    this.armed = false;
    await this.watchdog.disarm();
  }

  /** ha_stop_daemon: an orderly stop (the watchdog closed, nobody fenced). */
  async stop(): Promise<void> {
    if (this.phase === 'stopped') return;
    await this.shutdown();
  }

  get running(): boolean {
    return this.phase !== 'stopped';
  }

  get watchdogPid(): number | undefined {
    return this.watchdog.pid;
  }

  // --- start-up ---

  /**
   * Forms the liveset: adopt one a peer already formed if it holds me (the pool ACTIVE), else,
   * once every host is on both channels and proposes every host, all of them.
   */
  private tryToForm(): boolean {
    const now = performance.now();
    if (this.global?.poolState === PoolState.Active) {
      for (const [, { packet }] of this.freshPeers(now)) {
        if (packet.phase === 'online' && packet.liveset.includes(this.index)) {
          this.goOnline(packet.liveset);
          return true;
        }
      }
    }
    const hb = this.hbdomain(now);
    const sf = this.sfdomain(now);
    if (!this.all.every((h) => hb.includes(h) && sf.includes(h))) return false;
    this.proposed = this.all;
    for (const [, { packet }] of this.freshPeers(now)) {
      const theirs = packet.phase === 'online' ? packet.liveset : packet.proposed;
      if (!this.all.every((h) => theirs.includes(h))) return false;
    }
    if (this.freshPeers(now).length !== this.all.length - 1) return false;
    this.goOnline(this.all);
    if (this.global?.poolState === PoolState.Init) this.requestPoolState(PoolState.Active);
    return true;
  }

  private goOnline(liveset: number[]): void {
    this.liveset = [...liveset].sort((a, b) => a - b);
    this.proposed = this.liveset;
    this.phase = 'online';
  }

  private requestPoolState(state: PoolState): void {
    if (!this.pendingPoolState) this.pendingPoolState = { state, done: [] };
  }

  private arm(): void {
    this.watchdog.arm();
    this.armed = true;
    this.watchdog.pet('hb', this.t.heartbeatWatchdogTimeout);
    this.watchdog.pet('sf', this.t.stateFileWatchdogTimeout);
  }

  // --- the network channel ---

  private async bindSocket(): Promise<void> {
    const me = this.config.hosts[this.index]!;
    const socket = createSocket('udp4');
    socket.on('message', (msg) => this.receive(msg));
    socket.on('error', (e) => this.opts.log.warn({ err: e }, 'HA: heartbeat socket error'));
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(this.config.udpPort, me.address, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    this.socket = socket;
  }

  private heartbeatTick(): void {
    if (this.phase === 'stopped') return;
    if (this.armed) this.watchdog.pet('hb', this.t.heartbeatWatchdogTimeout);
    void this.readFaults();
    this.sendHeartbeats();
  }

  private sendHeartbeats(): void {
    const now = performance.now();
    const packet: Packet = {
      generation: this.config.generation,
      uuid: this.config.localUuid,
      index: this.index,
      sequence: ++this.sequence,
      phase: this.phase === 'online' ? 'online' : 'starting',
      liveset: this.liveset,
      proposed: this.proposed,
      hbdomain: this.hbdomain(now),
      sfdomain: this.sfdomain(now),
      sfAccess: this.hasStatefileAccess(now),
      fenceRequest: this.fenceRequest,
    };
    const data = encodePacket(packet);
    this.config.hosts.forEach((h, i) => {
      if (i === this.index || this.dropped.has(i)) return;
      this.socket?.send(data, this.config.udpPort, h.address);
    });
  }

  private receive(msg: Buffer): void {
    const p = decodePacket(msg);
    if (!p || p.generation !== this.config.generation) return;
    const host = this.config.hosts[p.index];
    if (!host || host.uuid !== p.uuid || p.index === this.index || this.dropped.has(p.index)) return;
    const last = this.heard.get(p.index);
    if (last && p.sequence <= last.packet.sequence && p.sequence > last.packet.sequence - 1_000_000) return;
    this.heard.set(p.index, { at: performance.now(), packet: p });
    // A member that proposes a liveset without me, and asks for fencing: I am the one to go.
    if (
      p.fenceRequest &&
      this.phase === 'online' &&
      p.liveset.includes(p.index) &&
      this.liveset.includes(p.index) &&
      !p.proposed.includes(this.index)
    ) {
      this.selfFence(`host ${p.index} asks for my fencing`);
    }
  }

  private async readFaults(): Promise<void> {
    if (!this.opts.faultFile) return;
    let drop: string[] = [];
    try {
      drop = (JSON.parse(await readFile(this.opts.faultFile, 'utf8')) as { dropHeartbeats?: string[] }).dropHeartbeats ?? [];
    } catch {
      // no fault file: nothing dropped
    }
    this.dropped = new Set(drop.map((u) => this.config.hosts.findIndex((h) => h.uuid === u)).filter((i) => i >= 0));
  }

  // --- the statefile channel ---

  private async statefileLoop(): Promise<void> {
    while (this.phase !== 'stopped') {
      if (this.armed) this.watchdog.pet('sf', this.t.stateFileWatchdogTimeout);
      await this.statefileCycle();
      if (this.currentPhase() === 'stopped') break;
      const jitter = Math.random() * 500;
      await sleep(this.t.stateFileInterval * 1000 + jitter, undefined, { signal: this.stopping.signal }).catch(() => undefined);
    }
  }

  private async statefileCycle(): Promise<void> {
    const io = this.io;
    if (!io) return;
    try {
      const now = performance.now();
      const pending = this.pendingPoolState;
      if (pending && this.global) {
        this.global = { ...this.global, poolState: pending.state };
        await io.writeGlobal(this.global);
      }
      await io.writeSlot({
        sequence: ++this.sequence,
        index: this.index,
        uuid: this.config.localUuid,
        excluded: false,
        starting: this.phase === 'starting',
        current: this.liveset,
        proposed: this.proposed,
        hbdomain: this.hbdomain(now),
        sfdomain: this.sfdomain(now),
        smPhase: this.phase === 'online' ? 1 : 0,
        weight: 1,
      });
      if (pending) {
        this.pendingPoolState = undefined;
        for (const done of pending.done) done();
      }
      const global = await io.readGlobal();
      for (let i = 0; i < this.config.hosts.length; i++) {
        if (i === this.index) continue;
        const slot = await io.readSlot(i);
        if (!slot) continue;
        const seen = this.slots.get(i);
        if (!seen) this.slots.set(i, { slot, changedAt: undefined, changes: 0 });
        else if (seen.slot.sequence !== slot.sequence) this.slots.set(i, { slot, changedAt: performance.now(), changes: seen.changes + 1 });
      }
      this.statefileOkAt = performance.now();
      this.statefileCorrupted = false;
      this.global = global;
      if (global.generation !== this.config.generation) void this.exit(XHA_ERRNO.generationMismatch, 'the statefile changed generation');
      else if (global.poolState === PoolState.Invalid)
        void this.exit(XHA_ERRNO.invalidPoolState, 'the pool state is invalid: HA is being disabled');
    } catch (e) {
      this.statefileCorrupted = e instanceof CorruptBlock;
      this.opts.log.warn({ err: e }, 'HA: statefile I/O failed');
    }
  }

  // --- liveness ---

  private freshPeers(now: number): Array<[number, { at: number; packet: Packet }]> {
    return [...this.heard].filter(([i, h]) => !this.dropped.has(i) && now - h.at < this.t.heartbeatTimeout * 1000);
  }

  private hbdomain(now: number): number[] {
    return [this.index, ...this.freshPeers(now).map(([i]) => i)].sort((a, b) => a - b);
  }

  private hasStatefileAccess(now: number): boolean {
    return this.statefileOkAt !== undefined && now - this.statefileOkAt < this.t.stateFileTimeout * 1000;
  }

  private sfdomain(now: number): number[] {
    const hosts = this.hasStatefileAccess(now) ? [this.index] : [];
    for (const [i, s] of this.slots) {
      if (s.changedAt !== undefined && now - s.changedAt < this.t.stateFileTimeout * 1000) hosts.push(i);
    }
    return hosts.sort((a, b) => a - b);
  }

  private uuids(hosts: number[]): string[] {
    return hosts.map((i) => this.config.hosts[i]!.uuid);
  }

  /** Every 200 ms while online: a member gone from either channel starts the fault handler. */
  private check(): void {
    if (this.phase !== 'online' || this.faultHandling) return;
    if (this.faulty().length > 0) void this.faultHandler();
  }

  /** Liveset members missing from my heartbeat domain, or (unless surviving by rule 2) my statefile domain. */
  private faulty(): number[] {
    const now = performance.now();
    const hb = this.hbdomain(now);
    const sf = this.sfdomain(now);
    return this.liveset.filter((h) => !hb.includes(h) || (!this.sr2 && !sf.includes(h)));
  }

  /**
   * xhad's fault handler, in its essentials: let every host notice the fault and publish its
   * views; decide by the survival rules who stays; the losers fence themselves at once; the
   * winners ask them to, and drop them from the liveset only once their watchdogs must have
   * fired, whatever they did meanwhile.
   */
  private async faultHandler(): Promise<void> {
    this.faultHandling = true;
    try {
      // FH1: every other host notices the same fault within a heartbeat interval; then two more
      // slot writes from each host on the statefile, so its slot shows what it sees now.
      await sleep(this.t.heartbeatInterval * 1000 + 500);
      const base = new Map([...this.slots].map(([i, s]) => [i, s.changes]));
      const settleBy = performance.now() + 3 * (this.t.stateFileInterval + 1) * 1000;
      while (this.phase === 'online' && performance.now() < settleBy) {
        const sf = this.sfdomain(performance.now()).filter((i) => i !== this.index);
        if (sf.every((i) => (this.slots.get(i)?.changes ?? 0) - (base.get(i) ?? 0) >= 2)) break;
        await sleep(CHECK_MS);
      }
      if (this.phase !== 'online') return;
      if (this.faulty().length === 0) return;
      // FH3: the survival test.
      const now = performance.now();
      const published = new Map<number, Published>();
      for (const [i, s] of this.slots)
        published.set(i, { hbdomain: s.slot.hbdomain, sfdomain: s.slot.sfdomain, weight: s.slot.weight || 1 });
      const access = new Map<number, boolean>([[this.index, this.hasStatefileAccess(now)]]);
      for (const [i, { packet }] of this.freshPeers(now)) access.set(i, packet.sfAccess);
      const excluded = new Set([...this.slots].filter(([, s]) => s.slot.excluded).map(([i]) => i));
      const hb = this.hbdomain(now);
      const sf = this.sfdomain(now);
      const verdict = survives({
        me: this.index,
        liveset: this.liveset,
        hbdomain: hb,
        sfdomain: sf,
        weight: 1,
        published,
        statefileAccess: access,
        excluded,
      });
      this.opts.log.warn({ liveset: this.liveset, hbdomain: hb, sfdomain: sf, verdict }, 'HA: fault handler: survival test');
      if (!verdict.survive) {
        this.selfFence('not in the surviving partition');
        return;
      }
      if (verdict.rule === '2') this.sr2 = true;
      const proposed = this.liveset.filter((h) => hb.includes(h) && (this.sr2 || sf.includes(h)));
      if (proposed.length === this.liveset.length) return;
      this.proposed = proposed;
      this.fenceRequest = true;
      this.sendHeartbeats();
      // FH4: whoever leaves must have fenced before it leaves: its last pet was at most T1 (or
      // T2) before we noticed, and its watchdog fires at most max(Wh, Ws) after that pet.
      const t = this.t;
      const waitS = Math.max(
        Math.max(t.heartbeatWatchdogTimeout, t.stateFileWatchdogTimeout) -
          Math.min(t.heartbeatTimeout, t.stateFileTimeout) +
          Math.max(t.heartbeatInterval, t.stateFileInterval),
        10,
      );
      await sleep(waitS * 1000);
      if (this.phase !== 'online' || !this.armed) return;
      this.liveset = this.liveset.filter((h) => proposed.includes(h));
      this.opts.log.warn({ liveset: this.uuids(this.liveset) }, 'HA: the liveset shrank');
      this.emit('liveset', this.uuids(this.liveset));
    } finally {
      this.fenceRequest = false;
      this.proposed = this.liveset;
      this.faultHandling = false;
    }
  }

  /** Fenced at once by the watchdog (a no-op unless fencing is armed). */
  private selfFence(reason: string): void {
    if (!this.armed) return;
    this.opts.log.error({ reason }, 'HA: self-fencing');
    // Nothing more goes out: the others must not hear a host that is going.
    this.phase = 'stopped';
    this.socket?.close();
    this.socket = undefined;
    this.watchdog.fence();
  }

  // --- stopping ---

  private every(ms: number, fn: () => void): void {
    this.timers.push(setInterval(fn, ms));
  }

  /** The daemon ends by itself (as xhad exits with a code): watchdog closed, no fence. */
  private async exit(code: number, reason: string): Promise<void> {
    this.opts.log.warn({ code, reason }, 'HA: the daemon stops');
    await this.shutdown();
    this.emit('exit', code);
  }

  private async abort(code: number, reason: string): Promise<HaError> {
    await this.shutdown();
    return new HaError(code, reason);
  }

  private async shutdown(): Promise<void> {
    this.phase = 'stopped';
    this.stopping.abort();
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.socket?.close();
    this.socket = undefined;
    await this.disarm();
    const loop = this.sfLoop;
    this.sfLoop = undefined;
    if (loop) await loop.catch(() => undefined);
    await this.io?.close().catch(() => undefined);
    this.io = undefined;
    for (const done of this.pendingPoolState?.done ?? []) done();
    this.pendingPoolState = undefined;
  }
}
