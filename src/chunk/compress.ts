import { createRequire } from 'node:module';
import { Compressor } from 'zstd-napi';
import { IbuError } from '../errors.js';

type Binding = typeof import('zstd-napi/binding.js');
const binding = createRequire(import.meta.url)('zstd-napi/binding.js') as Binding;
export { binding as zstdBinding };

/** zstd level for stored chunks: level 3 is zstd's default and runs ~290 MB/s per core here. */
export const DEFAULT_ZSTD_LEVEL = 3;

/** A reusable zstd compression context (one per thread; contexts are not shared). */
export function chunkCompressor(level = DEFAULT_ZSTD_LEVEL): (data: Uint8Array) => Buffer {
  const c = new Compressor();
  c.setParameters({ compressionLevel: level, contentSizeFlag: true, checksumFlag: false });
  return (data) => c.compress(data);
}

/**
 * A reusable decompression context. A frame that ends early is CHUNK_TRUNCATED; anything else
 * zstd rejects is CHUNK_INVALID (both name the chunk so the store can be repaired).
 */
export function chunkDecompressor(): (id: string, data: Uint8Array, expectedSize?: number) => Buffer {
  const d = new binding.DCtx();
  return (id, data, expectedSize) => {
    let out: Buffer;
    try {
      out = decompressCapped(d, data, expectedSize ?? MAX_CHUNK_BYTES);
    } catch (err) {
      if (err instanceof OverCap) {
        throw new IbuError(
          'CHUNK_INVALID',
          `chunk ${id} decompresses to more than the ${err.cap} bytes the manifest says; it does not match its id (refused before reading it whole)`,
        );
      }
      const msg = (err as Error).message ?? String(err);
      const truncated = /truncat|incomplete|src size|srcSize|not enough|ended/i.test(msg) || data.length < 9;
      throw new IbuError(
        truncated ? 'CHUNK_TRUNCATED' : 'CHUNK_INVALID',
        `chunk ${id} is ${truncated ? 'truncated' : 'corrupt'} (zstd: ${msg}); re-publish or repair the store`,
        { cause: err },
      );
    }
    // A whole frame of the wrong size is not a cut-off download: it is another chunk's bytes or
    // tampering, so it is a hash mismatch (CHUNK_INVALID); only a frame that ends early is truncated.
    if (expectedSize !== undefined && out.length !== expectedSize) {
      throw new IbuError(
        'CHUNK_INVALID',
        `chunk ${id} decompressed to ${out.length} bytes, the manifest says ${expectedSize}: it does not match its id; re-publish or repair the store`,
      );
    }
    return out;
  };
}

/** The largest chunk the chunker can cut (src/chunk/fastcdc.ts: max <= 64 MiB): the cap when a caller knows no size. */
export const MAX_CHUNK_BYTES = 64 * 1024 * 1024;

/** Thrown by decompressCapped when the output would pass the cap. */
export class OverCap extends Error {
  constructor(readonly cap: number) {
    super(`decompresses to more than ${cap} bytes`);
  }
}

/**
 * Decompresses every frame of `data`, stopping as soon as the output would pass `cap` bytes:
 * the output buffer is `cap + 1` bytes whatever the frame header claims, so a small hostile input
 * cannot make memory grow before it is verified (issue #15). A frame that ends early throws
 * zstd's own error (its message says so); more output than `cap` throws OverCap.
 */
export function decompressCapped(dctx: InstanceType<Binding['DCtx']>, data: Uint8Array, cap: number): Buffer {
  dctx.reset(binding.ResetDirective.sessionOnly);
  const declared = binding.getFrameContentSize(data);
  if (declared !== null && declared > cap) throw new OverCap(cap);
  const out = Buffer.allocUnsafe(cap + 1);
  let inOff = 0;
  let outOff = 0;
  let left = 1;
  for (;;) {
    const [ret, produced, consumed] = dctx.decompressStream(out.subarray(outOff), data.subarray(inOff));
    outOff += produced;
    inOff += consumed;
    left = ret;
    if (outOff > cap) throw new OverCap(cap);
    if (inOff >= data.length && (left === 0 || (produced === 0 && consumed === 0))) break;
    if (produced === 0 && consumed === 0) throw new Error('zstd made no progress: corrupt input');
  }
  if (left !== 0 || data.length === 0) throw new Error('zstd frame truncated: the input ended inside a frame');
  return out.subarray(0, outOff);
}
