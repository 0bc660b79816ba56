import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import { decompressCapped, OverCap, zstdBinding } from '../chunk/compress.js';
import { IbuError } from '../errors.js';
import { ByteReader, ByteWriter, type CursorProblem } from './byte-cursor.js';
import { CODEC_ID, CODEC_OF_ID } from './compressed-stream.js';
import { deltaInvalid, deltaTruncated } from './delta-errors.js';
import type { DeltaHeader, DeltaOp, Range, Segment } from './types.js';

/**
 * The byte layout of an `.ibudelta` file (docs/delta-format.md is the reference), as pure
 * encode/decode functions: no file I/O here (delta-file.ts does that), no semantic checks
 * beyond "the bytes parse" (validate.ts does those).
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
/** Format 2 adds the RECOMPRESS op; a delta without one is still written as format 1, which older readers read. */
export const FORMAT_VERSION = 2;
const FORMAT_VERSIONS: readonly number[] = [1, 2];
export const FIXED_HEADER_BYTES = 64;
export const TRAILER_BYTES = 40;
export const OP_HASH_BYTES = 16;
/**
 * Prepended to every segment dictionary. zstd treats a dictionary that starts with its
 * dictionary magic as a trained dictionary; four zero bytes make every dictionary raw content.
 */
export const DICT_PREFIX = Buffer.alloc(4);

/**
 * The fixed header, laid out once: MAGIC, then these fields in this order, then the first 8
 * bytes of sha256(fixed header bytes 0-55 ‖ header JSON). The writer and the reader both walk
 * this table, so an offset cannot be written in one place and read from another.
 */
const FIXED_FIELDS = [
  ['version', 'u16'], // at 8
  ['flags', 'u16'], // at 10, always 0
  ['jsonLength', 'u32'], // at 12
  ['totalLength', 'u64'], // at 16: the whole file, trailer included
  ['opTableOffset', 'u64'], // at 24
  ['opTableLength', 'u64'], // at 32
  ['payloadOffset', 'u64'], // at 40
  ['payloadLength', 'u64'], // at 48
] as const;
const HEADER_CHECK_AT = 56;
const HEADER_CHECK_BYTES = 8;

export type FixedHeader = { [K in (typeof FIXED_FIELDS)[number][0]]: number };

const OP_CODE = { zero: 0, copy: 1, patch: 2, replace: 3, recompress: 4 } as const;
const SEGMENT_RECORD_BYTES = 32;
const RANGE_RECORD_BYTES = 16;
const MAX_HEADER_JSON = 1 << 20;
const MAX_OP_TABLE = 1 << 30;

// ---- fixed header ----

function headerCheck(fixed: Buffer, json: Buffer): Buffer {
  return createHash('sha256').update(fixed.subarray(0, HEADER_CHECK_AT)).update(json).digest().subarray(0, HEADER_CHECK_BYTES);
}

export function encodeFixedHeader(f: FixedHeader, json: Buffer): Buffer {
  const w = new ByteWriter(FIXED_HEADER_BYTES);
  w.bytes(MAGIC);
  for (const [name, kind] of FIXED_FIELDS) w[kind](f[name]);
  const fixed = Buffer.alloc(FIXED_HEADER_BYTES);
  w.done().copy(fixed);
  headerCheck(fixed, json).copy(fixed, HEADER_CHECK_AT);
  return fixed;
}

/**
 * Decodes the first bytes of a file of `fileSize` bytes. Fewer than 64 bytes that start like
 * the magic are a truncated delta; anything else that does not start with the magic is not a delta.
 */
export function decodeFixedHeader(head: Buffer, file: string, fileSize: number): FixedHeader {
  if (head.length < MAGIC.length || !head.subarray(0, MAGIC.length).equals(MAGIC)) {
    if (head.length < MAGIC.length && MAGIC.subarray(0, head.length).equals(head)) throw deltaTruncated(file, fileSize, FIXED_HEADER_BYTES);
    throw deltaInvalid(file, 'it does not start with the IBUDELTA magic, so it is not an ibu delta');
  }
  if (head.length < FIXED_HEADER_BYTES) throw deltaTruncated(file, fileSize, FIXED_HEADER_BYTES);
  const r = new ByteReader(head, () => deltaInvalid(file, 'a header field is out of range'));
  r.pos = MAGIC.length;
  const f = {} as FixedHeader;
  for (const [name, kind] of FIXED_FIELDS) {
    f[name] = r[kind]();
    // The version decides how the rest is read, so it is judged before the rest.
    if (name === 'version' && !FORMAT_VERSIONS.includes(f.version)) {
      throw new IbuError(
        'DELTA_INVALID',
        `The delta ${file} has format version ${f.version}; this ibu reads versions ${FORMAT_VERSIONS.join(' and ')}. ` +
          'Upgrade ibu or build the delta with this one.',
      );
    }
  }
  if (f.jsonLength > MAX_HEADER_JSON) throw deltaInvalid(file, 'the header is implausibly large');
  return f;
}

/** The header checksum covers the fixed header and the JSON; then the sections must follow each other exactly. */
export function checkFixedHeader(head: Buffer, f: FixedHeader, json: Buffer, file: string): void {
  if (!headerCheck(head, json).equals(head.subarray(HEADER_CHECK_AT, HEADER_CHECK_AT + HEADER_CHECK_BYTES))) {
    throw deltaInvalid(file, 'the header checksum does not match');
  }
  if (
    f.opTableOffset !== FIXED_HEADER_BYTES + f.jsonLength ||
    f.payloadOffset !== f.opTableOffset + f.opTableLength ||
    f.totalLength !== f.payloadOffset + f.payloadLength + TRAILER_BYTES ||
    f.opTableLength > MAX_OP_TABLE
  ) {
    throw deltaInvalid(file, 'the section offsets in the header do not add up');
  }
}

export function decodeHeaderJson(json: Buffer, file: string): DeltaHeader {
  try {
    return JSON.parse(json.toString('utf8')) as DeltaHeader;
  } catch (err) {
    throw deltaInvalid(file, `the header is not JSON: ${(err as Error).message}`);
  }
}

// ---- op table ----

function writePath(w: ByteWriter, s: string): void {
  const b = Buffer.from(s, 'utf8');
  if (b.length > 0xffff) throw new IbuError('INTERNAL', `path too long for a delta op: ${s.slice(0, 80)}...`);
  w.u16(b.length);
  w.bytes(b);
}

function writeRanges(w: ByteWriter, rs: Range[]): void {
  w.u32(rs.length);
  for (const r of rs) {
    w.u64(r.offset);
    w.u64(r.length);
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
        writeRanges(w, op.dst);
        writeRanges(w, op.src);
        w.bytes(op.srcHash);
        w.bytes(op.dstHash);
        writePath(w, op.path);
        writePath(w, op.srcPath);
        break;
      case 'replace':
        w.u32(op.segment);
        writeRanges(w, op.dst);
        w.bytes(op.dstHash);
        writePath(w, op.path);
        break;
      case 'recompress':
        w.u32(op.segment);
        writeRanges(w, op.dst);
        writeRanges(w, op.src);
        w.bytes(op.srcHash);
        w.bytes(op.dstHash);
        w.u64(op.srcRawLength);
        w.u64(op.rawLength);
        w.u8(CODEC_ID[op.params.codec]);
        w.u8(op.params.level);
        w.u8(op.params.check);
        w.u8(op.params.threads);
        w.u32(op.params.dict);
        writePath(w, op.path);
        writePath(w, op.srcPath);
        break;
    }
  }
  return w.done();
}

function opTableProblem(file: string): (p: CursorProblem) => IbuError {
  return (p) => deltaInvalid(file, p === 'ends-early' ? 'the op table ends in the middle of a record' : 'a number in the op table is out of range');
}

function readRanges(r: ByteReader, file: string): Range[] {
  const n = r.u32();
  if (n * RANGE_RECORD_BYTES > r.remaining) throw deltaInvalid(file, 'a range list is longer than the op table');
  const out: Range[] = new Array(n);
  for (let i = 0; i < n; i++) out[i] = { offset: r.u64(), length: r.u64() };
  return out;
}

export function decodeOpTable(raw: Buffer, file: string): { ops: DeltaOp[]; segments: Segment[] } {
  const r = new ByteReader(raw, opTableProblem(file));
  const opCount = r.u32();
  const segCount = r.u32();
  if (segCount * SEGMENT_RECORD_BYTES > raw.length || opCount > raw.length) throw deltaInvalid(file, 'the op table counts are impossible');
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
        const dst = readRanges(r, file);
        const src = readRanges(r, file);
        const srcHash = r.bytes(OP_HASH_BYTES);
        const dstHash = r.bytes(OP_HASH_BYTES);
        ops.push({ type: 'patch', segment, dst, src, srcHash, dstHash, path: r.str16(), srcPath: r.str16() });
        break;
      }
      case OP_CODE.replace: {
        const segment = r.u32();
        const dst = readRanges(r, file);
        ops.push({ type: 'replace', segment, dst, dstHash: r.bytes(OP_HASH_BYTES), path: r.str16() });
        break;
      }
      case OP_CODE.recompress: {
        const segment = r.u32();
        const dst = readRanges(r, file);
        const src = readRanges(r, file);
        const srcHash = r.bytes(OP_HASH_BYTES);
        const dstHash = r.bytes(OP_HASH_BYTES);
        const srcRawLength = r.u64();
        const rawLength = r.u64();
        const codecId = r.u8();
        const codec = CODEC_OF_ID[codecId];
        if (!codec) throw deltaInvalid(file, `op ${i} names the unknown codec ${codecId}`);
        const params = { codec, level: r.u8(), check: r.u8(), threads: r.u8(), dict: r.u32() };
        ops.push({ type: 'recompress', segment, dst, src, srcHash, dstHash, srcRawLength, rawLength, params, path: r.str16(), srcPath: r.str16() });
        break;
      }
      default:
        throw deltaInvalid(file, `op ${i} has the unknown type ${code}`);
    }
  }
  if (!r.atEnd) throw deltaInvalid(file, 'the op table has bytes after the last op');
  return { ops, segments };
}

/** The largest op table a reader accepts: ~50 bytes an op, so about a million ops (a 64 GiB image at 64 KiB ranges). */
export const MAX_OP_TABLE_BYTES = 64 * 1024 * 1024;

export function decompressOpTable(tableZ: Buffer, file: string): Buffer {
  try {
    return decompressCapped(new zstdBinding.DCtx(), tableZ, MAX_OP_TABLE_BYTES);
  } catch (err) {
    if (err instanceof OverCap) throw deltaInvalid(file, `the op table decompresses to more than ${MAX_OP_TABLE_BYTES} bytes`);
    throw deltaInvalid(file, `the op table does not decompress: ${(err as Error).message}`);
  }
}

// ---- whole frame ----

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
  const fixed = encodeFixedHeader(
    { version: header.format, flags: 0, jsonLength: json.length, totalLength, opTableOffset, opTableLength: table.length, payloadOffset, payloadLength },
    json,
  );
  return { head: Buffer.concat([fixed, json, table]), payloadOffset, totalLength };
}

export function trailer(sha256OfAllBefore: Buffer): Buffer {
  return Buffer.concat([TRAILER_MAGIC, sha256OfAllBefore]);
}

/** The sha256 the trailer carries, or DELTA_INVALID when the trailer is not one. */
export function decodeTrailer(tail: Buffer, file: string): Buffer {
  if (tail.length !== TRAILER_BYTES || !tail.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) {
    throw deltaInvalid(file, 'the trailer is missing or damaged');
  }
  return tail.subarray(TRAILER_MAGIC.length);
}
