import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from './http-errors.js';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Bearer-token check for /v1/admin: no or malformed Authorization → 401 (with a challenge), a
 * wrong token → 403, and with no admin token configured every admin call is 403. The comparison
 * is constant-time over hashes so the token length does not leak either.
 */
export function adminAuth(token: string | undefined) {
  const want = token ? digest(token) : undefined;
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const h = req.headers.authorization;
    const m = h ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
    if (!m) {
      await reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="ibu-admin"')
        .type('application/json')
        .send(errorBody('UNAUTHORIZED', 'Admin routes need "Authorization: Bearer <token>" with the token given to ibu serve --admin-token (or IBU_ADMIN_TOKEN).'));
      return reply;
    }
    if (!want) {
      await reply.code(403).type('application/json').send(errorBody('UNAUTHORIZED', 'This server has no admin token configured; restart it with --admin-token or IBU_ADMIN_TOKEN to use admin routes.'));
      return reply;
    }
    if (!timingSafeEqual(digest(m[1]!), want)) {
      await reply.code(403).type('application/json').send(errorBody('UNAUTHORIZED', 'The admin token is wrong.'));
      return reply;
    }
  };
}
