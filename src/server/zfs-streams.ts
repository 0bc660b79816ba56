import { manifestPath } from '../store/layout.js';
import type { FastifyInstance } from 'fastify';
import { IbuError } from '../errors.js';
import { parseManifestUnverified } from '../release/manifest.js';
import type { Manifest } from '../release/types.js';
import { streamRef } from '../zfs/receive.js';
import { buildCompressedStream } from '../zfs/stream.js';
import { zfsGet } from '../zfs/tools.js';
import type { ServerContext } from './context.js';
import type { DeltaBuilder, DeltaBuildRequest } from './delta-builder.js';
import { PRIORITY } from './delta-queue.js';
import { checkPair, pairRouteSchema, serveBuilt } from './routes/deltas.js';
import type { StoreLayout } from './store-layout.js';

/**
 * ZFS streams as a second delta kind. They share the delta queue, worker pool, quota and LRU of
 * ibu deltas (one SQLite table, one cache directory): a job whose `from` carries this prefix is a
 * `zfs send -i` stream rather than an .ibudelta. '+' cannot occur in a version, so the keys never
 * collide, and the cache file is `cache/deltas/zfs+<from>_<to>.ibudelta` (a zstd frame inside).
 */
export const ZFS_JOB_PREFIX = 'zfs+';

export const zfsJobFrom = (from: string): string => `${ZFS_JOB_PREFIX}${from}`;
export const isZfsJob = (from: string): boolean => from.startsWith(ZFS_JOB_PREFIX);

async function readManifest(layout: StoreLayout, version: string): Promise<Manifest> {
  let bytes: Uint8Array;
  try {
    bytes = await layout.releases.getFile(manifestPath(version));
  } catch (err) {
    throw new IbuError('RELEASE_NOT_FOUND', `Release ${version} is not published on this server.`, { cause: err });
  }
  // The server holds no keyring: devices verify signatures; this copy is the one it serves them.
  return parseManifestUnverified(bytes, `the manifest of ${version}`);
}

/** Sends the stream on the release pool and checks it against the manifest (src/zfs/stream.ts). */
export async function buildZfsStream(layout: StoreLayout, req: Pick<DeltaBuildRequest, 'from' | 'to' | 'out' | 'signal'>): Promise<void> {
  const from = req.from.slice(ZFS_JOB_PREFIX.length);
  const m = await readManifest(layout, req.to);
  const ref = streamRef(m, from);
  if (!ref || !m.zfs) throw new IbuError('NOT_FOUND', `The manifest of ${req.to} signs no ZFS stream from ${from}.`);
  for (const [snap, guid] of [
    [from, ref.fromGuid],
    [req.to, m.zfs.guid],
  ] as const) {
    const got = await zfsGet(`${m.zfs.dataset}@${snap}`, 'guid');
    if (got !== guid)
      throw new IbuError(
        'ZFS_BASE_MISSING',
        `The release pool has ${got === null ? 'no' : `a different (GUID ${got})`} snapshot ${m.zfs.dataset}@${snap}; ` +
          `the signed manifest names GUID ${guid}. Restore the release pool or serve ibu deltas.`,
      );
  }
  await buildCompressedStream({ dataset: m.zfs.dataset, from, to: req.to, expect: ref, out: req.out, signal: req.signal });
}

/** The server's builder: ZFS jobs to `zfs send`, everything else to the ibu delta builder. */
export function zfsAwareBuilder(base: DeltaBuilder, layout: StoreLayout, zfsBuilder: DeltaBuilder = (r) => buildZfsStream(layout, r)): DeltaBuilder {
  return (req) => (isZfsJob(req.from) ? zfsBuilder(req) : base(req));
}

/** Precompute: queue the ZFS stream beside each ibu delta, when the release signs one. */
export async function precomputeZfs(ctx: Pick<ServerContext, 'layout' | 'deltas'>, from: string, to: string): Promise<boolean> {
  const m = await readManifest(ctx.layout, to).catch(() => null);
  if (!m || !streamRef(m, from)) return false;
  await ctx.deltas.lookup(zfsJobFrom(from), to, { create: true, priority: PRIORITY.precompute });
  return true;
}

/**
 * `GET|HEAD /v1/zfs-streams/:from/:to`: exactly the delta route's behaviour (202 + Retry-After
 * while building, 500 when failed, Range/If-Range, ETag = sha256 of the compressed file), for
 * the zstd-compressed `zfs send -i @from DATASET@to` stream. 404 when the manifest of `to`
 * signs no stream from `from` (the device then uses ibu deltas or chunks).
 */
export function zfsStreamRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.route<{ Params: { from: string; to: string } }>({
    method: ['GET', 'HEAD'],
    url: '/v1/zfs-streams/:from/:to',
    schema: pairRouteSchema,
    handler: async (req, reply) => {
      const { from, to } = req.params;
      await checkPair(ctx, from, to);
      const m = await readManifest(ctx.layout, to);
      if (!streamRef(m, from)) throw new IbuError('NOT_FOUND', `Release ${to} has no signed ZFS stream from ${from}; fetch an ibu delta or chunks instead.`);
      return serveBuilt(ctx, req, reply, { key: zfsJobFrom(from), from, to, contentType: 'application/zstd', what: 'ZFS stream' });
    },
  });
}
