import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { compress, decompress } from 'zstd-napi';
import { IbuError } from '../errors.js';
import type { DeltaFile, DeltaHeader, DeltaOp, Range, Segment } from './types.js';

/**
 * The byte layout of an `.ibudelta` file (docs/delta-format.md is the reference):
 *
 *   fixed header (64 bytes) | header JSON | op table (one zstd frame) | payload (zstd frames) | trailer (40 bytes)
 *
 * All integers are little-endian. The fixed header says where every section is and how long
 * the file must be, so a truncated file is recognised before anything else is read; the
 * trailer carries the sha256 of everything before it, so corruption anywhere is recognised
 * before a single op runs.
 */
export const MAGIC = Buffer.from('IBUDELTA', 'latin1');
export const TRAILER_MAGIC = Buffer.from('IBUDEND1', 'latin1');
export const FORMAT_VERSION = 1;
export const FIXED_HEADER_BYTES = 64;
export const TRAILER_BYTES = 40;
export const OP_HASH_BYTES = 16;
/**
 * Prepended to every segment dictionary. zstd treats a dictionary that starts with its
 * dictionary magic as a trained dictionary; four zero bytes make every dictionary raw content.
 */
export const DICT_PREFIX = Buffer.alloc(4);

const OP_CODE = { zero: 0, copy: 1, patch: 2, replace: 3 } as const;
const MAX_HEADER_JSON = 1 << 20;
const MAX_OP_TABLE = 1 << 30;

export function deltaInvalid(path: string, why: string): IbuError {
  return new IbuError('DELTA_INVALID', `The delta ${path} is corrupt (${why}); download or build it again.`);
}

function deltaTruncated(path: string, have: number, want: number): IbuError {
  return new IbuError('DELTA_TRUNCATED', `The delta ${path} is truncated: it has ${have} bytes but its header says ${want}; resume or repeat the download.`, {
    details: { have, want },
  });
}

/** The lowest target byte an op writes: ops are ordered by it (a file's ranges follow its logical order, not the disk's). */
export function opStart(op: DeltaOp): number {
  if (op.type === 'zero' || op.type === 'copy') return op.dst;
  let m = Infinity;
  for (const r of op.dst) if (r.offset < m) m = r.offset;
  return m;
}

// ---- writing ----

class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  private pos = 0;
  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
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
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    if (b.length > 0xffff) throw new IbuError('INTERNAL', `path too long for a delta op: ${s.slice(0, 80)}...`);
    this.u16(b.length);
    this.bytes(b);
  }
  ranges(rs: Range[]): void {
    this.u32(rs.length);
    for (const r of rs) {
      this.u64(r.offset);
      this.u64(r.length);
    }
  }
  done(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** The op table before compression: counts, segment records, op records. */
export function encodeOpTable(ops: DeltaOp[], segments: Segment[]): Buffer {
  const w = new ByteWriter();
  w.u32(ops.length);
  w.u32(segments.length);
  for (const s of segments) {
    w.u64(s.offset);
    w.u64(s.compressedLength);
    w.u64(s.outputLength);
    w.u64(s.dictLength);
  }
  for (const op of ops) {
    w.u8(OP_CODE[op.type]);
    switch (op.type) {
      case 'zero':
        w.u64(op.dst);
        w.u64(op.length);
        break;
      case 'copy':
        w.u64(op.dst);
        w.u64(op.length);
        w.u64(op.src);
        w.bytes(op.hash);
        break;
      case 'patch':
        w.u32(op.segment);
        w.ranges(op.dst);
        w.ranges(op.src);
        w.bytes(op.srcHash);
        w.bytes(op.dstHash);
        w.str(op.path);
        w.str(op.srcPath);
        break;
      case 'replace':
        w.u32(op.segment);
        w.ranges(op.dst);
        w.bytes(op.dstHash);
        w.str(op.path);
        break;
    }
  }
  return w.done();
}

export interface EncodedLayout {
  head: Buffer; // fixed header + JSON + compressed op table
  payloadOffset: number;
  totalLength: number;
}

/** Builds everything that precedes the payload; the caller appends the payload and then `trailer()`. */
export function encodeHead(header: DeltaHeader, ops: DeltaOp[], segments: Segment[], payloadLength: number): EncodedLayout {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const table = compress(encodeOpTable(ops, segments), { compressionLevel: 19 });
  const opTableOffset = FIXED_HEADER_BYTES + json.length;
  const payloadOffset = opTableOffset + table.length;
  const totalLength = payloadOffset + payloadLength + TRAILER_BYTES;
  const fixed = Buffer.alloc(FIXED_HEADER_BYTES);
  MAGIC.copy(fixed, 0);
  fixed.writeUInt16LE(FORMAT_VERSION, 8);
  fixed.writeUInt16LE(0, 10);
  fixed.writeUInt32LE(json.length, 12);
  fixed.writeBigUInt64LE(BigInt(totalLength), 16);
  fixed.writeBigUInt64LE(BigInt(opTableOffset), 24);
  fixed.writeBigUInt64LE(BigInt(table.length), 32);
  fixed.writeBigUInt64LE(BigInt(payloadOffset), 40);
  fixed.writeBigUInt64LE(BigInt(payloadLength), 48);
  headerCheck(fixed, json).copy(fixed, 56);
  return { head: Buffer.concat([fixed, json, table]), payloadOffset, totalLength };
}

export function trailer(sha256OfAllBefore: Buffer): Buffer {
  return Buffer.concat([TRAILER_MAGIC, sha256OfAllBefore]);
}

function headerCheck(fixed: Buffer, json: Buffer): Buffer {
  return createHash('sha256').update(fixed.subarray(0, 56)).update(json).digest().subarray(0, 8);
}

// ---- reading ----

class ByteReader {
  pos = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly file: string,
  ) {}
  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw deltaInvalid(this.file, 'the op table ends in the middle of a record');
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
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw deltaInvalid(this.file, 'a number in the op table is out of range');
    return Number(v);
  }
  bytes(n: number): Buffer {
    this.need(n);
    const b = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return b;
  }
  str(): string {
    return this.bytes(this.u16()).toString('utf8');
  }
  ranges(): Range[] {
    const n = this.u32();
    if (n * 16 > this.buf.length - this.pos) throw deltaInvalid(this.file, 'a range list is longer than the op table');
    const out: Range[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = { offset: this.u64(), length: this.u64() };
    return out;
  }
  get atEnd(): boolean {
    return this.pos === this.buf.length;
  }
}

export function decodeOpTable(raw: Buffer, file: string): { ops: DeltaOp[]; segments: Segment[] } {
  const r = new ByteReader(raw, file);
  const opCount = r.u32();
  const segCount = r.u32();
  if (segCount * 32 > raw.length || opCount > raw.length) throw deltaInvalid(file, 'the op table counts are impossible');
  const segments: Segment[] = [];
  for (let i = 0; i < segCount; i++) {
    segments.push({ offset: r.u64(), compressedLength: r.u64(), outputLength: r.u64(), dictLength: r.u64() });
  }
  const ops: DeltaOp[] = [];
  for (let i = 0; i < opCount; i++) {
    const code = r.u8();
    switch (code) {
      case OP_CODE.zero:
        ops.push({ type: 'zero', dst: r.u64(), length: r.u64() });
        break;
      case OP_CODE.copy:
        ops.push({ type: 'copy', dst: r.u64(), length: r.u64(), src: r.u64(), hash: r.bytes(OP_HASH_BYTES) });
        break;
      case OP_CODE.patch: {
        const segment = r.u32();
        const dst = r.ranges();
        const src = r.ranges();
        const srcHash = r.bytes(OP_HASH_BYTES);
        const dstHash = r.bytes(OP_HASH_BYTES);
        ops.push({ type: 'patch', segment, dst, src, srcHash, dstHash, path: r.str(), srcPath: r.str() });
        break;
      }
      case OP_CODE.replace: {
        const segment = r.u32();
        const dst = r.ranges();
        ops.push({ type: 'replace', segment, dst, dstHash: r.bytes(OP_HASH_BYTES), path: r.str() });
        break;
      }
      default:
        throw deltaInvalid(file, `op ${i} has the unknown type ${code}`);
    }
  }
  if (!r.atEnd) throw deltaInvalid(file, 'the op table has bytes after the last op');
  return { ops, segments };
}

interface FixedHeader {
  jsonLength: number;
  totalLength: number;
  opTableOffset: number;
  opTableLength: number;
  payloadOffset: number;
  payloadLength: number;
}

function readExactAt(fd: number, len: number, pos: number): Buffer {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, done, len - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return buf.subarray(0, done);
}

function openDelta(path: string): number {
  try {
    return fs.openSync(path, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new IbuError('NOT_FOUND', `The delta ${path} does not exist; check the path.`, { cause: err });
    throw new IbuError('IO_ERROR', `Cannot open the delta ${path}: ${e.message}.`, { cause: err });
  }
}

function parseFixed(fd: number, file: string, size: number): { fixed: FixedHeader; header: DeltaHeader } {
  const head = readExactAt(fd, FIXED_HEADER_BYTES, 0);
  if (head.length < 8 || !head.subarray(0, 8).equals(MAGIC)) {
    if (head.length < 8 && MAGIC.subarray(0, head.length).equals(head)) throw deltaTruncated(file, size, FIXED_HEADER_BYTES);
    throw deltaInvalid(file, 'it does not start with the IBUDELTA magic, so it is not an ibu delta');
  }
  if (head.length < FIXED_HEADER_BYTES) throw deltaTruncated(file, size, FIXED_HEADER_BYTES);
  const version = head.readUInt16LE(8);
  if (version !== FORMAT_VERSION) {
    throw new IbuError('DELTA_INVALID', `The delta ${file} has format version ${version}; this ibu reads version ${FORMAT_VERSION}. Upgrade ibu or build the delta with this one.`);
  }
  const big = (o: number): number => {
    const v = head.readBigUInt64LE(o);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw deltaInvalid(file, 'a header field is out of range');
    return Number(v);
  };
  const fixed: FixedHeader = {
    jsonLength: head.readUInt32LE(12),
    totalLength: big(16),
    opTableOffset: big(24),
    opTableLength: big(32),
    payloadOffset: big(40),
    payloadLength: big(48),
  };
  if (fixed.jsonLength > MAX_HEADER_JSON) throw deltaInvalid(file, 'the header is implausibly large');
  const json = readExactAt(fd, fixed.jsonLength, FIXED_HEADER_BYTES);
  if (json.length < fixed.jsonLength) {
    // A header that cannot be read whole: a short file, unless the length field itself is damaged.
    if (size < fixed.totalLength) throw deltaTruncated(file, size, fixed.totalLength);
    throw deltaInvalid(file, 'the header is longer than the file');
  }
  if (!headerCheck(head, json).equals(head.subarray(56, 64))) throw deltaInvalid(file, 'the header checksum does not match');
  if (
    fixed.opTableOffset !== FIXED_HEADER_BYTES + fixed.jsonLength ||
    fixed.payloadOffset !== fixed.opTableOffset + fixed.opTableLength ||
    fixed.totalLength !== fixed.payloadOffset + fixed.payloadLength + TRAILER_BYTES ||
    fixed.opTableLength > MAX_OP_TABLE
  ) {
    throw deltaInvalid(file, 'the section offsets in the header do not add up');
  }
  let header: DeltaHeader;
  try {
    header = JSON.parse(json.toString('utf8')) as DeltaHeader;
  } catch (err) {
    throw deltaInvalid(file, `the header is not JSON: ${(err as Error).message}`);
  }
  validateHeader(header, file);
  if (size < fixed.totalLength) throw deltaTruncated(file, size, fixed.totalLength);
  if (size > fixed.totalLength) throw deltaInvalid(file, `it has ${size - fixed.totalLength} bytes after its end`);
  return { fixed, header };
}

function validateHeader(h: DeltaHeader, file: string): void {
  const okImage = (x: unknown): boolean => {
    const i = x as { size?: unknown; sha256?: unknown; blockSize?: unknown } | null;
    return !!i && Number.isSafeInteger(i.size) && (i.size as number) >= 0 && typeof i.sha256 === 'string' && /^[0-9a-f]{64}$/.test(i.sha256) && Number.isSafeInteger(i.blockSize);
  };
  if (
    !h ||
    h.format !== 1 ||
    typeof h.fromVersion !== 'string' ||
    typeof h.toVersion !== 'string' ||
    !okImage(h.source) ||
    !okImage(h.target) ||
    h.opHash !== 'blake3-128' ||
    !Number.isSafeInteger(h.opCount) ||
    !Number.isSafeInteger(h.segmentCount)
  ) {
    throw deltaInvalid(file, 'the header lacks required fields');
  }
}

/**
 * Reads and checks the header only: magic, format version, header checksum, length. Cheap (a
 * few KiB read), so a server or agent can show what a delta is for before applying it.
 * DELTA_TRUNCATED when the file is shorter than its header says; DELTA_INVALID otherwise.
 */
export function readDeltaHeader(path: string): DeltaHeader {
  const fd = openDelta(path);
  try {
    return parseFixed(fd, path, fs.fstatSync(fd).size).header;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads a whole delta's index: checks the sha256 in the trailer over every byte (the payload
 * is small next to the images, so this costs little), then decodes and validates the op table.
 */
export function readDelta(path: string, onProgress?: (done: number, total: number) => void): DeltaFile {
  const fd = openDelta(path);
  try {
    const size = fs.fstatSync(fd).size;
    const { fixed, header } = parseFixed(fd, path, size);
    const bodyEnd = fixed.totalLength - TRAILER_BYTES;
    const tail = readExactAt(fd, TRAILER_BYTES, bodyEnd);
    if (!tail.subarray(0, 8).equals(TRAILER_MAGIC)) throw deltaInvalid(path, 'the trailer is missing or damaged');
    const h = createHash('sha256');
    const buf = Buffer.alloc(4 << 20);
    for (let pos = 0; pos < bodyEnd; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, bodyEnd - pos), pos);
      if (n === 0) throw deltaTruncated(path, pos, fixed.totalLength);
      h.update(buf.subarray(0, n));
      pos += n;
      onProgress?.(pos, bodyEnd);
    }
    if (!h.digest().equals(tail.subarray(8))) throw deltaInvalid(path, 'its sha256 does not match the one in its trailer');
    const tableZ = readExactAt(fd, fixed.opTableLength, fixed.opTableOffset);
    let raw: Buffer;
    try {
      raw = decompress(tableZ);
    } catch (err) {
      throw deltaInvalid(path, `the op table does not decompress: ${(err as Error).message}`);
    }
    const { ops, segments } = decodeOpTable(raw, path);
    if (ops.length !== header.opCount || segments.length !== header.segmentCount) throw deltaInvalid(path, 'the op or segment count differs from the header');
    validateOps(header, ops, segments, fixed.payloadLength, path);
    return { header, ops, segments, payloadOffset: fixed.payloadOffset, payloadLength: fixed.payloadLength, totalLength: fixed.totalLength };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A delta must describe the target exactly once, in order: ops sorted by their first target
 * byte, their target ranges tiling [0, target size)
 * without gaps or overlaps, every source range lies inside the source image, each segment's
 * first ops come in segment order and their sizes add up to the segment's. Anything else is DELTA_INVALID,
 * found before the output file is touched.
 */
export function validateOps(header: DeltaHeader, ops: DeltaOp[], segments: Segment[], payloadLength: number, file: string): void {
  const tiles: Array<[number, number]> = [];
  const srcOk = (off: number, len: number): boolean => len > 0 && off + len <= header.source.size;
  const segOut = new Array<number>(segments.length).fill(0);
  const segDict = new Array<number>(segments.length).fill(DICT_PREFIX.length);
  const segFirst = new Array<number>(segments.length).fill(-1);
  let prevFirst = -1;
  ops.forEach((op, i) => {
    // Apply hashes the output as it goes, which needs ops in order of their first target byte.
    const first = op.type === 'zero' || op.type === 'copy' || op.dst.length > 0 ? opStart(op) : -1;
    if (first <= prevFirst) throw deltaInvalid(file, `op ${i} is out of target order`);
    prevFirst = first;
    switch (op.type) {
      case 'zero':
      case 'copy':
        if (op.length <= 0) throw deltaInvalid(file, `op ${i} is empty`);
        tiles.push([op.dst, op.length]);
        if (op.type === 'copy' && !srcOk(op.src, op.length)) throw deltaInvalid(file, `op ${i} reads outside the source image`);
        break;
      case 'patch':
      case 'replace': {
        const s = op.segment;
        if (s >= segments.length) throw deltaInvalid(file, `op ${i} names segment ${s}, which does not exist`);
        // Segments are decoded in order of their first op, so segment s must start after s - 1.
        if (segFirst[s] === -1) {
          if (s > 0 && segFirst[s - 1] === -1) throw deltaInvalid(file, `segment ${s} is used before segment ${s - 1}`);
          segFirst[s] = i;
        }
        if (op.dst.length === 0) throw deltaInvalid(file, `op ${i} writes nothing`);
        for (const r of op.dst) {
          if (r.length <= 0) throw deltaInvalid(file, `op ${i} has an empty range`);
          tiles.push([r.offset, r.length]);
          segOut[s]! += r.length;
        }
        if (op.type === 'patch') {
          for (const r of op.src) {
            if (!srcOk(r.offset, r.length)) throw deltaInvalid(file, `op ${i} reads outside the source image`);
            segDict[s]! += r.length;
          }
        }
        break;
      }
    }
  });
  let payloadEnd = 0;
  segments.forEach((seg, s) => {
    if (segFirst[s] === -1) throw deltaInvalid(file, `segment ${s} has no ops`);
    if (seg.outputLength !== segOut[s] || seg.dictLength !== segDict[s]) throw deltaInvalid(file, `segment ${s} sizes do not match its ops`);
    if (seg.offset !== payloadEnd || seg.compressedLength <= 0) throw deltaInvalid(file, `segment ${s} is not where the payload says`);
    payloadEnd += seg.compressedLength;
  });
  if (payloadEnd !== payloadLength) throw deltaInvalid(file, 'the segments do not fill the payload');
  tiles.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [off, len] of tiles) {
    if (off !== at) throw deltaInvalid(file, off < at ? `two ops write the target bytes at ${off}` : `no op writes the target bytes at ${at}`);
    at = off + len;
  }
  if (at !== header.target.size) throw deltaInvalid(file, `the ops cover ${at} bytes of a ${header.target.size}-byte target`);
}
