import { IbuError } from '../errors.js';
import { compressMany, decompressInto } from './recompressor.js';
import { rangesBytes } from './op-ranges.js';
import type { PatchOp, RecompressOp, ReplaceOp } from './types.js';

/**
 * The RECOMPRESS path of apply (docs/delta-format.md): before a segment decodes, each op's old
 * compressed file is decoded into the segment's dictionary; after, each op's new raw bytes go
 * through the encoder the delta names, so the output holds the compressed file bit for bit.
 */

/** An op's old file, read whole from the source image, and where its decoded bytes go in the dictionary. */
export interface OldFile {
  i: number;
  at: number;
  bytes: Buffer;
  op: RecompressOp;
}

/** One op's share of a decoded segment (raw bytes for a RECOMPRESS op until `recompressParts`). */
export interface OpPart {
  i: number;
  op: PatchOp | ReplaceOp | RecompressOp;
  bytes: Buffer;
}

/** Decodes the old files straight into the dictionary, all of one codec at once: the segment's memory is all apply holds. */
export async function decodeIntoDictionary(oldFiles: OldFile[], dict: Buffer): Promise<void> {
  for (const codec of ['xz', 'gzip', 'zstd'] as const) {
    const mine = oldFiles.filter((x) => x.op.params.codec === codec);
    if (mine.length === 0) continue;
    const ok = await decompressInto(
      codec,
      mine.map((x) => x.bytes),
      mine.map((x) => dict.subarray(x.at, x.at + x.op.srcRawLength)),
    );
    mine.forEach((x, k) => {
      // Its bytes hashed right, so they are what make decoded: a size that does not match is the delta's.
      if (!ok[k]) {
        throw new IbuError(
          'DELTA_INVALID',
          `Op ${x.i} (${x.op.path}): the old file ${x.op.srcPath} does not decode to the ${x.op.srcRawLength} bytes the delta says; ` +
            'download or build the delta again.',
        );
      }
    });
  }
}

/** Replaces each RECOMPRESS part's raw bytes by their encoding, one batch per set of encoder settings. */
export async function recompressParts(parts: OpPart[], work: () => string, jobs: number): Promise<void> {
  const groups = new Map<string, OpPart[]>();
  for (const p of parts) {
    if (p.op.type !== 'recompress') continue;
    const key = JSON.stringify(p.op.params);
    groups.set(key, [...(groups.get(key) ?? []), p]);
  }
  for (const g of groups.values()) {
    const params = (g[0]!.op as RecompressOp).params;
    // zstd writes the same bytes for any number of workers, and each worker holds its own window and
    // job buffers (~10 MiB at -9 on a 36 MB initramfs archive): apply keeps to one, under its 256 MiB bound.
    const packed = await compressMany(
      params,
      g.map((p) => p.bytes),
      work(),
      params.codec === 'zstd' ? 1 : jobs,
      g.map((p) => rangesBytes(p.op.dst)),
    );
    g.forEach((p, k) => {
      p.bytes = packed[k]!;
    });
  }
}
