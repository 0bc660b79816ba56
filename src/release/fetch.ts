import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { promises as fsp, constants as fsc, readSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { chunkHasher } from '../chunk/hash.js';
import { IbuError, withContext } from '../errors.js';
import { fsyncDir } from '../util/atomic.js';
import { mib } from '../util/bytes.js';
import { inFlightOf, type ChunkId, type Store } from '../store/store.js';
import { manifestPath } from '../store/layout.js';
import { VerifyingStore } from '../store/verifying-store.js';
import { FetchJournal } from './journal.js';
import type { Keyring } from './keyring.js';
import { parseAndVerifyManifest, readManifestBytes } from './manifest.js';
import { scanLiveRoot, type LiveSeedStats } from './live-seed.js';
import { scanSeed } from './seed.js';
import type { Manifest } from './types.js';
import { assertVersion } from '../version.js';

export interface FetchProgress {
  phase: 'manifest' | 'seed' | 'download' | 'verify' | 'done';
  totalBytes: number; // image bytes
  reusedBytes: number; // image bytes taken from seeds (or a resumed partial)
  downloadedBytes: number; // bytes read from the store (compressed chunks + manifest)
  writtenBytes: number; // image bytes in place so far (zero runs included)
  neededDownloadBytes?: number; // compressed bytes still to download, when the manifest knows them
}

export interface FetchOptions {
  store: Store;
  version: string;
  keyring: Keyring;
  out: string;
  seeds?: string[];
  /** A running system's root tree: chunks its files (same path and size as the file map's) make are read from them (adoption). */
  liveRoot?: string;
  /** Refuse a manifest published on another channel. */
  channel?: string;
  /** Parallel chunk downloads. Default: the store's own in-flight count (S3: 32), else 8. */
  concurrency?: number;
  /** 'full' (default): same-offset pass then a content-defined scan; 'offset': first pass only. */
  seedScan?: 'offset' | 'full';
  /** Check free space for the remaining bytes before downloading (default true). */
  spaceCheck?: boolean;
  /** Journal commit interval (bytes written between fdatasyncs; also at least every second). */
  commitEveryBytes?: number;
  onProgress?: (p: FetchProgress) => void;
  signal?: AbortSignal;
}

export interface FetchResult extends FetchProgress {
  version: string;
  out: string;
  signedBy: string;
  manifestBytes: number;
  chunks: number;
  zeroChunks: number;
  reusedChunks: number; // from seeds
  resumedChunks: number; // already in the partial file from an interrupted run
  downloadedChunks: number;
  zeroBytes: number;
  resumed: boolean;
  /** What the live root gave (with `liveRoot`). */
  liveSeed?: LiveSeedStats & { bytes: number };
  imageSha256: string;
  seconds: number;
}

/**
 * Fetches a release into `out`: verify the signed manifest first, reuse what the seeds (and an
 * interrupted earlier run) already hold, download and verify the rest in parallel, write a
 * sparse `.partial`, check the whole image hash, fsync, rename. A failed fetch leaves no `out`;
 * its `.partial` and journal stay for the next run to resume, except after NO_SPACE (the partial
 * is removed to give the space back) or a final hash mismatch (nothing in it can be trusted).
 */
export async function fetchRelease(o: FetchOptions): Promise<FetchResult> {
  const t0 = performance.now();
  const version = assertVersion(o.version);
  const progress: FetchProgress = { phase: 'manifest', totalBytes: 0, reusedBytes: 0, downloadedBytes: 0, writtenBytes: 0 };
  const report = () => o.onProgress?.({ ...progress });

  const { bytes: manifestBytes, transferred } = await readManifestBytes(o.store, version, o.signal);
  progress.downloadedBytes += transferred;
  const { manifest: m, keyId } = parseAndVerifyManifest(manifestBytes, o.keyring, `the manifest of release ${version} from ${o.store.location}`);
  if (m.version !== version)
    throw new IbuError('MANIFEST_INVALID', `the manifest at ${manifestPath(version)} is for version ${m.version}, not ${version}; the store is inconsistent`);
  if (o.channel !== undefined && m.channel !== o.channel)
    throw new IbuError('MANIFEST_INVALID', `release ${version} belongs to channel '${m.channel}', not '${o.channel}'`);
  progress.totalBytes = m.image.size;

  const out = path.resolve(o.out);
  const partial = `${out}.partial`;
  const journalPath = `${partial}.journal`;
  const hash = chunkHasher(m.chunking.hash);
  const vstore = new VerifyingStore(o.store, m.chunking.hash);

  // A journal is only worth anything beside its partial: without it (or with a partial of the
  // wrong size) start over rather than trust claims about bytes that are not there.
  const partialSize = await fsp.stat(partial).then(
    (st) => st.size,
    () => -1,
  );
  if (partialSize !== m.image.size) await fsp.rm(journalPath, { force: true });
  const { journal, done, resumed } = await FetchJournal.open(journalPath, {
    format: 1,
    manifestSha256: createHash('sha256').update(manifestBytes).digest('hex'),
    imageSize: m.image.size,
  });
  let fh: fsp.FileHandle | undefined;
  let keepPartial = true;
  try {
    try {
      // A fresh start truncates: nothing of an unrelated earlier partial may survive.
      fh = await fsp.open(partial, resumed ? fsc.O_RDWR | fsc.O_CREAT : fsc.O_RDWR | fsc.O_CREAT | fsc.O_TRUNC, 0o644);
      await fh.truncate(m.image.size); // sparse: zero runs are never written
    } catch (err) {
      throw withContext(err, `creating ${partial}`, 'IO_ERROR');
    }
    const fd = fh.fd;

    // Plan: which chunk indexes still need bytes, grouped by id (a chunk may repeat).
    const wanted = new Map<ChunkId, number[]>();
    let zeroChunks = 0;
    let zeroBytes = 0;
    let resumedChunks = 0;
    for (let i = 0; i < m.chunks.length; i++) {
      const r = m.chunks[i]!;
      if (r.zero) {
        zeroChunks++;
        zeroBytes += r.size;
        progress.writtenBytes += r.size;
        continue;
      }
      if (done.has(i)) {
        resumedChunks++;
        progress.writtenBytes += r.size;
        progress.reusedBytes += r.size;
        continue;
      }
      const list = wanted.get(r.id);
      if (list) list.push(i);
      else wanted.set(r.id, [i]);
    }

    let sinceCommit = 0;
    let lastCommit = performance.now();
    const commitEvery = o.commitEveryBytes ?? 64 * 1024 * 1024;
    const commitEveryMs = 1000;
    const commit = async () => {
      sinceCommit = 0;
      lastCommit = performance.now();
      if (journal.pending === 0) return;
      await fh!.datasync();
      await journal.commit();
    };
    const writeAll = (data: Buffer, idx: number[]) => {
      for (const i of idx) {
        const r = m.chunks[i]!;
        let off = 0;
        while (off < data.length) off += writeSync(fd, data, off, data.length - off, r.offset + off);
        progress.writtenBytes += r.size;
        sinceCommit += r.size;
      }
      journal.add(idx);
    };

    // Seeds.
    progress.phase = 'seed';
    report();
    let reusedChunks = 0;
    for (const seed of o.seeds ?? []) {
      if (wanted.size === 0) break;
      const before = new Map(wanted);
      scanSeed(
        seed,
        m,
        wanted,
        hash,
        (id, data) => {
          const idx = before.get(id)!;
          writeAll(data, idx);
          reusedChunks += idx.length;
          progress.reusedBytes += data.length * idx.length;
        },
        o.seedScan ?? 'full',
      );
      await commit();
      report();
    }

    let liveSeed: FetchResult['liveSeed'];
    if (o.liveRoot !== undefined && wanted.size > 0) {
      let bytes = 0;
      const before = new Map(wanted);
      const st = scanLiveRoot(o.liveRoot, m, wanted, hash, (id, data) => {
        const idx = before.get(id)!;
        writeAll(data, idx);
        reusedChunks += idx.length;
        bytes += data.length * idx.length;
        progress.reusedBytes += data.length * idx.length;
      });
      liveSeed = { ...st, bytes };
      await commit();
      report();
    }

    if (o.spaceCheck ?? true) await checkSpace(partial, m, wanted);

    // Downloads.
    progress.phase = 'download';
    progress.neededDownloadBytes = [...wanted.keys()].reduce((s, id) => s + (m.chunks[wanted.get(id)![0]!]!.csize ?? 0), 0);
    report();
    let downloadedChunks = 0;
    const queue = [...wanted.entries()];
    const abort = new AbortController();
    // Every in-flight request listens on this signal; more than 10 is expected, not a leak.
    // A remote store (S3) says how many GETs suit it; a disk or an HTTP server gets 8.
    const concurrency = Math.max(1, o.concurrency ?? inFlightOf(o.store) ?? 8);
    setMaxListeners(Math.max(64, concurrency * 4), abort.signal);
    const onOuterAbort = () => abort.abort(o.signal?.reason);
    o.signal?.addEventListener('abort', onOuterAbort, { once: true });
    let failure: unknown;
    let lastReport = 0;
    const worker = async () => {
      while (queue.length > 0 && !failure) {
        const [id, idx] = queue.shift()!;
        const ref = m.chunks[idx[0]!]!;
        try {
          const got = await vstore.getChunkData(id, ref.size, abort.signal);
          if (ref.csize !== undefined && got.storedBytes !== ref.csize) {
            throw new IbuError(
              got.storedBytes < ref.csize ? 'CHUNK_TRUNCATED' : 'CHUNK_INVALID',
              `chunk ${id} in ${o.store.location} has ${got.storedBytes} stored bytes, the manifest says ${ref.csize}; repair or re-publish the store`,
            );
          }
          if (failure) return;
          writeAll(got.data, idx);
          downloadedChunks++;
          progress.downloadedBytes += got.storedBytes;
          // Bounded loss on a crash: at most ~1 s or commitEvery bytes of work is redone.
          if (sinceCommit >= commitEvery || performance.now() - lastCommit > commitEveryMs) await commit();
          const now = performance.now();
          if (now - lastReport > 200) {
            lastReport = now;
            report();
          }
        } catch (err) {
          failure ??= err;
          abort.abort(err);
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: concurrency }, worker));
    } finally {
      o.signal?.removeEventListener('abort', onOuterAbort);
      // What arrived before a failure is kept for the next run.
      await commit().catch(() => {});
    }
    if (failure) throw failure;

    progress.phase = 'verify';
    report();
    await fh.datasync();
    const imageSha256 = sha256OfFile(fd, m.image.size);
    if (imageSha256 !== m.image.sha256) {
      keepPartial = false;
      throw new IbuError(
        'IMAGE_HASH_MISMATCH',
        `the assembled image hashes to ${imageSha256}, the manifest says ${m.image.sha256}; the partial download was discarded, run the fetch again`,
      );
    }
    await fh.close();
    fh = undefined;
    await fsp.rename(partial, out);
    await fsyncDir(path.dirname(out));
    await journal.close().catch(() => {});
    await fsp.rm(journalPath, { force: true });
    progress.phase = 'done';
    report();
    return {
      ...progress,
      version,
      out,
      signedBy: keyId,
      manifestBytes: transferred,
      chunks: m.chunks.length,
      zeroChunks,
      reusedChunks,
      resumedChunks,
      downloadedChunks,
      zeroBytes,
      resumed,
      ...(liveSeed ? { liveSeed } : {}),
      imageSha256,
      seconds: (performance.now() - t0) / 1000,
    };
  } catch (err) {
    const e = withContext(err, `fetching release ${version} into ${out}`, 'IO_ERROR');
    if (e.code === 'NO_SPACE') keepPartial = false;
    await fh?.close().catch(() => {});
    await journal.close().catch(() => {});
    if (!keepPartial) {
      await fsp.rm(partial, { force: true });
      await fsp.rm(journalPath, { force: true });
    }
    throw e;
  }
}

function sha256OfFile(fd: number, size: number): string {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
  let off = 0;
  while (off < size) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, size - off), off);
    if (n === 0) throw new IbuError('IO_ERROR', `the partial image ended at ${off} of ${size} bytes while verifying`);
    h.update(buf.subarray(0, n));
    off += n;
  }
  return h.digest('hex');
}

/** Refuses to start a download the filesystem cannot hold (the bytes still to write, not the sparse size). */
async function checkSpace(partial: string, m: Manifest, wanted: Map<ChunkId, number[]>): Promise<void> {
  let need = 0;
  for (const idx of wanted.values()) for (const i of idx) need += m.chunks[i]!.size;
  const st = await fsp.statfs(path.dirname(partial));
  const avail = Number(st.bavail) * Number(st.bsize);
  if (need > avail) {
    throw new IbuError(
      'NO_SPACE',
      `fetching needs ${mib(need)} more on ${path.dirname(partial)} but only ${mib(avail)} is free; free some space (old images) and retry`,
      { details: { need, avail } },
    );
  }
}
