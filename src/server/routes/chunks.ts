import type { FastifyInstance } from 'fastify';
import { IbuError } from '../../errors.js';
import type { ServerContext } from '../context.js';
import { chunkIdSchema, fileResponses } from '../schemas.js';
import { chunkPath } from '../../store/layout.js';
import { sendReleaseFile } from '../release-files.js';

export function chunkRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.route<{ Params: { id: string } }>({
    method: ['GET', 'HEAD'],
    url: '/v1/chunks/:id',
    schema: {
      params: { type: 'object', properties: { id: chunkIdSchema }, required: ['id'] },
      response: fileResponses,
    },
    handler: async (req, reply) => {
      const { id } = req.params;
      // Content-addressed: the bytes behind an id never change, so any cache may keep them forever.
      const ok = await sendReleaseFile(req, reply, ctx.layout, {
        rel: chunkPath(id),
        file: ctx.layout.chunk(id),
        etag: `"${id}"`,
        cacheControl: 'public, max-age=31536000, immutable',
        contentType: 'application/zstd',
      });
      if (!ok) throw new IbuError('CHUNK_MISSING', `Chunk ${id} is not in this store; the release that needs it may have been deleted.`);
      return reply;
    },
  });
}
