import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { IbuError } from '../../errors.js';
import { Fleet, type FleetConfig, hashToken } from '../../fleet/fleet.js';
import type { FleetRepository } from '../../fleet/repository.js';
import { PostgresFleetRepository } from '../../fleet/sql/postgres-repository.js';
import { SqliteFleetRepository } from '../../fleet/sql/sqlite-repository.js';
import { isValidVersion } from '../../version.js';
import type { FleetPluginOptions } from '../contracts.js';
import { httpErrorHandler } from '../http-errors.js';
import { adminRoutes } from './admin-routes.js';
import { deviceRoutes } from './device-routes.js';
import { FleetMetrics } from './metrics.js';

/** Options beyond the shared contract; all optional, so `ibu serve` can pass just the contract. */
export interface FleetPluginOptionsExt extends FleetPluginOptions {
  /** Overrides of the fleet defaults (run-time settings stored in the database still win). */
  config?: Partial<FleetConfig>;
  /** Enrollment secret for ids not pre-authorized (only its hash is kept). Default: IBU_ENROLLMENT_SECRET. */
  enrollmentSecret?: string;
  /** How often the release store's channels are re-read for new releases. Default 5 s; 0 = only at start. */
  storeSyncMs?: number;
  /** Replaces the repository (tests). */
  repository?: FleetRepository;
}

export function openFleetRepository(o: FleetPluginOptions): FleetRepository {
  if (o.databaseUrl && /^postgres(ql)?:\/\//.test(o.databaseUrl)) return new PostgresFleetRepository(o.databaseUrl);
  if (o.databaseUrl)
    throw new IbuError(
      'CONFIG_INVALID',
      `The database URL '${o.databaseUrl.replace(/\/\/[^@]*@/, '//***@')}' is not postgres://...; leave it out to use SQLite in the data directory.`,
    );
  return new SqliteFleetRepository(path.join(o.dataDir, 'fleet.sqlite'));
}

/**
 * The fleet side of `ibu serve`: device protocol (src/fleet/protocol.ts), admin API under
 * /v1/admin/fleet, the dashboard at /dashboard and Prometheus metrics at /metrics. Decorates
 * `app.fleet` on the parent (fastify-plugin: not encapsulated) so the delta side can read version
 * counts; the routes live in their own scope, answering errors with the server's one error map
 * (src/server/http-errors.ts) also when the plugin runs alone (tests, the simulator's fallback).
 */
async function fleetPluginImpl(app: FastifyInstance, o: FleetPluginOptionsExt): Promise<void> {
  const repo = o.repository ?? openFleetRepository(o);
  const secret = o.enrollmentSecret ?? process.env.IBU_ENROLLMENT_SECRET;
  const service = new Fleet(
    repo,
    { ...o.config, ...(secret ? { enrollmentSecretHash: hashToken(secret) } : {}) },
    // The fleet asks about a device's next hop only: that is the pair the delta side counts as needed.
    (from, to) => (app.deltas ? app.deltas.deviceNeeds(from, to) : Promise.resolve('none')),
    Date.now,
    (err, what) => app.log.error({ err }, `fleet: ${what} failed`),
  );
  await service.start();
  const channels = o.channels ?? (() => dataDirChannels(o.dataDir));
  await syncReleasesFromStore(service, channels, app);
  const metrics = new FleetMetrics(service);
  app.decorate('fleet', service);
  app.decorate('fleetService', service);

  let timer: NodeJS.Timeout | undefined;
  let storeTimer: NodeJS.Timeout | undefined;
  const schedule = () => {
    timer = setTimeout(() => {
      service
        .evaluate()
        .catch((err) => app.log.error({ err }, 'fleet rollout evaluation failed'))
        .finally(() => {
          if (timer) schedule();
        });
    }, service.config.evaluateEveryMs);
    timer.unref();
  };
  app.addHook('onReady', async () => {
    schedule();
    const every = o.storeSyncMs ?? 5000;
    if (every > 0) {
      storeTimer = setInterval(() => void syncReleasesFromStore(service, channels, app), every);
      storeTimer.unref();
    }
  });
  app.addHook('onClose', async () => {
    clearTimeout(timer);
    timer = undefined;
    clearInterval(storeTimer);
    await service.close();
  });

  await app.register(async (scope) => {
    scope.setErrorHandler(httpErrorHandler);
    deviceRoutes(scope, service, metrics);
    adminRoutes(scope, service, o.adminToken);
    scope.get('/metrics', { schema: { response: { 200: { type: 'string' } } } }, async (_req, reply) => {
      reply.type(metrics.registry.contentType);
      return metrics.registry.metrics();
    });
  });
}
export const fleetPlugin = fp(fleetPluginImpl, { name: 'ibu-fleet' });

declare module 'fastify' {
  interface FastifyInstance {
    /** The full service (admin reads, tests); `fleet` is the narrow contract. */
    fleetService?: Fleet;
  }
}

/** The channels/*.json of a data directory (the fleet served alone, without the release side's catalog). */
export async function dataDirChannels(dataDir: string): Promise<Array<{ channel: string; versions: string[] }>> {
  let names: string[];
  try {
    names = await fsp.readdir(path.join(dataDir, 'channels'));
  } catch {
    return [];
  }
  const out: Array<{ channel: string; versions: string[] }> = [];
  for (const n of names) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    try {
      const doc = JSON.parse(await fsp.readFile(path.join(dataDir, 'channels', n), 'utf8')) as { versions?: unknown };
      out.push({ channel: n.slice(0, -5), versions: Array.isArray(doc.versions) ? doc.versions.map(String) : [] });
    } catch {
      // half-written by hand or not ours: the next sync reads it again
    }
  }
  return out;
}

/**
 * Registers every version of the release store's channels that the fleet does not know yet. The
 * store is read through `channels` (the data directory or S3): a release published to a bucket
 * reaches the fleet of every replica without an admin call.
 */
export async function syncReleasesFromStore(
  service: Fleet,
  channels: () => Promise<Array<{ channel: string; versions: string[] }>>,
  app?: FastifyInstance,
): Promise<number> {
  let added = 0;
  let listed: Array<{ channel: string; versions: string[] }>;
  try {
    listed = await channels();
  } catch (err) {
    app?.log.warn({ err }, "cannot read the release store's channels; trying again later");
    return 0;
  }
  for (const { channel, versions } of listed) {
    try {
      const known = new Set(service.releasesOf(channel).map((r) => r.version));
      for (const v of versions.filter(isValidVersion)) {
        if (known.has(v)) continue;
        await service.registerRelease({ channel, version: v }, 'store');
        added++;
      }
    } catch (err) {
      app?.log.warn({ err, channel }, 'cannot register a channel of the release store; skipping it');
    }
  }
  return added;
}
