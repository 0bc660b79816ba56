import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { applyDelta, readDelta, readDeltaHeader } from '../../src/delta/index.js';
import { isIbuError } from '../../src/errors.js';

test('a directory given as the delta is a clear USAGE error, not INTERNAL', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-delta-dir-'));
  try {
    const isUsage = (e: unknown) => isIbuError(e, 'USAGE') && /directory/.test((e as Error).message);
    assert.throws(() => readDelta(dir), isUsage);
    assert.throws(() => readDeltaHeader(dir), isUsage);
    await assert.rejects(applyDelta({ delta: dir, sourceImage: path.join(dir, 'a.img'), out: path.join(dir, 'o.img') }), isUsage);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a crafted op table whose segment decodes to 1 GiB (apply would hold it in memory) is DELTA_INVALID', async () => {
  const { validateOps } = await import('../../src/delta/validate.js');
  const { DICT_PREFIX } = await import('../../src/delta/frame-codec.js');
  const size = 1 << 30;
  const facts = { size, sha256: '0'.repeat(64), blockSize: 4096 };
  const header = {
    format: 1,
    fromVersion: '1',
    toVersion: '2',
    source: facts,
    target: facts,
    opHash: 'blake3-128',
    opCount: 1,
    segmentCount: 1,
    generator: 'x',
  };
  const ops = [{ type: 'replace', segment: 0, dst: [{ offset: 0, length: size }], dstHash: Buffer.alloc(16), path: '/big' }];
  const segments = [{ offset: 0, compressedLength: 100, outputLength: size, dictLength: DICT_PREFIX.length }];
  assert.throws(
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    () => validateOps(header as any, ops as any, segments, 100, 'crafted.ibudelta'),
    (e) => isIbuError(e, 'DELTA_INVALID') && /segment 0/.test((e as Error).message),
  );
});
