import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ByteReader, ByteWriter, type CursorProblem } from '../../src/delta/byte-cursor.js';

class Problem extends Error {
  constructor(readonly problem: CursorProblem) {
    super(problem);
  }
}
const reader = (b: Buffer) => new ByteReader(b, (p) => new Problem(p));

function sample(): Buffer {
  const w = new ByteWriter(1); // starts tiny, so growing is exercised
  w.u8(0xab);
  w.u16(0xbeef);
  w.u32(0xdeadbeef);
  w.u64(Number.MAX_SAFE_INTEGER);
  w.bytes(Buffer.from([1, 2, 3]));
  const s = Buffer.from('/usr/lib/ä', 'utf8');
  w.u16(s.length);
  w.bytes(s);
  return w.done();
}

describe('byte cursor', () => {
  it('reads back what it wrote, little-endian', () => {
    const b = sample();
    assert.equal(b.readUInt16LE(1), 0xbeef);
    const r = reader(b);
    assert.equal(r.u8(), 0xab);
    assert.equal(r.u16(), 0xbeef);
    assert.equal(r.u32(), 0xdeadbeef);
    assert.equal(r.u64(), Number.MAX_SAFE_INTEGER);
    assert.deepEqual([...r.bytes(3)], [1, 2, 3]);
    assert.equal(r.str16(), '/usr/lib/ä');
    assert.equal(r.atEnd, true);
    assert.equal(r.remaining, 0);
  });

  it('reports an input that ends inside a value, at every length, without reading past it', () => {
    const b = sample();
    for (let len = 0; len < b.length; len++) {
      const r = reader(b.subarray(0, len));
      assert.throws(
        () => {
          r.u8();
          r.u16();
          r.u32();
          r.u64();
          r.bytes(3);
          r.str16();
        },
        (e: unknown) => e instanceof Problem && e.problem === 'ends-early',
        `cut at ${len}`,
      );
    }
  });

  it('refuses a u64 above 2^53', () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(Number.MAX_SAFE_INTEGER) + 1n);
    assert.throws(
      () => reader(b).u64(),
      (e: unknown) => e instanceof Problem && e.problem === 'out-of-range',
    );
  });
});
