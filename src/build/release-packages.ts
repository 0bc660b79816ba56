import { IbuError } from '../errors.js';
import type { ArchiveRelease, ProductLock } from './lock-file.js';

/** Where an image built by `ibu build` carries its package list. */
export const PACKAGES_JSON_PATH = '/etc/ibu/packages.json';

/** The package list of one release, as /etc/ibu/packages.json holds it. */
export interface ReleasePackages {
  format: 1;
  product: string;
  suite: string;
  archives: ArchiveRelease[];
  packages: { name: string; version: string; architecture: string; origin: 'mirror' | 'vendor'; sha256: string }[];
}

/** Stable JSON from the lock (no time, no host): it is part of the reproducible image. */
export function packagesJson(lock: ProductLock): string {
  const body: ReleasePackages = {
    format: 1,
    product: lock.product,
    suite: lock.suite,
    archives: lock.archives,
    packages: [...lock.packages]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.architecture < b.architecture ? -1 : 1))
      .map((p) => ({ name: p.name, version: p.version, architecture: p.architecture, origin: p.origin, sha256: p.sha256 })),
  };
  return JSON.stringify(body, null, 1) + '\n';
}

export function parseReleasePackages(text: string, where: string): ReleasePackages {
  try {
    const o = JSON.parse(text) as ReleasePackages;
    if (o.format !== 1 || !Array.isArray(o.packages)) throw new Error('not a format 1 package list');
    return o;
  } catch (err) {
    throw new IbuError('IMAGE_INVALID', `${where}: ${PACKAGES_JSON_PATH} is not a package list (${(err as Error).message}).`);
  }
}
