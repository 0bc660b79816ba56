/**
 * Property-based fuzzing of the delta reader (issue #15 item 9) on a real delta between two
 * small mke2fs images: raw edits of the file (stopped by the checksums), and edits of the op
 * table, header JSON and payload sealed again so they reach the decoder, the validator, `ibu
 * delta info`'s describer and apply. Every outcome is a delta code (DELTA_*, or
 * IMAGE_HASH_MISMATCH from apply) or a correct result: apply succeeds only with the target bit
 * for bit, and a failed apply leaves OUT untouched. The delta has RECOMPRESS ops (an xz module
 * and a gzip changelog), so mutants reach their encoder settings and sizes too. A fixed-seed batch runs in a child process
 * whose peak RSS is bounded. fast-check prints the seed and counterexample on failure.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { describeDelta, makeDelta, readDelta, readDeltaHeader } from '../../src/delta/index.js';
import { MiB, peakRss } from '../helpers/peak-rss.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree } from './fixture.js';
import { applyOutcome, codeOf, editArb, editParts, readOutcome, sealDelta, splitDelta, type DeltaParts } from './fuzz-mutants.js';

const xz = (b: Buffer): Buffer => execFileSync('xz', ['-T2', '--check=crc32', '--lzma2=dict=1MiB', '-c'], { input: b });
const gzip = (b: Buffer): Buffer => execFileSync('gzip', ['-9n', '-c'], { input: b });

describe('delta reader fuzzing', () => {
  const tmp = tempDir('ibu-delta-fuzz-');
  const p = (n: string) => path.join(tmp.dir, n);
  const A = p('a.img');
  const B = p('b.img');
  const AB = p('ab.ibudelta');
  const M = p('mutant.ibudelta');
  const OUT = p('out.img');
  let good: Buffer;
  let parts: DeltaParts;
  let targetSha: string;

  before(async () => {
    const base = binaryish(1, 300_000);
    writeTree(p('ta'), {
      'etc/ibu/image.json': imageJson('1.0'),
      'usr/bin/app': base,
      'usr/share/a': binaryish(2, 60_000),
      'usr/share/z': Buffer.alloc(40_000),
      // Compressed files, so the delta has RECOMPRESS ops (format 2) for the mutants to reach.
      'usr/lib/modules/6.1.0-1/m.ko.xz': xz(binaryish(5, 50_000)),
      'usr/share/doc/changelog.gz': gzip(binaryish(6, 30_000)),
    });
    writeTree(p('tb'), {
      'etc/ibu/image.json': imageJson('1.1'),
      'usr/bin/app': mutate(base, 3),
      'usr/share/a': binaryish(2, 60_000),
      'usr/share/b': binaryish(4, 20_000),
      'usr/share/z': Buffer.alloc(40_000),
      'usr/lib/modules/6.1.0-2/m.ko.xz': xz(mutate(binaryish(5, 50_000), 7)),
      'usr/share/doc/changelog.gz': gzip(mutate(binaryish(6, 30_000), 8)),
    });
    await makeImage(p('ta'), A, { size: '4M' });
    await makeImage(p('tb'), B, { size: '4M' });
    // Small segments, so the delta has several of every kind of op and segment.
    const stats = await makeDelta({ fromImage: A, toImage: B, out: AB, jobs: 1, level: 3, recompress: true });
    assert.ok(stats.segments >= 1);
    assert.equal(stats.ops.recompress, 2);
    good = fs.readFileSync(AB);
    parts = splitDelta(good);
    targetSha = createHash('sha256').update(fs.readFileSync(B)).digest('hex');
    // Sealing the unchanged sections gives a delta that still applies: the mutants start from a valid one.
    fs.writeFileSync(M, sealDelta(parts));
    assert.equal(await applyOutcome(A, M, OUT, targetSha), 'ok');
  });
  after(() => tmp.cleanup());

  /** Reads `file` every way a consumer does (header, whole index, `ibu delta info`); the outcome of readDelta. */
  function readAll(file: string): string {
    try {
      readDeltaHeader(file);
    } catch (err) {
      codeOf(err);
    }
    try {
      describeDelta(readDelta(file));
      return 'ok';
    } catch (err) {
      return codeOf(err);
    }
  }

  it('raw edits, truncations and splices of the file: DELTA_INVALID or DELTA_TRUNCATED', () => {
    const edit = fc.record({ kind: fc.constantFrom('byte', 'cut', 'splice', 'append'), at: fc.nat(), v: fc.nat() });
    const seen = new Set<string>();
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 3 }), (edits) => {
        let b = Buffer.from(good);
        for (const e of edits) {
          const at = e.at % Math.max(1, b.length);
          if (e.kind === 'byte') b[at] = b[at]! ^ (1 + (e.v % 255));
          else if (e.kind === 'cut') b = b.subarray(0, at);
          else if (e.kind === 'splice') b = Buffer.concat([b.subarray(0, at), b.subarray(e.v % Math.max(1, b.length))]);
          else b = Buffer.concat([b, Buffer.alloc(1 + (e.v % 100))]);
        }
        if (b.equals(good)) return;
        fs.writeFileSync(M, b);
        const r = readAll(M);
        assert.notEqual(r, 'ok', 'a damaged delta was read as valid');
        seen.add(r);
      }),
      { numRuns: 400 },
    );
    assert.deepEqual([...seen].sort(), ['DELTA_INVALID', 'DELTA_TRUNCATED']);
  });

  it('sealed edits of the op table, header and payload: read as a valid delta or a delta code', (t) => {
    const tally: Record<string, number> = {};
    fc.assert(
      fc.property(fc.array(editArb, { minLength: 1, maxLength: 4 }), (edits) => {
        fs.writeFileSync(M, sealDelta(editParts(parts, edits)));
        const r = readAll(M);
        tally[r] = (tally[r] ?? 0) + 1;
      }),
      { numRuns: 500 },
    );
    t.diagnostic(`delta ${good.length} bytes; outcomes ${JSON.stringify(tally)}`);
    // Both outcomes must occur, or the edits are not reaching the decoder.
    assert.ok((tally.ok ?? 0) > 20 && (tally.DELTA_INVALID ?? 0) > 150, JSON.stringify(tally));
  });

  it('sealed edits that read as valid, applied: the exact target or a delta code, OUT untouched on failure', async (t) => {
    const tally: Record<string, number> = {};
    // Only mutants that pass readDelta are applied (the others were covered above), so apply runs on each.
    const readable = fc
      .array(editArb, { minLength: 1, maxLength: 3 })
      .map((edits) => sealDelta(editParts(parts, edits)))
      .filter((b) => {
        fs.writeFileSync(M, b);
        return readOutcome(M) === 'ok';
      });
    await fc.assert(
      fc.asyncProperty(readable, async (b) => {
        fs.writeFileSync(M, b);
        const r = await applyOutcome(A, M, OUT, targetSha);
        tally[r] = (tally[r] ?? 0) + 1;
      }),
      { numRuns: 40 },
    );
    t.diagnostic(`outcomes ${JSON.stringify(tally)}`);
    assert.ok(Object.keys(tally).length >= 2, JSON.stringify(tally));
  });

  it('a fixed-seed batch of 150 sealed mutants read and applied in a child: no crash, peak RSS bounded', (t) => {
    const work = p('child');
    fs.mkdirSync(work, { recursive: true });
    const args = { delta: AB, source: A, work, targetSha256: targetSha, count: 150, seed: 42 };
    const { result, maxRssBytes } = peakRss<Record<string, number | string>>(
      `const m = await import(dist + '/test/delta/fuzz-mutants.js'); result = await m.mutantBatch(${JSON.stringify(args)});`,
    );
    assert.equal(result.code, undefined, `the batch failed: ${result.message}`);
    t.diagnostic(`outcomes ${JSON.stringify(result)}, peak RSS ${(maxRssBytes / MiB).toFixed(0)} MiB`);
    assert.equal(
      Object.values(result).reduce<number>((n, x) => n + Number(x), 0),
      150,
      JSON.stringify(result),
    );
    // Apply holds one segment (a few MiB here) and 4 MiB of I/O buffer; Node itself takes ~60 MiB.
    assert.ok(maxRssBytes < 200 * MiB, `peak RSS ${(maxRssBytes / MiB).toFixed(0)} MiB`);
  });
});
