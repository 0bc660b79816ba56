import type { ServerOptions } from 'node:http';
import { IbuError } from '../errors.js';

/**
 * How long `ibu serve` lets a connection sit and how many it holds (issue #15): a client that
 * connects and says nothing, or stops mid-headers, is closed, so a few hundred silent sockets
 * cannot hold every file descriptor. A download in progress is never idle (bytes keep moving),
 * so there is still no overall request timeout: chunks and deltas can take long.
 */
export interface ConnectionLimits {
  /** A socket with no bytes in either direction for this long is closed (Fastify connectionTimeout). */
  idleMs: number;
  /** The request line and headers must arrive within this (Node headersTimeout). */
  headersMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveMs: number;
  /** Connections held at once; more are refused by the kernel backlog and Node (server.maxConnections). */
  maxConnections: number;
  /** Requests a minute one client address may make to the unauthenticated routes; 0 turns the limit off (simulators). */
  unauthenticatedPerMinute: number;
}

export const CONNECTION_DEFAULTS: ConnectionLimits = {
  idleMs: 60_000,
  headersMs: 15_000,
  keepAliveMs: 30_000,
  maxConnections: 2048,
  unauthenticatedPerMinute: 60,
};

export function connectionLimits(given: Partial<ConnectionLimits> | undefined): ConnectionLimits {
  return { ...CONNECTION_DEFAULTS, ...given };
}

/** Node's server options for these limits: headers are checked every second, not every 30 s. */
export function httpServerOptions(l: ConnectionLimits): ServerOptions {
  return { headersTimeout: l.headersMs, requestTimeout: 0, connectionsCheckingInterval: Math.min(1000, l.headersMs) };
}

/**
 * Per-client limits on the routes anyone may call without a credential (enrollment, dashboard
 * sign-in): @fastify/rate-limit, keyed by client address. Authenticated device traffic and chunk
 * downloads are not limited here (a fleet behind one NAT shares an address).
 */
export const UNAUTHENTICATED_RATE_LIMIT = {}; // a route's config: the plugin's max and window below

export function rateLimitOptions(l: ConnectionLimits) {
  return {
    global: false,
    max: l.unauthenticatedPerMinute > 0 ? l.unauthenticatedPerMinute : Number.MAX_SAFE_INTEGER,
    timeWindow: 60_000,
    errorResponseBuilder: (_req: unknown, ctx: { after: string; max: number }) =>
      new IbuError('RATE_LIMITED', `Too many requests from this address (${ctx.max} a minute); retry in ${ctx.after}.`),
  };
}
