import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { run } from '../util/exec.js';

/** One .deb of a flat repository, with the archive override apt should see for it. */
export interface RepoEntry {
  /** The file to link (or copy) into the repository. */
  file: string;
  name: string;
  version: string;
  architecture: string;
  priority?: string;
  section?: string;
}

/**
 * Makes a flat apt repository (`deb [trusted=yes] copy://DIR ./`) from .deb files: the packages
 * hardlinked (copied across filesystems) under their Debian names, `Packages` indexed by
 * apt-ftparchive with an override file, and a `Release`. The override carries the archive's
 * Priority/Section: without it apt-ftparchive takes the .deb's own, and minbase then marks some
 * packages manual instead of automatic (../shared/buildlab, cause 2).
 */
export async function makeFlatRepo(dir: string, entries: readonly RepoEntry[], suite: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const overrides: string[] = [];
  for (const e of entries) {
    const dest = path.join(dir, debFileName(e.name, e.version, e.architecture));
    await fsp.rm(dest, { force: true });
    await fsp.link(e.file, dest).catch(() => fsp.copyFile(e.file, dest));
    if (e.priority && e.section) overrides.push(`${e.name} ${e.priority} ${e.section}`);
  }
  const override = path.join(dir, '..', `${path.basename(dir)}.override`);
  await fsp.writeFile(override, overrides.sort().join('\n') + '\n');
  const env = { ...process.env, LC_ALL: 'C' };
  const pk = await run('apt-ftparchive', ['packages', '.', override], { cwd: dir, env });
  await fsp.writeFile(path.join(dir, 'Packages'), pk.stdout);
  const rel = await run(
    'apt-ftparchive',
    ['-o', `APT::FTPArchive::Release::Suite=${suite}`, '-o', `APT::FTPArchive::Release::Codename=${suite}`, 'release', '.'],
    {
      cwd: dir,
      env,
    },
  );
  await fsp.writeFile(path.join(dir, 'Release'), rel.stdout);
}

/** The name apt gives a downloaded .deb: `name_version_arch.deb` with the epoch colon escaped. */
export function debFileName(name: string, version: string, architecture: string): string {
  return `${name}_${version.replace(/:/g, '%3a')}_${architecture}.deb`;
}
