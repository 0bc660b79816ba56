import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { chunkFile, ZERO_RUN_MIN } from '../chunk/chunker.js';
import { GEAR_NAME, NORMALIZATION } from '../chunk/fastcdc.js';
import type { ChunkHasher } from '../chunk/hash.js';
import { withContext } from '../errors.js';
import type { ChunkId } from '../store/store.js';
import type { Manifest } from './types.js';

/** A place in a seed file where a wanted chunk's bytes were found (and hash-checked). */
export type SeedHit = (id: ChunkId, data: Buffer) => void;

export interface SeedScanStats {
  sameOffsetHits: number;
  scanHits: number;
  bytesRead: number;
}

/**
 * Finds wanted chunks in a seed image, in two passes:
 *  1. same offset: images built with `--previous` keep unchanged files in place, so the bytes at
 *     a chunk's offset in the seed are tried first (one read and one hash per wanted chunk);
 *  2. content-defined scan: the seed is cut with the manifest's FastCDC parameters and only
 *     pieces whose length equals a still-wanted chunk's length are hashed (lengths differ for
 *     almost all non-matching pieces, so few hashes are wasted).
 * Every hit is hashed before it is used, so a modified seed can never corrupt the output.
 */
export function scanSeed(
  seedPath: string,
  m: Manifest,
  wanted: Map<ChunkId, number[]>,
  hash: ChunkHasher,
  onHit: SeedHit,
  mode: 'offset' | 'full' = 'full',
): SeedScanStats {
  const stats: SeedScanStats = { sameOffsetHits: 0, scanHits: 0, bytesRead: 0 };
  let fd: number;
  try {
    fd = openSync(seedPath, 'r');
  } catch (err) {
    throw withContext(err, `opening seed ${seedPath}`, 'IO_ERROR');
  }
  try {
    const size = fstatSync(fd).size;
    let buf = Buffer.allocUnsafe(m.chunking.max);
    for (const [id, idx] of [...wanted]) {
      const ref = m.chunks[idx[0]!]!;
      if (ref.offset + ref.size > size) continue;
      if (buf.length < ref.size) buf = Buffer.allocUnsafe(ref.size);
      const n = readSync(fd, buf, 0, ref.size, ref.offset);
      stats.bytesRead += n;
      if (n !== ref.size) continue;
      const data = buf.subarray(0, n);
      if (hash(data) === id) {
        stats.sameOffsetHits++;
        wanted.delete(id);
        onHit(id, data);
      }
    }
    const c = m.chunking;
    const sameCut =
      (c.gear ?? GEAR_NAME) === GEAR_NAME && (c.normalization ?? NORMALIZATION) === NORMALIZATION && (c.zeroRunMin ?? ZERO_RUN_MIN) === ZERO_RUN_MIN;
    if (mode === 'full' && wanted.size > 0 && sameCut) {
      const sizes = new Set<number>();
      for (const idx of wanted.values()) sizes.add(m.chunks[idx[0]!]!.size);
      for (const piece of chunkFile(fd, size, { min: c.min, avg: c.avg, max: c.max })) {
        if (piece.zero) continue;
        stats.bytesRead += piece.size;
        if (!sizes.has(piece.size)) continue;
        const id = hash(piece.data);
        if (wanted.has(id)) {
          stats.scanHits++;
          wanted.delete(id);
          onHit(id, piece.data);
          if (wanted.size === 0) break;
        }
      }
    }
    return stats;
  } finally {
    closeSync(fd);
  }
}
