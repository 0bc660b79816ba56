import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { readDelta, readDeltaHeader } from '../../src/delta/delta-file.js';
import { isIbuError } from '../../src/errors.js';
import { tempDir } from './fixture.js';
import { OLD_DELTA, oldDecoded } from './old-fixture.js';

// Reading delta files: one written before the format split, and every truncation of it.

describe('delta file', () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  it('reads a delta made before the format split', () => {
    const d = readDelta(OLD_DELTA);
    assert.deepEqual({ ...d, opTableLength: undefined }, { ...oldDecoded(), opTableLength: undefined });
    assert.equal(d.opTableLength, d.payloadOffset - 64 - fs.readFileSync(OLD_DELTA).readUInt32LE(12));
    assert.deepEqual(readDeltaHeader(OLD_DELTA), oldDecoded().header);
  });

  it('refuses the file cut at every length with DELTA_TRUNCATED or DELTA_INVALID', () => {
    const good = fs.readFileSync(OLD_DELTA);
    const file = path.join(tmp.dir, 'cut.ibudelta');
    const seen = new Set<string>();
    for (let len = 0; len < good.length; len++) {
      fs.writeFileSync(file, good.subarray(0, len));
      assert.throws(
        () => readDelta(file),
        (e: unknown) => {
          assert.ok(isIbuError(e, 'DELTA_TRUNCATED') || isIbuError(e, 'DELTA_INVALID'), `cut at ${len}: ${String(e)}`);
          seen.add(e.code);
          return true;
        },
      );
    }
    // Once the fixed header is whole, the length it names tells a cut file from a damaged one.
    assert.deepEqual([...seen].sort(), ['DELTA_TRUNCATED']);
  });
});
