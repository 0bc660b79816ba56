import { createHash, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { IbuError, type ErrorCode } from '../../errors.js';
import { Fleet, type FleetConfig, hashToken } from '../../fleet/fleet.js';
import type { CheckinRequest, DeviceEvent, EnrollRequest } from '../../fleet/protocol.js';
import type { FleetRepository } from '../../fleet/repository.js';
import type { DeviceRecord, RolloutDevice } from '../../fleet/types.js';
import { isValidVersion } from '../../version.js';
import type { FleetPluginOptions } from '../contracts.js';
import { DASHBOARD_HTML, DASHBOARD_JS } from './dashboard.js';
import { FleetMetrics } from './metrics.js';
import { PostgresFleetRepository } from '../../fleet/sql/postgres-repository.js';
import { SqliteFleetRepository } from '../../fleet/sql/sqlite-repository.js';

/** Options beyond the shared contract; all optional, so `ibu serve` can pass just the contract. */
export interface FleetPluginOptionsExt extends FleetPluginOptions {
  /** Overrides of the fleet defaults (run-time settings stored in the database still win). */
  config?: Partial<FleetConfig>;
  /** Enrollment secret for ids not pre-authorized (only its hash is kept). Default: IBU_ENROLLMENT_SECRET. */
  enrollmentSecret?: string;
  /** How often channels/*.json in the data dir is re-read for new releases. Default 5 s; 0 = only at start. */
  storeSyncMs?: number;
  /** Replaces the repository (tests). */
  repository?: FleetRepository;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  BAD_REQUEST: 400, USAGE: 400, VERSION_INVALID: 400, CONFIG_INVALID: 400, ROLLOUT_INVALID: 400, UNAUTHORIZED: 401,
  NOT_FOUND: 404, DEVICE_UNKNOWN: 404, RELEASE_NOT_FOUND: 404, CONFLICT: 409, STORE_UNAVAILABLE: 503,
};

export function openFleetRepository(o: FleetPluginOptions): FleetRepository {
  if (o.databaseUrl && /^postgres(ql)?:\/\//.test(o.databaseUrl)) return new PostgresFleetRepository(o.databaseUrl);
  if (o.databaseUrl) throw new IbuError('CONFIG_INVALID', `The database URL '${o.databaseUrl.replace(/\/\/[^@]*@/, '//***@')}' is not postgres://...; leave it out to use SQLite in the data directory.`);
  return new SqliteFleetRepository(path.join(o.dataDir, 'fleet.sqlite'));
}

/**
 * The fleet side of `ibu serve`: device protocol (src/fleet/protocol.ts), admin API under
 * /v1/admin/fleet, the dashboard at /dashboard and Prometheus metrics at /metrics. Decorates
 * `app.fleet` on the parent (not encapsulated) so the delta side can read version counts;
 * the routes live in their own scope with their own error mapping.
 */
async function fleetPluginImpl(app: FastifyInstance, o: FleetPluginOptionsExt): Promise<void> {
  const repo = o.repository ?? openFleetRepository(o);
  const secret = o.enrollmentSecret ?? process.env.IBU_ENROLLMENT_SECRET;
  const service = new Fleet(
    repo,
    { ...o.config, ...(secret ? { enrollmentSecretHash: hashToken(secret) } : {}) },
    (from, to) => (app.deltas ? app.deltas.status(from, to) : Promise.resolve('none')),
    Date.now,
    (err, what) => app.log.error({ err }, `fleet: ${what} failed`),
  );
  await service.start();
  await syncReleasesFromStore(service, o.dataDir, app);
  const metrics = new FleetMetrics(service);
  app.decorate('fleet', service);
  app.decorate('fleetService', service);

  let timer: NodeJS.Timeout | undefined;
  let storeTimer: NodeJS.Timeout | undefined;
  const schedule = () => {
    timer = setTimeout(() => {
      service.evaluate().catch((err) => app.log.error({ err }, 'fleet rollout evaluation failed')).finally(() => {
        if (timer) schedule();
      });
    }, service.config.evaluateEveryMs);
    timer.unref();
  };
  app.addHook('onReady', async () => {
    schedule();
    const every = o.storeSyncMs ?? 5000;
    if (every > 0) {
      storeTimer = setInterval(() => void syncReleasesFromStore(service, o.dataDir, app), every);
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
    scope.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number; code?: string }, req, reply) => {
      if (err instanceof IbuError) {
        const status = STATUS[err.code] ?? 500;
        if (status >= 500) req.log.error({ err }, 'fleet request failed');
        return reply.code(status).send({ error: { code: err.code, message: err.message } });
      }
      if (err.validation) return reply.code(400).send({ error: { code: 'BAD_REQUEST', message: `Invalid request: ${err.message}. See docs/fleet.md for the API.` } });
      const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
      if (status >= 500) req.log.error({ err }, 'fleet request failed');
      return reply.code(status).send({ error: { code: status >= 500 ? 'INTERNAL' : 'BAD_REQUEST', message: err.message } });
    });
    deviceRoutes(scope, service, metrics);
    adminRoutes(scope, service, o.adminToken);
    scope.get('/metrics', async (_req, reply) => {
      reply.type(metrics.registry.contentType);
      return metrics.registry.metrics();
    });
  });
}
// Like fastify-plugin: run in the parent's context so `app.fleet` is visible to it.
(fleetPluginImpl as unknown as Record<symbol, boolean>)[Symbol.for('skip-override')] = true;
export const fleetPlugin = fleetPluginImpl;

declare module 'fastify' {
  interface FastifyInstance {
    /** The full service (admin reads, tests); `fleet` is the narrow contract. */
    fleetService?: Fleet;
  }
}

/** Registers every version in channels/<channel>.json of the data dir (the release store). */
export async function syncReleasesFromStore(service: Fleet, dataDir: string, app?: FastifyInstance): Promise<number> {
  let added = 0;
  let names: string[];
  try {
    names = await fsp.readdir(path.join(dataDir, 'channels'));
  } catch {
    return 0;
  }
  for (const n of names) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const channel = n.slice(0, -5);
    try {
      const doc = JSON.parse(await fsp.readFile(path.join(dataDir, 'channels', n), 'utf8')) as { versions?: unknown };
      const versions = Array.isArray(doc.versions) ? doc.versions.map(String).filter(isValidVersion) : [];
      const known = new Set(service.releasesOf(channel).map((r) => r.version));
      for (const v of versions) {
        if (known.has(v)) continue;
        await service.registerRelease({ channel, version: v }, 'store');
        added++;
      }
    } catch (err) {
      app?.log.warn({ err, channel }, 'cannot read a channel file of the release store; skipping it');
    }
  }
  return added;
}

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  const m = h ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
  return m ? m[1] : undefined;
}

const idParams = { type: 'object', properties: { id: { type: 'string', minLength: 1, maxLength: 128 } }, required: ['id'] } as const;
const versionProp = { type: 'string', minLength: 1, maxLength: 64 } as const;
const errorProp = { type: ['object', 'null'], properties: { code: { type: 'string' }, message: { type: 'string' } } } as const;

function deviceRoutes(app: FastifyInstance, service: Fleet, metrics: FleetMetrics): void {
  app.post<{ Body: EnrollRequest }>('/v1/devices/enroll', {
    schema: {
      body: {
        type: 'object', required: ['deviceId'],
        properties: { deviceId: { type: 'string' }, enrollmentSecret: { type: 'string' }, group: { type: 'string' }, channel: { type: 'string' } },
      },
      response: { 200: { type: 'object', properties: { deviceId: { type: 'string' }, token: { type: 'string' } } } },
    },
  }, async (req) => service.enroll(req.body));

  app.post<{ Params: { id: string }; Body: CheckinRequest }>('/v1/devices/:id/checkin', {
    schema: {
      params: idParams,
      body: {
        type: 'object', required: ['version', 'state', 'trial'],
        properties: {
          version: versionProp, state: { type: 'string' }, trial: { type: 'boolean' }, committedVersion: versionProp, preparedVersion: { type: ['string', 'null'], maxLength: 64 },
          freeBytes: { type: 'number' }, lastError: errorProp, wantRebootLease: { type: 'boolean' },
        },
      },
      response: {
        200: {
          type: 'object',
          properties: {
            target: { type: ['object', 'null'], properties: { version: { type: 'string' }, mandatory: { type: 'boolean' }, manifestUrl: { type: 'string' } } },
            deltaReady: { type: 'boolean' },
            window: {
              type: ['object', 'null'],
              properties: {
                timeZone: { type: 'string' },
                rules: { type: 'array', items: { type: 'object', properties: { days: { type: 'array', items: { type: 'integer' } }, start: { type: 'string' }, end: { type: 'string' } } } },
              },
            },
            rebootLease: { type: 'object', properties: { granted: { type: 'boolean' }, expiresAt: { type: 'string' } } },
            nextCheckinSeconds: { type: 'number' },
          },
        },
      },
    },
  }, async (req) => {
    const t0 = process.hrtime.bigint();
    try {
      const res = await service.checkin(req.params.id, bearer(req), req.body);
      metrics.checkin('ok', t0);
      return res;
    } catch (err) {
      metrics.checkin(err instanceof IbuError ? err.code : 'INTERNAL', t0);
      throw err;
    }
  });

  app.post<{ Params: { id: string }; Body: DeviceEvent }>('/v1/devices/:id/events', {
    schema: {
      params: idParams,
      body: {
        type: 'object', required: ['type', 'fromVersion', 'toVersion'],
        properties: { type: { type: 'string' }, fromVersion: versionProp, toVersion: versionProp, at: { type: 'string' }, error: errorProp },
      },
    },
  }, async (req) => {
    await service.event(req.params.id, bearer(req), req.body);
    metrics.event(req.body.type);
    return { ok: true };
  });

  app.post<{ Params: { id: string } }>('/v1/devices/:id/lease/release', { schema: { params: idParams } }, async (req) => {
    await service.releaseLease(req.params.id, bearer(req));
    return { ok: true };
  });
}

const COOKIE = 'ibu_admin';

function adminRoutes(app: FastifyInstance, service: Fleet, adminToken: string | undefined): void {
  const want = adminToken ? createHash('sha256').update(adminToken).digest() : undefined;
  const ok = (token: string | undefined) => Boolean(want && token && timingSafeEqual(createHash('sha256').update(token).digest(), want));
  const cookieToken = (req: FastifyRequest) => {
    const c = req.headers.cookie;
    if (!c) return undefined;
    for (const part of c.split(';')) {
      const [k, ...v] = part.trim().split('=');
      if (k === COOKIE) return decodeURIComponent(v.join('='));
    }
    return undefined;
  };
  const guard = async (req: FastifyRequest, reply: FastifyReply) => {
    if (!want) {
      return reply.code(403).send({ error: { code: 'UNAUTHORIZED', message: 'This server has no admin token configured; restart it with --admin-token or IBU_ADMIN_TOKEN to use the fleet admin API.' } });
    }
    if (!ok(bearer(req) ?? cookieToken(req))) {
      return reply.code(401).header('www-authenticate', 'Bearer realm="ibu-admin"').send({ error: { code: 'UNAUTHORIZED', message: 'The fleet admin API needs "Authorization: Bearer <admin token>" (or the dashboard cookie); the token is the one given to ibu serve --admin-token.' } });
    }
  };

  // The dashboard: one static page; the token comes once as ?token= and is kept in an HttpOnly cookie.
  app.get<{ Querystring: { token?: string } }>('/dashboard', async (req, reply) => {
    const q = req.query.token;
    if (q !== undefined) {
      if (!ok(q)) return reply.code(401).type('text/plain').send('The admin token is wrong; open /dashboard?token=<admin token>.');
      reply.header('set-cookie', `${COOKIE}=${encodeURIComponent(q)}; HttpOnly; SameSite=Strict; Path=/`);
      return reply.redirect('/dashboard');
    }
    reply.header('cache-control', 'no-store').header('content-security-policy', "default-src 'self'; style-src 'self' 'unsafe-inline'");
    return reply.type('text/html; charset=utf-8').send(DASHBOARD_HTML);
  });
  app.get('/dashboard/app.js', async (_req, reply) => reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-store').send(DASHBOARD_JS));

  app.register(async (admin) => {
    admin.addHook('onRequest', guard);
    const rolloutId = (req: FastifyRequest) => {
      const id = Number((req.params as { id: string }).id);
      if (!Number.isInteger(id) || id <= 0) throw new IbuError('BAD_REQUEST', 'A rollout id is a positive integer.');
      return id;
    };

    admin.get('/v1/admin/fleet/summary', async () => {
      const [versions, problems] = await Promise.all([service.versionCounts(), service.problems(100)]);
      const rollouts = [];
      for (const r of service.listRollouts().slice(0, 20)) rollouts.push(await service.rolloutView(r.id));
      return {
        devices: versions.reduce((n, v) => n + v.devices, 0),
        enrolled: await service.repo.deviceCount(),
        versions,
        releases: service.releasesOf(),
        rollouts,
        problems: problems.map(publicDevice),
        leases: service.activeLeases().map((l) => ({ deviceId: l.deviceId, group: l.group, expiresAt: new Date(l.expiresAt).toISOString() })),
        groups: service.listGroups(),
        stats: { ...service.stats, ...service.commitStats },
      };
    });
    admin.get<{ Querystring: { channel?: string } }>('/v1/admin/fleet/versions', async (req) => service.versionCounts(req.query.channel));

    admin.get<{ Querystring: { channel?: string } }>('/v1/admin/fleet/releases', async (req) => service.releasesOf(req.query.channel));
    admin.post<{ Body: { channel?: string; version: string; mandatory?: boolean; manifestUrl?: string } }>('/v1/admin/fleet/releases', {
      schema: { body: { type: 'object', required: ['version'], properties: { channel: { type: 'string' }, version: versionProp, mandatory: { type: 'boolean' }, manifestUrl: { type: 'string' } } } },
    }, async (req) => service.registerRelease(req.body, 'api'));
    admin.put<{ Params: { channel: string }; Body: { rollout?: Record<string, unknown> | null } }>('/v1/admin/fleet/channels/:channel/policy', {
      schema: { body: { type: 'object', properties: { rollout: { type: ['object', 'null'] } } } },
    }, async (req) => service.setChannelPolicy(req.params.channel, req.body));
    admin.get<{ Params: { channel: string } }>('/v1/admin/fleet/channels/:channel/policy', async (req) => service.channelPolicy(req.params.channel));

    admin.get('/v1/admin/fleet/rollouts', async () => {
      const out = [];
      for (const r of service.listRollouts()) out.push(await service.rolloutView(r.id));
      return out;
    });
    admin.post<{ Body: { channel?: string; version: string; spec?: Record<string, unknown> } }>('/v1/admin/fleet/rollouts', {
      schema: { body: { type: 'object', required: ['version'], properties: { channel: { type: 'string' }, version: versionProp, spec: { type: 'object' } } } },
    }, async (req, reply) => {
      const r = await service.createRollout(req.body);
      return reply.code(201).send(await service.rolloutView(r.id));
    });
    // ?brief=1: the record without wave progress (cheap enough to poll often).
    admin.get<{ Querystring: { brief?: string } }>('/v1/admin/fleet/rollouts/:id', async (req) => (req.query.brief ? service.rollout(rolloutId(req)) : service.rolloutView(rolloutId(req))));
    admin.post<{ Body: { reason?: string } | undefined }>('/v1/admin/fleet/rollouts/:id/pause', async (req) => {
      await service.pause(rolloutId(req), req.body?.reason ? `paused by an operator: ${req.body.reason}` : undefined);
      return service.rolloutView(rolloutId(req));
    });
    admin.post('/v1/admin/fleet/rollouts/:id/resume', async (req) => {
      await service.resume(rolloutId(req));
      return service.rolloutView(rolloutId(req));
    });
    admin.post<{ Body: { reason?: string } | undefined }>('/v1/admin/fleet/rollouts/:id/abort', async (req) => {
      await service.abort(rolloutId(req), req.body?.reason ? `aborted by an operator: ${req.body.reason}` : undefined);
      return service.rolloutView(rolloutId(req));
    });
    admin.post('/v1/admin/fleet/evaluate', async () => {
      await service.evaluate();
      return { ok: true };
    });

    admin.get('/v1/admin/fleet/groups', async () => service.listGroups());
    admin.put<{ Params: { name: string }; Body: Record<string, unknown> }>('/v1/admin/fleet/groups/:name', {
      schema: { body: { type: 'object', properties: { window: { type: ['object', 'null'] }, maxConcurrentReboots: { type: 'integer' }, leaseTtlSeconds: { type: 'number' } } } },
    }, async (req) => service.setGroup({ ...req.body, name: req.params.name }));

    admin.get('/v1/admin/fleet/settings', async () => service.settings());
    admin.put<{ Body: Record<string, unknown> }>('/v1/admin/fleet/settings', { schema: { body: { type: 'object' } } }, async (req) => service.updateSettings(req.body));

    admin.post<{ Body: { ids: string[]; group?: string; channel?: string } }>('/v1/admin/fleet/devices/preauthorize', {
      schema: { body: { type: 'object', required: ['ids'], properties: { ids: { type: 'array', items: { type: 'string' }, maxItems: 100_000 }, group: { type: 'string' }, channel: { type: 'string' } } } },
    }, async (req) => ({ added: await service.preauthorize(req.body.ids, req.body.group, req.body.channel) }));
    admin.get<{ Querystring: { after?: string; limit?: string } }>('/v1/admin/fleet/devices', async (req) => {
      const devices = await service.devices(req.query.after ?? '', Number(req.query.limit ?? 1000) || 1000);
      return { devices: devices.map(publicDevice), next: devices.length ? devices[devices.length - 1]!.id : null };
    });
    admin.get<{ Querystring: { limit?: string } }>('/v1/admin/fleet/devices/problems', async (req) => (await service.problems(Number(req.query.limit ?? 100) || 100)).map(publicDevice));
    admin.get<{ Params: { id: string } }>('/v1/admin/fleet/devices/:id', async (req) => publicDevice(await service.device(req.params.id)));
  });
}

/** A device as the admin API shows it: never the token hash. */
function publicDevice(d: DeviceRecord & { participation?: RolloutDevice | null }) {
  const { tokenHash: _t, ...rest } = d;
  return {
    ...rest,
    lastCheckin: d.lastCheckin ? new Date(d.lastCheckin).toISOString() : null,
    enrolledAt: new Date(d.enrolledAt).toISOString(),
  };
}
