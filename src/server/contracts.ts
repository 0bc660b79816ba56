import type { FastifyInstance } from 'fastify';

/**
 * What the parts of `ibu serve` offer each other through Fastify decorations, so the release /
 * delta side (src/server) and the fleet side (src/server/fleet) stay separate modules.
 */
export type DeltaStatus = 'ready' | 'queued' | 'building' | 'failed' | 'none';

export interface DeltaService {
  status(from: string, to: string): Promise<DeltaStatus>;
  /** Queue a build if none exists (idempotent). */
  request(from: string, to: string): Promise<DeltaStatus>;
  /**
   * An enrolled device's check-in made from→to its next hop: remember the pair as needed (its
   * build goes first and is never refused for a client cap; docs/server.md "Admission"), and
   * return its state.
   */
  deviceNeeds(from: string, to: string): Promise<DeltaStatus>;
}

export interface FleetService {
  /** Versions the fleet reports running, most devices first (drives delta precompute). */
  versionCounts(channel?: string): Promise<Array<{ version: string; devices: number }>>;
}

export interface FleetPluginOptions {
  dataDir: string;
  /** `postgres://...` selects PostgreSQL; otherwise SQLite at <dataDir>/fleet.sqlite. */
  databaseUrl?: string;
  adminToken?: string;
  /**
   * The release store's channels as `{ channel, versions }` (the server's catalog: the data
   * directory or an S3 bucket), re-read every few seconds to register new releases. Default: the
   * data directory's channels/*.json (the fleet served alone).
   */
  channels?: () => Promise<Array<{ channel: string; versions: string[] }>>;
}

declare module 'fastify' {
  interface FastifyInstance {
    deltas?: DeltaService;
    fleet?: FleetService;
  }
}

export type { FastifyInstance };
