import type { VerityInfo } from '../image/verity.js';
import type { ChunkId } from '../store/store.js';

/**
 * A release manifest (`releases/<version>/manifest.json` in a store). The signed payload is the
 * canonical JSON of everything but `signatures` (see src/release/manifest.ts).
 */
export interface ChunkRef {
  id: ChunkId; // hash of the uncompressed bytes
  offset: number; // byte offset in the image
  size: number; // uncompressed bytes
  zero?: true; // an all-zero run: not stored, nothing to fetch
  csize?: number; // stored (zstd) bytes, when the publisher knew them: exact download sizes, truncation checks
}

export interface FileMapEntry {
  path: string;
  type: 'file' | 'symlink' | 'dir' | 'other';
  size: number;
  hash?: string; // sha256 hex of the content (regular files)
  target?: string; // symlink target
  extents?: Array<[logical: number, physical: number, length: number]>; // in image blocks
}

export interface Signature {
  keyId: string; // sha256 of the raw public key, hex, first 16 chars
  sig: string; // base64 ed25519 signature of the canonical payload
}

export interface Manifest {
  format: 1;
  product?: string;
  version: string;
  channel: string;
  createdAt: string; // ISO time
  image: { size: number; sha256: string; blockSize: number };
  chunking: {
    algorithm: 'fastcdc';
    min: number;
    avg: number;
    max: number;
    hash: string;
    compression: 'zstd';
    gear?: string; // gear table name (src/chunk/fastcdc.ts), 'ibu1'
    normalization?: number; // FastCDC normalization level
    zeroRunMin?: number; // zero runs of at least this many bytes (4 KiB aligned) are `zero` entries
    level?: number; // zstd level used when publishing
  };
  chunks: ChunkRef[];
  files: FileMapEntry[];
  kernel: string; // path inside the image, e.g. /vmlinuz
  initrd: string;
  /** Extra signed artifacts (e.g. zfs streams) by name → sha256. */
  artifacts?: Record<string, { sha256: string; size: number }>;
  /** The dm-verity tree appended to the image file (src/image/verity.ts, docs/boot.md "Verity"). */
  verity?: VerityInfo;
  /** Present when the release is also kept as a ZFS zvol snapshot (src/zfs, docs/zfs.md). */
  zfs?: ManifestZfs;
  signatures: Signature[];
}

/** One incremental `zfs send -i @from DATASET@version` stream, as published (uncompressed bytes). */
export interface ZfsStreamRef {
  from: string;
  /** GUID of DATASET@from (decimal: a u64). */
  fromGuid: string;
  size: number;
  sha256: string;
}

/** The ZFS side of a release: the snapshot and the hashes of the streams into it (docs/zfs.md). */
export interface ManifestZfs {
  /** POOL/VOLUME on the release side (the server sends from it). */
  dataset: string;
  /** GUID of DATASET@version (decimal). */
  guid: string;
  volsize: number;
  volblocksize: number;
  streams: ZfsStreamRef[];
}
