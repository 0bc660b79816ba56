import { IbuError } from '../errors.js';
import { preadFull, pwriteFull } from '../util/full-io.js';
import { decodeIntoDictionary, recompressParts, type OldFile, type OpPart } from './apply-recompress.js';
import { sourceShort } from './delta-errors.js';
import { DICT_PREFIX } from './frame-codec.js';
import { rangesBytes } from './op-ranges.js';
import { OpHasher } from './op-hash.js';
import type { DeltaFile, FailedOp, PatchOp, Range, RecompressOp, ReplaceOp } from './types.js';

/**
 * One segment of a delta, decoded: its dictionary is built from its PATCH ops' source ranges (and
 * its RECOMPRESS ops' old files, decoded), the zstd frame decodes into the ops' target bytes, and
 * each op whose output hash checks is written (docs/delta-format.md, "Apply").
 */

export interface SegmentBuffers {
  frame: Buffer;
  dict: Buffer;
  out: Buffer;
}

export interface SegmentIo {
  seg: SegmentBuffers;
  sfd: number;
  dfd: number;
  ofd: number;
  buf: Buffer;
  dctx: InstanceType<(typeof import('zstd-napi/binding.js'))['DCtx']>;
  failed: FailedOp[];
  sourceImage: string;
  /** A scratch directory for the encoders (made on first use, removed by the caller). */
  work: () => string;
  jobs: number;
}

/** Decodes one segment and writes every op of it whose output hash checks; returns bytes written. */
export async function decodeSegment(d: DeltaFile, s: number, opIdx: number[], io: SegmentIo): Promise<number> {
  const seg = d.segments[s]!;
  const frame = io.seg.frame.subarray(0, seg.compressedLength);
  preadFull(io.dfd, frame, d.payloadOffset + seg.offset, sourceShort('The delta'));
  const srcFailed = new Set<number>();
  let dict: Buffer | undefined;
  if (seg.dictLength > DICT_PREFIX.length) {
    dict = io.seg.dict.subarray(0, seg.dictLength);
    DICT_PREFIX.copy(dict, 0);
    let at = DICT_PREFIX.length;
    // RECOMPRESS ops: their old file is read whole, then decoded into the dictionary. The output
    // buffer is idle until the frame decodes, so the old files are read into it when they fit:
    // a buffer of their own would stay garbage (11 MB for the zstd main archive of an initramfs)
    // until a collection, which the synchronous encoders after it do not give the time for.
    const oldFiles: OldFile[] = [];
    let oldTotal = 0;
    for (const i of opIdx) if (d.ops[i]!.type === 'recompress') oldTotal += rangesBytes(d.ops[i]!.src);
    const spare = oldTotal <= io.seg.out.length ? io.seg.out : undefined;
    let spareAt = 0;
    for (const i of opIdx) {
      const op = d.ops[i]!;
      if (op.type === 'recompress') {
        const n = rangesBytes(op.src);
        const bytes = spare ? spare.subarray(spareAt, (spareAt += n)) : Buffer.allocUnsafe(n);
        if (!readHashed(io.sfd, op.src, bytes, io.sourceImage).equals(op.srcHash)) srcFailed.add(i);
        else oldFiles.push({ i, at, bytes, op });
        dict.fill(0, at, at + op.srcRawLength);
        at += op.srcRawLength;
        continue;
      }
      if (op.type !== 'patch') continue;
      const piece = dict.subarray(at, at + rangesBytes(op.src));
      if (!readHashed(io.sfd, op.src, piece, io.sourceImage).equals(op.srcHash)) srcFailed.add(i);
      at += piece.length;
    }
    await decodeIntoDictionary(oldFiles, dict);
    // The old compressed files are in the dictionary now: let them go before the encoders run.
    oldFiles.length = 0;
  }
  const out = io.seg.out.subarray(0, seg.outputLength);
  let n: number;
  try {
    n = dict ? io.dctx.decompressUsingDict(out, frame, dict) : io.dctx.decompress(out, frame);
  } catch (err) {
    if (srcFailed.size === 0) {
      throw new IbuError('DELTA_INVALID', `Segment ${s} of the delta does not decode (zstd: ${(err as Error).message}); download or build the delta again.`, {
        cause: err,
      });
    }
    // A modified dictionary can make a frame undecodable: every op of the segment must come from elsewhere.
    for (const i of opIdx) {
      const op = d.ops[i] as PatchOp | ReplaceOp | RecompressOp;
      io.failed.push({ index: i, type: op.type, path: op.path, dst: op.dst, reason: srcFailed.has(i) ? 'source' : 'output' });
    }
    return 0;
  }
  if (n !== seg.outputLength)
    throw new IbuError('DELTA_INVALID', `Segment ${s} of the delta decodes to ${n} bytes instead of ${seg.outputLength}; download or build the delta again.`);
  // Cut the output into the ops' parts; RECOMPRESS parts go through their encoder first.
  const parts: OpPart[] = [];
  let at = 0;
  for (const i of opIdx) {
    const op = d.ops[i] as PatchOp | ReplaceOp | RecompressOp;
    const len = op.type === 'recompress' ? op.rawLength : rangesBytes(op.dst);
    parts.push({ i, op, bytes: out.subarray(at, at + len) });
    at += len;
  }
  await recompressParts(parts, io.work, io.jobs);
  let written = 0;
  for (const { i, op, bytes } of parts) {
    const len = rangesBytes(op.dst);
    const ok = bytes.length === len && new OpHasher().update(bytes).digest().equals(op.dstHash);
    if (!ok) {
      // Wrong output with intact sources in the segment means the payload itself is bad.
      if (srcFailed.size === 0)
        throw new IbuError(
          'DELTA_INVALID',
          `Op ${i} (${op.path || 'metadata'}) ${op.type === 'recompress' ? 'recompresses' : 'decodes'} to bytes that do not match its hash; ` +
            'download or build the delta again.',
        );
      io.failed.push({ index: i, type: op.type, path: op.path, dst: op.dst, reason: srcFailed.has(i) ? 'source' : 'output' });
      continue;
    }
    // An op whose source changed only in bytes its diff never used still produced the right output.
    let p = 0;
    for (const r of op.dst) {
      pwriteFull(io.ofd, bytes.subarray(p, p + r.length), r.offset);
      p += r.length;
    }
    written += len;
  }
  return written;
}

/** Reads ranges of the source image into `into` (exactly their size) and returns their op hash. */
function readHashed(fd: number, ranges: Range[], into: Buffer, what: string): Buffer {
  const h = new OpHasher();
  let at = 0;
  for (const r of ranges) {
    const piece = into.subarray(at, at + r.length);
    preadFull(fd, piece, r.offset, sourceShort(what));
    h.update(piece);
    at += r.length;
  }
  return h.digest();
}
