import { closeSync, fstatSync, openSync } from 'node:fs';
import { chunkFile, ZERO_RUN_MIN } from '../chunk/chunker.js';
import { DEFAULT_ZSTD_LEVEL } from '../chunk/compress.js';
import { CompressPool, defaultCompressThreads } from '../chunk/compress-pool.js';
import { GEAR_NAME, NORMALIZATION, validateParams, type ChunkParams } from '../chunk/fastcdc.js';
import { chunkHasher, DEFAULT_CHUNK_HASH, type ChunkHashName } from '../chunk/hash.js';
import { DEFAULT_CHUNK_PARAMS } from '../chunk/index.js';
import { IbuError, isIbuError, withContext } from '../errors.js';
import { assertName, manifestPath } from '../store/layout.js';
import { LocalStore } from '../store/local-store.js';
import { inFlightOf, type ChunkId, type SizedStore, type WriteStore } from '../store/store.js';
import { assertNewer, lockChannel, readChannel, writeChannel } from './channel.js';
import { checkImage, type ImageFacts } from './file-map.js';
import { runSideJob } from './side-job.js';
import { loadSigningKey } from './keys.js';
import { signManifest, writeManifest, ZERO_CHUNK_ID } from './manifest.js';
import type { ChunkRef, Manifest } from './types.js';
import { assertUnambiguous, assertVersion } from '../version.js';
import { readdir } from 'node:fs/promises';
import { DEFAULT_PRODUCT } from '../image/product-identity.js';
import { appendVerityTree, type VerityInfo } from '../image/verity.js';
import path from 'node:path';

export interface PublishOptions {
  image: string;
  version: string;
  store: WriteStore;
  keyFiles: string[];
  channel?: string;
  params?: ChunkParams;
  hash?: ChunkHashName;
  level?: number;
  /** Refuse images without /vmlinuz and /initrd.img (default true). */
  requireKernel?: boolean;
  /** Read the file map with the ext4 reader (default true). */
  fileMap?: boolean;
  product?: string;
  /** Chunks being compressed or written while the next ones are cut. */
  writeConcurrency?: number;
  /** zstd worker threads (default: cores - 1, at least 1; 0 compresses in this thread). */
  threads?: number;
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
  now?: () => Date;
  /**
   * Append the image's dm-verity tree (src/image/verity.ts) to the image file IN PLACE before
   * publishing, and sign its root hash. The file grows by about 0.8 %; an earlier tree is replaced.
   */
  verity?: boolean;
  /**
   * Runs under the channel lock after the chunk pass, before signing: extra signed fields (the
   * ZFS snapshot and stream hashes of src/zfs), given the versions already on the channel.
   */
  beforeSign?: (info: { version: string; channel: string; channelVersions: string[]; imageSize: number }) => Promise<Pick<Manifest, 'zfs'>>;
}

export interface PublishResult {
  version: string;
  channel: string;
  manifest: string;
  manifestBytes: number;
  manifestZstBytes: number;
  imageSize: number;
  imageSha256: string;
  chunks: number;
  zeroChunks: number;
  zeroBytes: number;
  uniqueChunks: number;
  newChunks: number;
  newStoredBytes: number;
  storedBytes: number;
  seconds: number;
  verity?: VerityInfo;
}

/** Chunks compressed or written at once into a store that names no number of its own (a disk). */
export function diskWriteConcurrency(threads = defaultCompressThreads()): number {
  return 8 + 4 * threads;
}

/**
 * Publishes an image: cut it into chunks (FastCDC, zero runs apart), store each new chunk
 * compressed at its content address, then write the signed manifest and add the version to the
 * channel. The manifest is written only after every chunk it names is durable, and the channel
 * only after the manifest, so a reader never sees a release that is not whole.
 */
export async function publishRelease(o: PublishOptions): Promise<PublishResult> {
  const t0 = performance.now();
  const version = assertVersion(o.version);
  const channel = assertName(o.channel ?? 'stable', 'channel');
  const params = o.params ?? DEFAULT_CHUNK_PARAMS;
  validateParams(params);
  const hashName = o.hash ?? DEFAULT_CHUNK_HASH;
  const level = o.level ?? DEFAULT_ZSTD_LEVEL;
  if (o.keyFiles.length === 0) throw new IbuError('USAGE', 'publishing needs at least one --key (a signing.key from `ibu keys generate`)');
  const keys = await Promise.all(o.keyFiles.map(loadSigningKey));
  const store = o.store;

  const precheck = async () => {
    const ch = await readChannel(store, channel);
    // A local store lists every release; a remote one only shows the channel's.
    const published = store instanceof LocalStore ? await readdir(path.join(store.root, 'releases')).catch(() => [] as string[]) : [];
    assertUnambiguous(version, [...ch.versions, ...published]);
    assertNewer(ch, version);
    if (
      await store.getFile(manifestPath(version)).then(
        () => true,
        (e) => (isIbuError(e, 'NOT_FOUND') ? false : Promise.reject(e)),
      )
    ) {
      throw new IbuError('VERSION_DOWNGRADE', `version ${version} is already published in ${store.location}; versions are immutable, publish a higher one`);
    }
  };
  await precheck();

  const verity = o.verity ? await appendVerityTree(o.image, { product: o.product ?? DEFAULT_PRODUCT, version }) : undefined;
  let fd: number;
  try {
    fd = openSync(o.image, 'r');
  } catch (err) {
    throw withContext(err, `opening image ${o.image}`, 'IO_ERROR');
  }
  const unlock = store instanceof LocalStore ? await lockChannel(store.root, channel) : async () => {};
  try {
    await precheck(); // again under the lock: another publisher may have won the race
    if (o.fileMap !== false) checkImage(o.image, o.requireKernel ?? true);
    // The file map and the whole-image sha256 run on their own threads beside the chunk pass.
    const factsJob: Promise<ImageFacts> =
      o.fileMap === false
        ? Promise.resolve({ blockSize: 4096, files: [], kernel: '', initrd: '' })
        : runSideJob({ kind: 'facts', image: o.image, requireKernel: o.requireKernel ?? true });
    const shaJob = runSideJob({ kind: 'sha256', image: o.image });
    // Errors are collected below; keep unhandled-rejection warnings away meanwhile.
    factsJob.catch(() => {});
    shaJob.catch(() => {});
    const size = fstatSync(fd).size;
    const hash = chunkHasher(hashName);
    // id → stored size; -1: present in a store that cannot tell sizes cheaply; 0: being written
    const known = new Map<ChunkId, number>();
    const sized = 'chunkSize' in store ? (store as unknown as SizedStore) : undefined;
    // A store that can list its chunks in one pass (S3) is asked once here; a chunk another publisher
    // writes meanwhile is PUT again, which is harmless (same id, same bytes).
    const listed =
      'chunkSizes' in store && typeof store.chunkSizes === 'function' ? await (store.chunkSizes as () => Promise<Map<ChunkId, number>>)() : undefined;
    const chunks: ChunkRef[] = [];
    const pending = new Set<Promise<void>>();
    const threads = o.threads ?? defaultCompressThreads();
    // Compressions and writes in flight: a remote store (S3) says how many round trips suit it.
    const maxPending = o.writeConcurrency ?? inFlightOf(store) ?? diskWriteConcurrency(threads);
    const pool = new CompressPool(level, threads);
    let zeroChunks = 0;
    let zeroBytes = 0;
    let newChunks = 0;
    let newStoredBytes = 0;
    let firstError: unknown;
    let lastReport = 0;

    try {
      for (const piece of chunkFile(fd, size, params)) {
        if (firstError) throw firstError;
        if (piece.zero) {
          chunks.push({ id: ZERO_CHUNK_ID, offset: piece.offset, size: piece.size, zero: true });
          zeroChunks++;
          zeroBytes += piece.size;
          continue;
        }
        if (o.onProgress && piece.offset - lastReport > 64 * 1024 * 1024) {
          lastReport = piece.offset;
          o.onProgress({ bytesDone: piece.offset, bytesTotal: size });
        }
        const id = hash(piece.data);
        chunks.push({ id, offset: piece.offset, size: piece.size });
        if (known.has(id)) continue;
        const have = listed ? listed.get(id) : sized ? await sized.chunkSize(id) : (await store.hasChunk(id)) ? -1 : undefined;
        if (have !== undefined) {
          known.set(id, have);
          continue;
        }
        known.set(id, 0);
        newChunks++;
        // The piece's bytes are copied by the pool before the next piece overwrites them.
        const p: Promise<void> = pool
          .compress(piece.data)
          .then(async (z) => {
            known.set(id, z.length);
            newStoredBytes += z.length;
            await store.putChunk(id, z);
          })
          .catch((err) => {
            firstError ??= err;
          })
          .finally(() => pending.delete(p));
        pending.add(p);
        if (pending.size >= maxPending) await Promise.race(pending);
      }
      await Promise.all(pending);
    } finally {
      await Promise.all(pending);
      await pool.close();
    }
    if (firstError) throw firstError;
    const facts = await factsJob;
    const imageSha256 = await shaJob;
    if ('flush' in store && typeof store.flush === 'function') await (store.flush as () => Promise<void>)();
    let storedBytes = 0;
    for (const v of known.values()) if (v > 0) storedBytes += v;
    for (const c of chunks) {
      const z = c.zero ? undefined : known.get(c.id);
      if (z !== undefined && z > 0) c.csize = z;
    }

    const extra = o.beforeSign ? await o.beforeSign({ version, channel, channelVersions: (await readChannel(store, channel)).versions, imageSize: size }) : {};
    const manifest: Manifest = signManifest(
      {
        format: 1,
        ...(o.product ? { product: o.product } : {}),
        version,
        channel,
        createdAt: (o.now?.() ?? new Date()).toISOString(),
        image: { size, sha256: imageSha256, blockSize: facts.blockSize },
        chunking: {
          algorithm: 'fastcdc',
          min: params.min,
          avg: params.avg,
          max: params.max,
          hash: hashName,
          compression: 'zstd',
          gear: GEAR_NAME,
          normalization: NORMALIZATION,
          zeroRunMin: ZERO_RUN_MIN,
          level,
        },
        chunks,
        files: facts.files,
        kernel: facts.kernel,
        initrd: facts.initrd,
        ...(verity ? { verity } : {}),
        ...extra,
        signatures: [],
      },
      keys,
    );
    const written = await writeManifest(store, manifest);
    await writeChannel(store, await readChannel(store, channel), version);
    o.onProgress?.({ bytesDone: size, bytesTotal: size });
    return {
      version,
      channel,
      manifest: manifestPath(version),
      manifestBytes: written.bytes,
      manifestZstBytes: written.zstBytes,
      imageSize: size,
      imageSha256: manifest.image.sha256,
      chunks: chunks.length,
      zeroChunks,
      zeroBytes,
      uniqueChunks: known.size,
      newChunks,
      newStoredBytes,
      storedBytes,
      seconds: (performance.now() - t0) / 1000,
      ...(verity ? { verity } : {}),
    };
  } finally {
    closeSync(fd);
    await unlock();
  }
}
