import { compareDebianVersions, diffPackages, formatPackageChanges, type PackageChange } from './lock-file.js';
import type { ReleasePackages } from './release-packages.js';

/** What changed from release A to release B: packages (from their package lists) and files. */
export interface ReleaseDiff {
  from: string;
  to: string;
  /** null when either release has no package list (not built by ibu build). */
  packages: { upgraded: PackageChange[]; downgraded: PackageChange[]; added: PackageChange[]; removed: PackageChange[]; rebuilt: PackageChange[] } | null;
  files: { added: string[]; removed: string[]; changed: string[] };
}

/** Path-level changes between two file lists (path → content key: a hash, or type+target). Pure. */
export function diffFileKeys(a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>): ReleaseDiff['files'] {
  const added: string[] = [];
  const removed: string[] = [];
  const changed: string[] = [];
  for (const [p, k] of a) {
    const q = b.get(p);
    if (q === undefined) removed.push(p);
    else if (q !== k) changed.push(p);
  }
  for (const p of b.keys()) if (!a.has(p)) added.push(p);
  return { added: added.sort(), removed: removed.sort(), changed: changed.sort() };
}

/** Groups the package changes between two package lists. Pure. */
export function packageChanges(a: ReleasePackages | null, b: ReleasePackages | null): ReleaseDiff['packages'] {
  if (!a || !b) return null;
  const all = diffPackages(a.packages, b.packages, compareDebianVersions);
  const of = (k: PackageChange['kind']): PackageChange[] => all.filter((c) => c.kind === k);
  return { upgraded: of('upgraded'), downgraded: of('downgraded'), added: of('added'), removed: of('removed'), rebuilt: of('rebuilt') };
}

/** The human form `ibu release diff` prints. */
export function formatReleaseDiff(d: ReleaseDiff, maxFiles = 40): string[] {
  const lines = [`${d.from} -> ${d.to}`];
  if (!d.packages) lines.push('packages: no package list in one of the releases (/etc/ibu/packages.json comes from ibu build)');
  else {
    const p = d.packages;
    const all = [...p.upgraded, ...p.downgraded, ...p.added, ...p.removed, ...p.rebuilt];
    lines.push(
      `packages: ${p.upgraded.length} upgraded, ${p.added.length} added, ${p.removed.length} removed` +
        (p.downgraded.length ? `, ${p.downgraded.length} downgraded` : '') +
        (p.rebuilt.length ? `, ${p.rebuilt.length} rebuilt` : ''),
      ...formatPackageChanges(all.sort((x, y) => (x.name < y.name ? -1 : 1))),
    );
  }
  const f = d.files;
  lines.push(`files: ${f.changed.length} changed, ${f.added.length} added, ${f.removed.length} removed`);
  const list = [...f.changed.map((x) => `  ~ ${x}`), ...f.added.map((x) => `  + ${x}`), ...f.removed.map((x) => `  - ${x}`)];
  lines.push(...list.slice(0, maxFiles));
  if (list.length > maxFiles) lines.push(`  ... and ${list.length - maxFiles} more (--json lists all)`);
  return lines;
}
