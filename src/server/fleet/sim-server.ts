/**
 * A fleet server in a child process for the simulator: the real `ibu serve` application
 * (src/server/app.ts createServer) with the fleet plugin, on 127.0.0.1:<port>. Prints one JSON
 * line {"port": N} when listening; on SIGTERM closes gracefully (requests in flight finish, the
 * group commit flushes), prints {"cpu": {...}} and exits 0.
 *   node sim-server.js --data DIR --port N --admin-token T [--database-url URL]
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { fleetPlugin } from './plugin.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const dataDir = arg('data')!;
const port = Number(arg('port') ?? 0);
const adminToken = arg('admin-token')!;
const databaseUrl = arg('database-url');

let app: FastifyInstance;
let real = false;
try {
  const { createServer } = await import('../app.js');
  const srv = await createServer({ dataDir, adminToken, precompute: 0, databaseUrl, logger: false });
  app = srv.app;
  real = true;
} catch (err) {
  // The release/delta side failed to start here: serve the fleet alone rather than not at all.
  process.stderr.write(`sim-server: createServer failed (${(err as Error).message}); serving the fleet plugin alone\n`);
  app = Fastify({ logger: false });
}
if (!app.fleet) await app.register(fleetPlugin, { dataDir, adminToken, databaseUrl, storeSyncMs: 1000 });
await app.listen({ host: '127.0.0.1', port });
const addr = app.server.address();
process.stdout.write(JSON.stringify({ port: typeof addr === 'object' && addr ? addr.port : port, realServer: real }) + '\n');

let closing = false;
process.on('SIGTERM', () => {
  if (closing) return;
  closing = true;
  void app.close().then(() => {
    process.stdout.write(JSON.stringify({ cpu: process.cpuUsage() }) + '\n', () => process.exit(0));
  });
});
