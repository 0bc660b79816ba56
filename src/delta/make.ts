import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import { Ext4Reader } from '../image/ext4/index.js';
import { commitFile } from '../util/atomic.js';
import { preadFull } from '../util/full-io.js';
import { IBU_VERSION } from '../util/package-version.js';
import { run } from '../util/exec.js';
import { SourceMatcher, type MatchFile } from './file-match.js';
import { writeDeltaFile } from './delta-file.js';
import { DICT_PREFIX, encodeHead } from './frame-codec.js';
import { opTargetBytes } from './op-ranges.js';
import { scanImages } from './image-scan.js';
import { versionOf } from './image-version.js';
import { OpHasher } from './op-hash.js';
import { DEFAULT_LIMITS, plan, type PlanFile, type PlanLimits, type PlannedSegment } from './plan.js';
import { scanRecompressible, type RecompressedPiece, type RecompressScan } from './recompress-scan.js';
import type { DeltaHeader, DeltaOp, DeltaStats, OpType, ProgressEvent, Range, RecompressOp, Segment } from './types.js';
import type { Codec } from './compressed-stream.js';

export interface MakeDeltaOptions {
  fromImage: string;
  toImage: string;
  out: string;
  /** zstd level for the payload (1..22; above 19 uses --ultra). Default DEFAULT_LEVEL, or RECOMPRESS_LEVEL when it has RECOMPRESS ops. */
  level?: number;
  /** zstd processes run at once (default: the number of CPUs, at most 4). */
  jobs?: number;
  limits?: Partial<PlanLimits>;
  /**
   * Send changed xz and gzip files uncompressed, for the device to compress again (RECOMPRESS
   * ops, format 2): much smaller deltas of compressed files, but make and apply run the
   * encoder on every such file, and apply needs the same `xz`/`gzip` versions.
   */
  recompress?: boolean;
  /** With `recompress`: only these codecs (those the device has in the same version as here). Default all. */
  recompressCodecs?: readonly Codec[];
  onProgress?: (e: ProgressEvent) => void;
}

/**
 * zstd level of the payload. Measured on 34 MB of Debian kernel modules against their previous
 * version (docs/benchmarks.md): level 12 gives 1.89 MB in 5 s, level 19 1.65 MB in 92 s,
 * xdelta3 -9 2.70 MB in 4 s; 13-15 are slower and larger than 12.
 */
export const DEFAULT_LEVEL = 12;
/**
 * The payload's level when it has RECOMPRESS ops, which carry uncompressed module contents,
 * where 19 is 13 % smaller than 12 (the trixie kernel point release: 23.7 against 25.3 MB, 24.3 %
 * against 25.9 % of xdelta3 -9; docs/benchmarks.md) at about 2.5× make's CPU. A delta is made
 * once and applied by the whole fleet.
 */
export const RECOMPRESS_LEVEL = 19;
const GENERATOR = `ibu ${IBU_VERSION}`;
const IO_BYTES = 4 << 20;

function openReader(p: string, role: string): Ext4Reader {
  try {
    return Ext4Reader.open(p);
  } catch (err) {
    throw withContext(err, `The ${role} image ${p} cannot be read`);
  }
}

function filesOf(reader: Ext4Reader): MatchFile[] {
  const out: MatchFile[] = [];
  for (const e of reader.walk()) {
    if (e.type === 'file' || e.type === 'dir') out.push({ path: e.path, ino: e.ino, type: e.type, size: e.size });
  }
  return out;
}

function imageShort(at: number): IbuError {
  return new IbuError('IO_ERROR', `An image ended early while reading byte ${at}; was it changed while the delta was built?`);
}

/** Streams ranges of an image into a hash and, optionally, a file. */
function pumpRanges(fd: number, ranges: Range[], buf: Buffer, hasher: OpHasher, outFd?: number): void {
  for (const r of ranges) {
    for (let done = 0; done < r.length;) {
      const n = Math.min(buf.length, r.length - done);
      const piece = buf.subarray(0, n);
      preadFull(fd, piece, r.offset + done, imageShort);
      hasher.update(piece);
      if (outFd !== undefined) fs.writeSync(outFd, piece);
      done += n;
    }
  }
}

function windowLogFor(bytes: number): number {
  let w = 10;
  while (w < 31 && 2 ** w < bytes) w++;
  return w;
}

/**
 * Builds a delta from image A to image B (docs/delta-format.md): scan both images, plan the
 * ops, hash what each op reads and writes, compress each segment with the `zstd` CLI (its
 * --patch-from is what makes a source file a dictionary with long-range matching; the Node
 * binding only offers dictionaries without long mode, measured several times larger), then
 * write header, op table, payload and trailer to OUT.partial, fsync, rename.
 */
export async function makeDelta(opts: MakeDeltaOptions): Promise<DeltaStats> {
  const t0 = performance.now();
  const asked = opts.level;
  if (asked !== undefined && (!Number.isInteger(asked) || asked < 1 || asked > 22)) throw new IbuError('USAGE', `zstd level ${asked} is not between 1 and 22.`);
  const jobs = Math.max(1, opts.jobs ?? Math.min(4, os.availableParallelism()));
  const progress = opts.onProgress;

  const ra = openReader(opts.fromImage, 'source');
  let rb: Ext4Reader;
  try {
    rb = openReader(opts.toImage, 'target');
  } catch (err) {
    ra.close();
    throw err;
  }
  let work: string | undefined;
  const partial = `${opts.out}.partial`;
  try {
    const fromVersion = versionOf(ra);
    const toVersion = versionOf(rb);
    const bs = rb.blockSize;
    const scan = await scanImages(opts.fromImage, opts.toImage, bs, (phase, done, total) => progress?.({ phase, done, total }));

    progress?.({ phase: 'plan', done: 0, total: 1 });
    const sourceFiles = filesOf(ra);
    const matcher = new SourceMatcher(sourceFiles);
    const targetFiles: PlanFile[] = filesOf(rb).map((f) => ({ ...f, extents: rb.extents(f.ino) }));

    const workDir = fs.mkdtempSync(path.join(path.dirname(path.resolve(opts.out)), '.ibudelta-work-'));
    work = workDir;
    const sfd = fs.openSync(opts.fromImage, 'r');
    const tfd = fs.openSync(opts.toImage, 'r');
    try {
      let rc: RecompressScan | undefined;
      if (opts.recompress) {
        rc = await scanRecompressible({
          targets: targetFiles,
          match: (t) => matcher.match(t)?.file,
          sourceExtents: (f) => ra.extents(f.ino),
          kind: scan.kind,
          blockSize: bs,
          sfd,
          tfd,
          work: workDir,
          jobs,
          limits: { ...DEFAULT_LIMITS, ...opts.limits },
          codecs: opts.recompressCodecs,
          onProgress: (done, total) => progress?.({ phase: 'recompress', done, total }),
        });
      }
      const p = plan({
        scan,
        targetFiles,
        match: (t) => matcher.match(t),
        sourceExtents: (f) => ra.extents(f.ino),
        limits: opts.limits,
        recompress: rc ? (t) => rc.files.get(t.ino) : undefined,
      });
      progress?.({ phase: 'plan', done: 1, total: 1 });

      const buf = Buffer.allocUnsafe(IO_BYTES);
      // COPY ops: hash the source bytes they read (identical to the target bytes they write).
      for (const op of p.ops) {
        if (op.type !== 'copy') continue;
        const h = new OpHasher();
        pumpRanges(sfd, [{ offset: op.src, length: op.length }], buf, h);
        op.hash = h.digest();
      }
      // Where each RECOMPRESS op's uncompressed contents wait: the scan's piece the plan made it from.
      const raw = p.pieces as Map<RecompressOp, RecompressedPiece>;
      // 19 only where it pays: a payload that carries uncompressed contents (a delta without
      // RECOMPRESS ops costs the same as a plain one, made at 12).
      const level = asked ?? (p.ops.some((op) => op.type === 'recompress') ? RECOMPRESS_LEVEL : DEFAULT_LEVEL);
      const segments = await compressSegments(p.ops, p.segments, { sfd, tfd, work: workDir, level, jobs, buf, progress, raw });

      // Assemble: fixed header, JSON, op table, payload, trailer.
      const payloadLength = segments.reduce((n, s) => n + s.compressedLength, 0);
      const recompressed = p.ops.some((op) => op.type === 'recompress');
      const header: DeltaHeader = {
        format: recompressed ? 2 : 1,
        fromVersion,
        toVersion,
        source: { size: scan.sourceSize, sha256: scan.sourceSha256, blockSize: ra.blockSize },
        target: { size: scan.targetSize, sha256: scan.targetSha256, blockSize: bs },
        opHash: 'blake3-128',
        opCount: p.ops.length,
        segmentCount: segments.length,
        generator: GENERATOR,
        ...(recompressed && rc ? { encoders: rc.encoders } : {}),
      };
      const layout = encodeHead(header, p.ops, segments, payloadLength);
      writeDeltaFile(
        partial,
        layout,
        segments.map((_, i) => segFile(workDir, i)),
        buf,
      );
      await commitFile(partial, opts.out);

      const opsCount: Record<OpType, number> = { zero: 0, copy: 0, patch: 0, replace: 0, recompress: 0 };
      const targetBytes: Record<OpType, number> = { zero: 0, copy: 0, patch: 0, replace: 0, recompress: 0 };
      for (const op of p.ops) {
        opsCount[op.type]++;
        targetBytes[op.type] += opTargetBytes(op);
      }
      return {
        out: opts.out,
        bytes: layout.totalLength,
        fromVersion,
        toVersion,
        sourceSize: scan.sourceSize,
        targetSize: scan.targetSize,
        ops: opsCount,
        targetBytes,
        segments: segments.length,
        payloadBytes: payloadLength,
        files: p.files,
        ...(rc ? { recompress: { candidates: rc.candidates, reproduced: rc.reproduced, notReproduced: rc.notReproduced } } : {}),
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      fs.closeSync(sfd);
      fs.closeSync(tfd);
    }
  } catch (err) {
    fs.rmSync(partial, { force: true });
    throw err instanceof IbuError ? err : withContext(err, `Building the delta ${opts.out}`, 'IO_ERROR');
  } finally {
    ra.close();
    rb.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Writes a segment's dictionary and input files, filling in its ops' hashes on the way. */
function writeSegmentInputs(ops: DeltaOp[], seg: PlannedSegment, ctx: SegmentContext, dictPath: string, inPath: string): void {
  const dictFd = fs.openSync(dictPath, 'w');
  const inFd = fs.openSync(inPath, 'w');
  try {
    fs.writeSync(dictFd, DICT_PREFIX);
    for (const idx of seg.ops) {
      const op = ops[idx]!;
      if (op.type === 'patch') {
        const sh = new OpHasher();
        pumpRanges(ctx.sfd, op.src, ctx.buf, sh, dictFd);
        op.srcHash = sh.digest();
      }
      if (op.type === 'patch' || op.type === 'replace') {
        const dh = new OpHasher();
        pumpRanges(ctx.tfd, op.dst, ctx.buf, dh, inFd);
        op.dstHash = dh.digest();
      }
      if (op.type === 'recompress') {
        // Hashes over the compressed bytes; the segment carries the uncompressed contents.
        const r = ctx.raw.get(op);
        if (!r) throw new IbuError('INTERNAL', `no uncompressed content kept for ${op.path}`);
        const sh = new OpHasher();
        pumpRanges(ctx.sfd, op.src, ctx.buf, sh);
        op.srcHash = sh.digest();
        const dh = new OpHasher();
        pumpRanges(ctx.tfd, op.dst, ctx.buf, dh);
        op.dstHash = dh.digest();
        fs.writeSync(dictFd, fs.readFileSync(r.srcRawPath));
        fs.writeSync(inFd, fs.readFileSync(r.rawPath));
        fs.rmSync(r.srcRawPath);
        fs.rmSync(r.rawPath);
      }
    }
  } finally {
    fs.closeSync(dictFd);
    fs.closeSync(inFd);
  }
}

function segFile(work: string, i: number): string {
  return path.join(work, `seg-${i}.zst`);
}

interface SegmentContext {
  sfd: number;
  tfd: number;
  work: string;
  level: number;
  jobs: number;
  buf: Buffer;
  progress?: (e: ProgressEvent) => void;
  raw: Map<RecompressOp, RecompressedPiece>;
}

/**
 * For each segment: write its dictionary (DICT_PREFIX + the source ranges of its PATCH ops)
 * and its input (the target ranges of all its ops) to temp files, hashing each op's part on
 * the way, then compress with `zstd --patch-from`. Up to `jobs` zstd processes run at once
 * while the next inputs are prepared.
 */
async function compressSegments(ops: DeltaOp[], planned: PlannedSegment[], ctx: SegmentContext): Promise<Segment[]> {
  const running = new Set<Promise<void>>();
  let done = 0;
  try {
    for (let i = 0; i < planned.length; i++) {
      const seg = planned[i]!;
      const dictPath = path.join(ctx.work, `dict-${i}`);
      const inPath = path.join(ctx.work, `in-${i}`);
      writeSegmentInputs(ops, seg, ctx, dictPath, inPath);
      // --no-check: each op's BLAKE3 checks the output, and a frame checksum would make a
      // segment undecodable as a whole when one op's source was modified on the device.
      const args = ['-q', '-f', '--no-progress', '--no-check', `-${ctx.level}`];
      if (ctx.level > 19) args.push('--ultra');
      args.push(`--long=${windowLogFor(seg.dictLength + seg.outputLength)}`);
      if (seg.dictLength > DICT_PREFIX.length) args.push(`--patch-from=${dictPath}`);
      args.push(inPath, '-o', segFile(ctx.work, i));
      const job = run('zstd', args).then(() => {
        fs.rmSync(dictPath, { force: true });
        fs.rmSync(inPath, { force: true });
        ctx.progress?.({ phase: 'compress', done: ++done, total: planned.length });
      });
      const tracked: Promise<void> = job.finally(() => running.delete(tracked));
      running.add(tracked);
      if (running.size >= ctx.jobs) await Promise.race(running);
    }
    await Promise.all(running);
  } catch (err) {
    // Let the other zstd processes finish before the caller removes their directory.
    await Promise.allSettled(running);
    throw err;
  }
  let offset = 0;
  return planned.map((seg, i) => {
    const compressedLength = fs.statSync(segFile(ctx.work, i)).size;
    const s: Segment = { offset, compressedLength, outputLength: seg.outputLength, dictLength: seg.dictLength };
    offset += compressedLength;
    return s;
  });
}
