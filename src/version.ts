import { IbuError } from './errors.js';

/**
 * Release versions (grammar in docs/versions.md): dot-separated numeric parts with an optional
 * `-suffix` (e.g. `2026.11.2`, `3`, `1.4.0-rc1`). Numeric parts compare as numbers, missing ones
 * as 0 (`2` = `2.0` = `02`); a suffixed version sorts before the same version without a suffix;
 * suffixes compare run by run, digit runs as numbers (`rc10` > `rc9`). A version doubles as a
 * file name, so the charset is narrow.
 */
const VERSION_RE = /^(\d{1,9})(\.\d{1,9}){0,5}(-[0-9A-Za-z.]{1,32})?$/;

export function isValidVersion(v: string): boolean {
  return VERSION_RE.test(v);
}

export function assertVersion(v: string): string {
  if (!isValidVersion(v)) {
    throw new IbuError('VERSION_INVALID', `invalid version '${v}': use dot-separated numbers with an optional -suffix, e.g. 2026.11.2 or 3-rc1`);
  }
  return v;
}

export function compareVersions(a: string, b: string): number {
  assertVersion(a);
  assertVersion(b);
  const [an, as] = split(a);
  const [bn, bs] = split(b);
  for (let i = 0; i < Math.max(an.length, bn.length); i++) {
    const d = (an[i] ?? 0) - (bn[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  if (as === bs) return 0;
  if (as === '') return 1;
  if (bs === '') return -1;
  return compareSuffixes(as, bs);
}

/**
 * Suffixes split into runs of digits and of other characters; digit runs compare as numbers and
 * sort before letters and dots at the same place, other runs compare by code unit; a suffix that
 * is a prefix of the other sorts first (`rc` < `rc1`). Equal numbers with different spellings
 * (`rc01`, `rc1`) fall back to the plain string order, so distinct suffixes never compare equal.
 */
function compareSuffixes(a: string, b: string): number {
  const ar = a.match(/\d+|\D+/g) ?? [];
  const br = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.min(ar.length, br.length); i++) {
    const x = ar[i];
    const y = br[i];
    const xd = /^\d/.test(x);
    const yd = /^\d/.test(y);
    if (xd && yd) {
      const d = Number(x) - Number(y);
      if (d !== 0) return d < 0 ? -1 : 1;
    } else if (xd !== yd) {
      return xd ? -1 : 1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  if (ar.length !== br.length) return ar.length < br.length ? -1 : 1;
  return a === b ? 0 : a < b ? -1 : 1;
}

/** Refuses `version` when a distinct spelling of it (`2.0`, `02` beside `2`) is among `existing`. */
export function assertUnambiguous(version: string, existing: Iterable<string>): void {
  for (const v of existing) {
    if (v !== version && isValidVersion(v) && compareVersions(v, version) === 0) {
      throw new IbuError('VERSION_AMBIGUOUS', `version ${version} equals the published ${v}; versions compare by number, publish a higher one`, {
        details: { existing: v },
      });
    }
  }
}

function split(v: string): [number[], string] {
  const dash = v.indexOf('-');
  const main = dash < 0 ? v : v.slice(0, dash);
  return [main.split('.').map(Number), dash < 0 ? '' : v.slice(dash + 1)];
}
