import type { ServerOptions } from 'node:http';

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
}

export const CONNECTION_DEFAULTS: ConnectionLimits = {
  idleMs: 60_000,
  headersMs: 15_000,
  keepAliveMs: 30_000,
  maxConnections: 2048,
};

export function connectionLimits(given: Partial<ConnectionLimits> | undefined): ConnectionLimits {
  return { ...CONNECTION_DEFAULTS, ...given };
}

/** Node's server options for these limits: headers are checked every second, not every 30 s. */
export function httpServerOptions(l: ConnectionLimits): ServerOptions {
  return { headersTimeout: l.headersMs, requestTimeout: 0, connectionsCheckingInterval: Math.min(1000, l.headersMs) };
}
