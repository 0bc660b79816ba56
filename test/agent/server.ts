/**
 * The real `ibu serve` (createServer from src/server, fleet plugin included) on 127.0.0.1:0 over
 * a device's release store, for agent tests: protocol drift between the agent and the server
 * fails here, not only in a QEMU test. The test drives it through its admin API (pre-authorize
 * a device, offer a release with a rollout) and observes it with Fastify hooks: what it accepted
 * (check-ins, events) and how many chunks it served. One hook adds latency to chunk answers so a
 * download can be killed mid-way.
 */
import type { AddressInfo } from 'node:net';
import { createServer, type IbuServer } from '../../src/server/app.js';
import type { CheckinRequest, DeviceEvent } from '../../src/fleet/protocol.js';
import { signed } from '../helpers/enroll.js';

export const ADMIN_TOKEN = 'admin-token';

export interface ServerOptions {
  /** Delay per chunk answer in ms (to make downloads killable mid-way). */
  chunkDelayMs?: number;
  /** Base Retry-After of 202 answers (default 1 s). */
  retryAfterSeconds?: number;
}

export interface TestServer {
  url: string;
  srv: IbuServer;
  /** Check-ins the server accepted (2xx), in order. */
  checkins: CheckinRequest[];
  /** Device events the server accepted (2xx), in order. */
  events: DeviceEvent[];
  /** Chunk requests answered. */
  chunkRequests: number;
  /** Pre-authorizes `deviceId` and enrolls it on the stable channel; returns its token. */
  enroll(deviceId: string): Promise<string>;
  /** Registers the releases and starts a rollout of `version` to every device of the channel, with no failure threshold. */
  offer(version: string, releases?: string[]): Promise<void>;
  /** An admin API call; throws on a non-2xx answer. */
  admin(method: 'GET' | 'POST', route: string, body?: unknown): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

/** Starts the real server on `storeDir` (a release store made by publishRelease; the server adds its database and cache beside). */
export async function startServer(storeDir: string, o: ServerOptions = {}): Promise<TestServer> {
  const srv = await createServer({
    dataDir: storeDir,
    adminToken: ADMIN_TOKEN,
    workers: 1,
    precompute: 0,
    rescanIntervalMs: 0,
    retryAfterSeconds: o.retryAfterSeconds ?? 1,
    logger: false,
  });
  const t: TestServer = {
    url: '',
    srv,
    checkins: [],
    events: [],
    chunkRequests: 0,
    async enroll(deviceId) {
      await t.admin('POST', '/v1/admin/fleet/devices/preauthorize', { ids: [deviceId], channel: 'stable' });
      const res = await fetch(`${t.url}/v1/devices/enroll`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(signed({ deviceId, channel: 'stable' })),
      });
      const body = (await res.json()) as { token?: string };
      if (!res.ok || !body.token) throw new Error(`enroll ${deviceId}: HTTP ${res.status} ${JSON.stringify(body)}`);
      return body.token;
    },
    async offer(version, releases = [version]) {
      for (const v of releases) await t.admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: v });
      await t.admin('POST', '/v1/admin/fleet/rollouts', { channel: 'stable', version, spec: { waves: [100], minSample: 1000, maxFailures: 0 } });
    },
    async admin(method, route, body) {
      const res = await fetch(`${t.url}${route}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${route}: HTTP ${res.status} ${text}`);
      return (text ? JSON.parse(text) : {}) as Record<string, unknown>;
    },
    close: () => srv.app.close(),
  };
  srv.app.addHook('onRequest', async (req) => {
    if (req.url.startsWith('/v1/chunks/') && o.chunkDelayMs) await new Promise((r) => setTimeout(r, o.chunkDelayMs));
  });
  srv.app.addHook('onResponse', async (req, reply) => {
    if (req.url.startsWith('/v1/chunks/')) t.chunkRequests++;
    if (req.method !== 'POST' || reply.statusCode >= 300) return;
    if (/^\/v1\/devices\/[^/]+\/checkin$/.test(req.url)) t.checkins.push(req.body as CheckinRequest);
    if (/^\/v1\/devices\/[^/]+\/events$/.test(req.url)) t.events.push(req.body as DeviceEvent);
  });
  await srv.app.listen({ port: 0, host: '127.0.0.1' });
  t.url = `http://127.0.0.1:${(srv.app.server.address() as AddressInfo).port}`;
  return t;
}
