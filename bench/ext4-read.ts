/**
 * ext4 reader benchmark (docs/benchmarks.md, "## ext4 reader").
 *
 *   npm run bench:ext4-read                # IMAGE=/var/cache/ibu-bench/images/base.img RUNS=5
 *
 * The work: list every file of an image with its metadata and, for each regular file, its
 * physical extents. Measured two ways in the same run, interleaved, median of RUNS:
 *   - ibu: Ext4Reader.open + walk() + extents() for every regular file, in this process;
 *   - debugfs (the anchor): one `debugfs -f SCRIPT` process running `ls -p DIR` for every
 *     directory and `stat <ino>` for every regular file (stat prints the inode's metadata and its
 *     extents), output to /dev/null. The script is generated beforehand and not timed, so
 *     debugfs gets the file list for free: the cheapest fair way to make it do the same work.
 *   - debugfs with `ex <ino>` instead of `stat` (extents only, less printing): a second,
 *     lighter anchor.
 * One untimed warm-up of each first, so both read from the page cache.
 * Without IMAGE and without base.img (made by bench/lib/debian-images.sh), it falls back to an
 * image of this machine's /usr made with mke2fs -d, and says so.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Ext4Reader } from '../src/image/ext4/index.js';

const RUNS = Number(process.env.RUNS ?? 5);
const DEFAULT_IMAGE = '/var/cache/ibu-bench/images/base.img';

function pickImage(): { image: string; note: string; cleanup?: () => void } {
  if (process.env.IMAGE) return { image: process.env.IMAGE, note: 'IMAGE from the environment' };
  if (fs.existsSync(DEFAULT_IMAGE)) return { image: DEFAULT_IMAGE, note: 'Debian 12 root image made by bench/lib/debian-images.sh' };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-bench-ext4-'));
  const image = path.join(dir, 'usr.img');
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, 4 * 1024 ** 3);
  const r = spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', '/usr', image], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('mke2fs -d /usr failed');
  return {
    image,
    note: `${DEFAULT_IMAGE} is missing: fallback image of this machine's /usr (mke2fs -d)`,
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

function readerRun(image: string): { ms: number; entries: number; files: number; extents: number } {
  const t0 = process.hrtime.bigint();
  const r = Ext4Reader.open(image);
  let entries = 0;
  let files = 0;
  let extents = 0;
  try {
    for (const e of r.walk()) {
      entries++;
      if (e.type === 'file') {
        files++;
        extents += r.extents(e.ino).length;
      }
    }
  } finally {
    r.close();
  }
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, entries, files, extents };
}

function debugfsRun(image: string, script: string): number {
  const devnull = fs.openSync('/dev/null', 'w');
  try {
    const t0 = process.hrtime.bigint();
    const r = spawnSync('debugfs', ['-f', script, image], { stdio: ['ignore', devnull, 'pipe'] });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) throw new Error(`debugfs failed: ${r.stderr}`);
    return ms;
  } finally {
    fs.closeSync(devnull);
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function main(): void {
  const { image, note, cleanup } = pickImage();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-bench-ext4-script-'));
  try {
    const r = Ext4Reader.open(image);
    const stat: string[] = [];
    const ex: string[] = [];
    const q = (p: string) => `"${p.replace(/(["\\])/g, '\\$1')}"`;
    for (const e of r.walk()) {
      if (e.type === 'dir') {
        stat.push(`ls -p ${q(e.path)}`);
        ex.push(`ls -p ${q(e.path)}`);
      } else if (e.type === 'file') {
        stat.push(`stat <${e.ino}>`);
        ex.push(`ex <${e.ino}>`);
      }
    }
    r.close();
    const script = path.join(work, 'stat');
    fs.writeFileSync(script, stat.join('\n') + '\n');
    const exScript = path.join(work, 'ex');
    fs.writeFileSync(exScript, ex.join('\n') + '\n');

    readerRun(image); // warm-up
    debugfsRun(image, script);
    debugfsRun(image, exScript);
    const ours: number[] = [];
    const theirs: number[] = [];
    const theirsEx: number[] = [];
    let counts = readerRun(image);
    for (let i = 0; i < RUNS; i++) {
      counts = readerRun(image);
      ours.push(counts.ms);
      theirs.push(debugfsRun(image, script));
      theirsEx.push(debugfsRun(image, exScript));
    }
    const result = {
      image,
      imageNote: note,
      imageBytes: fs.statSync(image).size,
      entries: counts.entries,
      regularFiles: counts.files,
      extents: counts.extents,
      runs: RUNS,
      ibuMs: ours.map((x) => Math.round(x)),
      debugfsMs: theirs.map((x) => Math.round(x)),
      ibuMedianMs: Math.round(median(ours)),
      debugfsMedianMs: Math.round(median(theirs)),
      debugfsExMs: theirsEx.map((x) => Math.round(x)),
      debugfsExMedianMs: Math.round(median(theirsEx)),
      speedupVsStat: Number((median(theirs) / median(ours)).toFixed(2)),
      speedupVsEx: Number((median(theirsEx) / median(ours)).toFixed(2)),
      machine: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${os.type()} ${os.release()}, Node ${process.version}, load ${os.loadavg()[0]!.toFixed(2)}`,
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
    cleanup?.();
  }
}

main();
