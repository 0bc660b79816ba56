import type { FastifyInstance, FastifyRequest } from 'fastify';
import { IbuError } from '../../errors.js';
import type { Fleet } from '../../fleet/fleet.js';
import type { DeviceRecord, RolloutDevice } from '../../fleet/types.js';
import { ADMIN_COOKIE, adminAuth, adminTokenCheck } from '../admin-auth.js';
import { UNAUTHENTICATED_RATE_LIMIT } from '../connection-limits.js';
import { DASHBOARD_HTML, DASHBOARD_JS, SIGN_IN_HTML } from './dashboard.js';
import {
  channelParams,
  deviceSchema,
  groupSchema,
  nameParams,
  okSchema,
  policySchema,
  releaseSchema,
  responses,
  rolloutIdParams,
  rolloutSchema,
  rolloutViewSchema,
  settingsSchema,
  summarySchema,
  versionCountsSchema,
  versionProp,
} from './schemas.js';

const text = { type: 'string' } as const;
const list = (items: unknown) => ({ type: 'array', items }) as const;
const anyId = { type: 'object', properties: { id: { type: 'string' } }, required: ['id'] } as const;

/** The dashboard and the fleet admin API (/v1/admin/fleet), behind the one admin check (src/server/admin-auth.ts). */
export function adminRoutes(app: FastifyInstance, service: Fleet, adminToken: string | undefined): void {
  const isAdminToken = adminTokenCheck(adminToken);

  // The dashboard: one static page; the token comes once, by the sign-in form, and is kept in an
  // HttpOnly cookie. A token in the URL is refused, never honoured: URLs end up in logs and histories.
  app.get<{ Querystring: { token?: string } }>(
    '/dashboard',
    {
      schema: { querystring: { type: 'object', properties: { token: text } }, response: { 200: text, 400: text } },
    },
    async (req, reply) => {
      if (req.query.token !== undefined) {
        return reply
          .code(400)
          .type('text/plain')
          .send('Tokens are not accepted in URLs (they end up in logs and browser histories); sign in at /dashboard/sign-in.');
      }
      reply.header('cache-control', 'no-store').header('content-security-policy', "default-src 'self'; style-src 'self' 'unsafe-inline'");
      return reply.type('text/html; charset=utf-8').send(DASHBOARD_HTML);
    },
  );
  // The sign-in without a secret in any URL: a form POSTs the token, the answer sets the cookie.
  app.register(async (signIn) => {
    signIn.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (_req, body, done) => {
      done(null, Object.fromEntries(new URLSearchParams(String(body))));
    });
    signIn.get('/dashboard/sign-in', { schema: { response: { 200: text } } }, async (_req, reply) =>
      reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').send(SIGN_IN_HTML),
    );
    signIn.post<{ Body: { token?: string } }>(
      '/dashboard/sign-in',
      {
        config: { rateLimit: UNAUTHENTICATED_RATE_LIMIT },
        schema: {
          body: { type: 'object', properties: { token: { type: 'string', maxLength: 1024 } } },
          response: { 303: { type: 'null' }, 401: text },
        },
      },
      async (req, reply) => {
        const t = req.body?.token;
        if (!isAdminToken(t)) return reply.code(401).type('text/plain').send('The admin token is wrong; go back to /dashboard/sign-in.');
        reply.header('set-cookie', `${ADMIN_COOKIE}=${encodeURIComponent(t!)}; HttpOnly; SameSite=Strict; Path=/`);
        return reply.redirect('/dashboard', 303);
      },
    );
  });
  app.get('/dashboard/app.js', { schema: { response: { 200: text } } }, async (_req, reply) =>
    reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-store').send(DASHBOARD_JS),
  );

  app.register(async (admin) => {
    admin.addHook('onRequest', adminAuth(adminToken, { cookie: true }));
    const rolloutId = (req: FastifyRequest) => {
      const id = Number((req.params as { id: string }).id);
      if (!Number.isInteger(id) || id <= 0) throw new IbuError('BAD_REQUEST', 'A rollout id is a positive integer.');
      return id;
    };
    const channelQuery = { type: 'object', properties: { channel: text } } as const;

    admin.get('/v1/admin/fleet/summary', { schema: { response: responses({ 200: summarySchema }) } }, async () => {
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
        leases: (await service.activeLeases()).map((l) => ({ deviceId: l.deviceId, group: l.group, expiresAt: new Date(l.expiresAt).toISOString() })),
        groups: service.listGroups(),
        stats: { ...service.stats, ...service.commitStats, evaluator: service.isEvaluator },
      };
    });
    admin.get<{ Querystring: { channel?: string } }>(
      '/v1/admin/fleet/versions',
      {
        schema: { querystring: channelQuery, response: responses({ 200: versionCountsSchema }) },
      },
      async (req) => service.versionCounts(req.query.channel),
    );

    admin.get<{ Querystring: { channel?: string } }>(
      '/v1/admin/fleet/releases',
      {
        schema: { querystring: channelQuery, response: responses({ 200: list(releaseSchema) }) },
      },
      async (req) => service.releasesOf(req.query.channel),
    );
    admin.post<{ Body: { channel?: string; version: string; mandatory?: boolean; manifestUrl?: string } }>(
      '/v1/admin/fleet/releases',
      {
        schema: {
          body: {
            type: 'object',
            required: ['version'],
            properties: { channel: text, version: versionProp, mandatory: { type: 'boolean' }, manifestUrl: text },
          },
          response: responses({ 200: releaseSchema }),
        },
      },
      async (req) => service.registerRelease(req.body, 'api'),
    );
    admin.put<{ Params: { channel: string }; Body: { rollout?: Record<string, unknown> | null } }>(
      '/v1/admin/fleet/channels/:channel/policy',
      {
        schema: {
          params: channelParams,
          body: { type: 'object', properties: { rollout: { type: ['object', 'null'] } } },
          response: responses({ 200: policySchema }),
        },
      },
      async (req) => service.setChannelPolicy(req.params.channel, req.body),
    );
    admin.get<{ Params: { channel: string } }>(
      '/v1/admin/fleet/channels/:channel/policy',
      {
        schema: { params: channelParams, response: responses({ 200: policySchema }) },
      },
      async (req) => service.channelPolicy(req.params.channel),
    );

    admin.get('/v1/admin/fleet/rollouts', { schema: { response: responses({ 200: list(rolloutViewSchema) }) } }, async () => {
      const out = [];
      for (const r of service.listRollouts()) out.push(await service.rolloutView(r.id));
      return out;
    });
    admin.post<{ Body: { channel?: string; version: string; spec?: Record<string, unknown> } }>(
      '/v1/admin/fleet/rollouts',
      {
        schema: {
          body: { type: 'object', required: ['version'], properties: { channel: text, version: versionProp, spec: { type: 'object' } } },
          response: responses({ 201: rolloutViewSchema }),
        },
      },
      async (req, reply) => {
        const r = await service.createRollout(req.body);
        return reply.code(201).send(await service.rolloutView(r.id));
      },
    );
    // ?brief=1: the record without wave progress (cheap enough to poll often).
    admin.get<{ Querystring: { brief?: string } }>(
      '/v1/admin/fleet/rollouts/:id',
      {
        schema: { params: rolloutIdParams, querystring: { type: 'object', properties: { brief: text } }, response: responses({ 200: rolloutSchema }) },
      },
      async (req) => (req.query.brief ? service.rollout(rolloutId(req)) : service.rolloutView(rolloutId(req))),
    );
    admin.post<{ Body: { reason?: string } | undefined }>(
      '/v1/admin/fleet/rollouts/:id/pause',
      {
        schema: { params: rolloutIdParams, response: responses({ 200: rolloutViewSchema }) },
      },
      async (req) => {
        await service.pause(rolloutId(req), req.body?.reason ? `paused by an operator: ${req.body.reason}` : undefined);
        return service.rolloutView(rolloutId(req));
      },
    );
    admin.post('/v1/admin/fleet/rollouts/:id/resume', { schema: { params: rolloutIdParams, response: responses({ 200: rolloutViewSchema }) } }, async (req) => {
      await service.resume(rolloutId(req));
      return service.rolloutView(rolloutId(req));
    });
    admin.post<{ Body: { reason?: string } | undefined }>(
      '/v1/admin/fleet/rollouts/:id/abort',
      {
        schema: { params: rolloutIdParams, response: responses({ 200: rolloutViewSchema }) },
      },
      async (req) => {
        await service.abort(rolloutId(req), req.body?.reason ? `aborted by an operator: ${req.body.reason}` : undefined);
        return service.rolloutView(rolloutId(req));
      },
    );
    admin.post('/v1/admin/fleet/evaluate', { schema: { response: responses({ 200: okSchema }) } }, async () => {
      await service.evaluate();
      return { ok: true };
    });

    admin.get('/v1/admin/fleet/groups', { schema: { response: responses({ 200: list(groupSchema) }) } }, async () => service.listGroups());
    admin.put<{ Params: { name: string }; Body: Record<string, unknown> }>(
      '/v1/admin/fleet/groups/:name',
      {
        schema: {
          params: nameParams,
          body: {
            type: 'object',
            properties: { window: { type: ['object', 'null'] }, maxConcurrentReboots: { type: 'integer' }, leaseTtlSeconds: { type: 'number' } },
          },
          response: responses({ 200: groupSchema }),
        },
      },
      async (req) => service.setGroup({ ...req.body, name: req.params.name }),
    );

    admin.get('/v1/admin/fleet/settings', { schema: { response: responses({ 200: settingsSchema }) } }, async () => service.settings());
    admin.put<{ Body: Record<string, unknown> }>(
      '/v1/admin/fleet/settings',
      {
        schema: { body: { type: 'object' }, response: responses({ 200: settingsSchema }) },
      },
      async (req) => service.updateSettings(req.body),
    );

    admin.post<{ Body: { ids: string[]; group?: string; channel?: string } }>(
      '/v1/admin/fleet/devices/preauthorize',
      {
        schema: {
          body: { type: 'object', required: ['ids'], properties: { ids: { type: 'array', items: text, maxItems: 100_000 }, group: text, channel: text } },
          response: responses({ 200: { type: 'object', properties: { added: { type: 'integer' } }, required: ['added'] } }),
        },
      },
      async (req) => ({ added: await service.preauthorize(req.body.ids, req.body.group, req.body.channel) }),
    );
    admin.post<{ Body: { devices: Array<{ id: string; secretHash: string }>; group?: string; channel?: string } }>(
      '/v1/admin/fleet/devices/factory-secrets',
      {
        schema: {
          body: {
            type: 'object',
            required: ['devices'],
            properties: {
              devices: {
                type: 'array',
                maxItems: 100_000,
                items: { type: 'object', required: ['id', 'secretHash'], properties: { id: text, secretHash: text } },
              },
              group: text,
              channel: text,
            },
          },
          response: responses({ 200: { type: 'object', properties: { added: { type: 'integer' } }, required: ['added'] } }),
        },
      },
      async (req) => ({ added: await service.importFactorySecrets(req.body.devices, req.body.group, req.body.channel) }),
    );
    admin.post<{ Params: { id: string } }>(
      '/v1/admin/fleet/devices/:id/reset-identity',
      { schema: { params: anyId, response: responses({ 200: deviceSchema }) } },
      async (req) => publicDevice(await service.resetIdentity(req.params.id)),
    );
    admin.get<{ Querystring: { after?: string; limit?: string } }>(
      '/v1/admin/fleet/devices',
      {
        schema: {
          querystring: { type: 'object', properties: { after: text, limit: text } },
          response: responses({
            200: { type: 'object', properties: { devices: list(deviceSchema), next: { type: ['string', 'null'] } }, required: ['devices', 'next'] },
          }),
        },
      },
      async (req) => {
        const devices = await service.devices(req.query.after ?? '', Number(req.query.limit ?? 1000) || 1000);
        return { devices: devices.map(publicDevice), next: devices.length ? devices[devices.length - 1]!.id : null };
      },
    );
    admin.get<{ Querystring: { limit?: string } }>(
      '/v1/admin/fleet/devices/problems',
      {
        schema: { querystring: { type: 'object', properties: { limit: text } }, response: responses({ 200: list(deviceSchema) }) },
      },
      async (req) => (await service.problems(Number(req.query.limit ?? 100) || 100)).map(publicDevice),
    );
    admin.get<{ Params: { id: string } }>(
      '/v1/admin/fleet/devices/:id',
      {
        schema: { params: anyId, response: responses({ 200: deviceSchema }) },
      },
      async (req) => publicDevice(await service.device(req.params.id)),
    );
  });
}

/** A device as the admin API shows it: never the token hash. */
function publicDevice(d: DeviceRecord & { participation?: RolloutDevice | null }) {
  const { tokenHash, keyProofAt: _k, ...rest } = d;
  return {
    ...rest,
    tokenRevoked: tokenHash === '',
    lastCheckin: d.lastCheckin ? new Date(d.lastCheckin).toISOString() : null,
    enrolledAt: new Date(d.enrolledAt).toISOString(),
  };
}
