import * as fs from 'node:fs';
import * as path from 'node:path';
import type { PhysicalExtent } from '../image/ext4/types.js';
import { preadFull } from '../util/full-io.js';
import { codecOf, gzipFacts, xzFacts, type Codec, type EncoderParams } from './compressed-stream.js';
import type { MatchFile } from './file-match.js';
import { BLOCK } from './image-scan.js';
import type { PlanFile, PlanLimits, RecompressFacts } from './plan.js';
import { compressMany, decompressMany, encoderVersion } from './recompressor.js';

/**
 * make --recompress: which changed compressed files the device can rebuild from their
 * uncompressed content. A file qualifies when its old and new versions are the same format
 * (by content), its headers give settings to try, both fit a segment uncompressed, and the
 * encoder given its new content reproduces it byte for byte — checked here, for every file;
 * a file that fails goes on as a plain PATCH. Files are checked in batches, each batch's
 * encoding spread over `jobs` processes. The uncompressed contents are kept in `work` for
 * the segments (`rawPath`, `srcRawPath`).
 */
export interface RecompressedFile extends RecompressFacts {
  rawPath: string;
  srcRawPath: string;
}

export interface RecompressScan {
  files: Map<number, RecompressedFile>;
  candidates: number;
  notReproduced: number;
  /** Versions of the encoders the delta's RECOMPRESS ops use. */
  encoders: Partial<Record<Codec, string>>;
}

export interface RecompressScanInput {
  targets: PlanFile[];
  match: (t: MatchFile) => MatchFile | undefined;
  sourceExtents: (f: MatchFile) => PhysicalExtent[];
  kind: Uint8Array;
  blockSize: number;
  sfd: number;
  tfd: number;
  work: string;
  jobs: number;
  limits: PlanLimits;
  onProgress?: (done: number, total: number) => void;
}

/** Raw bytes one batch holds in memory at most (old and new contents together). */
const BATCH_RAW = 96 << 20;

/** A file's bytes when its extents hold it whole from logical block 0 (no holes, nothing unwritten), else undefined. */
function readWhole(fd: number, extents: PhysicalExtent[], size: number, bs: number, withTail: boolean): Buffer | undefined {
  const blocks = Math.ceil(size / bs);
  const sorted = [...extents].sort((a, b) => a.logical - b.logical);
  let next = 0;
  for (const e of sorted) {
    if (e.logical !== next || e.uninit) return undefined;
    next += e.length;
  }
  if (next !== blocks) return undefined;
  const buf = Buffer.alloc(withTail ? blocks * bs : size);
  let at = 0;
  for (const e of sorted) {
    const n = Math.min(e.length * bs, buf.length - at);
    preadFull(fd, buf.subarray(at, at + n), e.physical * bs, () => new Error('image ended early'));
    at += n;
  }
  return buf;
}

interface Pending {
  target: PlanFile;
  source: MatchFile;
  codec: Codec;
  params: EncoderParams;
  packed: Buffer;
  srcPacked: Buffer;
  rawLength: number;
  srcRawLength: number;
}

function factsOf(file: Buffer): { codec: Codec; params: EncoderParams; rawLength: number } | undefined {
  const codec = codecOf(file);
  if (codec === 'xz') {
    const x = xzFacts(file);
    return x && { codec, params: x.params, rawLength: x.rawLength };
  }
  if (codec === 'gzip') {
    const g = gzipFacts(file);
    return g && { codec, params: g.params, rawLength: g.rawLengthMod32 };
  }
  return undefined;
}

function sameParams(a: EncoderParams, b: EncoderParams): boolean {
  return a.codec === b.codec && a.level === b.level && a.check === b.check && a.dict === b.dict && a.threads === b.threads;
}

export async function scanRecompressible(input: RecompressScanInput): Promise<RecompressScan> {
  const { blockSize: bs, limits } = input;
  const result: RecompressScan = { files: new Map(), candidates: 0, notReproduced: 0, encoders: {} };
  const seen = new Set<number>();
  const todo: Array<{ target: PlanFile; source: MatchFile }> = [];
  for (const t of input.targets) {
    if (t.type !== 'file' || t.size < 18 || seen.has(t.ino)) continue;
    seen.add(t.ino);
    if (!t.extents.some((e) => Array.from({ length: e.length }, (_, i) => input.kind[e.physical + i]).some((k) => k === BLOCK.literal))) continue;
    const source = input.match(t);
    if (!source || source.type !== 'file' || source.size < 18) continue;
    if (t.size > limits.maxSegmentOutput || source.size > limits.maxSegmentDict) continue;
    todo.push({ target: t, source });
  }
  let batch: Pending[] = [];
  let batchBytes = 0;
  let done = 0;
  const flush = async (): Promise<void> => {
    await checkBatch(batch, input, result);
    done += batch.length;
    input.onProgress?.(done, todo.length);
    batch = [];
    batchBytes = 0;
  };
  for (const { target, source } of todo) {
    const head = Buffer.alloc(6);
    const ext = target.extents.find((e) => e.logical === 0);
    if (!ext) continue;
    preadFull(input.tfd, head, ext.physical * bs, () => new Error('image ended early'));
    if (!codecOf(Buffer.concat([head, Buffer.alloc(12)]))) continue; // cheap: most changed files are not compressed
    const withTail = readWhole(input.tfd, target.extents, target.size, bs, true);
    const srcPacked = readWhole(input.sfd, input.sourceExtents(source), source.size, bs, false);
    if (!withTail || !srcPacked) continue;
    // The rest of the last block travels as a ZERO op: it must be zero.
    if (withTail.subarray(target.size).some((x) => x !== 0)) continue;
    const packed = withTail.subarray(0, target.size);
    const tf = factsOf(packed);
    const sf = factsOf(srcPacked);
    if (!tf || !sf || tf.codec !== sf.codec) continue;
    if (tf.rawLength > limits.maxSegmentOutput || sf.rawLength > limits.maxSegmentDict || tf.rawLength === 0 || sf.rawLength === 0) continue;
    result.candidates++;
    batch.push({ target, source, codec: tf.codec, params: tf.params, packed, srcPacked, rawLength: tf.rawLength, srcRawLength: sf.rawLength });
    batchBytes += tf.rawLength + sf.rawLength;
    if (batchBytes >= BATCH_RAW) await flush();
  }
  if (batch.length > 0) await flush();
  return result;
}

async function checkBatch(batch: Pending[], input: RecompressScanInput, result: RecompressScan): Promise<void> {
  for (const codec of ['xz', 'gzip'] as const) {
    const mine = batch.filter((p) => p.codec === codec);
    if (mine.length === 0) continue;
    const version = encoderVersion(codec);
    const raws = await decompressMany(
      codec,
      mine.map((p) => p.packed),
      mine.map((p) => p.rawLength),
    );
    const srcRaws = await decompressMany(
      codec,
      mine.map((p) => p.srcPacked),
      mine.map((p) => p.srcRawLength),
    );
    const ok = mine.map((_, i) => raws[i] !== undefined && srcRaws[i] !== undefined);
    // Encode every decodable new content with the settings its own header gave, grouped by settings.
    const groups: EncoderParams[] = [];
    mine.forEach((p, i) => {
      if (ok[i] && !groups.some((g) => sameParams(g, p.params))) groups.push(p.params);
    });
    const reproduced = new Array<boolean>(mine.length).fill(false);
    for (const g of groups) {
      const idx = mine.map((p, i) => i).filter((i) => ok[i] && sameParams(mine[i]!.params, g));
      const packed = await compressMany(
        g,
        idx.map((i) => raws[i]!),
        input.work,
        input.jobs,
      );
      idx.forEach((i, k) => {
        reproduced[i] = packed[k]!.equals(mine[i]!.packed);
      });
    }
    mine.forEach((p, i) => {
      if (!reproduced[i]) {
        result.notReproduced++;
        return;
      }
      const rawPath = path.join(input.work, `raw-t${p.target.ino}`);
      const srcRawPath = path.join(input.work, `raw-s${p.target.ino}`);
      fs.writeFileSync(rawPath, raws[i]!);
      fs.writeFileSync(srcRawPath, srcRaws[i]!);
      result.encoders[codec] = version;
      result.files.set(p.target.ino, {
        source: p.source,
        params: p.params,
        rawLength: p.rawLength,
        srcRawLength: p.srcRawLength,
        rawPath,
        srcRawPath,
      });
    });
  }
}
