import type { PhysicalExtent } from '../image/ext4/types.js';
import { DICT_PREFIX } from './frame-codec.js';
import { opStart, rangesBytes } from './op-ranges.js';
import type { Match, MatchFile, MatchKind } from './file-match.js';
import { BLOCK, type ImageScan } from './image-scan.js';
import type { EncoderParams } from './compressed-stream.js';
import type { CopyOp, DeltaOp, PatchOp, Range, RecompressOp, ReplaceOp, ZeroOp } from './types.js';

/**
 * The pure half of `makeDelta`: from the block classification of both images and the file
 * maps, decide the ops and group PATCH/REPLACE ops into segments. No I/O; hashes are filled
 * in by the encoder while it reads the bytes.
 */
export interface PlanLimits {
  /** Most target bytes one segment decodes to (apply holds them in memory). */
  maxSegmentOutput: number;
  /** Most source bytes one segment's dictionary holds (apply holds them in memory too). */
  maxSegmentDict: number;
  /** COPY ops are cut at this many bytes, so a modified source block costs a small fallback. */
  maxCopy: number;
  /** Runs of unchanged blocks inside a changed file shorter than this many blocks travel inside its PATCH. */
  absorbBlocks: number;
  /** Changed metadata blocks this close together share one op. */
  metadataGapBlocks: number;
}

export const DEFAULT_LIMITS: PlanLimits = {
  maxSegmentOutput: 32 << 20,
  maxSegmentDict: 48 << 20,
  maxCopy: 1 << 20,
  absorbBlocks: 16,
  metadataGapBlocks: 8,
};

export interface PlanFile extends MatchFile {
  extents: PhysicalExtent[];
}

/**
 * One compressed stream inside a changed file that make found to recompress bit-exactly: it
 * travels as its uncompressed content, diffed against the old stream's (`RecompressOp`). A
 * compressed file is one piece, the whole file; an initramfs (`cpio-layout.ts`) is a piece per
 * compressed member and one for its compressed main archive.
 */
export interface RecompressPiece {
  /** Byte offset and length of the stream in the target file, and of its old version in the source file. */
  start: number;
  length: number;
  srcStart: number;
  srcLength: number;
  params: EncoderParams;
  rawLength: number;
  srcRawLength: number;
}

/**
 * A changed file with recompressed pieces. Its other bytes (cpio headers, uncompressed
 * members) are one PATCH against the old file's bytes outside its pieces. make has checked
 * that the file's blocks hold it whole from logical block 0 and that the rest of its last
 * block is zero.
 */
export interface RecompressFacts {
  source: MatchFile;
  pieces: RecompressPiece[];
}

export interface PlanInput {
  scan: Pick<ImageScan, 'blockSize' | 'sourceSize' | 'targetSize' | 'kind' | 'from' | 'sourceZero'>;
  /** Regular files and directories of the target, with their extents. */
  targetFiles: PlanFile[];
  match: (t: MatchFile) => Match | undefined;
  sourceExtents: (f: MatchFile) => PhysicalExtent[];
  limits?: Partial<PlanLimits>;
  /** Changed compressed files to send uncompressed (make --recompress). */
  recompress?: (t: PlanFile) => RecompressFacts | undefined;
}

export interface PlannedSegment {
  ops: number[]; // indices into Plan.ops, increasing
  outputLength: number;
  dictLength: number;
}

export interface Plan {
  ops: DeltaOp[];
  /** The piece each RECOMPRESS op carries (make finds its uncompressed contents by it). */
  pieces: Map<RecompressOp, RecompressPiece>;
  segments: PlannedSegment[];
  files: { patched: number; replaced: number; byPath: number; byRename: number; byBasename: number; recompressed: number };
}

/** The first `n` bytes of a list of ranges. */
export function clipRanges(rs: Range[], n: number): Range[] {
  const out: Range[] = [];
  for (const r of rs) {
    if (n <= 0) break;
    const length = Math.min(r.length, n);
    out.push({ offset: r.offset, length });
    n -= length;
  }
  return out;
}

/** The ranges holding bytes [start, start + length) of the byte string `rs` describes. */
export function sliceRanges(rs: Range[], start: number, length: number): Range[] {
  const out: Range[] = [];
  let at = 0;
  const end = start + length;
  for (const r of rs) {
    const a = Math.max(start, at);
    const b = Math.min(end, at + r.length);
    if (a < b) out.push({ offset: r.offset + (a - at), length: b - a });
    at += r.length;
    if (at >= end) break;
  }
  return out;
}

/** The spans of [0, size) that none of `spans` covers (spans must not overlap). */
export function gapsOf(spans: Array<[number, number]>, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let at = 0;
  for (const [s, l] of [...spans].sort((x, y) => x[0] - y[0])) {
    if (s > at) out.push([at, s - at]);
    at = Math.max(at, s + l);
  }
  if (at < size) out.push([at, size - at]);
  return out;
}

const NO_HASH = Buffer.alloc(0);

/** Coalesces a list of blocks (in the order given) into byte ranges, merging physically adjacent blocks. */
export function blocksToRanges(blocks: ArrayLike<number>, bs: number, imageSize: number): Range[] {
  const out: Range[] = [];
  for (let i = 0; i < blocks.length; i++) {
    const b = blocks[i]!;
    const offset = b * bs;
    const length = Math.min(bs, imageSize - offset);
    if (length <= 0) continue;
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length });
  }
  return out;
}

/** The path an op records: a directory's ends in '/', so `ibu delta info` counts directory blocks as metadata. */
function opPath(f: MatchFile): string {
  return f.type === 'dir' && !f.path.endsWith('/') ? `${f.path}/` : f.path;
}

/** Physical blocks of a file in logical order (holes skipped), clipped to the image. */
function fileBlocks(extents: PhysicalExtent[], imageBlocks: number): number[] {
  const sorted = [...extents].sort((a, b) => a.logical - b.logical);
  const out: number[] = [];
  for (const e of sorted) {
    for (let i = 0; i < e.length; i++) {
      const p = e.physical + i;
      if (p >= 0 && p < imageBlocks) out.push(p);
    }
  }
  return out;
}

export function plan(input: PlanInput): Plan {
  const lim: PlanLimits = { ...DEFAULT_LIMITS, ...input.limits };
  const { blockSize: bs, sourceSize, targetSize, kind, from, sourceZero } = input.scan;
  const tBlocks = kind.length;
  const sBlocks = sourceZero.length;
  const claimed = new Uint8Array(tBlocks);
  const ops: DeltaOp[] = [];
  const pieces = new Map<RecompressOp, RecompressPiece>();
  const files = { patched: 0, replaced: 0, byPath: 0, byRename: 0, byBasename: 0, recompressed: 0 };
  const byKind: Record<MatchKind, 'byPath' | 'byRename' | 'byBasename'> = { path: 'byPath', rename: 'byRename', basename: 'byBasename' };
  const seenIno = new Set<number>();
  const maxOutBlocks = Math.max(1, Math.floor(lim.maxSegmentOutput / bs));
  const maxDictBlocks = Math.max(1, Math.floor(lim.maxSegmentDict / bs));

  // 1. Changed files: their literal blocks (and short unchanged runs between them) become one
  //    PATCH against the matched source file, or a REPLACE when nothing matches.
  for (const f of input.targetFiles) {
    if (seenIno.has(f.ino)) continue; // hard links share blocks
    seenIno.add(f.ino);
    const blocks = fileBlocks(f.extents, tBlocks).filter((b) => claimed[b] === 0);
    if (!blocks.some((b) => kind[b] === BLOCK.literal)) continue;
    const rc = input.recompress?.(f);
    if (rc) {
      // Each piece recompressed on the device, the bytes between them one PATCH; the rest of the last block stays zero.
      for (const b of blocks) claimed[b] = 1;
      const all = blocksToRanges(blocks, bs, targetSize);
      const dstAll = clipRanges(all, f.size);
      const srcAll = clipRanges(blocksToRanges(fileBlocks(input.sourceExtents(rc.source), sBlocks), bs, sourceSize), rc.source.size);
      const glue = gapsOf(
        rc.pieces.map((x) => [x.start, x.length]),
        f.size,
      );
      if (glue.length > 0) {
        const dst = glue.flatMap(([a, n]) => sliceRanges(dstAll, a, n));
        const srcGlue = gapsOf(
          rc.pieces.map((x) => [x.srcStart, x.srcLength]),
          rc.source.size,
        );
        const src = srcGlue.flatMap(([a, n]) => sliceRanges(srcAll, a, n));
        if (src.length > 0) ops.push({ type: 'patch', segment: -1, dst, src, srcHash: NO_HASH, dstHash: NO_HASH, path: opPath(f), srcPath: opPath(rc.source) });
        else ops.push({ type: 'replace', segment: -1, dst, dstHash: NO_HASH, path: opPath(f) });
      }
      for (const piece of rc.pieces) {
        const op: RecompressOp = {
          type: 'recompress',
          segment: -1,
          dst: sliceRanges(dstAll, piece.start, piece.length),
          src: sliceRanges(srcAll, piece.srcStart, piece.srcLength),
          srcHash: NO_HASH,
          dstHash: NO_HASH,
          srcRawLength: piece.srcRawLength,
          rawLength: piece.rawLength,
          params: piece.params,
          path: opPath(f),
          srcPath: opPath(rc.source),
        };
        ops.push(op);
        pieces.set(op, piece);
      }
      const tail = rangesBytes(all) - f.size;
      if (tail > 0) ops.push({ type: 'zero', dst: blocks[blocks.length - 1]! * bs + (bs - tail), length: tail } satisfies ZeroOp);
      files.patched++;
      files.recompressed++;
      continue;
    }
    const include: number[] = [];
    const logical: number[] = []; // index in the file's block list, to place source windows
    for (let i = 0; i < blocks.length;) {
      const lit = kind[blocks[i]!] === BLOCK.literal;
      let j = i;
      while (j < blocks.length && (kind[blocks[j]!] === BLOCK.literal) === lit) j++;
      if (lit || j - i < lim.absorbBlocks) {
        for (let k = i; k < j; k++) {
          include.push(blocks[k]!);
          logical.push(k);
        }
      }
      i = j;
    }
    for (const b of include) claimed[b] = 1;
    const m = input.match(f);
    const srcBlocks = m ? fileBlocks(input.sourceExtents(m.file), sBlocks) : [];
    if (m && srcBlocks.length > 0) {
      files.patched++;
      files[byKind[m.kind]]++;
    } else {
      files.replaced++;
    }
    for (let p = 0; p < include.length; p += maxOutBlocks) {
      const part = include.slice(p, p + maxOutBlocks);
      const dst = blocksToRanges(part, bs, targetSize);
      if (srcBlocks.length === 0 || !m) {
        ops.push({ type: 'replace', segment: -1, dst, dstHash: NO_HASH, path: opPath(f) } satisfies ReplaceOp);
        continue;
      }
      // A source window around the same place in the old file when the old file is too big
      // to be the dictionary whole.
      let window = srcBlocks;
      if (srcBlocks.length > maxDictBlocks) {
        const a = logical[p]!;
        const b = logical[Math.min(p + maxOutBlocks, include.length) - 1]! + 1;
        const mid = Math.floor((a + b) / 2);
        const start = Math.max(0, Math.min(srcBlocks.length - maxDictBlocks, mid - Math.floor(maxDictBlocks / 2)));
        window = srcBlocks.slice(start, start + maxDictBlocks);
      }
      const src = blocksToRanges(window, bs, sourceSize);
      ops.push({ type: 'patch', segment: -1, dst, src, srcHash: NO_HASH, dstHash: NO_HASH, path: opPath(f), srcPath: opPath(m.file) } satisfies PatchOp);
    }
  }

  // 2. Changed blocks outside files (inode tables, bitmaps, extent tree blocks, the journal):
  //    diffed against the same offsets of the source, where the same structures live.
  for (let b = 0; b < tBlocks;) {
    if (kind[b] !== BLOCK.literal || claimed[b] === 1) {
      b++;
      continue;
    }
    const run: number[] = [];
    let e = b;
    while (e < tBlocks && run.length < maxOutBlocks) {
      if (claimed[e] === 1) break;
      if (kind[e] === BLOCK.literal) {
        run.push(e++);
        continue;
      }
      // Absorb a short unchanged gap when another changed block follows it.
      let g = e;
      while (g < tBlocks && g - e <= lim.metadataGapBlocks && claimed[g] === 0 && kind[g] !== BLOCK.literal) g++;
      if (g < tBlocks && g - e <= lim.metadataGapBlocks && claimed[g] === 0 && kind[g] === BLOCK.literal && run.length + (g - e) < maxOutBlocks) {
        for (; e < g; e++) run.push(e);
      } else {
        break;
      }
    }
    for (const x of run) claimed[x] = 1;
    const dst = blocksToRanges(run, bs, targetSize);
    const srcRun = run.filter((x) => x < sBlocks);
    const useful = srcRun.some((x) => sourceZero[x] === 0);
    if (useful) {
      const src = blocksToRanges(srcRun, bs, sourceSize);
      ops.push({ type: 'patch', segment: -1, dst, src, srcHash: NO_HASH, dstHash: NO_HASH, path: '', srcPath: '' } satisfies PatchOp);
    } else {
      ops.push({ type: 'replace', segment: -1, dst, dstHash: NO_HASH, path: '' } satisfies ReplaceOp);
    }
    b = e;
  }

  // 3. Everything else is a ZERO run or a COPY run (contiguous in both images).
  const maxCopyBlocks = Math.max(1, Math.floor(lim.maxCopy / bs));
  for (let b = 0; b < tBlocks;) {
    if (claimed[b] === 1) {
      b++;
      continue;
    }
    let e = b + 1;
    if (kind[b] === BLOCK.zero) {
      while (e < tBlocks && claimed[e] === 0 && kind[e] === BLOCK.zero) e++;
      const dst = b * bs;
      ops.push({ type: 'zero', dst, length: Math.min(e * bs, targetSize) - dst } satisfies ZeroOp);
    } else {
      while (e < tBlocks && e - b < maxCopyBlocks && claimed[e] === 0 && kind[e] === BLOCK.copy && from[e] === from[e - 1]! + 1) e++;
      const dst = b * bs;
      const length = Math.min(e * bs, targetSize) - dst;
      ops.push({ type: 'copy', dst, length, src: from[b]! * bs, hash: NO_HASH } satisfies CopyOp);
    }
    b = e;
  }

  // 4. Target order, then segments over the PATCH/REPLACE ops in that order.
  ops.sort((x, y) => opStart(x) - opStart(y));
  const segments: PlannedSegment[] = [];
  let cur: PlannedSegment | undefined;
  ops.forEach((op, i) => {
    if (op.type !== 'patch' && op.type !== 'replace' && op.type !== 'recompress') return;
    const out = op.type === 'recompress' ? op.rawLength : rangesBytes(op.dst);
    const dict = op.type === 'patch' ? rangesBytes(op.src) : op.type === 'recompress' ? op.srcRawLength : 0;
    if (!cur || cur.outputLength + out > lim.maxSegmentOutput || cur.dictLength + dict > lim.maxSegmentDict + DICT_PREFIX.length) {
      cur = { ops: [], outputLength: 0, dictLength: DICT_PREFIX.length };
      segments.push(cur);
    }
    cur.ops.push(i);
    cur.outputLength += out;
    cur.dictLength += dict;
    op.segment = segments.length - 1;
  });
  return { ops, pieces, segments, files };
}
