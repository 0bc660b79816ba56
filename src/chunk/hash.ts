import { createHash } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';
import { IbuError } from '../errors.js';

/** Chunk id hash functions; the manifest names the one it used (`chunking.hash`). */
export const CHUNK_HASHES = ['blake3', 'sha256'] as const;
export type ChunkHashName = (typeof CHUNK_HASHES)[number];

/** The default, chosen by measurement (docs/releases.md): BLAKE3 hashes 64 KiB chunks ~2x faster. */
export const DEFAULT_CHUNK_HASH: ChunkHashName = 'blake3';

export type ChunkHasher = (data: Uint8Array) => string;

export function chunkHasher(name: string): ChunkHasher {
  switch (name) {
    case 'blake3':
      return (data) => blake3(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)).toString('hex');
    case 'sha256':
      return (data) => createHash('sha256').update(data).digest('hex');
    default:
      throw new IbuError('MANIFEST_INVALID', `unknown chunk hash '${name}': this ibu knows ${CHUNK_HASHES.join(', ')}; upgrade ibu to fetch this release`);
  }
}

const ID_RE = /^[0-9a-f]{64}$/;

export function isChunkId(id: string): boolean {
  return ID_RE.test(id);
}
