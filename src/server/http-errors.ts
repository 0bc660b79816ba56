import http from 'node:http';
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
  RATE_LIMITED: 429,
  DELTA_CLIENT_LIMIT: 429,
  DELTA_NOT_READY: 503,
  DELTA_QUEUE_FULL: 503,
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
    // A refusal that passes (a full delta queue, a client's cap) says when to come back.
    const retryAfter = err.details?.retryAfter;
    if (typeof retryAfter === 'number') reply.header('retry-after', String(Math.ceil(retryAfter)));
    if (status >= 500 && err.code !== 'DELTA_QUEUE_FULL') req.log.error({ err }, 'request failed');
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

/**
 * Errors Fastify raises before routing (a bad `%` escape, a path parameter over the limit):
 * Fastify's option `frameworkErrors`, answered in the same shape as every other error.
 */
export function frameworkErrorHandler(err: FastifyError, _req: FastifyRequest, reply: FastifyReply): void {
  const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
  void reply
    .code(status)
    .type('application/json')
    .send(errorBody('BAD_REQUEST', `${err.message}; see docs/server.md for the API.`));
}

/**
 * Errors of Node's HTTP parser (a URL or headers over the size limit, garbage, a request timeout):
 * Fastify's option `clientErrorHandler`. There is no request yet, so the answer goes to the socket.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: import('node:net').Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, message] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'BAD_REQUEST', 'The request took too long to arrive; send it again.']
      : err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'BAD_REQUEST', 'The URL or headers are over the size limit (16 KiB); see docs/server.md for the API.']
        : [400, 'BAD_REQUEST', 'The request is not valid HTTP/1.1.'];
  const body = JSON.stringify(errorBody(code, message));
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `Content-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}
