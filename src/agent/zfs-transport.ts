import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { isIbuError } from '../errors.js';
import { isValidVersion } from '../version.js';
import { checkBase, receiveRelease, streamRef } from '../zfs/receive.js';
import { checkPoolHealthy, listSnapshots, poolOf, zfs, zfsGet } from '../zfs/tools.js';
import { planCleanup } from './disk-policy.js';
import type { DownloadDeps, DownloadRequest, DownloadResult } from './download.js';

/** Stream failures that a chunk download can route around (the image ends up identical). */
const STREAM_CODES = new Set(['ZFS_WRONG_BASE', 'ZFS_STREAM_TRUNCATED', 'ZFS_STREAM_INVALID', 'ZFS_POOL_FULL', 'ZFS_POOL_CORRUPT', 'ZFS_FAILED', 'ZFS_BASE_MISSING', 'IMAGE_HASH_MISMATCH']);

/** Staged as `zfs+<from>_<to>.ibudelta` so the disk policy's staging rules apply to it unchanged. */
export function zfsStreamFile(deltaFile: string): string {
  return path.join(path.dirname(deltaFile), `zfs+${path.basename(deltaFile)}`);
}

/**
 * The same disk policy as for images, applied to the pool: old release snapshots are destroyed,
 * oldest first, until the pool has room for the stream and half again; never the snapshot of the
 * running image, the committed default, a pending trial, or the target (the next upgrade's base).
 * Snapshots not named like a version are not ibu's and are never touched.
 */
export async function pruneSnapshots(dataset: string, protect: string[], streamBytes: number, log: (s: string) => void): Promise<string[]> {
  const snaps = (await listSnapshots(dataset)).filter((s) => isValidVersion(s.name));
  const avail = Number(await zfsGet(dataset, 'available'));
  const plan = planCleanup({
    freeBytes: Number.isFinite(avail) ? avail : 0,
    neededBytes: streamBytes,
    imageBytes: streamBytes,
    reserveBytes: 0,
    keepImages: 2.5,
    files: snaps.map((s) => ({ version: s.name, kind: 'image' as const, allocated: s.used })),
    protect,
  });
  const removed: string[] = [];
  for (const f of plan.remove) {
    if (protect.includes(f.version)) continue;
    await zfs(['destroy', `${dataset}@${f.version}`], `pruning ${dataset}@${f.version}`);
    removed.push(f.version);
  }
  if (removed.length) log(`disk policy destroyed snapshots ${removed.map((v) => `${dataset}@${v}`).join(', ')}`);
  return removed;
}

/**
 * The ZFS transport. Returns the result, `null` to take the ibu route (no stream signed for this
 * pair, or the server has none in time), or `'chunks'` when the stream route failed in a way
 * chunks fix (the pool lacks the base snapshot: always; a bad stream or pool: unless
 * zfs.fallbackToChunks is false, then the error is thrown). The running image is never touched.
 */
export async function tryZfs(r: DownloadRequest, d: DownloadDeps): Promise<DownloadResult | 'chunks' | null> {
  const z = d.cfg.zfs!;
  const to = r.manifest.version;
  if (!r.from) {
    d.log('zfs transport: no running image version to receive a stream onto; fetching chunks');
    return 'chunks';
  }
  const from = r.from.version;
  const ref = streamRef(r.manifest, from);
  if (!ref) {
    d.log(`zfs transport: release ${to} signs no ZFS stream from ${from}; using ibu deltas or chunks`);
    return null;
  }
  if (!d.server) {
    d.log('zfs transport: ZFS streams come from the server (server.url); fetching chunks');
    return 'chunks';
  }
  const file = zfsStreamFile(r.deltaFile);
  const drop = async (): Promise<void> => {
    await fsp.rm(file, { force: true });
    await fsp.rm(`${file}.etag`, { force: true });
  };
  const fail = async (err: unknown): Promise<'chunks'> => {
    await drop();
    await fsp.rm(r.out, { force: true });
    if (!z.fallbackToChunks) throw err;
    d.log(`zfs transport failed (${isIbuError(err) ? err.code : 'error'}: ${(err as Error).message}); fetching chunks instead`);
    return 'chunks';
  };
  try {
    await checkPoolHealthy(poolOf(z.dataset));
    const base = await checkBase(z.dataset, ref);
    if (!base.ok) {
      // Not an error: a device whose pool never held this release line (new disk, other lineage).
      d.log(`zfs transport: ${base.reason}; the pool lacks the base snapshot, fetching chunks instead`);
      return 'chunks';
    }
    await pruneSnapshots(z.dataset, [...new Set([from, to, ...(r.protect ?? [])])], ref.size, d.log);
  } catch (err) {
    if (isIbuError(err) && STREAM_CODES.has(err.code)) return fail(err);
    throw err;
  }

  const ok = await d.server.downloadDelta(from, to, file, {
    route: 'zfs-streams',
    deadline: Date.now() + (z.waitSeconds ?? d.cfg.download.deltaWaitSeconds) * 1000,
    maxRetryAfterSeconds: d.cfg.download.maxRetryAfterSeconds,
    onWait: (s) => d.log(`zfs ${s}`),
  });
  if (!ok) {
    d.log(`no ZFS stream ${from}→${to} from the server in time; using ibu deltas or chunks`);
    await drop();
    return null;
  }
  const compressed = (await fsp.stat(file)).size;
  try {
    const res = await receiveRelease({ file, manifest: r.manifest, from, dataset: z.dataset, out: r.out, log: d.log });
    d.log(`zfs transport: received ${z.dataset}@${to} (${compressed} bytes compressed, ${res.streamBytes} stream bytes; verify ${res.seconds.verify.toFixed(1)} s, receive ${res.seconds.receive.toFixed(1)} s, export ${res.seconds.export.toFixed(1)} s)`);
    await drop();
    return { method: 'zfs', downloadedBytes: compressed };
  } catch (err) {
    if (isIbuError(err) && STREAM_CODES.has(err.code)) return fail(err);
    throw err;
  }
}
