import { promises as fsp } from 'node:fs';
import { isValidVersion } from '../../version.js';
import { checkBase, receiveRelease, streamRef } from '../../zfs/receive.js';
import { checkPoolHealthy, listSnapshots, poolOf, zfs, zfsGet } from '../../zfs/tools.js';
import { planCleanup } from '../disk-policy.js';
import type { Transport, TransportContext } from './transport.js';

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

function streamFile({ req }: TransportContext): string {
  return req.dir.zfsStream(req.from!.version, req.manifest.version);
}

async function drop(file: string): Promise<void> {
  await fsp.rm(file, { force: true });
  await fsp.rm(`${file}.etag`, { force: true });
}

/**
 * The ZFS transport (docs/zfs.md). Passes to the ibu route (deltas, chunks) when the release
 * signs no stream for this pair or the server has none in time; goes straight to chunks when the
 * pool cannot take a stream (no base snapshot, no running version, no server), and after a failed
 * stream unless zfs.fallbackToChunks is false. The running image is never touched.
 */
export const zfsTransport: Transport = {
  name: 'zfs',

  available: ({ deps }) => deps.cfg.transport === 'zfs' && deps.cfg.zfs !== null && deps.cfg.zfs !== undefined,

  async fetch(ctx) {
    const { req: r, deps: d } = ctx;
    const z = d.cfg.zfs!;
    const to = r.manifest.version;
    if (!r.from) {
      d.log('zfs transport: no running image version to receive a stream onto; fetching chunks');
      return { pass: 'chunks' };
    }
    const from = r.from.version;
    const ref = streamRef(r.manifest, from);
    if (!ref) {
      d.log(`zfs transport: release ${to} signs no ZFS stream from ${from}; using ibu deltas or chunks`);
      return { pass: 'next' };
    }
    if (!d.server) {
      d.log('zfs transport: ZFS streams come from the server (server.url); fetching chunks');
      return { pass: 'chunks' };
    }
    await checkPoolHealthy(poolOf(z.dataset));
    const base = await checkBase(z.dataset, ref);
    if (!base.ok) {
      // Not an error: a device whose pool never held this release line (new disk, other lineage).
      d.log(`zfs transport: ${base.reason}; the pool lacks the base snapshot, fetching chunks instead`);
      return { pass: 'chunks' };
    }
    await pruneSnapshots(z.dataset, [...new Set([from, to, ...(r.protect ?? [])])], ref.size, d.log);

    const file = streamFile(ctx);
    const ok = await d.server.downloadDelta(from, to, file, {
      route: 'zfs-streams',
      deadline: Date.now() + (z.waitSeconds ?? d.cfg.download.deltaWaitSeconds) * 1000,
      maxRetryAfterSeconds: d.cfg.download.maxRetryAfterSeconds,
      onWait: (s) => d.log(`zfs ${s}`),
    });
    if (!ok) {
      d.log(`no ZFS stream ${from}→${to} from the server in time; using ibu deltas or chunks`);
      await drop(file);
      return { pass: 'next' };
    }
    const compressed = (await fsp.stat(file)).size;
    const res = await receiveRelease({ file, manifest: r.manifest, from, dataset: z.dataset, out: r.out, log: d.log });
    const s = res.seconds;
    d.log(
      `zfs transport: received ${z.dataset}@${to} (${compressed} bytes compressed, ${res.streamBytes} stream bytes; ` +
        `verify ${s.verify.toFixed(1)} s, receive ${s.receive.toFixed(1)} s, export ${s.export.toFixed(1)} s)`,
    );
    await drop(file);
    return { method: 'zfs', downloadedBytes: compressed };
  },

  async fallback(ctx, err) {
    if (ctx.req.from) await drop(streamFile(ctx));
    await fsp.rm(ctx.req.out, { force: true });
    if (!ctx.deps.cfg.zfs?.fallbackToChunks) return null;
    ctx.deps.log(`zfs transport failed (${err.code}: ${err.message}); fetching chunks instead`);
    return { pass: 'chunks' };
  },
};
