import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { IbuError, type ErrorCode } from '../errors.js';
import { errorBody } from '../http-error-body.js';

/**
 * The one place error codes become HTTP statuses (DESIGN.md: only the server maps them), for
 * every route: releases, chunks, deltas, admin and fleet. Where the fleet routes once had their
 * own map: CONFIG_INVALID is 400 (in a request it is always the caller's settings or window; a
 * server misconfiguration stops `ibu serve` before it listens), MANIFEST_INVALID is 500 (the
 * server's own store copy is damaged; no request carries a manifest), NO_SPACE is 507.
 */
const STATUS: Partial<Record<ErrorCode, number>> = {
  BAD_REQUEST: 400,
  USAGE: 400,
  VERSION_INVALID: 400,
  CONFIG_INVALID: 400,
  ROLLOUT_INVALID: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  RELEASE_NOT_FOUND: 404,
  CHUNK_MISSING: 404,
  DEVICE_UNKNOWN: 404,
  CONFLICT: 409,
  DELTA_NOT_READY: 503,
  NO_SPACE: 507,
  STORE_UNAVAILABLE: 503,
};

export function httpStatusFor(code: ErrorCode): number {
  return STATUS[code] ?? 500;
}

export { errorBody } from '../http-error-body.js';

/** JSON errors everywhere: `{ error: { code, message } }`, schema failures as BAD_REQUEST 400. */
export function httpErrorHandler(err: FastifyError | IbuError, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (err instanceof IbuError) {
    const status = httpStatusFor(err.code);
    if (status >= 500) req.log.error({ err }, 'request failed');
    return reply.code(status).type('application/json').send(errorBody(err.code, err.message));
  }
  const fe = err as FastifyError;
  if (fe.validation) {
    return reply
      .code(400)
      .type('application/json')
      .send(
        errorBody(
          'BAD_REQUEST',
          `Invalid request: ${fe.message}. Versions look like 2026.11.2, ` +
            `chunk ids are 64 lowercase hex digits; see docs/server.md and docs/fleet.md for the API.`,
        ),
      );
  }
  const status = fe.statusCode && fe.statusCode >= 400 ? fe.statusCode : 500;
  if (status >= 500) req.log.error({ err }, 'request failed');
  return reply
    .code(status)
    .type('application/json')
    .send(errorBody(status >= 500 ? 'INTERNAL' : 'BAD_REQUEST', fe.message));
}

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler(httpErrorHandler);
  app.setNotFoundHandler((req, reply) => {
    reply
      .code(404)
      .type('application/json')
      .send(errorBody('NOT_FOUND', `No route ${req.method} ${req.url.split('?')[0]}; see docs/server.md for the API.`));
  });
}
