import { readSync } from 'node:fs';
import { IbuError } from '../errors.js';
import { cutParams, cutPoint, type ChunkParams } from './fastcdc.js';

/** Zero detection works on aligned 4 KiB blocks (the ext4 block size of every ibu image). */
export const ZERO_BLOCK = 4096;
/** Runs of zero blocks at least this long become `zero` index entries and are never stored. */
export const ZERO_RUN_MIN = 64 * 1024;

const ZEROS = Buffer.alloc(ZERO_BLOCK);

export interface Piece {
  offset: number;
  size: number;
  zero: boolean;
  /** The bytes (a view into a reused buffer, valid until the next piece); empty for zero runs. */
  data: Buffer;
}

/**
 * Splits a file into pieces: all-zero runs (>= ZERO_RUN_MIN, block aligned) and FastCDC chunks
 * of the data between them. A zero run ends a chunk, so free space in an image never shifts the
 * chunk boundaries of the files around it. Reads synchronously through one reused buffer.
 *
 * This is the one place that calls `cutPoint` (see DESIGN.md: one call site keeps it monomorphic).
 */
export function* chunkFile(fd: number, fileSize: number, params: ChunkParams, bufferSize = 16 * 1024 * 1024): Generator<Piece> {
  const p = cutParams(params);
  const cap = Math.max(bufferSize, 2 * (p.max + ZERO_RUN_MIN));
  const buf = Buffer.allocUnsafe(cap);
  let bufStart = 0; // file offset of buf[0]
  let bufLen = 0;
  let pos = 0; // file offset of the next piece
  let scanFrom = 0; // no zero run starts at an aligned offset in [pos, scanFrom)
  let found = -1; // the first zero run start >= pos, when known

  const fill = (needEnd: number): void => {
    if (needEnd > fileSize) needEnd = fileSize;
    if (bufStart + bufLen >= needEnd) return;
    if (pos > bufStart) {
      const drop = Math.min(pos - bufStart, bufLen);
      buf.copyWithin(0, drop, bufLen);
      bufLen -= drop;
      bufStart += drop;
      if (bufStart < pos) {
        bufStart = pos;
        bufLen = 0;
      }
    }
    while (bufStart + bufLen < needEnd) {
      const want = Math.min(cap - bufLen, fileSize - (bufStart + bufLen));
      const n = readSync(fd, buf, bufLen, want, bufStart + bufLen);
      if (n === 0)
        throw new IbuError('IMAGE_INVALID', `the file ended at ${bufStart + bufLen} bytes while ${fileSize} were expected; was it changed while being read?`);
      bufLen += n;
    }
  };
  const isZero = (abs: number): boolean => {
    const o = abs - bufStart;
    return ZEROS.compare(buf, o, o + ZERO_BLOCK, 0, ZERO_BLOCK) === 0;
  };
  const findRun = (limit: number): number => {
    if (found >= 0) return found < limit ? found : -1;
    let q = Math.max(scanFrom, Math.ceil(pos / ZERO_BLOCK) * ZERO_BLOCK);
    while (q < limit && q + ZERO_RUN_MIN <= fileSize) {
      if (isZero(q)) {
        let r = ZERO_BLOCK;
        while (r < ZERO_RUN_MIN && isZero(q + r)) r += ZERO_BLOCK;
        if (r >= ZERO_RUN_MIN) {
          found = q;
          scanFrom = q;
          return q;
        }
        q += r + ZERO_BLOCK;
      } else {
        q += ZERO_BLOCK;
      }
    }
    scanFrom = q;
    return -1;
  };

  while (pos < fileSize) {
    fill(pos + p.max + ZERO_RUN_MIN);
    const limit = Math.min(fileSize, pos + p.max);
    const run = findRun(limit);
    if (run === pos) {
      let end = pos + ZERO_RUN_MIN;
      for (;;) {
        if (end + ZERO_BLOCK > fileSize) break;
        if (end + ZERO_BLOCK > bufStart + bufLen) {
          pos = end; // lets fill() drop the zeros already counted
          fill(end + cap / 2);
        }
        if (!isZero(end)) break;
        end += ZERO_BLOCK;
      }
      const start = run;
      pos = end;
      found = -1;
      scanFrom = end;
      yield { offset: start, size: end - start, zero: true, data: ZEROS.subarray(0, 0) };
      continue;
    }
    const segEnd = run >= 0 ? run : limit;
    const o = pos - bufStart;
    const len = cutPoint(buf, o, o + (segEnd - pos), p);
    const piece = { offset: pos, size: len, zero: false, data: buf.subarray(o, o + len) };
    pos += len;
    yield piece;
  }
}
