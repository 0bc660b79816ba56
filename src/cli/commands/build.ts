import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { IbuError } from '../../errors.js';
import { diffPackages, formatPackageChanges, parseLock, serializeLock, type ProductLock } from '../../build/lock-file.js';
import { resolveLock } from '../../build/lock-resolve.js';
import { PackagePool, poolDir } from '../../build/package-pool.js';
import { buildProduct } from '../../build/product-build.js';
import { parseProductSpec, type ProductSpec } from '../../build/product-spec.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { mib } from '../../util/bytes.js';

interface BuildFlags {
  spec: string;
  lock: string;
  version: string;
  out: string;
  previous?: string;
  pool?: string;
  json?: boolean;
}

function readSpec(file: string): { spec: ProductSpec; dir: string } {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch {
    throw new IbuError('NOT_FOUND', `the product spec ${abs} does not exist.`);
  }
  return { spec: parseProductSpec(text, abs), dir: path.dirname(abs) };
}

function readLock(file: string): ProductLock {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new IbuError('NOT_FOUND', `the lock ${abs} does not exist: make it with ibu build lock --spec SPEC --out ${file}.`);
  return parseLock(fs.readFileSync(abs, 'utf8'), abs);
}

const say = (json: boolean | undefined) => (m: string) => {
  if (!json) process.stderr.write(`${m}\n`);
};

/** `ibu build` (image from spec + lock), `ibu build lock`, `ibu build pool` (docs/build.md). */
export function registerBuildCommands(program: Command): void {
  const build = program
    .command('build')
    .description('build an appliance image from a product spec and its lock (subcommands: lock, pool)')
    .option('--spec <file>', 'product spec (product.yaml)')
    .option('--lock <file>', 'lock file made by ibu build lock')
    .option('--version <v>', 'release version, e.g. 2026.11.2')
    .option('--out <img>', 'output image (written as OUT.partial, then renamed)')
    .option('--previous <img>', "previous release's image: unchanged files keep their blocks")
    .option('--pool <dir>', 'package pool (default $IBU_BUILD_POOL or /var/cache/ibu-build/pool)')
    .option('--json', 'print the result as JSON')
    .action(async (f: BuildFlags) => {
      for (const k of ['spec', 'lock', 'version', 'out'] as const) {
        if (!f[k]) throw new IbuError('USAGE', `ibu build needs --${k} (ibu build --spec product.yaml --lock product.lock --version V --out V.img).`);
      }
      const { spec, dir } = readSpec(f.spec);
      const res = await buildProduct({
        spec,
        specDir: dir,
        lock: readLock(f.lock),
        pool: new PackagePool(poolDir(f.pool)),
        version: f.version,
        out: f.out,
        previous: f.previous,
        log: say(f.json),
        onWarning: (m) => process.stderr.write(`warning: ${m}\n`),
      });
      if (f.json) {
        const { path: p, version, product, size, allocatedBytes, sha256, layout, previousVersion, treeDigest, warnings, sourceDateEpoch, packages } = res;
        const body = { path: p, version, product, size, allocatedBytes, sha256, layout, previousVersion, treeDigest, warnings, sourceDateEpoch, packages };
        process.stdout.write(JSON.stringify(body) + '\n');
        return;
      }
      process.stdout.write(
        [
          `built ${res.path}`,
          `  version ${res.version} (product ${res.product}), ${res.packages} packages, SOURCE_DATE_EPOCH ${res.sourceDateEpoch}`,
          `  size ${mib(res.size)}, ${mib(res.allocatedBytes)} allocated (sparse)`,
          `  layout ${res.layout === 'previous' ? `kept from ${res.previousVersion ?? 'the previous image'}` : 'fresh'}`,
          `  sha256 ${res.sha256}`,
        ].join('\n') + '\n',
      );
    });

  build
    .command('lock')
    .description('resolve the spec (dependencies included) against its mirrors and vendor .debs; write the lock and fill the pool')
    .requiredOption('--spec <file>', 'product spec (product.yaml)')
    .requiredOption('--out <file>', 'lock file to write (product.lock)')
    .option('--update', 'replace an existing lock and print what changed, package by package')
    .option('--pool <dir>', 'package pool (default $IBU_BUILD_POOL or /var/cache/ibu-build/pool)')
    .option('--json', 'print the result as JSON')
    .action(async (f: { spec: string; out: string; update?: boolean; pool?: string; json?: boolean }) => {
      const { spec, dir } = readSpec(f.spec);
      const out = path.resolve(f.out);
      const old = fs.existsSync(out) ? readLock(out) : null;
      if (old && !f.update) throw new IbuError('USAGE', `${out} exists: pass --update to refresh it (and see what changed).`);
      const lock = await resolveLock({ spec, specDir: dir, pool: new PackagePool(poolDir(f.pool)), log: say(f.json) });
      const changes = old ? diffPackages(old.packages, lock.packages) : [];
      await writeFileAtomic(out, serializeLock(lock));
      if (f.json) {
        process.stdout.write(JSON.stringify({ path: out, packages: lock.packages.length, archives: lock.archives, changes }) + '\n');
        return;
      }
      const lines = [`locked ${lock.packages.length} packages in ${out}`, ...lock.archives.map((a) => `  ${a.uri} ${a.suite} (${a.date})`)];
      if (old) lines.push(changes.length === 0 ? 'no package changed' : `${changes.length} package changes:`, ...formatPackageChanges(changes));
      process.stdout.write(lines.join('\n') + '\n');
    });

  build
    .command('pool')
    .description('put every package of a lock into the pool (downloads what is missing from its mirror; offline builds follow)')
    .requiredOption('--lock <file>', 'lock file')
    .option('--pool <dir>', 'package pool (default $IBU_BUILD_POOL or /var/cache/ibu-build/pool)')
    .action(async (f: { lock: string; pool?: string }) => {
      const lock = readLock(f.lock);
      const pool = new PackagePool(poolDir(f.pool));
      const n = await pool.fill(lock.packages, say(false));
      process.stdout.write(`pool ${pool.dir}: ${lock.packages.length} packages present, ${n} downloaded\n`);
    });
}
