/** Chunk ids are lowercase hex of a cryptographic hash (see src/chunk/). */
export type ChunkId = string;

/** A read-only source of chunks and release files (local dir, HTTP, verifying/caching wrappers). */
export interface Store {
  /**
   * The stored (compressed) chunk bytes; throws IbuError CHUNK_MISSING when absent. A store that
   * reads from the network stops at `maxBytes` (CHUNK_INVALID) so a hostile body cannot fill memory.
   */
  getChunk(id: ChunkId, signal?: AbortSignal, maxBytes?: number): Promise<Uint8Array>;
  hasChunk(id: ChunkId, signal?: AbortSignal): Promise<boolean>;
  /** A release file relative to the store root (e.g. `releases/<v>/manifest.json`); throws NOT_FOUND. */
  getFile(relPath: string, signal?: AbortSignal): Promise<Uint8Array>;
  /** Human-readable location for messages. */
  readonly location: string;
}

export interface WriteStore extends Store {
  /** Stores chunk bytes atomically at their content address; a no-op when present. */
  putChunk(id: ChunkId, data: Uint8Array): Promise<void>;
  /** Writes a release file atomically (temp, fsync, rename). */
  putFile(relPath: string, data: Uint8Array): Promise<void>;
}

/** Optional capabilities some stores have (checked with `in`). */
export interface FlushableStore {
  /** Makes every chunk and file written so far durable (called before a manifest points at them). */
  flush(): Promise<void>;
}

/** Stores that know a stored chunk's size without reading it (used to fill `csize` in manifests). */
export interface SizedStore {
  chunkSize(id: ChunkId, signal?: AbortSignal): Promise<number | undefined>;
}

/** What a store knows of one stored file without reading it. */
export interface StoredFile {
  size: number;
  /** A validator that changes when the bytes do (quoted, as the store reports it). */
  etag: string;
}

/** Stores whose directories can be listed (the server's release catalog over any store). */
export interface ListableStore {
  /** Names one level under a store directory (`channels` → `stable.json`), sorted; [] when absent. */
  list(dir: string, signal?: AbortSignal): Promise<string[]>;
  /** Size and validator of a file; undefined when absent. */
  statFile(relPath: string, signal?: AbortSignal): Promise<StoredFile | undefined>;
}

/**
 * Stores reached by round trips (S3): how many requests to keep in flight. Publish's PUTs and
 * fetch's GETs use it when the caller gives no number; a disk or HTTP store has no such field and
 * the callers' defaults suit it.
 */
export interface RemoteStore {
  readonly inFlight: number;
}

/** The store's own in-flight count, when it has one. */
export function inFlightOf(store: Store): number | undefined {
  return 'inFlight' in store && typeof store.inFlight === 'number' ? store.inFlight : undefined;
}
