import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { buildImage, type BuildResult } from '../image/build.js';
import { assertVersion } from '../version.js';
import { deb822Sources, releaseDateEpoch } from './archive-release.js';
import { makeFlatRepo } from './flat-repo.js';
import type { ProductLock } from './lock-file.js';
import { specDigest } from './lock-resolve.js';
import { HOOK_DIR, mmdebstrapArgv, runMmdebstrap, shq } from './mmdebstrap.js';
import type { PackagePool } from './package-pool.js';
import { packagesJson, PACKAGES_JSON_PATH } from './release-packages.js';
import type { ProductSpec } from './product-spec.js';

export interface ProductBuildOptions {
  spec: ProductSpec;
  specDir: string;
  lock: ProductLock;
  pool: PackagePool;
  version: string;
  out: string;
  previous?: string;
  log?: (m: string) => void;
  onWarning?: (m: string) => void;
}

export interface ProductBuildResult extends BuildResult {
  sourceDateEpoch: number;
  packages: number;
}

/**
 * `ibu build`: the locked packages (from the pool only: offline, the same bytes a week later)
 * → mmdebstrap root with SOURCE_DATE_EPOCH and the reproducibility hooks → overlays, accounts,
 * units, spec hooks → the image builder (layout-stable with `previous`). OUT appears only
 * complete: the image builder writes OUT.partial and renames it.
 */
export async function buildProduct(o: ProductBuildOptions): Promise<ProductBuildResult> {
  const { spec, lock } = o;
  const log = o.log ?? (() => {});
  assertVersion(o.version);
  if (lock.specDigest !== specDigest(spec) || lock.product !== spec.product) {
    throw new IbuError(
      'LOCK_MISMATCH',
      'the spec changed since the lock was made (suite, mirrors, packages or kernel): run ibu build lock --update to lock the new package set.',
    );
  }
  for (const dir of [...spec.overlays, ...spec.hooks]) {
    if (!fs.existsSync(path.resolve(o.specDir, dir))) throw new IbuError('NOT_FOUND', `${path.resolve(o.specDir, dir)} (named in the spec) does not exist.`);
  }
  const epoch = spec.sourceDateEpoch ?? lockEpoch(lock);
  await o.pool.fill(lock.packages, log);
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-build-root-'));
  try {
    for (const p of lock.packages) await o.pool.verify(p);
    const repo = path.join(work, 'pool-repo');
    await makeFlatRepo(
      repo,
      lock.packages.map((p) => ({
        file: o.pool.pathOf(p.sha256),
        name: p.name,
        version: p.version,
        architecture: p.architecture,
        // The archive's override for mirror packages; a vendor package shows its own fields, as at lock time.
        ...(p.origin === 'mirror' ? { priority: p.priority, section: p.section } : {}),
      })),
      spec.suite,
    );
    const sources = path.join(work, 'debian.sources');
    await fsp.writeFile(sources, deb822Sources(spec.mirrors));
    const pkgJson = path.join(work, 'packages.json');
    await fsp.writeFile(pkgJson, packagesJson(lock));
    const configure = path.join(work, 'configure.sh');
    await fsp.writeFile(configure, configureScript(spec, o.specDir, pkgJson), { mode: 0o755 });
    const hookLogs = spec.hooks.map((h, i) => path.join(work, `${String(i + 1).padStart(2, '0')}-${path.basename(h)}.log`));
    const customize = [
      `${shq(configure)} "$1"`,
      ...spec.hooks.map(
        (h, i) => `cd ${shq(o.specDir)} && ${shq(path.join(HOOK_DIR, 'run-hook.sh'))} ${shq(hookLogs[i]!)} ${shq(path.resolve(o.specDir, h))} "$1"`,
      ),
      `${shq(path.join(HOOK_DIR, 'scrub.sh'))} "$1"`,
      `dpkg-query --admindir="$1"/var/lib/dpkg -W -f='\${Package}\\t\${Architecture}\\t\${Version}\\n' | LC_ALL=C sort > ` +
        shq(path.join(work, 'installed.tsv')),
    ];
    const root = path.join(work, 'root');
    const argv = mmdebstrapArgv(spec, { target: root, sources: [`deb [trusted=yes] copy://${repo} ./`], extra: ['--format=directory'], customize });
    const env = {
      SOURCE_DATE_EPOCH: String(epoch),
      LC_ALL: 'C.UTF-8',
      IBU_PRODUCT: spec.product,
      IBU_VERSION: o.version,
      IBU_SPEC_DIR: o.specDir,
      IBU_HOSTNAME: spec.hostname,
      IBU_SOURCES: sources,
      IBU_KERNEL: spec.kernel ? '1' : '0',
      IBU_READONLY: spec.readonly ? '1' : '0',
    };
    log(`installing ${lock.packages.length} locked packages from the pool with mmdebstrap (SOURCE_DATE_EPOCH=${epoch})`);
    await runMmdebstrap(argv, { env, logFile: path.join(work, 'mmdebstrap.log'), hookLogs });
    checkInstalled(lock, path.join(work, 'installed.tsv'));
    log('building the ext4 image');
    const res = await buildImage({
      root,
      version: o.version,
      size: spec.image.size,
      out: o.out,
      previous: o.previous,
      product: spec.product,
      noKernel: spec.kernel === null,
      sourceDateEpoch: epoch,
      onWarning: o.onWarning,
    });
    return { ...res, sourceDateEpoch: epoch, packages: lock.packages.length };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** The newest archive Release date of the lock: a new snapshot moves the clock, a rebuild does not. */
export function lockEpoch(lock: ProductLock): number {
  const dates = lock.archives.map((a) => releaseDateEpoch(a.date)).filter((d): d is number => d !== null);
  return dates.length > 0 ? Math.max(...dates) : 1735689600;
}

/** The root must hold exactly the locked packages: anything else means the build is not the lock's. */
function checkInstalled(lock: ProductLock, file: string): void {
  const got = new Set(
    fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split('\t').join(' ')),
  );
  const want = new Set(lock.packages.map((p) => `${p.name} ${p.architecture} ${p.version}`));
  const extra = [...got].filter((x) => !want.has(x));
  const missing = [...want].filter((x) => !got.has(x));
  if (extra.length > 0 || missing.length > 0) {
    throw new IbuError(
      'LOCK_MISMATCH',
      `the root does not hold the locked package set (not installed: ${missing.slice(0, 10).join(', ') || 'none'}; ` +
        `not locked: ${extra.slice(0, 10).join(', ') || 'none'}): run ibu build lock --update.`,
      { details: { missing, extra } },
    );
  }
}

/**
 * The customize step for what the spec adds on top of packages, in this order: overlays
 * (owned by root, modes kept, existing directories untouched), groups, users (locked password;
 * shadow honours SOURCE_DATE_EPOCH for the change date), systemd enable/mask, the package list.
 * Pure: names were validated by the spec parser and every word is quoted.
 */
export function configureScript(spec: ProductSpec, specDir: string, packagesJsonFile: string): string {
  const L = ['#!/bin/sh', '# generated by ibu build: overlays, accounts, units, package list. $1 = root', 'set -eu', 'R="$1"'];
  for (const ov of spec.overlays) {
    const dir = shq(path.resolve(specDir, ov));
    L.push(`tar -C ${dir} --owner=0 --group=0 --numeric-owner -cf - . | tar -C "$R" --no-overwrite-dir --numeric-owner -xpf -`);
  }
  for (const g of spec.groups) {
    L.push(`chroot "$R" groupadd ${g.system ? '--system ' : ''}${g.gid !== null ? `--gid ${g.gid} ` : ''}${shq(g.name)}`);
  }
  for (const u of spec.users) {
    const args = [
      u.system ? '--system' : '--create-home',
      ...(u.uid !== null ? ['--uid', String(u.uid)] : []),
      ...(u.group ? ['--gid', shq(u.group)] : ['--user-group']),
      ...(u.groups.length ? ['--groups', shq(u.groups.join(','))] : []),
      '--shell',
      shq(u.shell),
      ...(u.home ? ['--home-dir', shq(u.home)] : []),
      shq(u.name),
    ];
    L.push(`chroot "$R" useradd ${args.join(' ')}`);
  }
  for (const unit of spec.systemd.enable) L.push(`chroot "$R" systemctl enable ${shq(unit)}`);
  for (const unit of spec.systemd.mask) L.push(`chroot "$R" systemctl mask ${shq(unit)}`);
  L.push(`mkdir -p "$R/etc/ibu" && cp ${shq(packagesJsonFile)} "$R${PACKAGES_JSON_PATH}" && chmod 0644 "$R${PACKAGES_JSON_PATH}"`);
  return L.join('\n') + '\n';
}
