import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { makeDelta } from '../../src/delta/index.js';
import { binaryish, imageJson, makeImage, mutate, prng, tempDir, writeTree } from './fixture.js';

// Apply streams: a 768 MiB image with ~200 MiB of data and a 60 MiB changed file is rebuilt
// in a child process whose peak RSS (VmHWM, see apply-child.ts) stays under 256 MiB, the bound
// the issue sets for a 2 GiB image. Loading the image, the source or a whole file would not fit.

const tmp = tempDir();
after(() => tmp.cleanup());

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

  const self = fileURLToPath(import.meta.url);
  const child = path.join(path.dirname(self), `apply-child${path.extname(self)}`);
  const { stdout } = await promisify(execFile)(process.execPath, [...process.execArgv, child, p('a.img'), p('ab.ibudelta'), p('out.img')], {
    maxBuffer: 1 << 20,
  });
  const r = JSON.parse(stdout.trim().split('\n').pop()!) as { maxRssKiB: number; targetSize: number; bytesWritten: number };
  assert.ok(fs.readFileSync(p('out.img')).equals(fs.readFileSync(p('b.img'))));
  assert.ok(r.bytesWritten > 200 << 20, `wrote ${r.bytesWritten}`);
  console.log(`peak RSS ${(r.maxRssKiB / 1024).toFixed(0)} MiB`);
  assert.ok(r.maxRssKiB * 1024 < 256 << 20, `peak RSS ${(r.maxRssKiB / 1024).toFixed(0)} MiB`);
});
