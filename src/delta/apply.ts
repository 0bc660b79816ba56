import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import type { Manifest } from '../release/types.js';
import type { Store } from '../store/store.js';
import { commitFile } from '../util/atomic.js';
import { preadFull, pwriteFull } from '../util/full-io.js';
import { decodeSegment, type SegmentBuffers } from './apply-segment.js';
import { fillFromStore } from './fallback.js';
import { readDelta } from './delta-file.js';
import { sourceShort } from './delta-errors.js';
import { opStart } from './op-ranges.js';
import { checkEncoders } from './recompressor.js';
import { versionOfImage } from './image-version.js';
import { OpHasher } from './op-hash.js';
import type { ApplyResult, DeltaFile, DeltaOp, FailedOp, ProgressEvent, Range } from './types.js';

const binding = createRequire(import.meta.url)('zstd-napi/binding.js') as typeof import('zstd-napi/binding.js');

export interface ApplyDeltaOptions {
  sourceImage: string;
  delta: string;
  out: string;
  /** The signed manifest of the target release (already verified by the caller): its version, size and sha256 must match. */
  manifest?: Manifest;
  /** Where to fetch the target ranges of ops whose source bytes were modified (needs `manifest` for the chunk index). */
  fallbackStore?: Store;
  /** Hash the whole source image against the delta's header before anything else. */
  verifySource?: boolean;
  /** The versions the caller expects the delta to be for; a mismatch is DELTA_WRONG_PAIR. */
  expectFromVersion?: string;
  expectToVersion?: string;
  onProgress?: (e: ProgressEvent) => void;
  signal?: AbortSignal;
}

const IO_BYTES = 4 << 20;
const FLUSH_EVERY = 256 << 20;
/** Source ops checked before the output is created, to tell a wrong image from a modified one. */
const SAMPLE_OPS = 16;

function describe(op: DeltaOp, i: number): string {
  switch (op.type) {
    case 'zero':
    case 'copy':
      return `op ${i} ${op.type.toUpperCase()} target bytes ${op.dst}+${op.length}`;
    default:
      return (
        `op ${i} ${op.type.toUpperCase()} ${op.path || 'filesystem metadata'} ` +
        `(target bytes ${op.dst[0]!.offset}+${op.dst.reduce((n, r) => n + r.length, 0)})`
      );
  }
}

function dstRanges(op: DeltaOp): Range[] {
  return op.type === 'zero' || op.type === 'copy' ? [{ offset: op.dst, length: op.length }] : op.dst;
}

function hashRanges(fd: number, ranges: Range[], buf: Buffer, what: string): Buffer {
  const h = new OpHasher();
  for (const r of ranges) {
    for (let done = 0; done < r.length;) {
      const piece = buf.subarray(0, Math.min(buf.length, r.length - done));
      preadFull(fd, piece, r.offset + done, sourceShort(what));
      h.update(piece);
      done += piece.length;
    }
  }
  return h.digest();
}

/** Checks that this delta is the one the caller asked for (DELTA_WRONG_PAIR otherwise). */
function checkPair(d: DeltaFile, opts: ApplyDeltaOptions): void {
  const h = d.header;
  const wrong = (why: string): IbuError =>
    new IbuError('DELTA_WRONG_PAIR', `The delta ${opts.delta} is for ${h.fromVersion} → ${h.toVersion}, but ${why}; fetch the delta for the right pair.`, {
      details: { fromVersion: h.fromVersion, toVersion: h.toVersion },
    });
  if (opts.expectToVersion !== undefined && opts.expectToVersion !== h.toVersion) throw wrong(`version ${opts.expectToVersion} was wanted`);
  if (opts.expectFromVersion !== undefined && opts.expectFromVersion !== h.fromVersion) throw wrong(`the source is version ${opts.expectFromVersion}`);
  const m = opts.manifest;
  if (m) {
    if (m.image.sha256 !== h.target.sha256 || m.image.size !== h.target.size || (h.toVersion !== 'unknown' && m.version !== h.toVersion)) {
      throw wrong(`the manifest given is for ${m.version} (sha256 ${m.image.sha256.slice(0, 12)}…)`);
    }
  }
}

/** Cheap checks that the source image is the delta's source before any output is created. */
function checkSource(d: DeltaFile, opts: ApplyDeltaOptions, sfd: number, buf: Buffer): void {
  const h = d.header;
  const wrong = (why: string, details?: Record<string, unknown>): IbuError =>
    new IbuError(
      'DELTA_WRONG_SOURCE',
      `${opts.sourceImage} is not the source image of this delta (${h.fromVersion} → ${h.toVersion}): ${why}. ` +
        `Apply the delta to image ${h.fromVersion}, or download the full image.`,
      {
        details,
      },
    );
  const size = fs.fstatSync(sfd).size;
  if (size !== h.source.size) throw wrong(`it has ${size} bytes, the delta's source has ${h.source.size}`);
  const version = versionOfImage(opts.sourceImage);
  if (version !== 'unknown' && h.fromVersion !== 'unknown' && version !== h.fromVersion) throw wrong(`it is version ${version}`, { version });
  if (opts.verifySource) {
    const sha = createHash('sha256');
    for (let pos = 0; pos < size;) {
      const piece = buf.subarray(0, Math.min(buf.length, size - pos));
      preadFull(sfd, piece, pos, sourceShort(opts.sourceImage));
      sha.update(piece);
      pos += piece.length;
      opts.onProgress?.({ phase: 'check-source', done: pos, total: size });
    }
    const got = sha.digest('hex');
    if (got !== h.source.sha256) throw wrong(`its sha256 is ${got.slice(0, 16)}…, the delta's source has ${h.source.sha256.slice(0, 16)}…`);
    return;
  }
  // A sample of COPY ops spread over the image: a modified image fails a few, a different one most.
  const copies = d.ops.filter((o) => o.type === 'copy');
  const step = Math.max(1, Math.floor(copies.length / SAMPLE_OPS));
  let tried = 0;
  let failed = 0;
  for (let i = 0; i < copies.length && tried < SAMPLE_OPS; i += step) {
    const op = copies[i]!;
    tried++;
    if (!hashRanges(sfd, [{ offset: op.src, length: op.length }], buf, opts.sourceImage).equals(op.hash)) failed++;
  }
  if (tried >= 4 && failed * 2 > tried) throw wrong(`${failed} of ${tried} sampled source ranges differ`);
}

/**
 * Applies a delta (docs/delta-format.md, "Apply"): verify the whole delta file, check it is
 * the wanted pair and the source is its source, then run the ops in target order into
 * OUT.partial (created sparse at the target size; ZERO ranges are never written). Each
 * segment is decoded when its first op comes up, with a dictionary built from its PATCH ops'
 * source ranges, so memory stays at one segment (≤ 32 MiB out + 48 MiB dictionary). Ops
 * whose source bytes differ are named; with a fallback store their target ranges come from
 * the release's chunks. Finally the output's sha256 must equal the delta's (and the
 * manifest's) target hash, or nothing replaces OUT.
 */
export async function applyDelta(opts: ApplyDeltaOptions): Promise<ApplyResult> {
  const t0 = performance.now();
  const progress = opts.onProgress;
  if (opts.fallbackStore && !opts.manifest) {
    throw new IbuError('USAGE', 'A fallback store needs the target release manifest (its chunk index); pass the manifest too.');
  }
  const d = readDelta(opts.delta, (done, total) => progress?.({ phase: 'verify-delta', done, total }));
  checkPair(d, opts);
  const h = d.header;
  if (h.encoders) checkEncoders(h.encoders, opts.delta);
  // RECOMPRESS ops run encoders on files in a scratch directory beside the output.
  let scratch: string | undefined;
  const work = (): string => (scratch ??= fs.mkdtempSync(path.join(path.dirname(path.resolve(opts.out)), '.ibudelta-apply-')));
  const jobs = Math.max(1, os.availableParallelism());
  let sfd: number;
  try {
    sfd = fs.openSync(opts.sourceImage, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new IbuError('NOT_FOUND', `The source image ${opts.sourceImage} does not exist; check the path.`, { cause: err });
    throw new IbuError('IO_ERROR', `Cannot open the source image ${opts.sourceImage}: ${e.message}.`, { cause: err });
  }
  const partial = `${opts.out}.partial`;
  let ofd: number | undefined;
  let dfd: number | undefined;
  let flushing: Promise<void> | undefined;
  try {
    const buf = Buffer.allocUnsafe(IO_BYTES);
    checkSource(d, opts, sfd, buf);
    dfd = fs.openSync(opts.delta, 'r');
    ofd = fs.openSync(partial, 'w+', 0o644);
    fs.ftruncateSync(ofd, h.target.size);

    const failed: FailedOp[] = [];
    const done = new Uint8Array(d.ops.length);
    const segOps: number[][] = d.segments.map(() => []);
    d.ops.forEach((op, i) => {
      if (op.type === 'patch' || op.type === 'replace' || op.type === 'recompress') segOps[op.segment]!.push(i);
    });
    const dctx = new binding.DCtx();
    // One set of segment buffers, reused: allocating per segment lets external memory pile up
    // between garbage collections (measured 315 MiB peak instead of ~150 MiB).
    const seg: SegmentBuffers = {
      frame: Buffer.allocUnsafe(d.segments.reduce((m, x) => Math.max(m, x.compressedLength), 0)),
      dict: Buffer.allocUnsafe(d.segments.reduce((m, x) => Math.max(m, x.dictLength), 0)),
      out: Buffer.allocUnsafe(d.segments.reduce((m, x) => Math.max(m, x.outputLength), 0)),
    };
    let written = 0;
    let lastYield = performance.now();
    let flushedAt = 0;
    // The sha256 of the output follows the ops: ops come in order of their lowest target byte,
    // so when op i is reached every byte before it is final and can be hashed from the page
    // cache (ZERO ranges as zeros, unread). A failed op stops this; the end then re-reads.
    const sha = new OrderedHash(ofd, d, buf);
    for (let i = 0; i < d.ops.length; i++) {
      if (failed.length === 0) sha.advance(opStart(d.ops[i]!));
      if (done[i]) continue;
      const op = d.ops[i]!;
      if (op.type === 'zero') {
        // Nothing to do: the output was created sparse and reads as zeros here.
      } else if (op.type === 'copy') {
        const hasher = new OpHasher();
        for (let off = 0; off < op.length;) {
          const piece = buf.subarray(0, Math.min(buf.length, op.length - off));
          preadFull(sfd, piece, op.src + off, sourceShort(opts.sourceImage));
          hasher.update(piece);
          pwriteFull(ofd, piece, op.dst + off);
          off += piece.length;
        }
        written += op.length;
        if (!hasher.digest().equals(op.hash)) failed.push({ index: i, type: 'copy', path: '', dst: dstRanges(op), reason: 'source' });
      } else {
        written += await decodeSegment(d, op.segment, segOps[op.segment]!, {
          sfd,
          dfd,
          ofd,
          buf,
          dctx,
          failed,
          sourceImage: opts.sourceImage,
          seg,
          work,
          jobs,
        });
        for (const j of segOps[op.segment]!) done[j] = 1;
      }
      done[i] = 1;
      // Start writing back what is dirty while the next ops compute: with much RAM the kernel
      // would otherwise hold everything until the final fsync and then write it serially.
      if (written - flushedAt >= FLUSH_EVERY && !flushing) {
        flushedAt = written;
        const fdNow = ofd;
        flushing = new Promise<void>((resolve) => fs.fdatasync(fdNow, () => resolve())).then(() => {
          flushing = undefined;
        });
      }
      if (performance.now() - lastYield > 50) {
        progress?.({ phase: 'apply', done: i + 1, total: d.ops.length });
        await new Promise((r) => setImmediate(r));
        lastYield = performance.now();
        if (opts.signal?.aborted) throw new IbuError('INTERNAL', 'Applying the delta was cancelled.');
      }
    }
    progress?.({ phase: 'apply', done: d.ops.length, total: d.ops.length });

    const fallback = { ops: 0, bytes: 0, chunks: 0, downloadedBytes: 0 };
    const broken = failed.filter((f) => f.reason === 'source' || f.reason === 'output');
    if (broken.length > 0) {
      const named = broken.filter((f) => f.reason === 'source');
      if (!opts.fallbackStore || !opts.manifest) {
        const list = broken
          .slice(0, 20)
          .map((f) => `${describe(d.ops[f.index]!, f.index)}${f.reason === 'output' ? ' (depends on a modified source range in its segment)' : ''}`)
          .join('; ');
        throw new IbuError(
          'DELTA_SOURCE_MODIFIED',
          `${named.length} op(s) of the delta read source bytes that differ from the release ${h.fromVersion}` +
            `${broken.length > named.length ? ` and ${broken.length - named.length} more depend on them` : ''}: ${list}${broken.length > 20 ? '; …' : ''}. ` +
            'The source image was modified; apply with a fallback store to fetch those ranges, or download the full image.',
          { details: { failedOps: broken } },
        );
      }
      progress?.({ phase: 'fallback', done: 0, total: broken.length });
      const ranges = broken.flatMap((f) => f.dst);
      const r = await fillFromStore(ofd, ranges, opts.manifest, opts.fallbackStore, opts.signal);
      fallback.ops = broken.length;
      fallback.bytes = r.bytes;
      fallback.chunks = r.chunks;
      fallback.downloadedBytes = r.downloadedBytes;
      progress?.({ phase: 'fallback', done: broken.length, total: broken.length });
    }

    await flushing;
    fs.fsyncSync(ofd);
    let sha256: string;
    if (failed.length === 0) {
      sha.advance(h.target.size);
      sha256 = sha.digest();
    } else {
      const again = new OrderedHash(ofd, d, buf, (n) => progress?.({ phase: 'verify', done: n, total: h.target.size }));
      again.advance(h.target.size);
      sha256 = again.digest();
    }
    const wanted = [h.target.sha256, ...(opts.manifest ? [opts.manifest.image.sha256] : [])];
    if (wanted.some((w) => w !== sha256)) {
      throw new IbuError(
        'IMAGE_HASH_MISMATCH',
        `The image built from the delta has sha256 ${sha256}, not ${wanted.find((w) => w !== sha256)}; ` +
          `nothing was written to ${opts.out}. Download the full image.`,
      );
    }
    fs.closeSync(ofd);
    ofd = undefined;
    await commitFile(partial, opts.out);
    return {
      out: opts.out,
      sha256,
      fromVersion: h.fromVersion,
      toVersion: h.toVersion,
      targetSize: h.target.size,
      bytesWritten: written + fallback.bytes,
      failedOps: failed,
      fallback,
      seconds: (performance.now() - t0) / 1000,
    };
  } catch (err) {
    await flushing; // never close an fd a background fdatasync still uses
    if (ofd !== undefined) fs.closeSync(ofd);
    ofd = undefined;
    fs.rmSync(partial, { force: true });
    // ENOSPC becomes NO_SPACE; other system errors IO_ERROR, with what was being done.
    throw err instanceof IbuError ? err : withContext(err, `Applying ${opts.delta} to ${opts.sourceImage} into ${opts.out}`, 'IO_ERROR');
  } finally {
    if (ofd !== undefined) fs.closeSync(ofd);
    if (dfd !== undefined) fs.closeSync(dfd);
    fs.closeSync(sfd);
    if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** sha256 of the output in target order; ZERO ranges are fed as zeros without reading the holes. */
class OrderedHash {
  private readonly sha = createHash('sha256');
  private readonly zeroRanges: Array<{ dst: number; length: number }>;
  private readonly zeros: Buffer;
  private zi = 0;
  private pos = 0;
  constructor(
    private readonly fd: number,
    d: DeltaFile,
    private readonly buf: Buffer,
    private readonly onProgress?: (n: number) => void,
  ) {
    this.zeroRanges = d.ops.filter((o): o is Extract<DeltaOp, { type: 'zero' }> => o.type === 'zero');
    this.zeros = Buffer.alloc(Math.min(buf.length, 1 << 20));
  }
  advance(upTo: number): void {
    while (this.pos < upTo) {
      while (this.zi < this.zeroRanges.length && this.zeroRanges[this.zi]!.dst + this.zeroRanges[this.zi]!.length <= this.pos) this.zi++;
      const z = this.zeroRanges[this.zi];
      if (z && z.dst <= this.pos) {
        const n = Math.min(this.zeros.length, z.dst + z.length - this.pos, upTo - this.pos);
        this.sha.update(this.zeros.subarray(0, n));
        this.pos += n;
        continue;
      }
      const limit = Math.min(upTo, z ? z.dst : upTo);
      const piece = this.buf.subarray(0, Math.min(this.buf.length, limit - this.pos));
      preadFull(this.fd, piece, this.pos, sourceShort('The output'));
      this.sha.update(piece);
      this.pos += piece.length;
      this.onProgress?.(this.pos);
    }
  }
  digest(): string {
    return this.sha.digest('hex');
  }
}
