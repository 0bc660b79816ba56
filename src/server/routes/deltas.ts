import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { IbuError } from '../../errors.js';
import type { ServerContext } from '../context.js';
import { clientKey } from '../delta-admission.js';
import type { DeltaLookup } from '../delta-service.js';
import { deltaStateSchema, errorSchema, versionSchema } from '../schemas.js';
import { sendFile } from '../send-file.js';
import { commonEncoders, parseEncoders } from '../../delta/encoder-set.js';
import { recompressJobFrom } from '../recompress-deltas.js';

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
 * refused, it is 429 DELTA_CLIENT_LIMIT or 503 DELTA_QUEUE_FULL with Retry-After. `readyElse`:
 * while the asked job is not ready, that job's artifact is served if it is (a device asking for
 * a recompressing delta gets the plain one at once), `no-store` so that no cache keeps it in
 * place of the asked one.
 */
export async function serveBuilt(
  ctx: ServerContext,
  req: FastifyRequest,
  reply: FastifyReply,
  o: { key: string; from: string; to: string; contentType: string; what: string; readyElse?: string },
): Promise<unknown> {
  const asked = { create: true, client: clientKey(req.ip), pairFrom: o.from };
  let l = await ctx.deltas.lookup(o.key, o.to, asked);
  let key = o.key;
  if (l.state !== 'ready' && o.readyElse !== undefined) {
    const other = await ctx.deltas.lookup(o.readyElse, o.to, { create: false });
    if (other.state === 'ready') [l, key] = [other, o.readyElse];
  }
  if (l.state === 'ready') {
    const unpin = ctx.deltas.cache.pin(key, o.to);
    if (req.method === 'GET') await ctx.deltas.jobs.touch(key, o.to);
    const ok = await sendFile(req, reply, {
      file: l.file,
      etag: `"${l.job.sha256}"`,
      cacheControl: key === o.key ? 'public, max-age=86400' : 'no-store',
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
  app.route<{ Params: { from: string; to: string }; Querystring: { encoders?: string } }>({
    method: ['GET', 'HEAD'],
    url: '/v1/deltas/:from/:to',
    // ?encoders=xz-5.8.1~gzip-1.13~zstd-1.5.7: the device can re-encode with these (src/server/recompress-deltas.ts).
    schema: { ...pairRouteSchema, querystring: { type: 'object', properties: { encoders: { type: 'string', maxLength: 200 } } } },
    handler: async (req, reply) => {
      const { from, to } = req.params;
      await checkPair(ctx, from, to);
      const key = req.query.encoders ? recompressJobFrom(from, commonEncoders(parseEncoders(req.query.encoders), ctx.encoders)) : from;
      const readyElse = key === from ? undefined : from;
      return serveBuilt(ctx, req, reply, { key, from, to, contentType: 'application/vnd.ibu.delta', what: 'Delta', readyElse });
    },
  });
}
