import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { blake3 } from '@napi-rs/blake-hash';
import { IbuError } from '../errors.js';

/** What a target block is made of. */
export const BLOCK = { zero: 0, copy: 1, literal: 2 } as const;

export interface ImageScan {
  blockSize: number;
  sourceSize: number;
  targetSize: number;
  sourceSha256: string;
  targetSha256: string;
  /** Per target block: BLOCK.zero, BLOCK.copy (identical to source block `from[i]`) or BLOCK.literal. */
  kind: Uint8Array;
  from: Int32Array;
  /** Per source block: 1 when all zero. */
  sourceZero: Uint8Array;
}

const READ_BYTES = 8 << 20;

function blocksOf(size: number, bs: number): number {
  return Math.ceil(size / bs);
}

function readAt(fd: number, buf: Buffer, pos: number, file: string): number {
  let done = 0;
  while (done < buf.length) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    } catch (err) {
      throw new IbuError('IO_ERROR', `Reading ${file} at byte ${pos + done} failed: ${(err as Error).message}.`, { cause: err });
    }
    if (n === 0) break;
    done += n;
  }
  return done;
}

function isZero(buf: Buffer, zero: Buffer): boolean {
  return buf.length === zero.length ? buf.equals(zero) : buf.equals(zero.subarray(0, buf.length));
}

/**
 * A 128-bit hash of every non-zero source block, and an open-addressing table from hash to
 * the first source block with it. Typed arrays keep a 2 GiB image's index at ~20 MiB.
 */
class SourceIndex {
  readonly hashes: Uint32Array; // 4 words per source block
  private readonly slots: Int32Array; // block + 1, 0 = empty
  private readonly mask: number;
  constructor(blocks: number) {
    this.hashes = new Uint32Array(blocks * 4);
    let cap = 1024;
    while (cap < blocks * 2) cap *= 2;
    this.slots = new Int32Array(cap);
    this.mask = cap - 1;
  }
  set(block: number, h: Buffer): void {
    const o = block * 4;
    this.hashes[o] = h.readUInt32LE(0);
    this.hashes[o + 1] = h.readUInt32LE(4);
    this.hashes[o + 2] = h.readUInt32LE(8);
    this.hashes[o + 3] = h.readUInt32LE(12);
    for (let s = this.hashes[o]! & this.mask; ; s = (s + 1) & this.mask) {
      const v = this.slots[s]!;
      if (v === 0) {
        this.slots[s] = block + 1;
        return;
      }
      if (this.sameAs(v - 1, h)) return; // keep the first block with this content
    }
  }
  sameAs(block: number, h: Buffer): boolean {
    const o = block * 4;
    return (
      this.hashes[o] === h.readUInt32LE(0) &&
      this.hashes[o + 1] === h.readUInt32LE(4) &&
      this.hashes[o + 2] === h.readUInt32LE(8) &&
      this.hashes[o + 3] === h.readUInt32LE(12)
    );
  }
  find(h: Buffer): number {
    for (let s = h.readUInt32LE(0) & this.mask; ; s = (s + 1) & this.mask) {
      const v = this.slots[s]!;
      if (v === 0) return -1;
      if (this.sameAs(v - 1, h)) return v - 1;
    }
  }
}

function openImage(path: string): number {
  try {
    return fs.openSync(path, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new IbuError('NOT_FOUND', `The image ${path} does not exist; check the path.`, { cause: err });
    throw new IbuError('IO_ERROR', `Cannot open the image ${path}: ${e.message}.`, { cause: err });
  }
}

/**
 * Reads both images once each (plus the source again at the same offsets, from the page
 * cache) and classifies every target block: all zero, identical to some source block (the
 * same offset preferred, then the block after the previous match, then any block with the
 * same 128-bit BLAKE3), or literal. The sha256 of both images comes from the same reads.
 */
export async function scanImages(
  sourcePath: string,
  targetPath: string,
  blockSize: number,
  onProgress?: (phase: 'scan-source' | 'scan-target', done: number, total: number) => void,
): Promise<ImageScan> {
  const sfd = openImage(sourcePath);
  const tfd = openImage(targetPath);
  try {
    const sourceSize = fs.fstatSync(sfd).size;
    const targetSize = fs.fstatSync(tfd).size;
    const bs = blockSize;
    const zero = Buffer.alloc(bs);
    const sBlocks = blocksOf(sourceSize, bs);
    const tBlocks = blocksOf(targetSize, bs);
    const index = new SourceIndex(sBlocks);
    const sourceZero = new Uint8Array(sBlocks);
    const buf = Buffer.allocUnsafe(READ_BYTES);
    const sbuf = Buffer.allocUnsafe(READ_BYTES);

    const sSha = createHash('sha256');
    for (let pos = 0; pos < sourceSize; pos += READ_BYTES) {
      const n = readAt(sfd, buf, pos, sourcePath);
      sSha.update(buf.subarray(0, n));
      for (let o = 0; o < n; o += bs) {
        const blk = buf.subarray(o, Math.min(o + bs, n));
        const b = (pos + o) / bs;
        if (isZero(blk, zero)) sourceZero[b] = 1;
        else index.set(b, blake3(blk));
      }
      onProgress?.('scan-source', pos + n, sourceSize);
      await new Promise((r) => setImmediate(r));
    }

    const kind = new Uint8Array(tBlocks);
    const from = new Int32Array(tBlocks).fill(-1);
    const tSha = createHash('sha256');
    let prev = -2;
    for (let pos = 0; pos < targetSize; pos += READ_BYTES) {
      const n = readAt(tfd, buf, pos, targetPath);
      tSha.update(buf.subarray(0, n));
      const sn = pos < sourceSize ? readAt(sfd, sbuf.subarray(0, Math.min(READ_BYTES, sourceSize - pos)), pos, sourcePath) : 0;
      for (let o = 0; o < n; o += bs) {
        const end = Math.min(o + bs, n);
        const blk = buf.subarray(o, end);
        const b = (pos + o) / bs;
        if (isZero(blk, zero)) {
          kind[b] = BLOCK.zero;
          prev = -2;
          continue;
        }
        if (end <= sn && blk.equals(sbuf.subarray(o, end))) {
          kind[b] = BLOCK.copy;
          from[b] = b;
          prev = b;
          continue;
        }
        // A partial last block only matches at the same offset (sizes must agree).
        if (blk.length !== bs) {
          kind[b] = BLOCK.literal;
          prev = -2;
          continue;
        }
        const h = blake3(blk);
        let f = -1;
        if (prev >= 0 && prev + 1 < sBlocks && sourceZero[prev + 1] === 0 && index.sameAs(prev + 1, h)) f = prev + 1;
        else f = index.find(h);
        if (f >= 0 && (f + 1) * bs > sourceSize) f = -1;
        if (f >= 0) {
          kind[b] = BLOCK.copy;
          from[b] = f;
          prev = f;
        } else {
          kind[b] = BLOCK.literal;
          prev = -2;
        }
      }
      onProgress?.('scan-target', pos + n, targetSize);
      await new Promise((r) => setImmediate(r));
    }
    return {
      blockSize: bs,
      sourceSize,
      targetSize,
      sourceSha256: sSha.digest('hex'),
      targetSha256: tSha.digest('hex'),
      kind,
      from,
      sourceZero,
    };
  } finally {
    fs.closeSync(sfd);
    fs.closeSync(tfd);
  }
}
