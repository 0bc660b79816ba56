import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SourceMatcher, normaliseDigits, type MatchFile } from '../../src/delta/file-match.js';
import { opStart } from '../../src/delta/op-ranges.js';
import { validateOps } from '../../src/delta/validate.js';
import { BLOCK } from '../../src/delta/image-scan.js';
import { plan, type PlanFile } from '../../src/delta/plan.js';
import type { DeltaHeader } from '../../src/delta/types.js';

// The pure half of make: matching rules and op planning on hand-made block maps.

const f = (path: string, size: number, ino: number, type: 'file' | 'dir' = 'file'): MatchFile => ({ path, size, ino, type });

describe('file matching', () => {
  it('treats every run of digits alike', () => {
    assert.equal(normaliseDigits('/usr/lib/modules/6.1.0-26-amd64/kernel/x.ko'), '/usr/lib/modules/#.#.#-#-amd#/kernel/x.ko');
    assert.equal(normaliseDigits('libfoo.so.1.2.3'), normaliseDigits('libfoo.so.1.2.40'));
  });

  it('prefers the same path, then a renamed version, then the same file name, closest in size', () => {
    const m = new SourceMatcher([
      f('/usr/bin/app', 1000, 10),
      f('/usr/lib/modules/6.1.0-26-amd64/kernel/e1000.ko', 5000, 11),
      f('/usr/lib/modules/6.1.0-25-amd64/kernel/e1000.ko', 9000, 12),
      f('/usr/lib/libssl.so.3.0.20', 700_000, 13),
      f('/opt/old/place/config.txt', 300, 14),
      f('/srv/a/config.txt', 10, 15),
      f('/usr/share/empty', 0, 16),
      f('/usr/lib/modules/6.1.0-26-amd64', 4096, 17, 'dir'),
    ]);
    assert.deepEqual(m.match(f('/usr/bin/app', 1200, 1)), { file: f('/usr/bin/app', 1000, 10), kind: 'path' });
    const mod = m.match(f('/usr/lib/modules/6.1.0-28-amd64/kernel/e1000.ko', 5100, 2))!;
    assert.equal(mod.kind, 'rename');
    assert.equal(mod.file.ino, 11, 'the closest in size of two older versions');
    assert.equal(m.match(f('/usr/lib/libssl.so.3.0.22', 700_100, 3))!.file.ino, 13);
    const cfg = m.match(f('/etc/new/config.txt', 280, 4))!;
    assert.deepEqual([cfg.kind, cfg.file.ino], ['basename', 14]);
    assert.equal(m.match(f('/usr/share/empty', 10, 5)), undefined, 'an empty old file is no dictionary');
    assert.equal(m.match(f('/usr/lib/modules/6.1.0-28-amd64', 4096, 6, 'dir'))!.file.ino, 17);
    assert.equal(m.match(f('/nothing/like/it', 10, 7)), undefined);
  });
});

describe('plan', () => {
  const bs = 1024;
  // 64 target blocks: 0-3 metadata (2 changed), 10-17 a changed file stored back to front
  // (logical 0 at physical 16), 20-59 copied (from the same offsets), the rest zero.
  function scan() {
    const n = 64;
    const kind = new Uint8Array(n).fill(BLOCK.zero);
    const from = new Int32Array(n).fill(-1);
    for (const b of [0, 3]) {
      kind[b] = BLOCK.copy;
      from[b] = b;
    }
    kind[1] = BLOCK.literal;
    kind[2] = BLOCK.literal;
    for (let b = 10; b < 18; b++) kind[b] = b === 12 ? BLOCK.copy : BLOCK.literal;
    from[12] = 40;
    for (let b = 20; b < 60; b++) {
      kind[b] = BLOCK.copy;
      from[b] = b;
    }
    return { blockSize: bs, sourceSize: n * bs, targetSize: n * bs, kind, from, sourceZero: new Uint8Array(n) };
  }
  const target: PlanFile[] = [
    {
      ...f('/usr/bin/app', 8 * bs, 5),
      extents: [
        { logical: 0, physical: 16, length: 2, uninit: false },
        { logical: 2, physical: 10, length: 6, uninit: false },
      ],
    },
  ];
  const match = (t: MatchFile) => (t.path === '/usr/bin/app' ? { file: f('/usr/bin/app', 8 * bs, 50), kind: 'path' as const } : undefined);
  const sourceExtents = () => [{ logical: 0, physical: 30, length: 8, uninit: false }];

  it('covers the target once, in order of each op’s lowest byte, with the file diffed against its old blocks', () => {
    const p = plan({ scan: scan(), targetFiles: target, match, sourceExtents, limits: { maxCopy: 16 * bs } });
    const header = { target: { size: 64 * bs }, source: { size: 64 * bs } } as DeltaHeader;
    const segments = p.segments.map((s, i) => ({ offset: i, compressedLength: 1, outputLength: s.outputLength, dictLength: s.dictLength }));
    validateOps(header, p.ops, segments, segments.length, 'plan'); // throws on gaps, overlaps or disorder
    const starts = p.ops.map(opStart);
    assert.deepEqual(
      starts,
      [...starts].sort((a, b) => a - b),
    );
    const app = p.ops.find((o) => o.type === 'patch' && o.path === '/usr/bin/app');
    assert.ok(app && app.type === 'patch');
    // Logical order kept (16-17 then 10-17 minus nothing: block 12 is a short unchanged run, absorbed).
    assert.deepEqual(app.dst, [
      { offset: 16 * bs, length: 2 * bs },
      { offset: 10 * bs, length: 6 * bs },
    ]);
    assert.deepEqual(app.src, [{ offset: 30 * bs, length: 8 * bs }]);
    const meta = p.ops.find((o) => o.type === 'patch' && o.path === '');
    assert.ok(meta && meta.type === 'patch');
    assert.deepEqual(meta.dst, [{ offset: 1 * bs, length: 2 * bs }]);
    assert.deepEqual(meta.src, meta.dst, 'metadata is diffed against the same offsets');
    const copies = p.ops.filter((o) => o.type === 'copy');
    assert.ok(
      copies.every((c) => c.type === 'copy' && c.length <= 16 * bs),
      'COPY ops are cut at maxCopy',
    );
    assert.equal(
      copies.reduce((n, c) => n + (c.type === 'copy' ? c.length : 0), 0),
      42 * bs,
    );
    assert.deepEqual(p.files, { patched: 1, replaced: 0, byPath: 1, byRename: 0, byBasename: 0, recompressed: 0 });
  });

  it('a recompressed file: one RECOMPRESS op over its exact bytes, the rest of its last block a ZERO op', () => {
    // The same file, 7.5 blocks long and compressed: the segment carries its uncompressed sizes.
    const file: PlanFile = { ...target[0]!, size: 7 * bs + bs / 2 };
    const old = f('/usr/bin/app', 6 * bs + 100, 50);
    const params = { codec: 'xz' as const, level: 6, check: 1, dict: 1 << 20, threads: 2 };
    const p = plan({
      scan: scan(),
      targetFiles: [file],
      match,
      sourceExtents,
      recompress: (t) =>
        t.ino === 5
          ? { source: old, pieces: [{ start: 0, length: file.size, srcStart: 0, srcLength: old.size, params, rawLength: 50_000, srcRawLength: 48_000 }] }
          : undefined,
    });
    const rc = p.ops.find((o) => o.type === 'recompress');
    assert.ok(rc && rc.type === 'recompress');
    assert.deepEqual(rc.dst, [
      { offset: 16 * bs, length: 2 * bs },
      { offset: 10 * bs, length: 5 * bs + bs / 2 },
    ]);
    assert.deepEqual(rc.src, [{ offset: 30 * bs, length: 6 * bs + 100 }], 'the old file, clipped to its size');
    assert.deepEqual(
      p.ops.find((o) => o.type === 'zero' && o.dst === 15 * bs + bs / 2),
      { type: 'zero', dst: 15 * bs + bs / 2, length: bs / 2 },
    );
    const seg = p.segments[rc.segment]!;
    assert.ok(seg.outputLength >= 50_000 && seg.dictLength >= 48_000);
    assert.equal(p.files.recompressed, 1);
    const header = { format: 2, encoders: { xz: '5.4.1' }, target: { size: 64 * bs }, source: { size: 64 * bs } } as DeltaHeader;
    const segments = p.segments.map((s, i) => ({ offset: i, compressedLength: 1, outputLength: s.outputLength, dictLength: s.dictLength }));
    validateOps(header, p.ops, segments, segments.length, 'plan');
  });

  it('replaces a file nothing matches and splits segments at the output limit', () => {
    const p = plan({ scan: scan(), targetFiles: target, match: () => undefined, sourceExtents, limits: { maxSegmentOutput: 4 * bs } });
    const app = p.ops.filter((o) => o.type === 'replace' && o.path === '/usr/bin/app');
    assert.equal(app.length, 2, 'an 8-block file in 4-block pieces');
    assert.ok(p.segments.length >= 3);
    assert.ok(p.segments.every((s) => s.outputLength <= 4 * bs));
    assert.equal(p.files.replaced, 1);
  });
});
