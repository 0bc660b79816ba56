import type { FastifyInstance } from 'fastify';
import { IbuError } from '../../errors.js';
import type { Fleet } from '../../fleet/fleet.js';
import type { CheckinRequest, DeviceEvent, EnrollRequest } from '../../fleet/protocol.js';
import { bearerToken } from '../admin-auth.js';
import { UNAUTHENTICATED_RATE_LIMIT } from '../connection-limits.js';
import type { FleetMetrics } from './metrics.js';
import { checkinResponse, deviceErrors, enrollResponse, errorProp, idParams, okSchema, responses, versionProp } from './schemas.js';

/** The device protocol (src/fleet/protocol.ts): enroll, check in, report events, return a lease. */
export function deviceRoutes(app: FastifyInstance, service: Fleet, metrics: FleetMetrics): void {
  app.post<{ Body: EnrollRequest }>(
    '/v1/devices/enroll',
    {
      config: { rateLimit: UNAUTHENTICATED_RATE_LIMIT },
      schema: {
        body: {
          type: 'object',
          required: ['deviceId', 'publicKey', 'at', 'proof'],
          properties: {
            deviceId: { type: 'string', maxLength: 128 },
            enrollmentSecret: { type: 'string', maxLength: 512 },
            group: { type: 'string', maxLength: 64 },
            channel: { type: 'string', maxLength: 64 },
            publicKey: { type: 'string', maxLength: 64 },
            at: { type: 'integer' },
            proof: { type: 'string', maxLength: 128 },
          },
        },
        response: responses({ 200: enrollResponse }, deviceErrors),
      },
    },
    async (req) => service.enroll(req.body, bearerToken(req)),
  );

  app.post<{ Params: { id: string }; Body: CheckinRequest }>(
    '/v1/devices/:id/checkin',
    {
      schema: {
        params: idParams,
        body: {
          type: 'object',
          required: ['version', 'state', 'trial'],
          properties: {
            version: versionProp,
            state: { type: 'string', maxLength: 64 },
            trial: { type: 'boolean' },
            committedVersion: versionProp,
            preparedVersion: { type: ['string', 'null'], maxLength: 64 },
            freeBytes: { type: 'number' },
            lastError: errorProp,
            wantRebootLease: { type: 'boolean' },
          },
        },
        response: responses({ 200: checkinResponse }, deviceErrors),
      },
    },
    async (req) => {
      const t0 = process.hrtime.bigint();
      try {
        const res = await service.checkin(req.params.id, bearerToken(req), req.body);
        metrics.checkin('ok', t0);
        return res;
      } catch (err) {
        metrics.checkin(err instanceof IbuError ? err.code : 'INTERNAL', t0);
        throw err;
      }
    },
  );

  app.post<{ Params: { id: string }; Body: DeviceEvent }>(
    '/v1/devices/:id/events',
    {
      schema: {
        params: idParams,
        body: {
          type: 'object',
          required: ['type', 'fromVersion', 'toVersion'],
          properties: {
            type: { type: 'string', maxLength: 64 },
            fromVersion: versionProp,
            toVersion: versionProp,
            at: { type: 'string', maxLength: 64 },
            error: errorProp,
          },
        },
        response: responses({ 200: okSchema }, deviceErrors),
      },
    },
    async (req) => {
      await service.event(req.params.id, bearerToken(req), req.body);
      metrics.event(req.body.type);
      return { ok: true };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/v1/devices/:id/lease/release',
    { schema: { params: idParams, response: responses({ 200: okSchema }, deviceErrors) } },
    async (req) => {
      await service.releaseLease(req.params.id, bearerToken(req));
      return { ok: true };
    },
  );
}
