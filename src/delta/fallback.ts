import * as fs from 'node:fs';
import { chunkDecompressor } from '../chunk/compress.js';
import { chunkHasher } from '../chunk/hash.js';
import { IbuError } from '../errors.js';
import type { ChunkRef, Manifest } from '../release/types.js';
import type { Store } from '../store/store.js';
import type { Range } from './types.js';

export interface FallbackResult {
  chunks: number;
  bytes: number;
  downloadedBytes: number;
}

/**
 * Writes target byte ranges from the release's chunks instead of the delta: the ranges →
 * the chunks of the manifest's index that cover them → fetch → zstd-decompress → check the
 * chunk hash → write just the bytes inside the ranges. All-zero chunks are written as zeros
 * (the range may hold bytes of a failed op).
 */
export async function fillFromStore(fd: number, ranges: Range[], manifest: Manifest, store: Store, signal?: AbortSignal): Promise<FallbackResult> {
  const chunks = [...manifest.chunks].sort((a, b) => a.offset - b.offset);
  const hash = chunkHasher(manifest.chunking.hash);
  const decompress = chunkDecompressor();
  const wanted = new Map<number, { ref: ChunkRef; parts: Range[] }>();
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const end = r.offset + r.length;
    let lo = 0;
    let hi = chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (chunks[mid]!.offset + chunks[mid]!.size <= r.offset) lo = mid + 1;
      else hi = mid;
    }
    let covered = r.offset;
    for (let i = lo; i < chunks.length && chunks[i]!.offset < end; i++) {
      const c = chunks[i]!;
      if (c.offset > covered) break;
      const from = Math.max(r.offset, c.offset);
      const to = Math.min(end, c.offset + c.size);
      if (to > from) {
        const w = wanted.get(i) ?? { ref: c, parts: [] };
        w.parts.push({ offset: from, length: to - from });
        wanted.set(i, w);
        covered = to;
      }
    }
    if (covered < end) {
      throw new IbuError(
        'MANIFEST_INVALID',
        `The manifest of ${manifest.version} has no chunk for image bytes ${covered}..${end}; it does not describe the whole image.`,
      );
    }
  }
  const result: FallbackResult = { chunks: 0, bytes: 0, downloadedBytes: 0 };
  let zeros = Buffer.alloc(0);
  for (const { ref, parts } of wanted.values()) {
    let plain: Buffer;
    if (ref.zero) {
      if (zeros.length < ref.size) zeros = Buffer.alloc(ref.size);
      plain = zeros.subarray(0, ref.size);
    } else {
      const stored = await store.getChunk(ref.id, signal);
      result.downloadedBytes += stored.length;
      plain = decompress(ref.id, stored, ref.size);
      if (hash(plain) !== ref.id) {
        throw new IbuError('CHUNK_INVALID', `Chunk ${ref.id} from ${store.location} does not match its hash; the store is damaged or tampered with.`);
      }
      result.chunks++;
    }
    for (const part of parts) {
      const slice = plain.subarray(part.offset - ref.offset, part.offset - ref.offset + part.length);
      for (let off = 0; off < slice.length;) off += fs.writeSync(fd, slice, off, slice.length - off, part.offset + off);
      result.bytes += part.length;
    }
  }
  return result;
}
