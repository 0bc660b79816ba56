import type { FastifyInstance } from 'fastify';
import { promises as fsp } from 'node:fs';
import { IbuError } from '../../errors.js';
import { adminAuth } from '../admin-auth.js';
import type { ServerContext } from '../context.js';
import { PRIORITY } from '../delta-queue.js';
import { removeRelease } from '../release-removal.js';
import { deltaStateSchema, errorSchema, versionSchema } from '../schemas.js';
import { checkPair, pairParams, stateBody } from './deltas.js';

const pairList = {
  type: 'array',
  items: { type: 'object', properties: { from: { type: 'string' }, to: { type: 'string' } }, required: ['from', 'to'] },
} as const;
const authErrors = { 401: errorSchema, 403: errorSchema, 400: errorSchema } as const;

export async function adminRoutes(app: FastifyInstance, ctx: ServerContext): Promise<void> {
  app.addHook('onRequest', adminAuth(ctx.adminToken));

  app.get(
    '/v1/admin/cache',
    {
      schema: {
        response: {
          200: {
            type: 'object',
            properties: {
              quotaBytes: { type: 'integer' },
              usedBytes: { type: 'integer' },
              workers: { type: 'integer' },
              activeBuilds: { type: 'integer' },
              buildsStarted: { type: 'integer' },
              jobs: {
                type: 'object',
                properties: { queued: { type: 'integer' }, building: { type: 'integer' }, ready: { type: 'integer' }, failed: { type: 'integer' } },
              },
              images: { type: 'object', properties: { count: { type: 'integer' }, bytes: { type: 'integer' } } },
              queue: { type: 'object', properties: { shared: { type: 'boolean' }, scope: { type: ['string', 'null'] } } },
              admission: { type: 'object', properties: { maxQueued: { type: 'integer' }, perClient: { type: 'integer' } } },
              deltas: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    from: { type: 'string' },
                    to: { type: 'string' },
                    state: { type: 'string' },
                    priority: { type: 'integer' },
                    client: { type: ['string', 'null'] },
                    size: { type: ['integer', 'null'] },
                    attempts: { type: 'integer' },
                    lastAccessAt: { type: ['string', 'null'] },
                    lastError: { type: ['string', 'null'] },
                    streaming: { type: 'integer' },
                  },
                },
              },
            },
          },
          ...authErrors,
        },
      },
    },
    async () => {
      const d = ctx.deltas;
      let count = 0;
      let bytes = 0;
      try {
        for (const n of await fsp.readdir(ctx.layout.imagesDir)) {
          if (!n.endsWith('.img')) continue;
          const st = await fsp.stat(`${ctx.layout.imagesDir}/${n}`).catch(() => undefined);
          if (st) {
            count++;
            bytes += st.blocks * 512;
          }
        }
      } catch {
        // no image cache yet
      }
      return {
        quotaBytes: d.cache.quotaBytes,
        usedBytes: await d.cache.usedBytes(),
        workers: d.pool.workers,
        activeBuilds: d.pool.active,
        buildsStarted: d.pool.buildsStarted,
        jobs: await d.jobs.counts(),
        images: { count, bytes },
        // Replicas that print the same scope share one queue and one delta directory.
        queue: { shared: d.jobs.shared, scope: d.jobs.scope ?? null },
        admission: d.limits,
        deltas: (await d.jobs.all()).map((j) => ({
          from: j.from,
          to: j.to,
          state: j.state,
          priority: j.priority,
          client: j.client,
          size: j.size,
          attempts: j.attempts,
          lastAccessAt: j.lastAccessAt ? new Date(j.lastAccessAt).toISOString() : null,
          lastError: j.lastError,
          streaming: d.cache.pinned(j.from, j.to),
        })),
      };
    },
  );

  app.post<{ Body: { version?: string; channel?: string } | undefined }>(
    '/v1/admin/publish',
    {
      schema: {
        body: {
          type: ['object', 'null'],
          properties: { version: versionSchema, channel: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' } },
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: {
              newReleases: { type: 'array', items: { type: 'object', properties: { channel: { type: 'string' }, version: { type: 'string' } } } },
              queued: pairList,
            },
          },
          404: errorSchema,
          ...authErrors,
        },
      },
    },
    async (req) => {
      const res = await ctx.precompute.scan();
      const v = req.body?.version;
      if (v) {
        if (!(await ctx.catalog.hasRelease(v)))
          throw new IbuError('RELEASE_NOT_FOUND', `Release ${v} is not in the store yet; run ibu release publish --store ${ctx.layout.root} first.`);
        if (!res.newReleases.some((r) => r.version === v)) {
          // Announced explicitly: precompute for it even if a scan had already seen it.
          const channels = req.body?.channel ? [req.body.channel] : await ctx.catalog.channels();
          for (const c of channels) {
            const listing = await ctx.catalog.channel(c);
            if (!listing?.releases.some((r) => r.version === v)) continue;
            res.queued.push(...(await ctx.precompute.precomputeFor(c, v)));
          }
        }
      }
      return res;
    },
  );

  app.delete<{ Params: { version: string } }>(
    '/v1/admin/releases/:version',
    {
      schema: {
        params: { type: 'object', properties: { version: versionSchema }, required: ['version'] },
        response: {
          200: {
            type: 'object',
            properties: { version: { type: 'string' }, channels: { type: 'array', items: { type: 'string' } }, deltasRemoved: { type: 'integer' } },
          },
          404: errorSchema,
          ...authErrors,
        },
      },
    },
    async (req) => {
      const { version } = req.params;
      const r = await removeRelease(ctx.layout, version);
      if (!r.removed && r.channels.length === 0) throw new IbuError('RELEASE_NOT_FOUND', `Release ${version} is not published on this server.`);
      ctx.precompute.forget(version);
      ctx.catalog.forget(version);
      let deltasRemoved = 0;
      // Also the ZFS streams (`zfs+<from>`) and recompressing deltas (`rc~…+<from>`) from this version.
      for (const j of await ctx.deltas.jobs.involving(version)) {
        ctx.deltas.pool.cancel(j.from, j.to);
        // An open stream keeps its inode on Linux; the release is gone, so the file goes now.
        await ctx.deltas.jobs.delete(j.from, j.to);
        await fsp.rm(ctx.layout.delta(j.from, j.to), { force: true });
        deltasRemoved++;
      }
      await fsp.rm(ctx.layout.image(version), { force: true });
      req.log.info({ version, channels: r.channels, deltasRemoved }, 'release deleted');
      return { version, channels: r.channels, deltasRemoved };
    },
  );

  app.post<{ Params: { from: string; to: string } }>(
    '/v1/admin/deltas/:from/:to',
    { schema: { params: pairParams, response: { 200: deltaStateSchema, 202: deltaStateSchema, 404: errorSchema, ...authErrors } } },
    async (req, reply) => {
      const { from, to } = req.params;
      await checkPair(ctx, from, to);
      await ctx.deltas.jobs.retryNow(from, to);
      const l = await ctx.deltas.lookup(from, to, { create: true, priority: PRIORITY.admin });
      ctx.deltas.pool.kick(); // a revived job is not "created", so lookup did not start it
      reply.code(l.state === 'ready' ? 200 : 202);
      return stateBody(from, to, l);
    },
  );

  app.delete<{ Params: { from: string; to: string } }>(
    '/v1/admin/deltas/:from/:to',
    {
      schema: {
        params: pairParams,
        response: { 200: { type: 'object', properties: { removed: { type: 'boolean' } } }, 404: errorSchema, 409: errorSchema, ...authErrors },
      },
    },
    async (req) => {
      const { from, to } = req.params;
      if (!(await ctx.deltas.jobs.get(from, to))) throw new IbuError('NOT_FOUND', `There is no delta ${from} -> ${to} (built or queued) to delete.`);
      ctx.deltas.pool.cancel(from, to);
      if (!(await ctx.deltas.cache.remove(from, to)))
        throw new IbuError('CONFLICT', `Delta ${from} -> ${to} is being downloaded right now; try again when the downloads finish.`);
      return { removed: true };
    },
  );
}
