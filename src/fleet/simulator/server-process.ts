import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { IbuError } from '../../errors.js';
import { unrefSleep } from './naps.js';
import { isYoungGenerationFlag, withoutYoungGeneration } from './young-generation.js';

export interface ServerProcessOptions {
  dataDir: string;
  adminToken: string;
  databaseUrl?: string;
  /** `s3://bucket/prefix`: releases from a bucket (settings and credentials from `env`, the AWS variables). */
  store?: string;
  /** `ibu serve --role`: api replicas serve devices; a builder builds deltas only. Default all. */
  role?: 'api' | 'builder' | 'all';
  /** The delta directory every replica shares (`ibu serve --delta-dir`). */
  deltaDir?: string;
  env?: Record<string, string>;
}

/**
 * The server under test as a child process (src/server/fleet/sim-server.ts: the real `ibu serve`
 * application on loopback). It reports its port when listening, and its CPU time and event-loop
 * lag when it stops; a restart keeps the port and the data directory.
 */
export class ServerProcess {
  port = 0;
  realServer = false;
  /** CPU seconds the server used, summed over its lives. */
  cpuSeconds = 0;
  /** How late its event loop ran: the worse of its lives. */
  readonly lag = { p99Ms: 0, maxMs: 0 };
  private child: ChildProcess | null = null;

  constructor(private readonly o: ServerProcessOptions) {}

  get dataDir(): string {
    return this.o.dataDir;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    // The server entry lives with the server (src/fleet never imports it): spawned by path, not imported.
    const self = fileURLToPath(import.meta.url);
    const entry = path.join(path.dirname(self), '..', '..', 'server', 'fleet', `sim-server${path.extname(self)}`);
    const args = [
      // The simulator's own heap settings (a larger young generation for its 80,000 devices) are not the server's.
      ...process.execArgv.filter((a) => !a.startsWith('--test') && !isYoungGenerationFlag(a)),
      entry,
      '--data',
      this.o.dataDir,
      '--port',
      String(this.port),
      '--admin-token',
      this.o.adminToken,
    ];
    if (this.o.databaseUrl) args.push('--database-url', this.o.databaseUrl);
    if (this.o.store) args.push('--store', this.o.store);
    if (this.o.role) args.push('--role', this.o.role);
    if (this.o.deltaDir) args.push('--delta-dir', this.o.deltaDir);
    const env = { ...process.env, ...this.o.env };
    if (env.NODE_OPTIONS) env.NODE_OPTIONS = withoutYoungGeneration(env.NODE_OPTIONS);
    const c = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], env });
    this.child = c;
    const lines = createInterface({ input: c.stdout! });
    await new Promise<void>((resolve, reject) => {
      c.once('exit', (code) => reject(new IbuError('INTERNAL', `The simulated server exited with status ${code} before listening.`)));
      lines.on('line', (line) => {
        try {
          const msg = JSON.parse(line) as {
            port?: number;
            realServer?: boolean;
            cpu?: { user: number; system: number };
            lag?: { p99Ms: number; maxMs: number };
          };
          if (msg.port) {
            this.port = msg.port;
            this.realServer = Boolean(msg.realServer);
            resolve();
          }
          if (msg.cpu) this.cpuSeconds += (msg.cpu.user + msg.cpu.system) / 1e6;
          if (msg.lag) {
            this.lag.p99Ms = Math.max(this.lag.p99Ms, msg.lag.p99Ms);
            this.lag.maxMs = Math.max(this.lag.maxMs, msg.lag.maxMs);
          }
        } catch {
          // not ours
        }
      });
    });
  }

  /** The traffic phase begins: the server's event-loop delay counts from here (not enrollment). */
  markTrafficStart(): void {
    this.child?.kill('SIGUSR2');
  }

  /** SIGKILL: the process dies as in a crash (nothing flushed, its database sessions end with it). */
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGKILL');
    await exited;
    this.child = null;
  }

  /** SIGTERM (requests in flight finish, the group commit flushes), SIGKILL after 30 s. */
  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    await Promise.race([exited, unrefSleep(30_000).then(() => c.kill('SIGKILL'))]);
    await exited;
    this.child = null;
  }
}
