// The versions a host claims: its software_version (written at every start) and the header of
// every VM export carry them. One build can claim several releases (`xapi serve
// --platform-version X.Y.Z`), so that a pool of one machine can hold hosts of different
// releases, as a pool does during a rolling upgrade. The platform version names the release;
// the product and xapi versions follow from it by a fixed rule that keeps their order: the
// default platform 3.4.0 is product 8.4.0 and xapi 25.4.0.

import { DB_SCHEMA_VERSION } from '../schema/schema.js';

/** The release this build claims when not told otherwise. */
export const DEFAULT_PLATFORM_VERSION = '3.4.0';

/** software_version's db_schema: pool.join refuses a host whose differs. */
export const DB_SCHEMA = DB_SCHEMA_VERSION;

/** What a host of one release reports. */
export interface ReleaseVersions {
  /** X.Y.Z: software_version's platform_version. */
  platform: string;
  /** software_version's product_version (X+5).Y.Z. */
  product: string;
  /** xapi's own version, (X+22).Y.Z (software_version's xapi_build; `xapi` is its major.minor). */
  xapi: string;
}

/** Is `text` a platform version `--platform-version` accepts (three whole numbers)? */
export function isPlatformVersion(text: string): boolean {
  return /^\d{1,4}\.\d{1,4}\.\d{1,4}$/.test(text);
}

/** The versions of the release with platform version `platform` (X.Y.Z). */
export function releaseVersions(platform: string = DEFAULT_PLATFORM_VERSION): ReleaseVersions {
  if (!isPlatformVersion(platform)) throw new Error(`not a platform version: ${JSON.stringify(platform)}`);
  const [x, y, z] = platform.split('.').map(Number) as [number, number, number];
  return { platform: `${x}.${y}.${z}`, product: `${x + 5}.${y}.${z}`, xapi: `${x + 22}.${y}.${z}` };
}

/** host.software_version as xapi composes it for a host of this release. */
export function softwareVersion(v: ReleaseVersions): Record<string, string> {
  const majorMinor = (s: string) => s.split('.').slice(0, 2).join('.');
  return {
    product_version: v.product,
    product_version_text: majorMinor(v.product),
    product_version_text_short: majorMinor(v.product),
    platform_name: 'XCP',
    platform_version: v.platform,
    product_brand: 'xapi-ts',
    build_number: 'release',
    hostname: 'localhost',
    date: '2026-11-25',
    xapi: majorMinor(v.xapi),
    xapi_build: v.xapi,
    xen: '4.17.0',
    linux: '6.1.0',
    network_backend: 'bridge',
    db_schema: DB_SCHEMA,
  };
}

/**
 * Helpers.Checks.version_numbers_of_string: the numbers of a dotted version, a `-` suffix's
 * numbers appended (1.2.3-4 is 1.2.3.4); anything that is not a number is dropped.
 */
function versionNumbers(text: string): number[] {
  const parts = text.split('-');
  const fields = parts.length >= 2 ? [...parts[0]!.split('.'), ...parts[1]!.split('.')] : parts[0]!.split('.');
  return fields.filter((f) => /^[+-]?\d+$/.test(f)).map(Number);
}

/**
 * Helpers.Checks.compare_versions on one software_version key: a missing key counts as 0.0.0,
 * and where one list of numbers is a prefix of the other, the shorter is the older.
 */
export function compareVersionKey(key: string, a: Record<string, string>, b: Record<string, string>): number {
  const [na, nb] = [versionNumbers(a[key] ?? '0.0.0'), versionNumbers(b[key] ?? '0.0.0')];
  for (let i = 0; i < Math.min(na.length, nb.length); i++) if (na[i] !== nb[i]) return Math.sign(na[i]! - nb[i]!);
  return Math.sign(na.length - nb.length);
}

/** Xapi_version.compare_version: two xapi versions by their major and minor numbers only. */
export function compareXapiMajorMinor(a: string, b: string): number {
  const mm = (s: string) => {
    const m = /^(\d+)\.(\d+)\./.exec(s);
    if (!m) throw new Error(`cannot tell the xapi version from ${JSON.stringify(s)}`);
    return [Number(m[1]), Number(m[2])] as const;
  };
  const [[a1, a2], [b1, b2]] = [mm(a), mm(b)];
  return Math.sign(a1 - b1) || Math.sign(a2 - b2);
}
