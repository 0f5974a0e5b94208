// squeezed for one host: the memory broker between the host's finite RAM and its domains.
//
// Host RAM is split into: dom0's fixed allocation, the slush fund squeezed always keeps free
// (9 MiB), reservations (memory set aside for a domain being built, not yet owned by it), and
// domains (each owning target + overhead). Domains whose guest advertises feature-balloon are
// ballooned by one policy: every such domain gets the same fraction
//   (target − dynamic_min) / (dynamic_max − dynamic_min)
// of its dynamic range — all at dynamic_max when memory is plentiful, all at dynamic_min when it
// is scarce — so more VMs fit than their maxima would allow. Domains not (yet) advertising it
// (still booting, or without a balloon driver) keep what they were given. Simulated guests are
// co-operative: a new target is reached at once (actual = target).
//
// All amounts are bytes. Errors are xenopsd's Cannot_free_this_much_memory(needed, free).
import { DomainError } from './interface.js';

/** squeezed keeps this much host memory free at all times. */
export const SLUSH_FUND = 9 * 1024 * 1024;
const PAGE = 4096;

/**
 * The fraction policy, pure: targets for domains sharing `pool` bytes, or undefined when even
 * every domain at its dynamic_min does not fit. Targets are rounded down to whole pages so their
 * sum never exceeds the pool.
 */
export function balloon(pool: number, domains: { min: number; max: number }[]): number[] | undefined {
  const sumMin = domains.reduce((n, d) => n + d.min, 0);
  const sumMax = domains.reduce((n, d) => n + d.max, 0);
  if (sumMin > pool) return undefined;
  if (sumMax <= pool) return domains.map((d) => d.max);
  const fraction = (pool - sumMin) / (sumMax - sumMin);
  return domains.map((d) => d.min + Math.floor(((d.max - d.min) * fraction) / PAGE) * PAGE);
}

export interface DomainMemory {
  /** memory/dynamic-min and memory/dynamic-max, bytes. */
  dynamicMin: number;
  dynamicMax: number;
  /** The domain's fixed cost beyond its target (the overhead model), bytes. */
  overhead: number;
}

export interface SqueezedDomain extends DomainMemory {
  domid: number;
  /** memory/target, written by squeezed. */
  target: number;
  /** What the domain really holds (= target for a co-operative balloon driver). */
  actual: number;
  /** control/feature-balloon: the guest's balloon driver follows targets. */
  balloon: boolean;
}

interface Reservation {
  id: string;
  client: string;
  amount: number;
}

export interface SqueezedOptions {
  /** Total host RAM, bytes. */
  total: number;
  /** dom0's fixed allocation (dynamic_min = dynamic_max: it never balloons). */
  dom0: number;
  slush?: number;
  /** Called whenever squeezed moves a domain's target (and, co-operatively, its actual). */
  onTarget?: (domid: number, target: number) => void;
}

export class Squeezed {
  readonly total: number;
  readonly dom0: number;
  readonly slush: number;
  private readonly domainsById = new Map<number, SqueezedDomain>();
  private readonly reservations = new Map<string, Reservation>();
  private nextReservation = 0;
  /**
   * Running sums over the domains, kept by every change to one (account()), so that the
   * policy costs O(1) while memory is plentiful rather than a pass over every domain several
   * times per start or stop: `held` Σ max(target, actual) + overhead; `fixed` what the
   * ballooning domains cannot share (every overhead, and what non-ballooning domains hold);
   * `min`/`max` Σ dynamic range of the ballooning domains; `offMax` how many of those are not
   * at their dynamic_max. All are whole bytes (or counts), so the sums are exact.
   */
  private readonly sums = { held: 0, fixed: 0, min: 0, max: 0, offMax: 0 };

  constructor(private readonly opts: SqueezedOptions) {
    this.total = opts.total;
    this.dom0 = opts.dom0;
    this.slush = opts.slush ?? SLUSH_FUND;
  }

  // ---- the reservation protocol (memory_interface.ml) ---------------------------------------

  /** A client (re)connecting: reservations it never transferred belong to a dead session. */
  login(client: string): void {
    for (const [id, r] of this.reservations) if (r.client === client) this.reservations.delete(id);
    this.rebalanceQuietly();
  }

  /** reserve_memory: exactly `amount`, squeezing ballooning domains to make room. */
  reserveMemory(client: string, amount: number): string {
    return this.reserveMemoryRange(client, amount, amount).id;
  }

  /**
   * reserve_memory_range: sets aside between min and max bytes, squeezing ballooning domains
   * down toward their dynamic_min to make room. The reservation is treated as one more domain
   * under the fraction policy: it gets max when memory is plentiful and otherwise the same
   * fraction of [min, max] everyone gets — which is exactly where the new domain would be put
   * once it balloons, so nothing moves again when it joins.
   */
  reserveMemoryRange(client: string, min: number, max: number): { amount: number; id: string } {
    if (min < 0 || max < min) throw new DomainError('Internal_error', [`bad reservation range [${min}, ${max}]`]);
    const share = this.balance(min, { min, max });
    const amount = Math.max(min, Math.min(max, share));
    const id = `reservation-${++this.nextReservation}`;
    this.reservations.set(id, { id, client, amount });
    return { amount, id };
  }

  /**
   * transfer_reservation_to_domain: the reservation becomes the domain's memory. Its initial
   * target is the reservation less the domain's overhead (xenopsd's VM_create), or `target`
   * when given (a resumed domain gets the memory of its image back). Returns the target.
   */
  transferReservationToDomain(client: string, id: string, domid: number, memory: DomainMemory, target?: number): number {
    const r = this.reservation(client, id);
    if (this.domainsById.has(domid)) throw new DomainError('Already_exists', ['domain', String(domid)]);
    const initial = pageDown(target ?? Math.min(memory.dynamicMax, r.amount - memory.overhead));
    this.reservations.delete(id);
    this.addDomain({ ...memory, domid, target: initial, actual: initial, balloon: false });
    // anything the reservation held beyond target + overhead goes back to the others
    this.rebalanceQuietly();
    return initial;
  }

  /** delete_reservation: the domain was never built; the memory goes back. */
  deleteReservation(client: string, id: string): void {
    this.reservation(client, id);
    this.reservations.delete(id);
    this.rebalanceQuietly();
  }

  // ---- domains ------------------------------------------------------------------------------

  /**
   * Adopts a domain that already exists with `target` (after the toolstack restarted: squeezed
   * rebuilds its view from what the domains hold). No reservation, no squeezing.
   */
  adoptDomain(domid: number, memory: DomainMemory, target: number, balloon: boolean): void {
    this.addDomain({ ...memory, domid, target, actual: target, balloon });
  }

  /**
   * The guest advertised (or withdrew) control/feature-balloon. A guest that starts to balloon
   * joins the policy; if even at its dynamic_min it does not fit it stays where it is.
   */
  setBalloon(domid: number, on: boolean): void {
    const d = this.mustGet(domid);
    if (d.balloon === on) return;
    this.change(d, () => (d.balloon = on));
    try {
      this.rebalance();
    } catch {
      this.change(d, () => (d.balloon = false));
    }
  }

  /**
   * A new dynamic range for a domain (VM.set_memory_dynamic_range on a running VM): the host
   * rebalances; if every ballooning domain at its dynamic_min cannot fit, the change is refused
   * with Cannot_free_this_much_memory and nothing moves.
   */
  setDomainRange(domid: number, dynamicMin: number, dynamicMax: number): void {
    const d = this.mustGet(domid);
    if (dynamicMin < 0 || dynamicMax < dynamicMin)
      throw new DomainError('Internal_error', [`bad dynamic range [${dynamicMin}, ${dynamicMax}]`]);
    const old = { dynamicMin: d.dynamicMin, dynamicMax: d.dynamicMax };
    this.change(d, () => Object.assign(d, { dynamicMin, dynamicMax }));
    if (!d.balloon) return; // no balloon driver: the range takes effect when one appears
    const ballooning = this.ballooning();
    const pool = this.pool();
    const targets = balloon(pool, ballooning.map(rangeOf));
    if (!targets) {
      this.change(d, () => Object.assign(d, old));
      throw this.cannotFree(
        dynamicMin,
        pool,
        ballooning.filter((b) => b !== d),
      );
    }
    this.apply(ballooning, targets);
  }

  /** The domain was destroyed: its memory is free again and the others may grow back. */
  releaseDomain(domid: number): void {
    const d = this.domainsById.get(domid);
    if (!d) return;
    this.account(d, -1);
    this.domainsById.delete(domid);
    this.rebalanceQuietly();
  }

  domain(domid: number): Readonly<SqueezedDomain> | undefined {
    return this.domainsById.get(domid);
  }

  domains(): Readonly<SqueezedDomain>[] {
    return [...this.domainsById.values()];
  }

  /** Host free memory now: total − dom0 − what domains hold − reservations (the slush fund is free memory). */
  free(): number {
    return this.total - this.dom0 - this.sums.held - this.reserved();
  }

  /** Σ reservations not yet transferred. */
  reserved(): number {
    let n = 0;
    for (const r of this.reservations.values()) n += r.amount;
    return n;
  }

  /** Applies the policy to the ballooning domains (squeezed's periodic/triggered balance). */
  rebalance(): void {
    this.balance(0);
  }

  // ---- internals ----------------------------------------------------------------------------

  /**
   * Memory the ballooning domains share: everything except dom0, the slush fund, reservations,
   * every domain's overhead, and what non-ballooning domains hold (counted as the larger of
   * target and actual, as squeezed counts booting domains).
   */
  private pool(): number {
    return this.total - this.dom0 - this.slush - this.reserved() - this.sums.fixed;
  }

  /**
   * The fraction policy over the ballooning domains, with `extra` (a reservation being made) as
   * one more member: moves their targets and returns extra's share, or throws
   * Cannot_free_this_much_memory(needed, ...) when even everyone at dynamic_min does not fit.
   * It runs several times per domain start or stop: when memory is plentiful (everyone at
   * dynamic_max, balloon()'s first case and the usual one) and nobody has to move, it costs
   * nothing but the running sums; only a host where someone moves pays for a pass.
   */
  private balance(needed: number, extra?: { min: number; max: number }): number {
    const pool = this.pool();
    const sumMin = this.sums.min + (extra?.min ?? 0);
    const sumMax = this.sums.max + (extra?.max ?? 0);
    if (sumMin > pool) throw this.cannotFree(needed, pool, this.ballooning());
    if (sumMax <= pool) {
      const moving: SqueezedDomain[] = [];
      if (this.sums.offMax > 0) {
        for (const d of this.domainsById.values()) {
          if (d.balloon && (d.target !== d.dynamicMax || d.actual !== d.dynamicMax)) moving.push(d);
        }
      }
      moving.sort((a, b) => a.domid - b.domid);
      this.apply(
        moving,
        moving.map((d) => d.dynamicMax),
      );
      return extra?.max ?? 0;
    }
    const ballooning = this.ballooning();
    const ranges = ballooning.map(rangeOf);
    if (extra) ranges.push(extra);
    const targets = balloon(pool, ranges)!;
    this.apply(ballooning, targets);
    return extra ? targets[targets.length - 1]! : 0;
  }

  private ballooning(): SqueezedDomain[] {
    return [...this.domainsById.values()].filter((d) => d.balloon).sort((a, b) => a.domid - b.domid);
  }

  private apply(ballooning: SqueezedDomain[], targets: number[]): void {
    ballooning.forEach((d, i) => {
      const t = targets[i]!;
      if (d.target === t && d.actual === t) return;
      this.change(d, () => {
        d.target = t;
        d.actual = t; // co-operative guest: reaches its target at once
      });
      this.opts.onTarget?.(d.domid, t);
    });
  }

  private addDomain(d: SqueezedDomain): void {
    const old = this.domainsById.get(d.domid);
    if (old) this.account(old, -1);
    this.domainsById.set(d.domid, d);
    this.account(d, 1);
  }

  /** Changes a domain's fields, keeping the running sums. */
  private change(d: SqueezedDomain, fn: () => void): void {
    this.account(d, -1);
    fn();
    this.account(d, 1);
  }

  /** Adds (1) or takes away (-1) a domain's part of the running sums. */
  private account(d: SqueezedDomain, sign: 1 | -1): void {
    const holds = Math.max(d.target, d.actual);
    this.sums.held += sign * (holds + d.overhead);
    this.sums.fixed += sign * (d.overhead + (d.balloon ? 0 : holds));
    if (!d.balloon) return;
    this.sums.min += sign * d.dynamicMin;
    this.sums.max += sign * d.dynamicMax;
    if (d.target !== d.dynamicMax || d.actual !== d.dynamicMax) this.sums.offMax += sign;
  }

  /** Throws if the running sums disagree with the domains (for tests). */
  checkSums(): void {
    const sums = { held: 0, fixed: 0, min: 0, max: 0, offMax: 0 };
    for (const d of this.domainsById.values()) {
      const holds = Math.max(d.target, d.actual);
      sums.held += holds + d.overhead;
      sums.fixed += d.overhead + (d.balloon ? 0 : holds);
      if (!d.balloon) continue;
      sums.min += d.dynamicMin;
      sums.max += d.dynamicMax;
      if (d.target !== d.dynamicMax || d.actual !== d.dynamicMax) sums.offMax++;
    }
    if (JSON.stringify(sums) !== JSON.stringify(this.sums))
      throw new Error(`squeezed sums ${JSON.stringify(this.sums)}, domains say ${JSON.stringify(sums)}`);
  }

  private rebalanceQuietly(): void {
    try {
      this.rebalance();
    } catch {
      /* more free memory than before can only help; an over-committed host stays as it is */
    }
  }

  /** Cannot_free_this_much_memory(needed, free): free = the most squeezing everyone to dynamic_min could give. */
  private cannotFree(needed: number, pool: number, ballooning: SqueezedDomain[]): DomainError {
    const free = Math.max(0, pool - ballooning.reduce((n, d) => n + d.dynamicMin, 0));
    return new DomainError('Cannot_free_this_much_memory', [String(needed), String(free)]);
  }

  private reservation(client: string, id: string): Reservation {
    const r = this.reservations.get(id);
    if (!r || r.client !== client) throw new DomainError('Does_not_exist', ['reservation', id]);
    return r;
  }

  private mustGet(domid: number): SqueezedDomain {
    const d = this.domainsById.get(domid);
    if (!d) throw new DomainError('Does_not_exist', ['domain', String(domid)]);
    return d;
  }
}

const rangeOf = (d: SqueezedDomain) => ({ min: d.dynamicMin, max: d.dynamicMax });
const pageDown = (n: number) => Math.floor(n / PAGE) * PAGE;
