import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { makeDelta } from '../../src/delta/index.js';
import { zstdCompress } from '../../src/delta/zstd-recompress.js';
import { binaryish, imageJson, makeImage, mutate, prng, tempDir, writeTree } from './fixture.js';

// Apply streams: a 768 MiB image with ~200 MiB of data and a 60 MiB changed file is rebuilt
// in a child process whose peak RSS (VmHWM, see apply-child.ts) stays under 256 MiB, the bound
// the issue sets for a 2 GiB image. Loading the image, the source or a whole file would not fit.

const tmp = tempDir();
after(() => tmp.cleanup());

/** Runs apply-child.ts on a delta: its output is checked against `b.img`; returns the child's peak RSS in KiB. */
async function childApply(dir: string, delta: string): Promise<{ maxRssKiB: number; bytesWritten: number }> {
  const p = (n: string) => path.join(dir, n);
  const self = fileURLToPath(import.meta.url);
  const child = path.join(path.dirname(self), `apply-child${path.extname(self)}`);
  const { stdout } = await promisify(execFile)(process.execPath, [...process.execArgv, child, p('a.img'), delta, p('out.img')], { maxBuffer: 1 << 20 });
  const r = JSON.parse(stdout.trim().split('\n').pop()!) as { maxRssKiB: number; bytesWritten: number };
  assert.ok(fs.readFileSync(p('out.img')).equals(fs.readFileSync(p('b.img'))));
  fs.rmSync(p('out.img'));
  return r;
}

it('applies in bounded memory', async () => {
  const p = (n: string) => path.join(tmp.dir, n);
  const big = binaryish(1, 60 << 20);
  const rnd = prng(2);
  const filler: Record<string, Buffer> = {};
  for (let i = 0; i < 14; i++) filler[`usr/share/blob${i}`] = rnd(10 << 20);
  writeTree(p('ta'), { 'etc/ibu/image.json': imageJson('1'), 'var/big.db': big, ...filler });
  writeTree(p('tb'), { 'etc/ibu/image.json': imageJson('2'), 'var/big.db': mutate(big, 3, 50, 64), ...filler });
  await makeImage(p('ta'), p('a.img'), { size: '768M' });
  await makeImage(p('tb'), p('b.img'), { size: '768M' });
  const stats = await makeDelta({ fromImage: p('a.img'), toImage: p('b.img'), out: p('ab.ibudelta'), level: 3 });
  assert.ok(stats.segments >= 2, 'the changed file spans several segments');

  const r = await childApply(tmp.dir, p('ab.ibudelta'));
  assert.ok(r.bytesWritten > 200 << 20, `wrote ${r.bytesWritten}`);
  console.log(`peak RSS ${(r.maxRssKiB / 1024).toFixed(0)} MiB`);
  assert.ok(r.maxRssKiB * 1024 < 256 << 20, `peak RSS ${(r.maxRssKiB / 1024).toFixed(0)} MiB`);
});

// A RECOMPRESS op as large as a Debian 13 initramfs' main archive (36 MB of cpio through
// `zstd -q -9`, multi-threaded mode, from a pipe; docs/benchmarks.md "zstd and the initrd"):
// apply holds the segment's dictionary and output (the old and new contents) and runs libzstd's
// encoder in-process. Measured here: 200 MiB before apply wrote the frame straight into one
// buffer of the target's size and read the old frame into the idle output buffer, 188-189 MiB
// after (3 and 4 runs). The bound leaves room for other machines and stays under the 256 MiB.
it('applies a 36 MB zstd RECOMPRESS op (an initramfs main archive) in bounded memory', async () => {
  const dir = path.join(tmp.dir, 'zstd');
  const p = (n: string) => path.join(dir, n);
  const raw = binaryish(7, 36 << 20);
  const pipe = { codec: 'zstd', level: 9, check: 1, dict: 0, threads: 1 } as const;
  writeTree(p('ta'), { 'etc/ibu/image.json': imageJson('1'), 'boot/initrd.img': zstdCompress(pipe, raw, 2) });
  writeTree(p('tb'), { 'etc/ibu/image.json': imageJson('2'), 'boot/initrd.img': zstdCompress(pipe, mutate(raw, 8, 200, 64), 2) });
  await makeImage(p('ta'), p('a.img'), { size: '128M' });
  await makeImage(p('tb'), p('b.img'), { size: '128M' });
  const stats = await makeDelta({ fromImage: p('a.img'), toImage: p('b.img'), out: p('ab.ibudelta'), level: 3, recompress: true });
  assert.equal(stats.ops.recompress, 1, 'the frame is one RECOMPRESS op');
  const kib = (await childApply(dir, p('ab.ibudelta'))).maxRssKiB;
  console.log(`peak RSS ${(kib / 1024).toFixed(0)} MiB`);
  assert.ok(kib * 1024 < 216 << 20, `peak RSS ${(kib / 1024).toFixed(0)} MiB`);
});
