/**
 * A fleet server in a child process for the simulator: the real `ibu serve` application
 * (src/server/app.ts createServer) with the fleet plugin, on 127.0.0.1:<port>. Prints one JSON
 * line {"port": N} when listening; on SIGTERM closes gracefully (requests in flight finish, the
 * group commit flushes), prints {"cpu": {...}, "lag": {...}} (CPU used, and how late its event loop
 * ran: a stall there delays every request in flight) and exits 0.
 *   node sim-server.js --data DIR --port N --admin-token T [--database-url URL]
 *                      [--store s3://bucket/prefix] [--role api|builder|all] [--delta-dir DIR]
 * (S3 settings and credentials from the AWS environment, as `ibu serve` reads them.)
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fleetPlugin } from './plugin.js';
import { connectionLimits, httpServerOptions } from '../connection-limits.js';
import { traceStalls } from '../../fleet/simulator/stall-trace.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const dataDir = arg('data')!;
const port = Number(arg('port') ?? 0);
const adminToken = arg('admin-token')!;
const databaseUrl = arg('database-url');
const store = arg('store');
const role = arg('role') as 'api' | 'builder' | 'all' | undefined;
const deltaDir = arg('delta-dir');

let app: FastifyInstance;
let real = false;
try {
  const { createServer } = await import('../app.js');
  const srv = await createServer({
    dataDir,
    adminToken,
    precompute: 0,
    databaseUrl,
    store,
    role,
    deltaDir,
    logger: false,
    connections: { unauthenticatedPerMinute: 0 },
  });
  app = srv.app;
  real = true;
} catch (err) {
  // A replica of a cluster (store, role) must be the real server or nothing.
  if (store || role || deltaDir) throw err;
  // The release/delta side failed to start here: serve the fleet alone rather than not at all.
  process.stderr.write(`sim-server: createServer failed (${(err as Error).message}); serving the fleet plugin alone\n`);
  // The same connection limits as `ibu serve`: silent sockets are closed here too.
  const l = connectionLimits({});
  app = Fastify({ logger: false, http: httpServerOptions(l), connectionTimeout: l.idleMs, keepAliveTimeout: l.keepAliveMs });
  app.server.maxConnections = l.maxConnections;
}
if (!app.fleet && role !== 'builder') await app.register(fleetPlugin, { dataDir, adminToken, databaseUrl, storeSyncMs: 1000 });
await app.listen({ host: '127.0.0.1', port });
const lag = monitorEventLoopDelay({ resolution: 10 });
lag.enable();
traceStalls(process.env.IBU_SIM_TRACE, 'server');
// SIGUSR2: the simulator's traffic phase begins; event-loop delay counts from here (not enrollment).
process.on('SIGUSR2', () => lag.reset());
const addr = app.server.address();
process.stdout.write(JSON.stringify({ port: typeof addr === 'object' && addr ? addr.port : port, realServer: real }) + '\n');

let closing = false;
process.on('SIGTERM', () => {
  if (closing) return;
  closing = true;
  void app.close().then(() => {
    lag.disable();
    const ms = (ns: number) => Math.round(ns / 1e4) / 100;
    process.stdout.write(JSON.stringify({ cpu: process.cpuUsage(), lag: { p99Ms: ms(lag.percentile(99)), maxMs: ms(lag.max) } }) + '\n', () => process.exit(0));
  });
});
