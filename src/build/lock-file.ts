import { IbuError } from '../errors.js';

/**
 * product.lock: the snapshot a build is made from. Every package of the root (dependencies
 * included) with the exact version, architecture, size and sha256 of its .deb, and the identity
 * of each archive Release it was resolved against. Pure: parse, serialise, compare.
 */
export interface ProductLock {
  format: 1;
  product: string;
  suite: string;
  architecture: string;
  /** sha256 of the spec's package-relevant fields when locked (a changed spec asks for --update). */
  specDigest: string;
  archives: ArchiveRelease[];
  packages: LockedPackage[];
}

export interface ArchiveRelease {
  uri: string;
  suite: string;
  codename: string;
  /** The Release file's Date (RFC 2822, as the archive wrote it). */
  date: string;
  /** sha256 of the InRelease (or Release) file: which snapshot of the archive this was. */
  sha256: string;
}

export interface LockedPackage {
  name: string;
  version: string;
  architecture: string;
  size: number;
  sha256: string;
  /** `mirror`: from `uri`/`filename`; `vendor`: from the spec's vendor-debs directories. */
  origin: 'mirror' | 'vendor';
  uri: string | null;
  filename: string | null;
  /** The archive's override (not the .deb's own field): it decides what apt marks automatic. */
  priority: string;
  section: string;
}

export interface PackageChange {
  name: string;
  architecture: string;
  from: string | null;
  to: string | null;
  kind: 'added' | 'removed' | 'upgraded' | 'downgraded' | 'rebuilt';
}

const HEX64 = /^[0-9a-f]{64}$/;

/** Stable bytes: packages sorted by name and architecture, keys in a fixed order. */
export function serializeLock(lock: ProductLock): string {
  const packages = [...lock.packages].sort(byKey).map((p) => ({
    name: p.name,
    version: p.version,
    architecture: p.architecture,
    size: p.size,
    sha256: p.sha256,
    origin: p.origin,
    uri: p.uri,
    filename: p.filename,
    priority: p.priority,
    section: p.section,
  }));
  const archives = [...lock.archives].sort((a, b) => cmp(`${a.uri} ${a.suite}`, `${b.uri} ${b.suite}`));
  const body = { format: 1, product: lock.product, suite: lock.suite, architecture: lock.architecture, specDigest: lock.specDigest, archives };
  // One package per line keeps `git diff` of a lock readable.
  const head = JSON.stringify(body, null, 2).replace(/\n}$/, '');
  return `${head},\n  "packages": [\n${packages.map((p) => `    ${JSON.stringify(p)}`).join(',\n')}\n  ]\n}\n`;
}

/** Parses a lock, checking every field; LOCK_INVALID names the first bad entry. */
export function parseLock(text: string, file = 'product.lock'): ProductLock {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new IbuError('LOCK_INVALID', `${file} is not JSON (${(err as Error).message}): make it again with ibu build lock.`);
  }
  const bad = (what: string): never => {
    throw new IbuError('LOCK_INVALID', `${file}: ${what}; make it again with ibu build lock --update.`);
  };
  const o = raw as Record<string, unknown>;
  if (!o || typeof o !== 'object' || o.format !== 1) bad('not a format 1 lock');
  for (const k of ['product', 'suite', 'architecture', 'specDigest'] as const) if (typeof o[k] !== 'string') bad(`${k} is missing`);
  if (!Array.isArray(o.archives) || !Array.isArray(o.packages)) bad('archives or packages missing');
  const packages = (o.packages as Record<string, unknown>[]).map((p, i) => {
    const ok =
      p &&
      typeof p.name === 'string' &&
      typeof p.version === 'string' &&
      typeof p.architecture === 'string' &&
      Number.isInteger(p.size) &&
      typeof p.sha256 === 'string' &&
      HEX64.test(p.sha256) &&
      (p.origin === 'mirror' || p.origin === 'vendor') &&
      typeof p.priority === 'string' &&
      typeof p.section === 'string';
    if (!ok) bad(`packages[${i}] is malformed`);
    return p as unknown as LockedPackage;
  });
  if (packages.length === 0) bad('no packages');
  return { ...(o as unknown as ProductLock), packages };
}

/** Package changes from one lock (or release) to the next, sorted by name. */
export function diffPackages(
  before: readonly Pick<LockedPackage, 'name' | 'version' | 'architecture' | 'sha256'>[],
  after: readonly Pick<LockedPackage, 'name' | 'version' | 'architecture' | 'sha256'>[],
  compareVersions: (a: string, b: string) => number = naiveCompare,
): PackageChange[] {
  const key = (p: { name: string; architecture: string }): string => `${p.name}:${p.architecture}`;
  const a = new Map(before.map((p) => [key(p), p]));
  const b = new Map(after.map((p) => [key(p), p]));
  const out: PackageChange[] = [];
  for (const [k, p] of a) {
    const q = b.get(k);
    if (!q) out.push({ name: p.name, architecture: p.architecture, from: p.version, to: null, kind: 'removed' });
    else if (q.version !== p.version) {
      const kind = compareVersions(p.version, q.version) < 0 ? 'upgraded' : 'downgraded';
      out.push({ name: p.name, architecture: p.architecture, from: p.version, to: q.version, kind });
    } else if (q.sha256 !== p.sha256) out.push({ name: p.name, architecture: p.architecture, from: p.version, to: q.version, kind: 'rebuilt' });
  }
  for (const [k, q] of b) if (!a.has(k)) out.push({ name: q.name, architecture: q.architecture, from: null, to: q.version, kind: 'added' });
  return out.sort((x, y) => cmp(x.name, y.name) || cmp(x.architecture, y.architecture));
}

/** One line per change, as `ibu build lock --update` and `ibu release diff` print them. */
export function formatPackageChanges(changes: readonly PackageChange[]): string[] {
  return changes.map((c) => {
    if (c.kind === 'added') return `  + ${c.name} ${c.to}`;
    if (c.kind === 'removed') return `  - ${c.name} ${c.from}`;
    return `  ~ ${c.name} ${c.from} -> ${c.to}${c.kind === 'upgraded' ? '' : ` (${c.kind})`}`;
  });
}

/**
 * Debian version order (deb-version(7)): epoch, then upstream and revision compared in runs of
 * non-digits (letters before non-letters, `~` before everything, even the end) and digits.
 */
export function compareDebianVersions(a: string, b: string): number {
  const split = (v: string): [number, string, string] => {
    const c = v.indexOf(':');
    const epoch = c > 0 ? Number(v.slice(0, c)) : 0;
    const rest = c > 0 ? v.slice(c + 1) : v;
    const d = rest.lastIndexOf('-');
    return d >= 0 ? [epoch, rest.slice(0, d), rest.slice(d + 1)] : [epoch, rest, ''];
  };
  const [ea, ua, ra] = split(a);
  const [eb, ub, rb] = split(b);
  return Math.sign(ea - eb) || verrevcmp(ua, ub) || verrevcmp(ra, rb);
}

function order(c: string | undefined): number {
  if (c === undefined) return 0;
  if (c === '~') return -1;
  if (/[0-9]/.test(c)) return 0;
  if (/[A-Za-z]/.test(c)) return c.charCodeAt(0);
  return c.charCodeAt(0) + 256;
}

function verrevcmp(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    while ((i < a.length && !/[0-9]/.test(a[i]!)) || (j < b.length && !/[0-9]/.test(b[j]!))) {
      const ac = i < a.length && !/[0-9]/.test(a[i]!) ? order(a[i]) : 0;
      const bc = j < b.length && !/[0-9]/.test(b[j]!) ? order(b[j]) : 0;
      if (ac !== bc) return Math.sign(ac - bc);
      i++;
      j++;
    }
    while (a[i] === '0') i++;
    while (b[j] === '0') j++;
    let first = 0;
    while (i < a.length && /[0-9]/.test(a[i]!) && j < b.length && /[0-9]/.test(b[j]!)) {
      if (!first) first = a.charCodeAt(i) - b.charCodeAt(j);
      i++;
      j++;
    }
    if (i < a.length && /[0-9]/.test(a[i]!)) return 1;
    if (j < b.length && /[0-9]/.test(b[j]!)) return -1;
    if (first) return Math.sign(first);
  }
  return 0;
}

function naiveCompare(a: string, b: string): number {
  return compareDebianVersions(a, b);
}

function byKey(a: LockedPackage, b: LockedPackage): number {
  return cmp(a.name, b.name) || cmp(a.architecture, b.architecture);
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
