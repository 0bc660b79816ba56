import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { lockDataDir } from './data-lock.js';
import { openDb, type Db } from './db.js';
import type { DeltaBuilder } from './delta-builder.js';
import { ADMISSION_DEFAULTS, type AdmissionLimits } from './delta-admission.js';
import { DeltaCache } from './delta-cache.js';
import { DeltaDemand } from './delta-demand.js';
import { DeltaJobs } from './delta-jobs.js';
import { DEFAULT_RETRY, type DeltaQueue, type RetryPolicy } from './delta-queue.js';
import { PostgresDeltaQueue } from './postgres-delta-queue.js';
import { DeltaWorkerPool } from './delta-pool.js';
import { DeltaServiceImpl } from './delta-service.js';
import { fleetPlugin } from './fleet/plugin.js';
import { logRedact, logSerializers } from './log-redaction.js';
import rateLimit from '@fastify/rate-limit';
import { connectionLimits, httpServerOptions, rateLimitOptions, type ConnectionLimits } from './connection-limits.js';
import { clientErrorHandler, frameworkErrorHandler, installErrorHandlers } from './http-errors.js';
import { Precomputer } from './precompute.js';
import { ReleaseCatalog } from './release-catalog.js';
import { adminRoutes } from './routes/admin.js';
import { chunkRoutes } from './routes/chunks.js';
import { deltaRoutes } from './routes/deltas.js';
import { releaseRoutes } from './routes/releases.js';
import { releaseChangesRoutes } from './routes/release-changes.js';
import { AJV_FORMATS } from './schemas.js';
import { StoreLayout } from './store-layout.js';
import { roleProblems, type ServeRole } from './serve-role.js';
import { IbuError } from '../errors.js';
import { isS3Url, S3Store, type S3StoreOptions } from '../store/s3-store.js';
import { storeDeltaBuilder } from './store-delta-builder.js';
import { precomputeZfs, zfsAwareBuilder, zfsStreamRoutes } from './zfs-streams.js';
import type { ServerContext } from './context.js';
import { localEncoders } from '../delta/recompressor.js';
import './contracts.js';

export interface ServeOptions {
  dataDir: string;
  /** Where releases live when not in dataDir: `s3://bucket/prefix` (docs/server.md, "Releases on S3"). */
  store?: string;
  s3?: S3StoreOptions;
  /** Connection limits against hostile or broken clients (defaults: CONNECTION_DEFAULTS). */
  connections?: Partial<ConnectionLimits>;
  adminToken?: string;
  /** Concurrent delta builds (each a child process). Default 1; 0 queues requests but builds nothing. */
  workers?: number;
  /** Bytes of built deltas kept on disk. Default 20 GiB. */
  deltaQuotaBytes?: number;
  /** Bytes of reconstructed release images kept for building deltas. Default 8 GiB. */
  imageCacheBytes?: number;
  /** Deltas precomputed per new release (K). Default 3; 0 turns precompute off. */
  precompute?: number;
  /** Periodic rescan of channels/*.json besides the directory watch. Default 30 s; 0 = off. */
  rescanIntervalMs?: number;
  /** Base Retry-After for 202 answers. Default 5 s. */
  retryAfterSeconds?: number;
  /** Bounds on what clients may queue (src/server/delta-admission.ts; defaults ADMISSION_DEFAULTS). */
  admission?: Partial<AdmissionLimits>;
  retry?: Partial<RetryPolicy>;
  /** Replaces the default builder (tests). */
  builder?: DeltaBuilder;
  /** Replaces the ZFS stream builder (host tests without ZFS; src/server/zfs-streams.ts). */
  zfsBuilder?: DeltaBuilder;
  /** Fastify logger option: true/false, pino options, or a pino instance. */
  logger?: FastifyServerOptions['logger'] | FastifyBaseLogger;
  https?: { key: Buffer; cert: Buffer };
  /** Registers the fleet plugin (default true); `databaseUrl` selects PostgreSQL for it and for the delta queue. */
  fleet?: boolean;
  databaseUrl?: string;
  /** What this process does (src/server/serve-role.ts); `api` and `builder` need `databaseUrl` and a shared `deltaDir`. */
  role?: ServeRole;
  /** Where built deltas live (default `<data>/cache/deltas`); with replicas, a directory all of them mount. */
  deltaDir?: string;
  /** A shared queue's claim not renewed for this long is taken over by another builder. Default 30 s. */
  deltaLeaseMs?: number;
  /**
   * Build deltas with RECOMPRESS ops for devices whose encoders match this server's (default true;
   * src/server/recompress-deltas.ts). Builders on other machines must have the same encoder versions.
   */
  deltaRecompress?: boolean;
}

export type { ServeRole } from './serve-role.js';

export interface IbuServer {
  app: FastifyInstance;
  ctx: ServerContext;
  /** Every route registered, with its schema (the test checks that each has one). */
  routes: Array<{ method: string | string[]; url: string; schema: Record<string, unknown> | undefined }>;
  /** Rows moved from 'building' back to 'queued' and temp files removed at start. */
  startup: { recoveredJobs: number; partialsRemoved: number };
}

export const DEFAULTS = {
  workers: 1,
  deltaQuotaBytes: 20 * 1024 ** 3,
  imageCacheBytes: 8 * 1024 ** 3,
  precompute: 3,
  rescanIntervalMs: 30_000,
  retryAfterSeconds: 5,
} as const;

/**
 * Builds the `ibu serve` application on a data directory: routes, the delta queue and its worker
 * pool, cache housekeeping and precompute. Call `app.listen()` to serve and `app.close()` to stop
 * (it stops accepting, lets requests in flight finish, puts running builds back in the queue).
 */
export async function createServer(o: ServeOptions): Promise<IbuServer> {
  const root = path.resolve(o.dataDir);
  if (o.store !== undefined && !isS3Url(o.store))
    throw new IbuError('USAGE', `--store '${o.store}' is not s3://bucket/prefix; a directory store is served with --data`);
  const roleIssues = roleProblems(o.role ?? 'all', o);
  if (roleIssues.length > 0) throw new IbuError('USAGE', roleIssues.join('; '));
  const layout = new StoreLayout(root, o.store ? new S3Store(o.store, o.s3) : undefined, o.deltaDir);
  await fsp.mkdir(layout.deltasDir, { recursive: true });
  await fsp.mkdir(layout.imagesDir, { recursive: true });
  const unlock = await lockDataDir(layout.lock);
  try {
    return await createServer0(o, root, layout, unlock);
  } catch (err) {
    await unlock();
    throw err;
  }
}

async function createServer0(o: ServeOptions, root: string, layout: StoreLayout, unlock: () => Promise<void>): Promise<IbuServer> {
  const given = o.logger ?? false;
  const isInstance = typeof given === 'object' && given !== null && typeof (given as FastifyBaseLogger).child === 'function';
  // Credentials never reach the log (docs/security.md); a caller's pino instance keeps its own settings.
  const own = given === true ? {} : (given as { serializers?: object });
  const logOpt = isInstance || given === false ? given : { ...own, serializers: { ...logSerializers, ...own.serializers }, redact: logRedact };
  const limits: ConnectionLimits = connectionLimits(o.connections);
  const app = Fastify({
    ...(isInstance ? { loggerInstance: logOpt as FastifyBaseLogger } : { logger: logOpt as FastifyServerOptions['logger'] }),
    ...(o.https ? { https: { ...o.https, ...httpServerOptions(limits) } } : { http: httpServerOptions(limits) }),
    ajv: { customOptions: { formats: AJV_FORMATS } },
    // Chunk and delta downloads can be long: no overall request timeout, but idle and silent
    // connections are closed (src/server/connection-limits.ts).
    requestTimeout: 0,
    connectionTimeout: limits.idleMs,
    keepAliveTimeout: limits.keepAliveMs,
    return503OnClosing: true,
    frameworkErrors: frameworkErrorHandler,
    clientErrorHandler,
  }) as unknown as FastifyInstance;

  app.server.maxConnections = limits.maxConnections;

  const db = openDb(layout.database);
  try {
    return await assemble(app, db, o, root, layout, unlock);
  } catch (err) {
    await app.close().catch(() => undefined);
    if (db.open) db.close();
    throw err;
  }
}

/** The delta queue: the server's SQLite file, or PostgreSQL shared with the replicas that serve the same delta directory. */
async function openQueue(db: Db, o: ServeOptions, layout: StoreLayout): Promise<DeltaQueue> {
  const retry = { ...DEFAULT_RETRY, ...o.retry };
  if (!o.databaseUrl) return new DeltaJobs(db, retry);
  if (!/^postgres(ql)?:\/\//.test(o.databaseUrl))
    throw new IbuError(
      'CONFIG_INVALID',
      `The database URL '${o.databaseUrl.replace(/\/\/[^@]*@/, '//***@')}' is not postgres://...; leave it out to use SQLite in the data directory.`,
    );
  return PostgresDeltaQueue.open(o.databaseUrl, layout.deltasDir, { retry, leaseMs: o.deltaLeaseMs });
}

async function assemble(app: FastifyInstance, db: Db, o: ServeOptions, root: string, layout: StoreLayout, unlock: () => Promise<void>): Promise<IbuServer> {
  const jobs = await openQueue(db, o, layout);
  try {
    return await assemble0(app, db, jobs, o, root, layout, unlock);
  } catch (err) {
    await jobs.close();
    throw err;
  }
}

async function assemble0(
  app: FastifyInstance,
  db: Db,
  jobs: DeltaQueue,
  o: ServeOptions,
  root: string,
  layout: StoreLayout,
  unlock: () => Promise<void>,
): Promise<IbuServer> {
  const role = o.role ?? 'all';
  const recoveredJobs = await jobs.recoverInterrupted();
  const cache = new DeltaCache(layout, jobs, o.deltaQuotaBytes ?? DEFAULTS.deltaQuotaBytes, app.log);
  const rec = await cache.reconcile();
  if (recoveredJobs > 0 || rec.partialsRemoved > 0 || rec.rowsDropped > 0 || rec.filesRemoved > 0) {
    app.log.info({ recoveredJobs, ...rec }, 'recovered state left by the previous run');
  }
  const catalog = new ReleaseCatalog(layout);
  if ((await catalog.channels()).length === 0) {
    app.log.warn(
      { dataDir: root, store: layout.releases.location },
      'no channels in the store yet: publish with ibu release publish --store DIR (is --data the right directory?)',
    );
  }
  const builder = zfsAwareBuilder(
    o.builder ?? storeDeltaBuilder({ layout, imageCacheBytes: o.imageCacheBytes ?? DEFAULTS.imageCacheBytes }),
    layout,
    o.zfsBuilder,
  );
  const workers = role === 'api' ? 0 : Math.max(0, o.workers ?? DEFAULTS.workers);
  const pool = new DeltaWorkerPool(jobs, cache, layout, builder, workers, app.log);
  const demand = new DeltaDemand(jobs, catalog, () => app.fleet !== undefined);
  const deltas = new DeltaServiceImpl(
    jobs,
    cache,
    pool,
    layout,
    o.retryAfterSeconds ?? DEFAULTS.retryAfterSeconds,
    (v) => catalog.hasRelease(v),
    demand,
    { ...ADMISSION_DEFAULTS, ...o.admission },
    app.log,
  );
  const precompute = new Precomputer(db, catalog, deltas, () => app.fleet, o.precompute ?? DEFAULTS.precompute, app.log);
  const encoders = o.deltaRecompress === false ? {} : localEncoders();
  const ctx: ServerContext = { layout, catalog, deltas, precompute, adminToken: o.adminToken, encoders };
  // ZFS streams (docs/zfs.md) are precomputed beside each ibu delta when the release signs one.
  precompute.alsoQueue = (from, to) => precomputeZfs(ctx, from, to);

  const routes: IbuServer['routes'] = [];
  app.addHook('onRoute', (r) => void routes.push({ method: r.method, url: r.url, schema: r.schema as Record<string, unknown> | undefined }));
  app.decorate('deltas', deltas);
  installErrorHandlers(app);
  releaseRoutes(app, ctx);
  releaseChangesRoutes(app, ctx);
  chunkRoutes(app, ctx);
  deltaRoutes(app, ctx);
  zfsStreamRoutes(app, ctx);
  await app.register(rateLimit, rateLimitOptions(connectionLimits(o.connections)));
  await app.register(async (scope) => adminRoutes(scope, ctx));
  // A builder serves no devices: the balancer sends check-ins to api replicas only.
  // The fleet learns releases from the same catalog devices download from (a bucket on S3).
  const channels = async () =>
    Promise.all((await catalog.channels()).map(async (c) => ({ channel: c, versions: ((await catalog.channel(c))?.releases ?? []).map((r) => r.version) })));
  if (o.fleet !== false && role !== 'builder')
    await app.register(fleetPlugin, { dataDir: root, databaseUrl: o.databaseUrl, adminToken: o.adminToken, channels });

  app.addHook('onReady', async () => {
    pool.kick();
    // An object store cannot be watched: a shorter rescan picks up a publish to S3 promptly.
    precompute.start(layout.channelsDir, o.rescanIntervalMs ?? (layout.releasesLocal ? DEFAULTS.rescanIntervalMs : 10_000));
    void precompute.scan().catch((err) => app.log.error({ err }, 'initial release scan failed'));
  });
  // Runs after the HTTP server has closed and requests in flight have finished.
  app.addHook('onClose', async () => {
    await precompute.stop();
    await pool.stop();
    cache.closed = true;
    await jobs.close();
    db.close();
    await layout.releases.close?.();
    await unlock();
  });
  return { app, ctx, routes, startup: { recoveredJobs, partialsRemoved: rec.partialsRemoved } };
}
