import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { IbuError } from '../../errors.js';
import type { ServerContext } from '../context.js';
import { clientKey } from '../delta-admission.js';
import type { DeltaLookup } from '../delta-service.js';
import { deltaStateSchema, errorSchema, versionSchema } from '../schemas.js';
import { sendFile } from '../send-file.js';

export const pairParams = {
  type: 'object',
  properties: { from: versionSchema, to: versionSchema },
  required: ['from', 'to'],
} as const;

/** The JSON describing a delta that is not served as a file. */
export function stateBody(from: string, to: string, l: DeltaLookup): Record<string, unknown> {
  switch (l.state) {
    case 'queued':
    case 'building':
      return { state: l.state, from, to, position: l.position, retryAfter: l.retryAfter, attempts: l.job.attempts };
    case 'failed':
      return { state: 'failed', from, to, attempts: l.job.attempts, error: l.job.lastError ?? 'unknown error' };
    case 'ready':
      return { state: 'ready', from, to, size: l.job.size ?? 0, sha256: l.job.sha256 ?? '' };
    default:
      return { state: 'none', from, to };
  }
}

/** Rejects a pair that cannot have a delta: same version twice, or a version not published. */
export async function checkPair(ctx: ServerContext, from: string, to: string): Promise<void> {
  if (from === to) throw new IbuError('BAD_REQUEST', `A delta needs two different versions; both are ${from}.`);
  for (const v of [from, to]) {
    if (!(await ctx.catalog.hasRelease(v))) throw new IbuError('RELEASE_NOT_FOUND', `Release ${v} is not published on this server.`);
  }
}

/** The responses of a route serving built pair artifacts (ibu deltas, ZFS streams). */
export const pairRouteSchema = {
  params: pairParams,
  response: {
    200: { type: 'string', format: 'binary' },
    206: { type: 'string', format: 'binary' },
    202: deltaStateSchema,
    304: { type: 'null' },
    400: errorSchema,
    404: errorSchema,
    416: errorSchema,
    429: errorSchema,
    500: deltaStateSchema,
    503: errorSchema,
  },
} as const;

/**
 * Serves the artifact the delta service builds under job key (`key`, `to`): the file when ready
 * (Range/If-Range, ETag, pinned against eviction while streaming), else 202 + Retry-After while
 * queued or building, 500 once failed after every retry (the device then fetches chunks). A
 * request that would queue a new build is admitted first (src/server/delta-admission.ts):
 * refused, it is 429 DELTA_CLIENT_LIMIT or 503 DELTA_QUEUE_FULL with Retry-After.
 */
export async function serveBuilt(
  ctx: ServerContext,
  req: FastifyRequest,
  reply: FastifyReply,
  o: { key: string; from: string; to: string; contentType: string; what: string },
): Promise<unknown> {
  const asked = { create: true, client: clientKey(req.ip), pairFrom: o.from };
  const l = await ctx.deltas.lookup(o.key, o.to, asked);
  if (l.state === 'ready') {
    const unpin = ctx.deltas.cache.pin(o.key, o.to);
    if (req.method === 'GET') await ctx.deltas.jobs.touch(o.key, o.to);
    const ok = await sendFile(req, reply, {
      file: l.file,
      etag: `"${l.job.sha256}"`,
      cacheControl: 'public, max-age=86400',
      contentType: o.contentType,
      onDone: unpin,
      knownSize: l.job.size ?? undefined,
    });
    if (ok) return reply;
    // Evicted between lookup and open: report it as queued again.
    const again = await ctx.deltas.lookup(o.key, o.to, asked);
    if (again.state === 'ready') throw new IbuError('INTERNAL', `${o.what} ${o.from} -> ${o.to} vanished while being served; retry.`);
    return sendState(again);
  }
  return sendState(l);

  function sendState(s: DeltaLookup): unknown {
    reply.header('cache-control', 'no-store');
    if (s.state === 'queued' || s.state === 'building') reply.code(202).header('retry-after', String(s.retryAfter));
    else reply.code(500); // failed after every retry: the device should fetch chunks instead (docs/server.md)
    return stateBody(o.from, o.to, s);
  }
}

export function deltaRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.route<{ Params: { from: string; to: string } }>({
    method: ['GET', 'HEAD'],
    url: '/v1/deltas/:from/:to',
    schema: pairRouteSchema,
    handler: async (req, reply) => {
      const { from, to } = req.params;
      await checkPair(ctx, from, to);
      return serveBuilt(ctx, req, reply, { key: from, from, to, contentType: 'application/vnd.ibu.delta', what: 'Delta' });
    },
  });
}
