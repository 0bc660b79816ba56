import * as fs from 'node:fs';
import * as path from 'node:path';
import type { PhysicalExtent } from '../image/ext4/types.js';
import { preadFull } from '../util/full-io.js';
import { codecOf, gzipFacts, xzFacts, zstdCandidates, zstdFacts, type Codec, type EncoderParams } from './compressed-stream.js';
import { cpioLayout } from './cpio-layout.js';
import { normaliseDigits, type MatchFile } from './file-match.js';
import { BLOCK } from './image-scan.js';
import type { PlanFile, PlanLimits, RecompressFacts, RecompressPiece } from './plan.js';
import { compressMany, decodeZstd, decompressMany, encoderVersion, findZstdParams } from './recompressor.js';

/**
 * make --recompress: which compressed streams inside changed files the device can rebuild from
 * their uncompressed content. A stream is a whole compressed file, or, in an initramfs
 * (`cpio-layout.ts`), a compressed cpio member or the compressed main archive. It qualifies
 * when its old version (the same file, the member of the same name up to digits) is the same
 * format, detected by content; its headers give settings to try (zstd: levels are tried); both
 * contents fit the reader's limits; and the encoder given its new content reproduces it byte
 * for byte — checked here, for every stream. A stream that fails stays inside the file's
 * plain bytes. Streams are checked in batches, each batch's encoding spread over `jobs`
 * processes. The uncompressed contents are kept in `work` for the segments (`rawPath`, `srcRawPath`).
 */
export interface RecompressedPiece extends RecompressPiece {
  rawPath: string;
  srcRawPath: string;
}

export interface RecompressedFile extends RecompressFacts {
  pieces: RecompressedPiece[];
}

export interface RecompressScan {
  files: Map<number, RecompressedFile>;
  /** Streams tried, reproduced, and not reproduced (those stay plain bytes). */
  candidates: number;
  reproduced: number;
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
  /** Only streams of these codecs are recompressed (the encoders the device has in the same version); default all. */
  codecs?: readonly Codec[];
  onProgress?: (done: number, total: number) => void;
}

/**
 * The largest uncompressed stream recompressed (old or new): a stream is one op, and an op's
 * share of a segment is whole, so this is what apply holds of it (an initramfs's main archive
 * is ~36 MB on Debian 13). Under the reader's 128 MiB segment limits.
 */
export const MAX_RECOMPRESS_RAW = 64 << 20;

/** Raw bytes one batch holds in memory at most (old and new contents together). */
const BATCH_RAW = 96 << 20;
const CPIO_NEWC = Buffer.from('070701');

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
  /** xz and gzip: the settings the headers give; zstd: the candidates to try. */
  params: EncoderParams[];
  start: number;
  srcStart: number;
  packed: Buffer;
  srcPacked: Buffer;
  /** Known from the headers (xz's index, gzip's ISIZE, zstd's content size), else found by decoding. */
  rawLength: number | undefined;
  srcRawLength: number | undefined;
}

interface StreamFacts {
  codec: Codec;
  params: EncoderParams[];
  rawLength: number | undefined;
}

function factsOf(stream: Buffer): StreamFacts | undefined {
  const codec = codecOf(stream);
  if (codec === 'xz') {
    const x = xzFacts(stream);
    return x && { codec, params: [x.params], rawLength: x.rawLength };
  }
  if (codec === 'gzip') {
    const g = gzipFacts(stream);
    return g && { codec, params: [g.params], rawLength: g.rawLengthMod32 };
  }
  if (codec === 'zstd') {
    const z = zstdFacts(stream);
    return z && { codec, params: zstdCandidates(z), rawLength: z.contentSize };
  }
  return undefined;
}

function sameParams(a: EncoderParams, b: EncoderParams): boolean {
  return a.codec === b.codec && a.level === b.level && a.check === b.check && a.dict === b.dict && a.threads === b.threads;
}

/** The compressed streams of a changed file to try, each with its old version: the whole file, or an initramfs's compressed members and tail. */
function streamsOf(packed: Buffer, srcPacked: Buffer): Array<{ start: number; length: number; srcStart: number; srcLength: number }> {
  if (codecOf(packed)) return [{ start: 0, length: packed.length, srcStart: 0, srcLength: srcPacked.length }];
  const t = cpioLayout(packed);
  const s = t && cpioLayout(srcPacked);
  if (!t || !s) return [];
  const out: Array<{ start: number; length: number; srcStart: number; srcLength: number }> = [];
  // A member's old self: the same name, else the same name with the digits of its directories
  // let go (/usr/lib/modules/6.12.117+deb13-amd64/… → 6.12.118…): module names have digits of their own.
  const inDir = (n: string): string => normaliseDigits(n.slice(0, n.lastIndexOf('/') + 1)) + n.slice(n.lastIndexOf('/') + 1);
  const old = new Map(s.members.map((m) => [m.name, m]));
  const oldInDir = new Map(s.members.map((m) => [inDir(m.name), m]));
  for (const m of t.members) {
    if (m.length < 18 || !codecOf(packed.subarray(m.start, m.start + 18))) continue;
    const o = old.get(m.name) ?? oldInDir.get(inDir(m.name));
    if (o) out.push({ start: m.start, length: m.length, srcStart: o.start, srcLength: o.length });
  }
  if (t.tail !== undefined && s.tail !== undefined)
    out.push({ start: t.tail, length: packed.length - t.tail, srcStart: s.tail, srcLength: srcPacked.length - s.tail });
  return out;
}

export async function scanRecompressible(input: RecompressScanInput): Promise<RecompressScan> {
  const { blockSize: bs, limits } = input;
  const result: RecompressScan = { files: new Map(), candidates: 0, reproduced: 0, notReproduced: 0, encoders: {} };
  const seen = new Set<number>();
  const todo: Array<{ target: PlanFile; source: MatchFile }> = [];
  for (const t of input.targets) {
    if (t.type !== 'file' || t.size < 18 || seen.has(t.ino)) continue;
    seen.add(t.ino);
    if (!t.extents.some((e) => Array.from({ length: e.length }, (_, i) => input.kind[e.physical + i]).some((k) => k === BLOCK.literal))) continue;
    const source = input.match(t);
    if (!source || source.type !== 'file' || source.size < 18) continue;
    if (t.size > MAX_RECOMPRESS_RAW || source.size > MAX_RECOMPRESS_RAW) continue;
    todo.push({ target: t, source });
  }
  let batch: Pending[] = [];
  let batchBytes = 0;
  let done = 0;
  const flush = async (): Promise<void> => {
    await checkBatch(batch, input, result);
    input.onProgress?.(done, todo.length);
    batch = [];
    batchBytes = 0;
  };
  for (const { target, source } of todo) {
    done++;
    const head = Buffer.alloc(6);
    const ext = target.extents.find((e) => e.logical === 0);
    if (!ext) continue;
    preadFull(input.tfd, head, ext.physical * bs, () => new Error('image ended early'));
    // cheap: most changed files are neither compressed nor an initramfs
    if (!codecOf(Buffer.concat([head, Buffer.alloc(12)])) && !head.equals(CPIO_NEWC)) continue;
    const withTail = readWhole(input.tfd, target.extents, target.size, bs, true);
    const srcPacked = readWhole(input.sfd, input.sourceExtents(source), source.size, bs, false);
    if (!withTail || !srcPacked) continue;
    // The rest of the last block travels as a ZERO op: it must be zero.
    if (withTail.subarray(target.size).some((x) => x !== 0)) continue;
    const packed = withTail.subarray(0, target.size);
    for (const st of streamsOf(packed, srcPacked)) {
      const tp = packed.subarray(st.start, st.start + st.length);
      const sp = srcPacked.subarray(st.srcStart, st.srcStart + st.srcLength);
      const tf = factsOf(tp);
      const sf = factsOf(sp);
      if (!tf || !sf || tf.codec !== sf.codec || (input.codecs && !input.codecs.includes(tf.codec))) continue;
      const fits = (n: number | undefined): boolean => n === undefined || (n > 0 && n <= MAX_RECOMPRESS_RAW);
      if (!fits(tf.rawLength) || !fits(sf.rawLength)) continue;
      // An initramfs is hundreds of streams: cut its batches between them too, or the whole of it
      // (every module decoded on both sides, then both main archives) was held at once (make peaked
      // at 595 MiB on the trixie initrd pair).
      if (batchBytes >= BATCH_RAW) await flush();
      result.candidates++;
      batch.push({
        target,
        source,
        codec: tf.codec,
        params: tf.params,
        start: st.start,
        srcStart: st.srcStart,
        packed: tp,
        srcPacked: sp,
        rawLength: tf.rawLength,
        srcRawLength: sf.rawLength,
      });
      // A zstd stream's size is known only once decoded: count its compressed size four times.
      batchBytes += (tf.rawLength ?? 4 * st.length) + (sf.rawLength ?? 4 * st.srcLength);
    }
    if (batchBytes >= BATCH_RAW) await flush();
  }
  if (batch.length > 0) await flush();
  // A file whose plain bytes are too many for one PATCH goes as a plain file.
  for (const [ino, f] of result.files) {
    const target = input.targets.find((t) => t.ino === ino)!;
    const glue = target.size - f.pieces.reduce((n, x) => n + x.length, 0);
    const srcGlue = f.source.size - f.pieces.reduce((n, x) => n + x.srcLength, 0);
    if (glue > limits.maxSegmentOutput || srcGlue > limits.maxSegmentDict) {
      result.files.delete(ino);
      result.reproduced -= f.pieces.length;
      result.notReproduced += f.pieces.length;
      for (const x of f.pieces) {
        fs.rmSync(x.rawPath, { force: true });
        fs.rmSync(x.srcRawPath, { force: true });
      }
    }
  }
  return result;
}

/** Decodes streams of one codec whose sizes are known through one process; zstd streams without one, each alone. */
async function decodeAll(codec: Codec, streams: Buffer[], lengths: Array<number | undefined>): Promise<Array<Buffer | undefined>> {
  if (codec === 'zstd') return streams.map((s) => decodeZstd(s, MAX_RECOMPRESS_RAW));
  return decompressMany(
    codec,
    streams,
    lengths.map((n) => n!),
  );
}

async function checkBatch(batch: Pending[], input: RecompressScanInput, result: RecompressScan): Promise<void> {
  for (const codec of ['xz', 'gzip', 'zstd'] as const) {
    const mine = batch.filter((p) => p.codec === codec);
    if (mine.length === 0) continue;
    const version = encoderVersion(codec);
    const raws = await decodeAll(
      codec,
      mine.map((p) => p.packed),
      mine.map((p) => p.rawLength),
    );
    const srcRaws = await decodeAll(
      codec,
      mine.map((p) => p.srcPacked),
      mine.map((p) => p.srcRawLength),
    );
    const ok = mine.map((_, i) => raws[i] !== undefined && srcRaws[i] !== undefined && raws[i]!.length > 0 && srcRaws[i]!.length > 0);
    const found = new Array<EncoderParams | undefined>(mine.length);
    if (codec === 'zstd') {
      // The level is not in the frame: try the candidates, one stream at a time.
      for (let i = 0; i < mine.length; i++) if (ok[i]) found[i] = findZstdParams(mine[i]!.params, raws[i]!, mine[i]!.packed, input.jobs);
    } else {
      // Encode every decodable new content with the settings its own header gave, grouped by settings.
      const groups: EncoderParams[] = [];
      mine.forEach((p, i) => {
        if (ok[i] && !groups.some((g) => sameParams(g, p.params[0]!))) groups.push(p.params[0]!);
      });
      for (const g of groups) {
        const idx = mine.map((p, i) => i).filter((i) => ok[i] && sameParams(mine[i]!.params[0]!, g));
        const packed = await compressMany(
          g,
          idx.map((i) => raws[i]!),
          input.work,
          input.jobs,
        );
        idx.forEach((i, k) => {
          if (packed[k]!.equals(mine[i]!.packed)) found[i] = g;
        });
      }
    }
    mine.forEach((p, i) => {
      const params = found[i];
      if (!params) {
        result.notReproduced++;
        return;
      }
      result.reproduced++;
      const rawPath = path.join(input.work, `raw-t${p.target.ino}-${p.start}`);
      const srcRawPath = path.join(input.work, `raw-s${p.target.ino}-${p.start}`);
      fs.writeFileSync(rawPath, raws[i]!);
      fs.writeFileSync(srcRawPath, srcRaws[i]!);
      result.encoders[codec] = version;
      let file = result.files.get(p.target.ino);
      if (!file) result.files.set(p.target.ino, (file = { source: p.source, pieces: [] }));
      file.pieces.push({
        start: p.start,
        length: p.packed.length,
        srcStart: p.srcStart,
        srcLength: p.srcPacked.length,
        params,
        rawLength: raws[i]!.length,
        srcRawLength: srcRaws[i]!.length,
        rawPath,
        srcRawPath,
      });
    });
  }
}
