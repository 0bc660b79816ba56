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
