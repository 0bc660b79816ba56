import type { Codec, EncoderParams } from './compressed-stream.js';

/**
 * The shapes of a delta (docs/delta-format.md has the byte layout). A delta is a list of
 * operations that together cover the target image exactly once, in target order.
 */

/** A byte range of an image. */
export interface Range {
  offset: number;
  length: number;
}

/** Target range stays zero: nothing is read or written (the output is sparse there). */
export interface ZeroOp {
  type: 'zero';
  dst: number;
  length: number;
}

/** Target range ← the same number of bytes of the source image. The bytes read are the bytes written, so one hash serves both. */
export interface CopyOp {
  type: 'copy';
  dst: number;
  length: number;
  src: number;
  hash: Buffer; // OP_HASH_BYTES
}

/** Target ranges ← zstd-decoded bytes of a segment whose dictionary includes this op's source ranges. */
export interface PatchOp {
  type: 'patch';
  segment: number;
  dst: Range[];
  src: Range[];
  srcHash: Buffer;
  dstHash: Buffer;
  /** Target path the bytes belong to ('' for filesystem metadata), and the source path diffed against. */
  path: string;
  srcPath: string;
}

/** Target ranges ← zstd-decoded bytes of a segment, without a source reference. */
export interface ReplaceOp {
  type: 'replace';
  segment: number;
  dst: Range[];
  dstHash: Buffer;
  path: string;
}

/**
 * Target ranges ← a compressed file rebuilt on the device: the segment decodes the file's
 * *uncompressed* content (its dictionary holds the old file's uncompressed content, decoded
 * from the source ranges), then the encoder named by `params` compresses it to exactly the
 * target bytes. Format 2 only.
 */
export interface RecompressOp {
  type: 'recompress';
  segment: number;
  dst: Range[];
  src: Range[];
  /** Hashes of the compressed bytes read and written, like a PATCH's. */
  srcHash: Buffer;
  dstHash: Buffer;
  /** Uncompressed bytes of the old file (its share of the dictionary) and of the new one (its share of the segment output). */
  srcRawLength: number;
  rawLength: number;
  params: EncoderParams;
  path: string;
  srcPath: string;
}

export type DeltaOp = ZeroOp | CopyOp | PatchOp | ReplaceOp | RecompressOp;
export type OpType = DeltaOp['type'];

/** One zstd frame of the payload: its output is the concatenation of its ops' target ranges. */
export interface Segment {
  /** Byte offset of the frame inside the payload section. */
  offset: number;
  compressedLength: number;
  outputLength: number;
  /** Dictionary bytes: DICT_PREFIX plus the source ranges of the segment's PATCH ops. */
  dictLength: number;
}

export interface ImageFacts {
  size: number;
  sha256: string;
  blockSize: number;
}

/** The JSON header of a delta. */
export interface DeltaHeader {
  /** 1, or 2 when the delta has RECOMPRESS ops. */
  format: 1 | 2;
  fromVersion: string; // 'unknown' when the image has no /etc/ibu/image.json
  toVersion: string;
  source: ImageFacts;
  target: ImageFacts;
  /** Per-op hash: BLAKE3, first 16 bytes of the 32-byte output. */
  opHash: 'blake3-128';
  opCount: number;
  segmentCount: number;
  generator: string;
  /** Format 2: the encoder versions RECOMPRESS ops need on the device (`{ "xz": "5.4.1" }`). */
  encoders?: Partial<Record<Codec, string>>;
}

export interface DeltaFile {
  header: DeltaHeader;
  ops: DeltaOp[];
  segments: Segment[];
  /** Bytes of the compressed op table (it ends where the payload starts). */
  opTableLength: number;
  /** Absolute offset of the payload section in the delta file. */
  payloadOffset: number;
  payloadLength: number;
  totalLength: number;
}

export interface DeltaStats {
  out: string;
  bytes: number;
  fromVersion: string;
  toVersion: string;
  sourceSize: number;
  targetSize: number;
  ops: Record<OpType, number>;
  /** Target bytes produced by each kind of op. */
  targetBytes: Record<OpType, number>;
  segments: number;
  /** Bytes of compressed PATCH/REPLACE data. */
  payloadBytes: number;
  /** Target files whose content had to be sent, by how they were matched to a source file. */
  files: { patched: number; replaced: number; byPath: number; byRename: number; byBasename: number; recompressed: number };
  /** With `recompress`: compressed files tried, and those whose recompression did not reproduce the target (sent as PATCH instead). */
  recompress?: { candidates: number; reproduced: number; notReproduced: number };
  seconds: number;
}

export interface ProgressEvent {
  phase: 'scan-source' | 'scan-target' | 'recompress' | 'plan' | 'compress' | 'verify-delta' | 'check-source' | 'apply' | 'fallback' | 'verify';
  done: number;
  total: number;
}

export interface FailedOp {
  index: number;
  type: OpType;
  path: string;
  /** Target ranges this op writes. */
  dst: Range[];
  /** 'source' when the op's own source bytes changed; 'output' when its output was wrong because another op's source in its segment changed. */
  reason: 'source' | 'output';
}

export interface ApplyResult {
  out: string;
  sha256: string;
  fromVersion: string;
  toVersion: string;
  targetSize: number;
  /** Bytes written to the output (ZERO ranges are skipped: the file is sparse there). */
  bytesWritten: number;
  /** Ops whose source bytes did not match, and ops whose output was then wrong. */
  failedOps: FailedOp[];
  /** Filled from the fallback store, when one was given and ops failed. */
  fallback: { ops: number; bytes: number; chunks: number; downloadedBytes: number };
  seconds: number;
}
