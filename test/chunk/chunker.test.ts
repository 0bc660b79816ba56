import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { chunkFile, ZERO_RUN_MIN, type Piece } from '../../src/chunk/chunker.js';
import { cutParams, cutPoint, validateParams, GEAR } from '../../src/chunk/fastcdc.js';
import { chunkHasher } from '../../src/chunk/hash.js';
import { chunkCompressor, chunkDecompressor } from '../../src/chunk/compress.js';
import { isIbuError } from '../../src/errors.js';

const P = { min: 2048, avg: 8192, max: 32768 };

function rand(seed: string, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  for (let off = 0, c = 0; off < n; off += 32)
    createHash('sha256')
      .update(`${seed}:${c++}`)
      .digest()
      .copy(out, off, 0, Math.min(32, n - off));
  return out;
}

function chunksOf(data: Buffer, params = P, bufferSize?: number): Array<Omit<Piece, 'data'> & { id: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-chunk-'));
  try {
    const f = path.join(dir, 'data');
    writeFileSync(f, data);
    const fd = openSync(f, 'r');
    try {
      const h = chunkHasher('sha256');
      // Hash while iterating: a piece's data is a view that the next piece overwrites.
      const out = [];
      for (const p of chunkFile(fd, data.length, params, bufferSize))
        out.push({ offset: p.offset, size: p.size, zero: p.zero, id: p.zero ? 'zero' : h(p.data) });
      return out;
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the gear table is the documented one (format stability)', () => {
  // Pinned: changing the table silently would break dedup against every published release.
  assert.equal(GEAR.length, 256);
  assert.equal(
    createHash('sha256').update(Buffer.from(GEAR.buffer)).digest('hex').slice(0, 16),
    createHash('sha256')
      .update(
        Buffer.from(
          new Int32Array(Array.from({ length: 256 }, (_, i) => createHash('sha256').update(`ibu-fastcdc-gear-v1:${i}`).digest().readInt32LE(0))).buffer,
        ),
      )
      .digest('hex')
      .slice(0, 16),
  );
});

test('chunks tile the input, respect min/max, and their mean is near avg', () => {
  const data = rand('a', 4 * 1024 * 1024);
  const cs = chunksOf(data);
  let off = 0;
  for (const [i, c] of cs.entries()) {
    assert.equal(c.offset, off);
    assert.ok(c.size <= P.max, `chunk ${i} too big`);
    if (i < cs.length - 1) assert.ok(c.size >= P.min, `chunk ${i} too small: ${c.size}`);
    off += c.size;
  }
  assert.equal(off, data.length);
  const mean = data.length / cs.length;
  // Normalized chunking keeps the mean within a factor of ~1.5 of avg on random data.
  assert.ok(mean > P.avg * 0.6 && mean < P.avg * 1.6, `mean ${mean}`);
});

test('the read buffer size does not change the cut points', () => {
  const data = Buffer.concat([rand('b', 700_000), Buffer.alloc(200_000), rand('c', 500_001)]);
  assert.deepEqual(chunksOf(data, P, 1), chunksOf(data, P, 64 * 1024 * 1024));
});

test('an insertion changes only the chunks around it (content-defined boundaries resynchronize)', () => {
  const base = rand('d', 2 * 1024 * 1024);
  const edited = Buffer.concat([base.subarray(0, 1_000_000), Buffer.from('a few inserted bytes'), base.subarray(1_000_000)]);
  const a = new Set(chunksOf(base).map((c) => c.id));
  const b = chunksOf(edited);
  const fresh = b.filter((c) => !a.has(c.id));
  assert.ok(fresh.length >= 1 && fresh.length <= 3, `${fresh.length} new chunks after a small insertion`);
});

test('zero runs of >= ZERO_RUN_MIN aligned bytes become zero pieces; short ones stay data', () => {
  const data = Buffer.concat([
    rand('e', 40960),
    Buffer.alloc(ZERO_RUN_MIN * 3),
    rand('f', 4096),
    Buffer.alloc(ZERO_RUN_MIN - 4096),
    rand('g', 40960),
    Buffer.alloc(ZERO_RUN_MIN),
  ]);
  const cs = chunksOf(data);
  const zeros = cs.filter((c) => c.zero);
  assert.deepEqual(
    zeros.map((z) => [z.offset, z.size]),
    [
      [40960, ZERO_RUN_MIN * 3],
      [data.length - ZERO_RUN_MIN, ZERO_RUN_MIN],
    ],
  );
  assert.equal(
    cs.reduce((s, c) => s + c.size, 0),
    data.length,
  );
});

test('an all-zero file is one zero piece; an empty file has none', () => {
  assert.deepEqual(
    chunksOf(Buffer.alloc(10 * 1024 * 1024)).map((c) => [c.offset, c.size, c.zero]),
    [[0, 10 * 1024 * 1024, true]],
  );
  assert.deepEqual(chunksOf(Buffer.alloc(0)), []);
});

test('cutPoint honours min and max directly', () => {
  const p = cutParams(P);
  const data = rand('h', 100_000);
  assert.equal(cutPoint(data, 0, 1000, p), 1000);
  assert.ok(cutPoint(data, 0, data.length, p) <= P.max);
  assert.ok(cutPoint(data, 0, data.length, p) > P.min);
});

test('invalid chunk parameters are refused with USAGE', () => {
  for (const bad of [
    { min: 1, avg: 8192, max: 65536 },
    { min: 4096, avg: 10000, max: 65536 },
    { min: 8192, avg: 8192, max: 65536 },
    { min: 1024, avg: 8192, max: 4096 },
  ]) {
    assert.throws(
      () => validateParams(bad),
      (e) => isIbuError(e, 'USAGE'),
    );
  }
});

test('zstd round trip; truncated and corrupt frames get distinct codes', () => {
  const data = Buffer.concat([rand('i', 20000), Buffer.alloc(20000, 7)]);
  const z = chunkCompressor()(data);
  const d = chunkDecompressor();
  assert.deepEqual(d('x', z, data.length), data);
  assert.throws(
    () => d('x', z.subarray(0, z.length - 10), data.length),
    (e) => isIbuError(e, 'CHUNK_TRUNCATED'),
  );
  assert.throws(
    () => d('x', Buffer.from('definitely not zstd at all'), data.length),
    (e) => isIbuError(e, 'CHUNK_INVALID'),
  );
  // A whole frame of the wrong size is another chunk's bytes or tampering, not a cut-off download.
  assert.throws(
    () => d('x', z, data.length + 1),
    (e) => isIbuError(e, 'CHUNK_INVALID'),
  );
});

test('blake3 and sha256 chunk ids are 64 hex digits and differ', () => {
  const b = chunkHasher('blake3')(Buffer.from('abc'));
  const s = chunkHasher('sha256')(Buffer.from('abc'));
  assert.equal(b, '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85'); // BLAKE3 test vector for "abc"
  assert.equal(s, 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.throws(
    () => chunkHasher('md5'),
    (e) => isIbuError(e, 'MANIFEST_INVALID'),
  );
});
