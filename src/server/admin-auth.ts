import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from './http-errors.js';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** The cookie the dashboard sign-in sets (HttpOnly); the fleet admin routes accept it too. */
export const ADMIN_COOKIE = 'ibu_admin';

/** The token of an `Authorization: Bearer <token>` header, if that is what the request carries. */
export function bearerToken(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  const m = h ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
  return m ? m[1] : undefined;
}

function cookieToken(req: FastifyRequest): string | undefined {
  const c = req.headers.cookie;
  if (!c) return undefined;
  for (const part of c.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === ADMIN_COOKIE) return decodeURIComponent(v.join('='));
  }
  return undefined;
}

/** Whether a token is the admin token: constant time over hashes, so its length does not leak either. */
export function adminTokenCheck(token: string | undefined): (given: string | undefined) => boolean {
  const want = token ? digest(token) : undefined;
  return (given) => Boolean(want && given && timingSafeEqual(digest(given), want));
}

/**
 * The one admin check of `ibu serve`, for /v1/admin and /v1/admin/fleet alike: no admin token
 * configured on the server → 403 (nothing the caller can fix); a missing, malformed or wrong
 * token → 401 with a Bearer challenge. With `cookie`, the dashboard's sign-in cookie counts as
 * the token when no bearer token is sent.
 */
export function adminAuth(token: string | undefined, o: { cookie?: boolean } = {}) {
  const check = adminTokenCheck(token);
  // Returning the reply after sending tells Fastify the request is answered (no handler runs).
  return async (req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> => {
    if (!token) {
      return reply
        .code(403)
        .type('application/json')
        .send(errorBody('UNAUTHORIZED', 'This server has no admin token configured; restart it with --admin-token or IBU_ADMIN_TOKEN to use admin routes.'));
    }
    const given = bearerToken(req) ?? (o.cookie ? cookieToken(req) : undefined);
    if (!check(given)) {
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="ibu-admin"')
        .type('application/json')
        .send(
          errorBody(
            'UNAUTHORIZED',
            `Admin routes need "Authorization: Bearer <token>"${o.cookie ? ' (or the dashboard cookie)' : ''} ` +
              `with the token given to ibu serve --admin-token (or IBU_ADMIN_TOKEN).`,
          ),
        );
    }
    return undefined;
  };
}
