import { createHash } from 'node:crypto';
import { IbuError } from '../errors.js';

/**
 * FastCDC content-defined chunking (Xia et al., "FastCDC", USENIX ATC 2016 / IEEE TPDS 2020):
 * a gear rolling hash, cut-point skipping below `min`, and normalized chunking (a harder mask
 * before `avg`, an easier one after it) so chunk sizes cluster around `avg`.
 *
 * The hash is kept in 32 bits (V8 small-integer arithmetic; 64-bit BigInt math is ~20x slower)
 * and the masks use its high bits, which depend on the last 32 bytes. The gear table is derived
 * from sha256 so any implementation can rebuild it; it is part of the chunk format (`gear: ibu1`).
 */
export interface ChunkParams {
  min: number;
  avg: number;
  max: number;
}

/** Normalization level 2: the paper's recommended trade-off between dedup ratio and size spread. */
export const NORMALIZATION = 2;

export const GEAR_NAME = 'ibu1';

export const GEAR: Int32Array = (() => {
  const t = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    t[i] = createHash('sha256').update(`ibu-fastcdc-gear-v1:${i}`).digest().readInt32LE(0);
  }
  return t;
})();

export interface CutParams extends ChunkParams {
  maskS: number; // harder mask, used from min to avg
  maskL: number; // easier mask, used from avg to max
}

function highBits(n: number): number {
  return n >= 32 ? -1 : ((2 ** n - 1) * 2 ** (32 - n)) | 0;
}

export function validateParams(p: ChunkParams): void {
  const pow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  if (!pow2(p.avg) || p.avg < 256 || p.avg > 16 * 1024 * 1024) {
    throw new IbuError('USAGE', `chunk avg size ${p.avg} must be a power of two between 256 B and 16 MiB`);
  }
  if (!(Number.isInteger(p.min) && Number.isInteger(p.max) && p.min >= 64 && p.min < p.avg && p.avg < p.max && p.max <= 64 * 1024 * 1024)) {
    throw new IbuError('USAGE', `chunk sizes must satisfy 64 <= min < avg < max <= 64 MiB (got ${p.min}:${p.avg}:${p.max})`);
  }
}

export function cutParams(p: ChunkParams): CutParams {
  validateParams(p);
  const bits = Math.round(Math.log2(p.avg));
  return { ...p, maskS: highBits(bits + NORMALIZATION), maskL: highBits(bits - NORMALIZATION) };
}

/**
 * Length of the next chunk of `buf[start, end)`: the first content-defined cut point, or the
 * whole range when none is found (the caller caps `end - start` at `max`).
 */
export function cutPoint(buf: Uint8Array, start: number, end: number, p: CutParams): number {
  let n = end - start;
  if (n <= p.min) return n;
  if (n > p.max) n = p.max;
  const normal = n < p.avg ? n : p.avg;
  const gear = GEAR;
  const maskS = p.maskS;
  const maskL = p.maskL;
  let fp = 0;
  let i = p.min;
  for (; i < normal; i++) {
    fp = ((fp << 1) + gear[buf[start + i]!]!) | 0;
    if ((fp & maskS) === 0) return i + 1;
  }
  for (; i < n; i++) {
    fp = ((fp << 1) + gear[buf[start + i]!]!) | 0;
    if ((fp & maskL) === 0) return i + 1;
  }
  return n;
}
