import { chunkDecompressor, MAX_CHUNK_BYTES, zstdBinding } from '../chunk/compress.js';
import { chunkHasher, type ChunkHasher } from '../chunk/hash.js';
import { IbuError } from '../errors.js';
import type { ChunkId, Store } from './store.js';

export interface VerifiedChunk {
  /** The chunk's plain bytes, hash checked. */
  data: Buffer;
  /** Bytes read from the underlying store (compressed size). */
  storedBytes: number;
}

/**
 * Wraps a store so no chunk leaves it unchecked: the stored frame is decompressed and the hash
 * of the plain bytes must equal the id. `getChunkData` hands out the plain bytes it already
 * decompressed, so a consumer never decompresses or hashes the same chunk twice.
 */
export class VerifyingStore implements Store {
  readonly location: string;
  private readonly hash: ChunkHasher;
  private readonly decompress = chunkDecompressor();

  constructor(
    readonly inner: Store,
    hashName: string,
  ) {
    this.location = inner.location;
    this.hash = chunkHasher(hashName);
  }

  /** Fetches, decompresses and verifies one chunk. CHUNK_TRUNCATED / CHUNK_INVALID / CHUNK_MISSING. */
  async getChunkData(id: ChunkId, expectedSize?: number, signal?: AbortSignal): Promise<VerifiedChunk> {
    // No valid frame of `expectedSize` plain bytes is longer than zstd's bound for it.
    const stored = await this.inner.getChunk(id, signal, zstdBinding.compressBound(expectedSize ?? MAX_CHUNK_BYTES));
    return { data: this.verify(id, stored, expectedSize), storedBytes: stored.length };
  }

  verify(id: ChunkId, stored: Uint8Array, expectedSize?: number): Buffer {
    const data = this.decompress(id, stored, expectedSize);
    const got = this.hash(data);
    if (got !== id) {
      throw new IbuError(
        'CHUNK_INVALID',
        `chunk ${id} from ${this.location} does not match its id (hash ${got}); the store copy is corrupt or tampered — repair or re-publish it`,
      );
    }
    return data;
  }

  /** The stored bytes, after the same check (for pass-through consumers such as caches). */
  async getChunk(id: ChunkId, signal?: AbortSignal, maxBytes?: number): Promise<Uint8Array> {
    const stored = await this.inner.getChunk(id, signal, maxBytes ?? zstdBinding.compressBound(MAX_CHUNK_BYTES));
    this.verify(id, stored);
    return stored;
  }

  hasChunk(id: ChunkId, signal?: AbortSignal): Promise<boolean> {
    return this.inner.hasChunk(id, signal);
  }

  getFile(relPath: string, signal?: AbortSignal): Promise<Uint8Array> {
    return this.inner.getFile(relPath, signal);
  }
}
