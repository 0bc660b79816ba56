import * as fs from 'node:fs';
import { IbuError } from '../../errors.js';
import { invalid } from './errors.js';

/** Where the image bytes come from: a file (the normal case) or a buffer (tests, fuzzing). */
export interface ByteSource {
  readonly name: string;
  readonly size: number;
  /** Reads into `dst` from byte `position`; returns the bytes read (short at the end). */
  read(dst: Buffer, position: number): number;
  close(): void;
}

// One read(2) moves at most ~2 GiB on Linux; larger requests are split.
const MAX_READ = 1 << 30;

export class FileSource implements ByteSource {
  readonly size: number;
  private fd: number | undefined;
  constructor(readonly name: string) {
    try {
      this.fd = fs.openSync(name, 'r');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT') throw new IbuError('NOT_FOUND', `The image ${name} does not exist; check the path.`, { cause: err });
      throw new IbuError('IO_ERROR', `Cannot open the image ${name}: ${e.message}.`, { cause: err });
    }
    const st = fs.fstatSync(this.fd);
    if (st.isDirectory()) {
      this.close();
      throw invalid(`${name} is a directory, not an ext4 image file.`);
    }
    this.size = st.isBlockDevice() ? blockDeviceSize(this.fd) : st.size;
  }
  read(dst: Buffer, position: number): number {
    if (this.fd === undefined) throw new IbuError('INTERNAL', `The image ${this.name} is closed; open it again.`);
    let done = 0;
    while (done < dst.length) {
      let n: number;
      try {
        n = fs.readSync(this.fd, dst, done, Math.min(dst.length - done, MAX_READ), position + done);
      } catch (err) {
        throw new IbuError('IO_ERROR', `Reading ${this.name} at byte ${position + done} failed: ${(err as Error).message}.`, { cause: err });
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }
  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

function blockDeviceSize(fd: number): number {
  // fstat reports 0 for block devices; seek-free probe by reading the last byte is not possible
  // synchronously without the size, so find it by binary search on pread.
  const one = Buffer.alloc(1);
  let lo = 0;
  let hi = 1;
  while (fs.readSync(fd, one, 0, 1, hi - 1) === 1) {
    lo = hi;
    hi *= 2;
    if (hi > 2 ** 52) break;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (fs.readSync(fd, one, 0, 1, mid - 1) === 1) lo = mid;
    else hi = mid;
  }
  return lo;
}

export class BufferSource implements ByteSource {
  readonly size: number;
  constructor(
    private readonly buf: Buffer,
    readonly name = '<buffer>',
  ) {
    this.size = buf.length;
  }
  read(dst: Buffer, position: number): number {
    if (position >= this.buf.length) return 0;
    return this.buf.copy(dst, 0, position, Math.min(this.buf.length, position + dst.length));
  }
  close(): void {}
}

/**
 * Block-level access with bounds checks and a small LRU cache for metadata blocks
 * (inode tables, directory blocks, extent nodes). File contents bypass the cache.
 */
export class BlockDevice {
  private cache = new Map<number, Buffer>();
  constructor(
    readonly source: ByteSource,
    readonly blockSize: number,
    readonly blocksCount: number,
    private readonly cacheBlocks = 1024,
  ) {}

  checkRange(block: number, count: number, what: string): void {
    if (!Number.isSafeInteger(block) || block < 0 || count < 0 || block + count > this.blocksCount) {
      throw invalid(
        `${what} points at blocks ${block}..${block + count - 1}, ` +
          `outside the filesystem of ${this.blocksCount} blocks in ${this.source.name}; the image is corrupt.`,
      );
    }
  }

  /** One block through the cache. The returned buffer is shared: do not modify it. */
  block(block: number, what: string): Buffer {
    const hit = this.cache.get(block);
    if (hit) {
      this.cache.delete(block);
      this.cache.set(block, hit);
      return hit;
    }
    this.checkRange(block, 1, what);
    const buf = Buffer.allocUnsafe(this.blockSize);
    this.readExact(buf, block * this.blockSize, what);
    if (this.cache.size >= this.cacheBlocks) {
      const oldest = this.cache.keys().next().value as number;
      this.cache.delete(oldest);
    }
    this.cache.set(block, buf);
    return buf;
  }

  /** Reads bytes straight into `dst` (no cache); short reads mean a truncated image. */
  readExact(dst: Buffer, position: number, what: string): void {
    const n = this.source.read(dst, position);
    if (n !== dst.length) {
      throw invalid(`${what} lies beyond the end of ${this.source.name} (byte ${position + n} of ${this.source.size}); the image is truncated.`);
    }
  }

  close(): void {
    this.cache.clear();
    this.source.close();
  }
}
