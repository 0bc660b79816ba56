export { cutParams, cutPoint, validateParams, GEAR_NAME, NORMALIZATION, type ChunkParams } from './fastcdc.js';
export { chunkFile, ZERO_BLOCK, ZERO_RUN_MIN, type Piece } from './chunker.js';
export { chunkHasher, isChunkId, CHUNK_HASHES, DEFAULT_CHUNK_HASH, type ChunkHashName, type ChunkHasher } from './hash.js';
export { chunkCompressor, chunkDecompressor, DEFAULT_ZSTD_LEVEL } from './compress.js';

/**
 * Default chunk sizes, chosen by measurement on a Debian security-update image pair (2 GiB,
 * docs/releases.md "Chunk size"): 32 KiB average fetched the fewest bytes (chunks + compressed
 * manifest), half the index entries of 16 KiB for the same bytes.
 */
export const DEFAULT_CHUNK_PARAMS = { min: 8 * 1024, avg: 32 * 1024, max: 128 * 1024 } as const;
