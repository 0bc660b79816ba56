import type { FastifyInstance } from 'fastify';
import { IbuError } from '../../errors.js';
import type { ServerContext } from '../context.js';
import { channelSchema, errorSchema, fileResponses, versionSchema } from '../schemas.js';
import { manifestPath } from '../../store/layout.js';
import { sendReleaseFile } from '../release-files.js';

export function releaseRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get<{ Params: { channel: string } }>(
    '/v1/channels/:channel/releases',
    {
      schema: {
        params: { type: 'object', properties: { channel: channelSchema }, required: ['channel'] },
        response: {
          200: {
            type: 'object',
            properties: {
              channel: { type: 'string' },
              // The same fields as channels/<channel>.json, so an HttpStore in 'api' layout reads it.
              versions: { type: 'array', items: { type: 'string' } },
              latest: { type: ['string', 'null'] },
              releases: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: { version: { type: 'string' }, manifestUrl: { type: 'string' } },
                  required: ['version', 'manifestUrl'],
                  additionalProperties: true,
                },
              },
            },
            required: ['channel', 'versions', 'releases'],
          },
          400: errorSchema,
          404: errorSchema,
        },
      },
    },
    async (req, reply) => {
      const listing = await ctx.catalog.channel(req.params.channel);
      if (!listing)
        throw new IbuError(
          'NOT_FOUND',
          `Channel '${req.params.channel}' has no releases; publish one with ibu release publish --channel ${req.params.channel}.`,
        );
      reply.header('cache-control', 'no-cache');
      const versions = listing.releases.map((r) => r.version);
      return {
        channel: listing.channel,
        versions,
        latest: versions.length > 0 ? versions[versions.length - 1] : null,
        releases: listing.releases.map((r) => ({ ...r, manifestUrl: `/v1/releases/${r.version}/manifest` })),
      };
    },
  );

  app.get<{ Params: { version: string } }>(
    '/v1/releases/:version/manifest',
    {
      schema: {
        params: { type: 'object', properties: { version: versionSchema }, required: ['version'] },
        response: fileResponses,
      },
    },
    async (req, reply) => {
      const { version } = req.params;
      // A manifest never changes once published (versions only go up), but a release can be
      // deleted, so caches keep it briefly and revalidate by ETag.
      const ok = await sendReleaseFile(req, reply, ctx.layout, {
        rel: manifestPath(version),
        file: ctx.layout.manifest(version),
        cacheControl: 'public, max-age=60',
        contentType: 'application/json',
      });
      if (!ok) throw new IbuError('RELEASE_NOT_FOUND', `Release ${version} is not published on this server.`);
      return reply;
    },
  );
}
