import assert from 'node:assert/strict';
import { execSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { MiB, peakRss } from '../helpers/peak-rss.js';

// Issue #15 item 2: a small chunk that decompresses to far more than the manifest declares is
// refused with memory bounded by the declared size, not the bomb's.
const dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-bomb-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('a 1 GiB zstd bomb for a 4 KiB chunk is CHUNK_INVALID with peak RSS under 160 MiB', () => {
  const bomb = path.join(dir, 'bomb.zst');
  // From a pipe: the frame does not declare its size, so only a capped stream stops it.
  execSync(`head -c ${1024 * MiB} /dev/zero | zstd -q -3 -c > ${bomb}`);
  const { result, maxRssBytes } = peakRss<{ code: string }>(`
    const { chunkDecompressor } = await import(dist + '/src/chunk/compress.js');
    const fs = await import('node:fs');
    chunkDecompressor()('x', fs.readFileSync(${JSON.stringify(bomb)}), 4096);
    result = { code: 'OK' };`);
  assert.equal(result.code, 'CHUNK_INVALID');
  assert.ok(maxRssBytes < 160 * MiB, `peak RSS ${(maxRssBytes / MiB).toFixed(0)} MiB`);
});

test('a zstd bomb as a delta op table is DELTA_INVALID with bounded memory', () => {
  const bomb = path.join(dir, 'table.zst');
  execSync(`head -c ${1024 * MiB} /dev/zero | zstd -q -3 -c > ${bomb}`);
  writeFileSync(path.join(dir, 'x'), '');
  const { result, maxRssBytes } = peakRss<{ code: string }>(`
    const { decompressOpTable } = await import(dist + '/src/delta/frame-codec.js');
    const fs = await import('node:fs');
    decompressOpTable(fs.readFileSync(${JSON.stringify(bomb)}), 'x.ibudelta');
    result = { code: 'OK' };`);
  assert.equal(result.code, 'DELTA_INVALID');
  assert.ok(maxRssBytes < 160 * MiB, `peak RSS ${(maxRssBytes / MiB).toFixed(0)} MiB`);
});
