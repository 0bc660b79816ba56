import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';
import { sha256File } from '../util/sha256-file.js';
import { mirrorOfListFile, parseReleaseFields, suiteOfListFile } from './archive-release.js';
import { debFileName, makeFlatRepo } from './flat-repo.js';
import type { ArchiveRelease, LockedPackage, ProductLock } from './lock-file.js';
import { HOOK_DIR, assertMirrorsReachable, mirrorSources, mmdebstrapArgv, runMmdebstrap, shq } from './mmdebstrap.js';
import type { PackagePool } from './package-pool.js';
import type { ProductSpec } from './product-spec.js';

/** A vendor .deb found in the spec's vendor-debs directories. */
export interface VendorDeb {
  file: string;
  name: string;
  version: string;
  architecture: string;
  sha256: string;
  size: number;
  /** The .deb's own fields: a flat repo of vendor packages has no archive override. */
  priority: string;
  section: string;
}

/** What the lock depends on in the spec: a change here means the lock must be made again. */
export function specDigest(spec: ProductSpec): string {
  const pin = {
    suite: spec.suite,
    architecture: spec.architecture,
    variant: spec.variant,
    mirrors: spec.mirrors,
    packages: spec.packages,
    kernel: spec.kernel,
  };
  return createHash('sha256').update(JSON.stringify(pin)).digest('hex');
}

/** Reads the vendor's .deb files; a file dpkg-deb cannot read is VENDOR_DEB_INVALID. */
export async function readVendorDebs(spec: ProductSpec, specDir: string): Promise<VendorDeb[]> {
  const out: VendorDeb[] = [];
  for (const d of spec.vendorDebs) {
    const dir = path.resolve(specDir, d);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
      throw new IbuError('NOT_FOUND', `the vendor-debs directory ${dir} does not exist: create it or fix vendor-debs: in the spec.`);
    }
    for (const f of fs.readdirSync(dir).sort()) {
      if (!f.endsWith('.deb')) continue;
      const file = path.join(dir, f);
      const res = await run('dpkg-deb', ['--field', file, 'Package', 'Version', 'Architecture', 'Priority', 'Section'], { allowFailure: true });
      const fields = Object.fromEntries(res.stdout.split('\n').map((l) => [l.split(':')[0], l.slice(l.indexOf(':') + 1).trim()]));
      if (res.code !== 0 || !fields.Package || !fields.Version || !fields.Architecture) {
        throw new IbuError('VENDOR_DEB_INVALID', `${file} is not a valid Debian package (dpkg-deb: ${res.stderr.trim().split('\n').pop() ?? 'no fields'}).`, {
          details: { file },
        });
      }
      out.push({
        file,
        name: fields.Package,
        version: fields.Version,
        architecture: fields.Architecture,
        sha256: await sha256File(file),
        size: fs.statSync(file).size,
        priority: fields.Priority || 'optional',
        section: fields.Section || 'misc',
      });
    }
  }
  return out;
}

export interface LockOptions {
  spec: ProductSpec;
  specDir: string;
  pool: PackagePool;
  log?: (m: string) => void;
}

/**
 * Resolves the spec against its mirrors and vendor directories by letting mmdebstrap install it
 * for real (the resolver the build uses; buildlab's proven recipe), records the installed set
 * with each .deb's archive facts, and stores every .deb in the pool. No apt simulation can
 * disagree with the build about what gets installed.
 */
export async function resolveLock(o: LockOptions): Promise<ProductLock> {
  const { spec } = o;
  const log = o.log ?? (() => {});
  const vendor = await readVendorDebs(spec, o.specDir);
  await assertMirrorsReachable(spec);
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-lock-'));
  try {
    const facts = path.join(work, 'facts');
    const debs = path.join(work, 'debs');
    await fsp.mkdir(debs, { recursive: true });
    const sources = mirrorSources(spec);
    if (vendor.length > 0) {
      const repo = path.join(work, 'vendor');
      // No override: apt sees the vendor's own Priority/Section, as the build's repo will show it.
      await makeFlatRepo(
        repo,
        vendor.map((v) => ({ ...v, priority: undefined, section: undefined })),
        spec.suite,
      );
      sources.push(`deb [trusted=yes] copy://${repo} ./`);
    }
    const argv = mmdebstrapArgv(spec, {
      target: path.join(work, 'root'),
      sources,
      extra: ['--format=directory', '--skip=essential/unlink'],
      customize: [`${shq(path.join(HOOK_DIR, 'lock-facts.sh'))} "$1" ${shq(facts)}`, `sync-out /var/cache/apt/archives ${shq(debs)}`],
    });
    log(`resolving ${spec.packages.length + (spec.kernel ? 1 : 0)} packages and their dependencies with mmdebstrap (about a minute)`);
    await runMmdebstrap(argv, { env: { LC_ALL: 'C.UTF-8' }, logFile: path.join(work, 'mmdebstrap.log') });
    const lock = await collect(spec, facts, debs, vendor, o.pool);
    log(`locked ${lock.packages.length} packages`);
    return lock;
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

async function collect(spec: ProductSpec, facts: string, debs: string, vendor: VendorDeb[], pool: PackagePool): Promise<ProductLock> {
  const installed = tsv(path.join(facts, 'installed.tsv'));
  const archive = tsv(path.join(facts, 'archive.tsv'));
  const packages: LockedPackage[] = [];
  for (const [name, arch, version] of installed) {
    const v = vendor.find((d) => d.name === name && d.version === version && d.architecture === arch);
    const local = path.join(debs, debFileName(name!, version!, arch!));
    if (v) {
      await pool.put(v.file, v.sha256);
      packages.push({
        name: name!,
        version: version!,
        architecture: arch!,
        size: v.size,
        sha256: v.sha256,
        origin: 'vendor',
        uri: null,
        filename: null,
        priority: v.priority,
        section: v.section,
      });
      continue;
    }
    const row = archive.find((r) => r[1] === name && r[2] === version && (r[3] === arch || r[3] === 'all') && mirrorOfListFile(r[0]!, spec.mirrors));
    if (!row) throw new IbuError('INTERNAL', `installed ${name} ${version} is in none of the spec's archives (apt lists) nor vendor-debs.`);
    const [list, , , , filename, sha256, size, priority, section] = row as string[];
    const mirror = mirrorOfListFile(list!, spec.mirrors)!;
    if (fs.existsSync(local)) await pool.put(local, sha256!);
    packages.push({
      name: name!,
      version: version!,
      architecture: arch!,
      size: Number(size),
      sha256: sha256!,
      origin: 'mirror',
      uri: mirror.uri,
      filename: filename!,
      priority: priority || 'optional',
      section: section || 'misc',
    });
  }
  // The .debs mmdebstrap kept cover every package (--skip=essential/unlink); fetch any it did not.
  await pool.fill(packages);
  return {
    format: 1,
    product: spec.product,
    suite: spec.suite,
    architecture: spec.architecture,
    specDigest: specDigest(spec),
    archives: await releases(spec, path.join(facts, 'releases')),
    packages,
  };
}

async function releases(spec: ProductSpec, dir: string): Promise<ArchiveRelease[]> {
  const out: ArchiveRelease[] = [];
  for (const f of fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []) {
    const mirror = mirrorOfListFile(f, spec.mirrors);
    if (!mirror || !suiteOfListFile(f, mirror)) continue;
    if (f.endsWith('_Release') && fs.existsSync(path.join(dir, f.replace(/_Release$/, '_InRelease')))) continue;
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    const r = parseReleaseFields(text);
    out.push({ uri: mirror.uri, suite: r.suite, codename: r.codename, date: r.date, sha256: await sha256File(path.join(dir, f)) });
  }
  return out;
}

function tsv(file: string): string[][] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split('\t'));
}
