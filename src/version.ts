import { IbuError } from './errors.js';

/**
 * Release versions: dot-separated numeric parts with an optional `-suffix` (e.g. `2026.11.2`,
 * `3`, `1.4.0-rc1`). They are compared numerically part by part; a suffixed version sorts before
 * the same version without a suffix. A version doubles as a file name, so the charset is narrow.
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
  return as < bs ? -1 : 1;
}

function split(v: string): [number[], string] {
  const dash = v.indexOf('-');
  const main = dash < 0 ? v : v.slice(0, dash);
  return [main.split('.').map(Number), dash < 0 ? '' : v.slice(dash + 1)];
}
