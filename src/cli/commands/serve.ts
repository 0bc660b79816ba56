import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { IbuError } from '../../errors.js';
import { parseSize } from '../run.js';
import { roleProblems, type ServeRole } from '../../server/serve-role.js';
import { addS3Options, s3OptionsFromFlags, type S3Flags } from './s3-options.js';

interface ServeCliOptions {
  data: string;
  listen: string;
  tlsCert?: string;
  tlsKey?: string;
  adminToken?: string;
  workers: string;
  deltaQuota?: string;
  imageCache?: string;
  precompute: string;
  maxQueuedDeltas: string;
  deltasPerClient: string;
  rescanInterval: string;
  databaseUrl?: string;
  logLevel: string;
  fleet: boolean;
  deltaRecompress: boolean;
  store?: string;
  role: string;
  deltaDir?: string;
  deltaLease: string;
}

/** Splits HOST:PORT (IPv6 in brackets) into its parts. */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new IbuError('USAGE', `--listen '${s}' is not HOST:PORT (e.g. 0.0.0.0:8080, [::]:8443, 127.0.0.1:0)`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

function readTls(cert?: string, key?: string): { cert: Buffer; key: Buffer } | undefined {
  if (!cert && !key) return undefined;
  if (!cert || !key) throw new IbuError('USAGE', 'TLS needs both --tls-cert and --tls-key (PEM files).');
  try {
    return { cert: readFileSync(cert), key: readFileSync(key) };
  } catch (err) {
    throw new IbuError('CONFIG_INVALID', `cannot read the TLS files (${(err as Error).message}); check --tls-cert and --tls-key`, { cause: err });
  }
}

function int(name: string, s: string, min: number): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min) throw new IbuError('USAGE', `${name} must be an integer of at least ${min}, not '${s}'`);
  return n;
}

export function registerServeCommands(program: Command): void {
  addS3Options(program.command('serve'))
    .description('serve releases, chunks and on-demand deltas from a store directory (docs/server.md)')
    .requiredOption('--data <dir>', 'the store directory that ibu release publish --store writes (with --store: local state only)')
    .option('--store <s3url>', 'read releases from s3://bucket/prefix instead of --data (deltas, images and the database stay in --data)')
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:8080')
    .option('--tls-cert <file>', 'PEM certificate chain (HTTPS)')
    .option('--tls-key <file>', 'PEM private key (HTTPS)')
    .option('--admin-token <token>', 'bearer token for /v1/admin routes (or env IBU_ADMIN_TOKEN)')
    .option('--workers <n>', 'concurrent delta builds (0: queue only, build nothing)', '1')
    .option('--role <role>', 'api (serve, queue deltas), builder (build deltas the api replicas queue) or all (both)', 'all')
    .option('--delta-dir <dir>', 'where built deltas live (default DATA/cache/deltas); replicas share one directory')
    .option('--delta-lease <seconds>', 'a build claim its builder stops renewing is taken over after this long (PostgreSQL queue)', '30')
    .option('--delta-quota <bytes>', 'disk quota for built deltas (e.g. 20G)')
    .option('--image-cache <bytes>', 'disk quota for release images reconstructed to build deltas (e.g. 8G)')
    .option('--precompute <k>', 'deltas built ahead per new release (0 = off)', '3')
    .option('--max-queued-deltas <n>', 'delta jobs waiting at most; clients are refused past it (503 DELTA_QUEUE_FULL)', '256')
    .option('--deltas-per-client <n>', 'builds of pairs no device needs one client address may have queued (429 past it)', '4')
    .option('--rescan-interval <seconds>', 'how often to rescan channels besides watching them', '30')
    .option('--database-url <url>', 'fleet database: postgres://... (default SQLite in the data dir)')
    .option('--log-level <level>', 'pino log level', 'info')
    .option('--no-fleet', 'serve releases and deltas only, without the fleet API')
    .option('--no-delta-recompress', "never build deltas with RECOMPRESS ops, even for devices whose xz/gzip/zstd match this server's")
    .action(async (opts: ServeCliOptions & S3Flags) => {
      // Collect every problem before starting (STYLE.md: options in, resolved config out).
      const problems: string[] = [];
      const attempt = <T>(f: () => T): T | undefined => {
        try {
          return f();
        } catch (err) {
          problems.push((err as Error).message);
          return undefined;
        }
      };
      const listen = attempt(() => parseListen(opts.listen));
      const https = attempt(() => readTls(opts.tlsCert, opts.tlsKey));
      const workers = attempt(() => int('--workers', opts.workers, 0));
      const lease = attempt(() => int('--delta-lease', opts.deltaLease, 1));
      problems.push(...roleProblems(opts.role, { databaseUrl: opts.databaseUrl }));
      const precompute = attempt(() => int('--precompute', opts.precompute, 0));
      const rescan = attempt(() => int('--rescan-interval', opts.rescanInterval, 0));
      const maxQueued = attempt(() => int('--max-queued-deltas', opts.maxQueuedDeltas, 1));
      const perClient = attempt(() => int('--deltas-per-client', opts.deltasPerClient, 0));
      const deltaQuotaBytes = opts.deltaQuota ? attempt(() => parseSize(opts.deltaQuota!)) : undefined;
      const imageCacheBytes = opts.imageCache ? attempt(() => parseSize(opts.imageCache!)) : undefined;
      if (problems.length > 0) throw new IbuError('USAGE', problems.join('; '));
      const adminToken = opts.adminToken ?? process.env.IBU_ADMIN_TOKEN ?? undefined;

      const { createServer } = await import('../../server/app.js');
      const { app } = await createServer({
        dataDir: opts.data,
        store: opts.store,
        s3: s3OptionsFromFlags(opts),
        adminToken: adminToken || undefined,
        // An api replica builds nothing whatever --workers says (its default is 1).
        workers: opts.role === 'api' ? 0 : workers,
        role: opts.role as ServeRole,
        deltaDir: opts.deltaDir,
        deltaLeaseMs: lease! * 1000,
        precompute,
        admission: { maxQueued: maxQueued!, perClient: perClient! },
        rescanIntervalMs: rescan! * 1000,
        deltaQuotaBytes,
        imageCacheBytes,
        https,
        databaseUrl: opts.databaseUrl,
        fleet: opts.fleet,
        deltaRecompress: opts.deltaRecompress,
        logger: { level: opts.logLevel },
      });
      if (!adminToken) app.log.warn('no admin token: /v1/admin routes answer 403 (set --admin-token or IBU_ADMIN_TOKEN)');
      await app.listen({ host: listen!.host, port: listen!.port });

      // Graceful shutdown: stop accepting, let requests in flight finish (bounded), put running
      // builds back in the queue, close the database. A second signal exits at once.
      await new Promise<void>((resolve) => {
        let closing = false;
        const onSignal = (sig: NodeJS.Signals): void => {
          if (closing) {
            app.log.warn({ sig }, 'second signal: exiting now');
            process.exit(130);
          }
          closing = true;
          app.log.info({ sig }, 'shutting down');
          const force = setTimeout(() => {
            app.log.warn('requests still running after 30 s; closing their connections');
            app.server.closeAllConnections();
          }, 30_000);
          force.unref();
          app.close().then(
            () => {
              clearTimeout(force);
              resolve();
            },
            (err: unknown) => {
              app.log.error({ err }, 'shutdown failed');
              resolve();
            },
          );
        };
        process.once('SIGTERM', onSignal);
        process.once('SIGINT', onSignal);
      });
    });
}
