/**
 * Little-endian integers and byte strings in a buffer, bounds-checked: the only code that
 * knows how a number becomes bytes in a delta. The writer grows its buffer; the reader never
 * reads past its end and hands every problem to the caller's error factory, so a damaged
 * input becomes the caller's error (DELTA_INVALID), never a RangeError.
 */

export class ByteWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initial = 1 << 16) {
    this.buf = Buffer.alloc(initial);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = Math.max(1, this.buf.length * 2);
    while (size < this.pos + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): void {
    this.room(1);
    this.buf.writeUInt8(v, this.pos++);
  }

  u16(v: number): void {
    this.room(2);
    this.buf.writeUInt16LE(v, this.pos);
    this.pos += 2;
  }

  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32LE(v, this.pos);
    this.pos += 4;
  }

  /** Numbers above 2^53 never occur in a delta: sizes and offsets are JS numbers. */
  u64(v: number): void {
    this.room(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.pos);
    this.pos += 8;
  }

  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  get length(): number {
    return this.pos;
  }

  done(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** What went wrong while reading: the input ended inside a value, or a u64 exceeds 2^53. */
export type CursorProblem = 'ends-early' | 'out-of-range';

export class ByteReader {
  pos = 0;

  constructor(
    private readonly buf: Buffer,
    private readonly fail: (problem: CursorProblem) => Error,
  ) {}

  private need(n: number): void {
    if (n > this.buf.length - this.pos) throw this.fail('ends-early');
  }

  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.pos++);
  }

  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(): number {
    this.need(8);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.fail('out-of-range');
    return Number(v);
  }

  /** A copy, so the result outlives the buffer it was read from. */
  bytes(n: number): Buffer {
    this.need(n);
    const b = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return b;
  }

  /** UTF-8 text after a u16 byte count. */
  str16(): string {
    return this.bytes(this.u16()).toString('utf8');
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  get atEnd(): boolean {
    return this.pos === this.buf.length;
  }
}
