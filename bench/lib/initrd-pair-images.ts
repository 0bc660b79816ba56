/**
 * The initrd pairs of the compressed-file delta benchmark (issue #20, bench/delta-compressed.ts):
 * Debian 13's own initrds, as `ibu build` makes them for the example appliance (initramfs-tools,
 * MODULES=most), `/boot/initrd.img-*` of releases 1.0 (6.12.117) and 2.0 (6.12.118):
 *
 *   trixie-initrd        as built: early cpio, the uncompressed cpio of the .ko.xz modules, and the
 *                        main archive as gzip (the appliance has no zstd, so mkinitramfs used `gzip -n`)
 *   trixie-initrd-zstd   the same with the main archive re-written as a trixie machine with zstd
 *                        installed writes it: trixie's own zstd binary, `zstd -q -9` from a pipe
 *
 * Each initrd is dumped with debugfs from the appliance images (read-only; the cache is never
 * written) and put alone, under its own name, in a 128 MiB ext4 image (mke2fs -d, fixed UUID,
 * hash seed and time, as bench/lib/deb-pair-images.sh does) at
 * $IBU_BENCH_DIR/deb-pairs/<pair>/{a,b}.img, keyed by the two initrds' sha256 and the zstd
 * version (pair.key): rebuilt only when those change.
 *
 * The appliance set: IBU_INITRD_FROM=<dir with 1.0.img and 2.0.img> (e.g.
 * /var/cache/ibu-e2e/appliance/<key>), else test/e2e/appliance.ts applianceReleases() (the
 * cached set of this checkout, or built now: 5–10 min with a warm package pool).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpioLayout } from '../../src/delta/cpio-layout.js';

export const INITRD_PAIRS = ['trixie-initrd', 'trixie-initrd-zstd'] as const;
export type InitrdPair = (typeof INITRD_PAIRS)[number];
export const isInitrdPair = (p: string): p is InitrdPair => (INITRD_PAIRS as readonly string[]).includes(p);

const HERE = path.dirname(fileURLToPath(import.meta.url));
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function applianceSet(): Promise<{ a: string; b: string }> {
  const from = process.env.IBU_INITRD_FROM;
  if (from) return { a: path.join(from, '1.0.img'), b: path.join(from, '2.0.img') };
  const { applianceReleases } = await import('../../test/e2e/appliance.js');
  const app = await applianceReleases();
  return { a: app.images['1.0'], b: app.images['2.0'] };
}

/** `/boot/initrd.img-*` of an ext4 image, dumped with debugfs (opened read-only). */
function dumpInitrd(img: string, work: string): { name: string; data: Buffer } {
  const ls = execFileSync('debugfs', ['-R', 'ls /boot', img], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  const name = ls.split(/\s+/).find((n) => n.startsWith('initrd.img-'));
  if (!name) throw new Error(`${img}: no /boot/initrd.img-* found`);
  const out = path.join(work, name);
  execFileSync('debugfs', ['-R', `dump /boot/${name} ${out}`, img], { stdio: 'ignore' });
  const data = fs.readFileSync(out);
  fs.rmSync(out);
  return { name, data };
}

/** The initrd with its gzip main archive re-written by `zstd -q -9` from a pipe (mkinitramfs' command). */
function withZstdMain(initrd: Buffer, zstdDir: string): Buffer {
  const tail = cpioLayout(initrd)?.tail;
  if (tail === undefined) throw new Error('initrd: no compressed main archive after the cpio archives');
  const cpio = execFileSync('gzip', ['-dc'], { input: initrd.subarray(tail), maxBuffer: 1 << 30 });
  const main = execFileSync(path.join(zstdDir, 'usr/bin/zstd'), ['-q', '-9'], {
    input: cpio,
    maxBuffer: 1 << 30,
    env: { ...process.env, LD_LIBRARY_PATH: path.join(zstdDir, 'usr/lib/x86_64-linux-gnu') },
  });
  return Buffer.concat([initrd.subarray(0, tail), main]);
}

function mkImage(img: string, name: string, data: Buffer, work: string): void {
  const root = path.join(work, 'root');
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(path.join(root, 'boot'), { recursive: true });
  fs.writeFileSync(path.join(root, 'boot', name), data);
  fs.rmSync(img, { force: true });
  execFileSync(
    'mke2fs',
    ['-q', '-F', '-t', 'ext4', '-b', '4096', '-U', '6f1d2c3b-1111-4222-8333-944455556666'].concat([
      '-E',
      'hash_seed=6f1d2c3b-aaaa-4bbb-8ccc-dddd00001111,root_owner=0:0',
      '-d',
      root,
      img,
      '128M',
    ]),
    { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' }, stdio: 'ignore' },
  );
  fs.rmSync(root, { recursive: true, force: true });
}

/** Makes the pair's a.img and b.img under `dir` (deb-pairs/), unless pair.key says they are current. */
export async function initrdPairImages(pair: InitrdPair, dir: string, log: (m: string) => void = (m) => void process.stderr.write(`${m}\n`)): Promise<void> {
  const zstdDir = execFileSync('bash', [path.join(HERE, 'deb-pair-images.sh'), 'trixie-zstd'])
    .toString()
    .trim()
    .split('\n')
    .at(-1)!;
  const set = await applianceSet();
  const pdir = path.join(dir, pair);
  fs.mkdirSync(pdir, { recursive: true });
  const work = fs.mkdtempSync(path.join(pdir, '.work-'));
  try {
    const sides = [dumpInitrd(set.a, work), dumpInitrd(set.b, work)];
    const key = `${sides.map((s) => `${s.name} ${sha256(s.data)}`).join(' -> ')}${pair === 'trixie-initrd-zstd' ? ` main: ${path.basename(zstdDir)} -q -9` : ''} size 128M`;
    const have = (f: string): boolean => fs.existsSync(path.join(pdir, f));
    if (have('a.img') && have('b.img') && have('pair.key') && fs.readFileSync(path.join(pdir, 'pair.key'), 'utf8').trim() === key) {
      log(`initrd-pair-images: ${pair} exists, skipped`);
      return;
    }
    log(`initrd-pair-images: building ${pair}`);
    for (const [i, s] of sides.entries()) {
      const data = pair === 'trixie-initrd-zstd' ? withZstdMain(s.data, zstdDir) : s.data;
      mkImage(path.join(pdir, `${'ab'[i]}.img`), s.name, data, work);
      log(`initrd-pair-images: ${pair} ${'ab'[i]}: ${s.name}, ${data.length} B`);
    }
    fs.writeFileSync(path.join(pdir, 'pair.key.tmp'), key + '\n');
    fs.renameSync(path.join(pdir, 'pair.key.tmp'), path.join(pdir, 'pair.key'));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
