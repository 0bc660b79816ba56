import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { fsyncDir } from '../util/atomic.js';
import { sha256File } from '../util/sha256-file.js';
import type { LockedPackage } from './lock-file.js';

/** Where the pool lives unless --pool or IBU_BUILD_POOL says otherwise (CI caches this directory). */
export const DEFAULT_POOL_DIR = '/var/cache/ibu-build/pool';

export function poolDir(flag?: string): string {
  return path.resolve(flag ?? process.env.IBU_BUILD_POOL ?? DEFAULT_POOL_DIR);
}

/**
 * The package pool: every locked .deb stored once under its sha256 (`sha256/ab/abcd….deb`).
 * Content addressing makes it a cache any lock can share and that is never wrong: an object is
 * renamed into place only after its hash was checked, and a build re-checks what it links.
 */
export class PackagePool {
  constructor(readonly dir: string) {}

  pathOf(sha256: string): string {
    return path.join(this.dir, 'sha256', sha256.slice(0, 2), `${sha256}.deb`);
  }

  has(sha256: string): boolean {
    return fs.existsSync(this.pathOf(sha256));
  }

  /** Adds a file whose sha256 must be `sha256`; hardlinks when it can, else copies. */
  async put(file: string, sha256: string): Promise<void> {
    const dest = this.pathOf(sha256);
    if (fs.existsSync(dest)) return;
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    const tmp = `${dest}.${process.pid}.tmp`;
    await fsp.copyFile(file, tmp);
    try {
      const got = await sha256File(tmp);
      if (got !== sha256) {
        throw new IbuError('PACKAGE_HASH_MISMATCH', `${path.basename(file)} has sha256 ${got}, not ${sha256} as the archive says.`);
      }
      const fh = await fsp.open(tmp, 'r');
      await fh.sync();
      await fh.close();
      await fsp.rename(tmp, dest);
      await fsyncDir(path.dirname(dest));
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }

  /**
   * Makes sure every locked package is in the pool: missing ones are downloaded from their
   * mirror (`uri`/`filename`) and checked. Vendor packages can only come from the pool (or the
   * vendor directories, re-added by `ibu build lock`). Returns how many were fetched.
   */
  async fill(packages: readonly LockedPackage[], log: (m: string) => void = () => {}): Promise<number> {
    let fetched = 0;
    const missing: string[] = [];
    for (const p of packages) {
      if (this.has(p.sha256)) continue;
      if (p.origin !== 'mirror' || !p.uri || !p.filename) {
        missing.push(`${p.name} ${p.version} (a vendor package: run ibu build lock with its .deb in a vendor-debs directory)`);
        continue;
      }
      const url = `${p.uri}/${p.filename}`;
      const got = await download(url, `${this.pathOf(p.sha256)}.${process.pid}.dl`);
      if (got === 'missing') {
        missing.push(`${p.name} ${p.version} (${url} is gone: the archive moved on; restore the pool from a backup or re-lock)`);
        continue;
      }
      await this.put(got, p.sha256).finally(() => fsp.rm(got, { force: true }));
      log(`fetched ${p.name} ${p.version}`);
      fetched++;
    }
    if (missing.length > 0) {
      throw new IbuError(
        'PACKAGE_MISSING',
        `${missing.length} locked package version${missing.length > 1 ? 's are' : ' is'} in neither the pool (${this.dir}) nor the mirror:\n  ` +
          missing.join('\n  '),
        { details: { missing } },
      );
    }
    return fetched;
  }

  /** Verifies a pooled object against its sha256 (a build links nothing it has not checked). */
  async verify(p: LockedPackage): Promise<void> {
    const got = await sha256File(this.pathOf(p.sha256));
    if (got !== p.sha256) {
      throw new IbuError('PACKAGE_HASH_MISMATCH', `the pool's copy of ${p.name} ${p.version} is corrupt (sha256 ${got}): delete ${this.pathOf(p.sha256)}.`);
    }
  }
}

async function download(url: string, dest: string): Promise<string | 'missing'> {
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(300_000) });
  } catch (err) {
    throw new IbuError('MIRROR_UNREACHABLE', `cannot download ${url}: ${(err as Error).message}. Check the network, or fill the pool elsewhere.`, {
      cause: err,
    });
  }
  if (res.status === 404 || res.status === 410) return 'missing';
  if (!res.ok || !res.body) throw new IbuError('MIRROR_UNREACHABLE', `${url} answered HTTP ${res.status}.`);
  await fsp.writeFile(dest, res.body as unknown as AsyncIterable<Uint8Array>);
  return dest;
}
