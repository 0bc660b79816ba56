import { promises as fsp } from 'node:fs';
import { IbuError, isIbuError } from '../errors.js';
import type { Keyring } from '../release/keyring.js';
import { fetchRelease } from '../release/fetch.js';
import type { Manifest } from '../release/types.js';
import type { Store } from '../store/store.js';
import type { AgentConfig } from './config.js';
import { freeBytes } from './disk-policy.js';
import { ProgressBar } from './progress.js';
import type { ServerClient } from './server-client.js';
import { tryZfs } from './zfs-transport.js';

/** Applies a delta to produce the target image (src/delta's applyDelta, injected so it loads only when used). */
export type DeltaApplier = (o: { sourceImage: string; delta: string; out: string; manifest: Manifest; fallbackStore?: Store; expectFromVersion: string; expectToVersion: string }) => Promise<unknown>;

export interface DownloadRequest {
  manifest: Manifest;
  /** Where the finished, verified image goes (the staging file). */
  out: string;
  /** The running version and its image file, when installed: the delta's source and the first seed. */
  from: { version: string; image: string } | null;
  /** Other installed images worth seeding from (the committed default). */
  seeds: string[];
  /** Where the delta is downloaded to (resumed with Range). */
  deltaFile: string;
  /** Bytes the image will allocate, to know how big a delta still fits. */
  imageBytes: number;
  /** Versions whose snapshots the ZFS transport must keep (running, default, trial). */
  protect?: string[];
}

export interface DownloadDeps {
  cfg: AgentConfig;
  server: ServerClient | null;
  store: Store | null;
  keyring: () => Promise<Keyring>;
  applyDelta?: DeltaApplier;
  log: (line: string) => void;
  progress?: boolean;
}

export interface DownloadResult {
  method: 'delta' | 'chunks' | 'zfs';
  downloadedBytes: number;
  reusedBytes?: number;
  resumed?: boolean;
}

/**
 * The download planner: the server's delta from the running image when it has one in time,
 * otherwise the release's chunks seeded from the images already on the disk. Both end in a
 * complete image at `out` whose hash the caller checks against the signed manifest.
 */
export async function downloadImage(r: DownloadRequest, d: DownloadDeps): Promise<DownloadResult> {
  let chunksOnly = false;
  if (d.cfg.transport === 'zfs' && d.cfg.zfs) {
    const got = await tryZfs(r, d);
    if (got === 'chunks') chunksOnly = true;
    else if (got) return got;
  }
  if (!chunksOnly && d.cfg.download.useDelta && d.server && d.applyDelta && r.from) {
    const got = await tryDelta(r, d, r.from);
    if (got) return got;
  }
  if (!d.store) throw new IbuError('CONFIG_INVALID', 'No release source: set server.url or download.store in the agent config.');
  const seeds = [...new Set([r.from?.image, ...r.seeds].filter((x): x is string => !!x))];
  const bar = new ProgressBar(r.manifest.version, d.progress);
  try {
    const res = await fetchRelease({
      store: d.store,
      version: r.manifest.version,
      keyring: await d.keyring(),
      out: r.out,
      seeds,
      channel: d.cfg.channel,
      // Small commits: a device loses at most this much download to a power cut.
      commitEveryBytes: 4 * 1024 * 1024,
      onProgress: (p) => bar.update(p.writtenBytes, p.totalBytes, `reused ${(p.reusedBytes / 1048576).toFixed(1)}M`),
    });
    return { method: 'chunks', downloadedBytes: res.downloadedBytes, reusedBytes: res.reusedBytes, resumed: res.resumed };
  } finally {
    bar.end();
  }
}

/** The delta route; null (and nothing left behind) when it is not available in time or does not apply. */
async function tryDelta(r: DownloadRequest, d: DownloadDeps, from: { version: string; image: string }): Promise<DownloadResult | null> {
  const to = r.manifest.version;
  const bar = new ProgressBar(`delta ${from.version}→${to}`, d.progress);
  try {
    const free = await freeBytes(d.cfg.imagesDir);
    const ok = await d.server!.downloadDelta(from.version, to, r.deltaFile, {
      deadline: Date.now() + d.cfg.download.deltaWaitSeconds * 1000,
      maxRetryAfterSeconds: d.cfg.download.maxRetryAfterSeconds,
      // The delta and the image it produces must both fit.
      maxBytes: Math.max(0, free - r.imageBytes - d.cfg.space.reserveBytes),
      onProgress: (done, total) => bar.update(done, total),
      onWait: (s) => d.log(s),
    });
    bar.end();
    if (!ok) {
      d.log(`no delta ${from.version}→${to} in time; fetching chunks`);
      return null;
    }
    await d.applyDelta!({ sourceImage: from.image, delta: r.deltaFile, out: r.out, manifest: r.manifest, fallbackStore: d.store ?? undefined, expectFromVersion: from.version, expectToVersion: to });
    const size = (await fsp.stat(r.deltaFile)).size;
    await fsp.rm(r.deltaFile, { force: true });
    await fsp.rm(`${r.deltaFile}.etag`, { force: true });
    return { method: 'delta', downloadedBytes: size };
  } catch (err) {
    bar.end();
    if (isIbuError(err) && (err.code.startsWith('DELTA_') || err.code === 'IMAGE_HASH_MISMATCH' || err.code === 'HTTP_ERROR')) {
      d.log(`the delta route failed (${err.message}); fetching chunks instead`);
      await fsp.rm(r.deltaFile, { force: true });
      await fsp.rm(`${r.deltaFile}.etag`, { force: true });
      await fsp.rm(r.out, { force: true });
      return null;
    }
    throw err;
  }
}
