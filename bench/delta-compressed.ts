/**
 * Compressed-file delta benchmark (issue #20), on the pairs of bench/lib/deb-pair-images.sh
 * (real Debian packages unpacked into mke2fs images): trixie-kernel (.ko.xz modules),
 * bookworm-kernel (uncompressed modules), bookworm-security (ELF libraries, .gz docs); and on
 * those of bench/lib/initrd-pair-images.ts (the appliance's real Debian 13 initrds):
 * trixie-initrd (gzip main archive, as built), trixie-initrd-zstd (main archive as trixie's `zstd -q -9`).
 * Each selected pair's images are made first when missing or out of date (cached, keyed by input).
 * For each pair, in one run:
 *   - bytes: ibu delta, ibu delta --recompress, `xdelta3 -e -9 -B 1073741824 -s A B`,
 *     `zstd -<L> --long=31 --patch-from=A B`, the changed files compressed
 *     (`tar | zstd -19 --long=31`), and the per-file bound: each changed file of B as
 *     `zstd -19 --patch-from=<its old file>` (a new file: `zstd -19`), summed;
 *   - make time of ibu --recompress beside xdelta3's (wall and CPU seconds, children included), and its peak RSS;
 *   - apply of the --recompress delta through the CLI in a child: wall and CPU seconds,
 *     MB/s of image, peak RSS of the ibu process (GNU time %M), median of RUNS.
 * The load average is printed beside the numbers: the 2 cores are shared.
 *
 *   npx tsx bench/delta-compressed.ts [--runs 3] [--pairs trixie-kernel,bookworm-kernel,bookworm-security]
 *        [--zstd-level 19] [--json FILE] [--no-per-file]
 * (default pairs: the three deb pairs; name trixie-initrd / trixie-initrd-zstd to add those)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SourceMatcher, type MatchFile } from '../src/delta/file-match.js';
import { Ext4Reader } from '../src/image/ext4/index.js';
import { initrdPairImages, isInitrdPair } from './lib/initrd-pair-images.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const IBU = path.join(REPO, 'bin/ibu');
const RUNS = Number(arg('runs', '3'));
const DIR = path.join(process.env.IBU_BENCH_DIR ?? '/var/cache/ibu-bench', 'deb-pairs');
const PAIRS = arg('pairs', 'trixie-kernel,bookworm-kernel,bookworm-security').split(',');
const ZSTD_LEVEL = Number(arg('zstd-level', '19'));
const JSON_OUT = arg('json', '');
const PER_FILE = !process.argv.includes('--no-per-file');
const WORK = fs.mkdtempSync(path.join(arg('work', os.tmpdir()), 'ibu-bench-cdelta-'));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Timed {
  wall: number;
  cpu: number; // user + system seconds of the process and its children
  maxRssKiB: number;
  stdout: string;
}

/** Runs a command under GNU time: wall, CPU (children included) and peak RSS of the command. */
function timed(cmd: string, args: string[]): Timed {
  const tf = path.join(WORK, 'time.txt');
  const r = spawnSync('/usr/bin/time', ['-o', tf, '-f', '%e %U %S %M', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.toString().slice(-2000)}`);
  const [wall, user, sys, rss] = fs.readFileSync(tf, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number) as [number, number, number, number];
  return { wall, cpu: user + sys, maxRssKiB: rss, stdout: r.stdout.toString() };
}

const size = (p: string): number => fs.statSync(p).size;
const load = (): string =>
  os
    .loadavg()
    .map((x) => x.toFixed(1))
    .join(' ');

/** Changed files of B against A (by content; matched like `ibu delta make` does), summed two ways. */
function changedFiles(a: string, b: string): { files: number; rawBytes: number; tarZst: number; perFile: number } {
  const ra = Ext4Reader.open(a);
  const rb = Ext4Reader.open(b);
  const dir = path.join(WORK, 'changed');
  const pf = path.join(WORK, 'perfile');
  fs.mkdirSync(pf, { recursive: true });
  let files = 0;
  let rawBytes = 0;
  let perFile = 0;
  try {
    const old: MatchFile[] = [];
    for (const e of ra.walk()) if (e.type === 'file') old.push({ path: e.path, ino: e.ino, type: 'file', size: e.size });
    const matcher = new SourceMatcher(old);
    const byPath = new Map(old.map((f) => [f.path, f]));
    for (const e of rb.walk()) {
      if (e.type !== 'file') continue;
      const data = rb.readFile(e.ino);
      const same = byPath.get(e.path);
      if (same && same.size === data.length && ra.readFile(same.ino).equals(data)) continue;
      const p = path.join(dir, e.path);
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, data);
      files++;
      rawBytes += data.length;
      if (!PER_FILE) continue;
      const m = matcher.match({ path: e.path, ino: e.ino, type: 'file', size: e.size });
      const oldPath = path.join(pf, 'old');
      const args = ['-q', '-f', '-19', '--long=31', '-T1'];
      if (m) {
        fs.writeFileSync(oldPath, ra.readFile(m.file.ino));
        args.push(`--patch-from=${oldPath}`);
      }
      execFileSync('zstd', [...args, p, '-o', path.join(pf, 'out.zst')], { stdio: 'ignore' });
      perFile += size(path.join(pf, 'out.zst'));
    }
  } finally {
    ra.close();
    rb.close();
  }
  const out = path.join(WORK, 'changed.tar.zst');
  execFileSync('sh', ['-c', `tar -C '${dir}' -cf - . | zstd -q -19 --long=31 -T1 -o '${out}' -f`], { stdio: 'ignore' });
  const tarZst = size(out);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(pf, { recursive: true, force: true });
  return { files, rawBytes, tarZst, perFile: PER_FILE ? perFile : NaN };
}

interface PairResult {
  pair: string;
  imageBytes: number;
  load: { start: string; end: string };
  ibuPlain: { bytes: number; make: Timed };
  ibuRecompress: { bytes: number; make: Timed; stats: unknown; apply: Timed[]; applyMBps: number; applyCpu: number; applyMaxRssMiB: number };
  xdelta3: { bytes: number; make: Timed };
  zstdPatchFrom: { bytes: number; level: number; make: Timed };
  changed: ReturnType<typeof changedFiles>;
}

function benchPair(name: string): PairResult {
  const a = path.join(DIR, name, 'a.img');
  const b = path.join(DIR, name, 'b.img');
  const log = (s: string): void => void process.stderr.write(`[${name}] ${s} (load ${load()})\n`);
  const start = load();
  const imageBytes = size(b);
  const plainOut = path.join(WORK, 'plain.ibudelta');
  const plainMake = timed(IBU, ['delta', 'make', '--from', a, '--to', b, '--out', plainOut, '--json']);
  const plain = { bytes: size(plainOut), make: plainMake };
  log(`ibu make: ${plain.bytes} B in ${plainMake.wall} s`);
  fs.rmSync(plainOut);

  const rcOut = path.join(WORK, 'rc.ibudelta');
  const rcMake = timed(IBU, ['delta', 'make', '--from', a, '--to', b, '--out', rcOut, '--recompress', '--json']);
  const stats = JSON.parse(rcMake.stdout) as { bytes: number };
  log(`ibu make --recompress: ${stats.bytes} B in ${rcMake.wall} s (${rcMake.cpu.toFixed(0)} CPU s)`);
  const apply: Timed[] = [];
  const out = path.join(WORK, 'out.img');
  for (let i = 0; i < RUNS; i++) {
    apply.push(timed(IBU, ['delta', 'apply', '--from', a, '--delta', rcOut, '--out', out, '--json']));
    execFileSync('cmp', ['-s', out, b]); // throws unless the output is B bit for bit
    log(`apply ${apply.at(-1)!.wall} s, peak RSS ${(apply.at(-1)!.maxRssKiB / 1024).toFixed(0)} MiB`);
    fs.rmSync(out);
  }

  const xd = path.join(WORK, 'ab.xd');
  const xdMake = timed('xdelta3', ['-e', '-9', '-f', '-B', '1073741824', '-s', a, b, xd]);
  const xdelta3 = { bytes: size(xd), make: xdMake };
  log(`xdelta3: ${xdelta3.bytes} B in ${xdMake.wall} s`);
  fs.rmSync(xd);

  const zs = path.join(WORK, 'ab.zst');
  const zsMake = timed('zstd', ['-q', '-f', `-${ZSTD_LEVEL}`, '--long=31', '-T1', `--patch-from=${a}`, b, '-o', zs]);
  const zstdPatchFrom = { bytes: size(zs), level: ZSTD_LEVEL, make: zsMake };
  log(`zstd --patch-from: ${zstdPatchFrom.bytes} B`);
  fs.rmSync(zs);

  const changed = changedFiles(a, b);
  log(`changed files: ${changed.files}, ${changed.rawBytes} B; tar.zst ${changed.tarZst} B; per-file bound ${changed.perFile} B`);
  fs.rmSync(rcOut);
  return {
    pair: name,
    imageBytes,
    load: { start, end: load() },
    ibuPlain: plain,
    ibuRecompress: {
      bytes: stats.bytes,
      make: rcMake,
      stats,
      apply,
      applyMBps: imageBytes / 1e6 / median(apply.map((t) => t.wall)),
      applyCpu: median(apply.map((t) => t.cpu)),
      applyMaxRssMiB: Math.max(...apply.map((t) => t.maxRssKiB)) / 1024,
    },
    xdelta3,
    zstdPatchFrom,
    changed,
  };
}

const mb = (n: number): string => (n / 1e6).toFixed(2);

async function main(): Promise<void> {
  const results: PairResult[] = [];
  try {
    for (const pair of PAIRS) {
      // the pair's images, made now when missing or out of date (both scripts skip a current pair)
      if (isInitrdPair(pair)) await initrdPairImages(pair, DIR);
      else execFileSync('bash', [path.join(REPO, 'bench/lib/deb-pair-images.sh'), pair], { stdio: ['ignore', 'inherit', 'inherit'] });
      results.push(benchPair(pair));
    }
  } finally {
    fs.rmSync(WORK, { recursive: true, force: true });
  }
  const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Node ${process.version}`;
  const lines = [
    `machine: ${machine}; apply runs: ${RUNS} (median)`,
    '',
    `| pair | ibu | ibu --recompress | xdelta3 -9 | zstd -${ZSTD_LEVEL} --patch-from | changed files tar.zst | per-file zstd -19 --patch-from | --recompress / xdelta3 | --recompress / per-file |`,
    '|---|---|---|---|---|---|---|---|---|',
    ...results.map(
      (r) =>
        `| ${r.pair} | ${mb(r.ibuPlain.bytes)} MB | ${mb(r.ibuRecompress.bytes)} MB | ${mb(r.xdelta3.bytes)} MB | ${mb(r.zstdPatchFrom.bytes)} MB | ${mb(r.changed.tarZst)} MB | ${mb(r.changed.perFile)} MB | ${((100 * r.ibuRecompress.bytes) / r.xdelta3.bytes).toFixed(1)} % | ${((100 * r.ibuRecompress.bytes) / r.changed.perFile).toFixed(1)} % |`,
    ),
    '',
    '| pair | ibu make --recompress s (CPU s) | make --recompress peak RSS | ibu make s | xdelta3 make s (CPU s) | apply s (CPU s) | apply MB/s of image | apply peak RSS | load at start / end |',
    '|---|---|---|---|---|---|---|---|---|',
    ...results.map(
      (r) =>
        `| ${r.pair} | ${r.ibuRecompress.make.wall.toFixed(0)} (${r.ibuRecompress.make.cpu.toFixed(0)}) | ${(r.ibuRecompress.make.maxRssKiB / 1024).toFixed(0)} MiB | ${r.ibuPlain.make.wall.toFixed(0)} | ${r.xdelta3.make.wall.toFixed(0)} (${r.xdelta3.make.cpu.toFixed(0)}) | ${median(r.ibuRecompress.apply.map((t) => t.wall)).toFixed(1)} (${r.ibuRecompress.applyCpu.toFixed(1)}) | ${r.ibuRecompress.applyMBps.toFixed(0)} | ${r.ibuRecompress.applyMaxRssMiB.toFixed(0)} MiB | ${r.load.start} / ${r.load.end} |`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n');
  if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify({ machine, runs: RUNS, results }, null, 2) + '\n');
}

await main();
