// squeezed's ballooning policy: when every guest's balloon driver co-operates, each domain gets
// the same fraction of its dynamic range, (target − dyn_min) / (dyn_max − dyn_min) — all at
// dynamic_max when memory is plentiful, all at dynamic_min when it is scarce — so more VMs fit
// than their maxima would allow. Simulated guests reach their targets at once.

/** squeezed keeps this much host memory free at all times. */
export const SLUSH_FUND = 9 * 1024 * 1024;

/**
 * Targets for domains sharing `pool` bytes, or undefined when even every domain at its
 * dynamic_min does not fit.
 */
export function balloon(pool: number, domains: { min: number; max: number }[]): number[] | undefined {
  const sumMin = domains.reduce((n, d) => n + d.min, 0);
  const sumMax = domains.reduce((n, d) => n + d.max, 0);
  if (sumMin > pool) return undefined;
  if (sumMax <= pool) return domains.map((d) => d.max);
  const fraction = (pool - sumMin) / (sumMax - sumMin);
  // round down to whole pages so the sum never exceeds the pool
  return domains.map((d) => d.min + Math.floor(((d.max - d.min) * fraction) / 4096) * 4096);
}
