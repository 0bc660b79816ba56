import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import {
  FIXED_HEADER_BYTES,
  checkFixedHeader,
  decodeFixedHeader,
  decodeOpTable,
  decompressOpTable,
  encodeFixedHeader,
  encodeHead,
  encodeOpTable,
} from '../../src/delta/frame-codec.js';
import { isIbuError } from '../../src/errors.js';
import { OLD_DELTA, oldDecoded } from './old-fixture.js';

// The pure codec: round trips, the pre-split bytes reproduced exactly, and damaged input
// always a DELTA_* error.

const badDelta = (e: unknown) => isIbuError(e, 'DELTA_INVALID') || isIbuError(e, 'DELTA_TRUNCATED');

describe('delta frame codec', () => {
  const old = oldDecoded();
  const bytes = fs.readFileSync(OLD_DELTA);

  it('encodes a delta made before the split to the same bytes', () => {
    const layout = encodeHead(old.header, old.ops, old.segments, old.payloadLength);
    assert.equal(layout.payloadOffset, old.payloadOffset);
    assert.equal(layout.totalLength, old.totalLength);
    assert.ok(layout.head.equals(bytes.subarray(0, old.payloadOffset)));
  });

  it('round-trips the op table and the fixed header', () => {
    const raw = encodeOpTable(old.ops, old.segments);
    assert.deepEqual(decodeOpTable(raw, 'x'), { ops: old.ops, segments: old.segments });
    const head = bytes.subarray(0, FIXED_HEADER_BYTES);
    const f = decodeFixedHeader(head, 'x', bytes.length);
    assert.equal(f.totalLength, bytes.length);
    assert.equal(f.payloadOffset, old.payloadOffset);
    const json = bytes.subarray(FIXED_HEADER_BYTES, FIXED_HEADER_BYTES + f.jsonLength);
    assert.ok(encodeFixedHeader(f, json).equals(head));
    checkFixedHeader(head, f, json, 'x');
  });

  it('decodes a truncated op table or fixed header as DELTA_INVALID or DELTA_TRUNCATED, at every byte', () => {
    const f = decodeFixedHeader(bytes.subarray(0, FIXED_HEADER_BYTES), 'x', bytes.length);
    const raw = decompressOpTable(bytes.subarray(f.opTableOffset, f.opTableOffset + f.opTableLength), 'x');
    for (let len = 0; len < raw.length; len++) {
      assert.throws(
        () => decodeOpTable(raw.subarray(0, len), 'x'),
        (e: unknown) => isIbuError(e, 'DELTA_INVALID'),
        `op table cut at ${len}`,
      );
    }
    for (let len = 0; len < FIXED_HEADER_BYTES; len++) {
      assert.throws(() => decodeFixedHeader(bytes.subarray(0, len), 'x', len), badDelta, `fixed header cut at ${len}`);
    }
    assert.throws(() => decompressOpTable(bytes.subarray(f.opTableOffset, f.opTableOffset + f.opTableLength - 1), 'x'), badDelta);
  });

  it('decodes a damaged op table as DELTA_INVALID, never a crash', () => {
    const raw = encodeOpTable(old.ops, old.segments);
    for (let at = 0; at < raw.length; at++) {
      const bad = Buffer.from(raw);
      bad[at] = bad[at]! ^ 0xff;
      try {
        decodeOpTable(bad, 'x'); // some flips still parse (a hash byte, an offset): the validator and the sha256 catch those
      } catch (e) {
        assert.ok(isIbuError(e, 'DELTA_INVALID'), `flip at ${at}: ${String(e)}`);
      }
    }
  });
});
