import { deltaInvalid } from './delta-errors.js';
import { paramsValid } from './compressed-stream.js';
import { DICT_PREFIX } from './frame-codec.js';
import { opStart, rangesBytes } from './op-ranges.js';
import type { DeltaHeader, DeltaOp, Segment } from './types.js';

/**
 * What a delta must mean, beyond parsing: the header names both images, and the ops cover the
 * target exactly once. Anything else is DELTA_INVALID, found before the output file is touched.
 */

export function validateHeader(h: DeltaHeader, file: string): void {
  const okImage = (x: unknown): boolean => {
    const i = x as { size?: unknown; sha256?: unknown; blockSize?: unknown } | null;
    return (
      !!i &&
      Number.isSafeInteger(i.size) &&
      (i.size as number) >= 0 &&
      typeof i.sha256 === 'string' &&
      /^[0-9a-f]{64}$/.test(i.sha256) &&
      Number.isSafeInteger(i.blockSize)
    );
  };
  if (
    !h ||
    (h.format !== 1 && h.format !== 2) ||
    !encodersValid(h.encoders) ||
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

function encodersValid(e: unknown): boolean {
  if (e === undefined) return true;
  if (typeof e !== 'object' || e === null) return false;
  return Object.entries(e).every(([k, v]) => (k === 'xz' || k === 'gzip' || k === 'zstd') && typeof v === 'string' && v.length < 64);
}

/** The op table holds as many ops and segments as the header says. */
export function validateCounts(header: DeltaHeader, ops: DeltaOp[], segments: Segment[], file: string): void {
  if (ops.length !== header.opCount || segments.length !== header.segmentCount) throw deltaInvalid(file, 'the op or segment count differs from the header');
}

/**
 * A delta must describe the target exactly once, in order: ops sorted by their first target
 * byte, their target ranges tiling [0, target size)
 * without gaps or overlaps, every source range lies inside the source image, each segment's
 * first ops come in segment order and their sizes add up to the segment's.
 */
/**
 * Apply holds one segment's output and dictionary in memory, so a reader refuses segments over
 * these (issue #15: bounded memory whatever the delta says). The builder cuts segments at
 * 32 / 48 MiB (src/delta/plan.ts DEFAULT_LIMITS), well under them.
 */
export const MAX_SEGMENT_OUTPUT = 128 << 20;
export const MAX_SEGMENT_DICT = (128 << 20) + DICT_PREFIX.length;

export function validateOps(header: DeltaHeader, ops: DeltaOp[], segments: Segment[], payloadLength: number, file: string): void {
  const tiles: Array<[number, number]> = [];
  const srcOk = (off: number, len: number): boolean => len > 0 && off + len <= header.source.size;
  const segOut = new Array<number>(segments.length).fill(0);
  const segDict = new Array<number>(segments.length).fill(DICT_PREFIX.length);
  const segFirst = new Array<number>(segments.length).fill(-1);
  // RECOMPRESS ops' compressed bytes, read and written by apply in memory besides the segment.
  const segPacked = new Array<number>(segments.length).fill(0);
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
      case 'replace':
      case 'recompress': {
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
          if (op.type !== 'recompress') segOut[s]! += r.length;
        }
        if (op.type === 'recompress') {
          // Its share of the segment is the uncompressed content; the encoder must be one the header names.
          if (header.format !== 2) throw deltaInvalid(file, `op ${i} is a RECOMPRESS op in a format ${header.format} delta`);
          if (!paramsValid(op.params) || header.encoders?.[op.params.codec] === undefined)
            throw deltaInvalid(file, `op ${i} names encoder settings this reader refuses`);
          if (
            !Number.isSafeInteger(op.rawLength) ||
            !Number.isSafeInteger(op.srcRawLength) ||
            op.rawLength <= 0 ||
            op.srcRawLength <= 0 ||
            op.src.length === 0
          ) {
            throw deltaInvalid(file, `op ${i} has impossible sizes`);
          }
          segOut[s]! += op.rawLength;
          segDict[s]! += op.srcRawLength;
          segPacked[s]! += Math.max(rangesBytes(op.src), rangesBytes(op.dst));
          if (segPacked[s]! > MAX_SEGMENT_OUTPUT) throw deltaInvalid(file, `segment ${s} recompresses more bytes than the reader's limit`);
        }
        if (op.type === 'patch' || op.type === 'recompress') {
          for (const r of op.src) {
            if (!srcOk(r.offset, r.length)) throw deltaInvalid(file, `op ${i} reads outside the source image`);
            if (op.type === 'patch') segDict[s]! += r.length;
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
    if (seg.outputLength > MAX_SEGMENT_OUTPUT || seg.dictLength > MAX_SEGMENT_DICT) {
      throw deltaInvalid(file, `segment ${s} decodes ${seg.outputLength} bytes with a ${seg.dictLength}-byte dictionary, over the reader's limits`);
    }
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
