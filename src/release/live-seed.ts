import { closeSync, lstatSync, openSync, readSync } from 'node:fs';
import * as path from 'node:path';
import type { ChunkHasher } from '../chunk/hash.js';
import type { ChunkId } from '../store/store.js';
import type { SeedHit } from './seed.js';
import type { Manifest } from './types.js';

export interface LiveSeedStats {
  /** Files of the release's file map found on the live root with the same path and size. */
  filesMatched: number;
  /** Chunks assembled from them whose hash matched (each is then not downloaded). */
  chunkHits: number;
  bytesRead: number;
}

/** A run of image bytes that a live file may hold: image [imageOff, imageOff+len) = file [fileOff, fileOff+len). */
interface Segment {
  imageOff: number;
  len: number;
  file: string;
  fileOff: number;
}

/**
 * Seeds a download from a running system's root tree (`upgradectl adopt`): the release's file map
 * says where each file's blocks lie in the image (extents), so a wanted chunk covered by files the
 * live root also has (same path, same size) is assembled from them, zero elsewhere (free blocks and
 * tails of blocks are zero in a built image), and used only when its hash matches. Chunks that mix
 * in metadata (inodes, directories, bitmaps) or files that differ simply miss and are downloaded.
 */
export function scanLiveRoot(root: string, m: Manifest, wanted: Map<ChunkId, number[]>, hash: ChunkHasher, onHit: SeedHit): LiveSeedStats {
  const stats: LiveSeedStats = { filesMatched: 0, chunkHits: 0, bytesRead: 0 };
  const bs = m.image.blockSize;
  const segs: Segment[] = [];
  for (const f of m.files) {
    if (f.type !== 'file' || !f.extents?.length || f.size === 0) continue;
    const live = path.join(root, f.path);
    let st;
    try {
      st = lstatSync(live);
    } catch {
      continue;
    }
    if (!st.isFile() || st.size !== f.size) continue;
    stats.filesMatched++;
    for (const [logical, physical, length] of f.extents) {
      const fileOff = logical * bs;
      const len = Math.min(length * bs, f.size - fileOff);
      if (len > 0) segs.push({ imageOff: physical * bs, len, file: live, fileOff });
    }
  }
  if (segs.length === 0 || wanted.size === 0) return stats;
  segs.sort((a, b) => a.imageOff - b.imageOff);
  // Segments never overlap (one block belongs to one file), so ends are sorted too.
  const firstEndingAfter = (off: number): number => {
    let lo = 0;
    let hi = segs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (segs[mid]!.imageOff + segs[mid]!.len <= off) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const fds = new Map<string, number>();
  const fdFor = (file: string): number | null => {
    let fd = fds.get(file);
    if (fd === undefined) {
      try {
        fd = openSync(file, 'r');
      } catch {
        return null;
      }
      if (fds.size >= 64) {
        const [oldFile, oldFd] = fds.entries().next().value as [string, number];
        closeSync(oldFd);
        fds.delete(oldFile);
      }
      fds.set(file, fd);
    }
    return fd;
  };
  try {
    for (const [id, idx] of [...wanted]) {
      const ref = m.chunks[idx[0]!]!;
      const start = ref.offset;
      const end = ref.offset + ref.size;
      let i = firstEndingAfter(start);
      if (i >= segs.length || segs[i]!.imageOff >= end) continue;
      const buf = Buffer.alloc(ref.size);
      let ok = true;
      for (; i < segs.length && segs[i]!.imageOff < end; i++) {
        const s = segs[i]!;
        const from = Math.max(start, s.imageOff);
        const to = Math.min(end, s.imageOff + s.len);
        const fd = fdFor(s.file);
        if (fd === null) {
          ok = false;
          break;
        }
        const n = readSync(fd, buf, from - start, to - from, s.fileOff + (from - s.imageOff));
        stats.bytesRead += n;
        if (n !== to - from) {
          ok = false; // the file shrank since its stat: not a seed
          break;
        }
      }
      if (!ok || hash(buf) !== id) continue;
      stats.chunkHits++;
      wanted.delete(id);
      onHit(id, buf);
    }
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return stats;
}
