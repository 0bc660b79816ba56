import { promises as fsp } from 'node:fs';
import type { DeltaService, DeltaStatus } from './contracts.js';
import type { DeltaCache } from './delta-cache.js';
import type { DeltaJob, DeltaJobs } from './delta-jobs.js';
import { PRIORITY } from './delta-jobs.js';
import type { DeltaWorkerPool } from './delta-pool.js';
import type { StoreLayout } from './store-layout.js';

export type DeltaLookup =
  | { state: 'ready'; job: DeltaJob; file: string }
  | { state: 'queued' | 'building'; job: DeltaJob; position: number; retryAfter: number }
  | { state: 'failed'; job: DeltaJob }
  | { state: 'none' };

/**
 * The delta side of the server as one object: what the routes ask ("give me from→to"), and
 * `app.deltas` for the fleet plugin (is a delta ready? queue one).
 */
export class DeltaServiceImpl implements DeltaService {
  constructor(
    readonly jobs: DeltaJobs,
    readonly cache: DeltaCache,
    readonly pool: DeltaWorkerPool,
    private readonly layout: StoreLayout,
    private readonly retryAfterSeconds: number,
    private readonly exists: (version: string) => Promise<boolean>,
  ) {}

  /**
   * The current state of a pair, queueing a build when `create` is set and none exists. A row
   * that says ready but whose file is gone (deleted by hand) is dropped and rebuilt.
   */
  async lookup(from: string, to: string, opts: { create: boolean; priority?: number }): Promise<DeltaLookup> {
    let job = opts.create ? this.request0(from, to, opts.priority ?? PRIORITY.device) : this.jobs.get(from, to);
    if (!job) return { state: 'none' };
    if (job.state === 'ready') {
      const file = this.layout.delta(from, to);
      try {
        await fsp.access(file);
        return { state: 'ready', job, file };
      } catch {
        this.jobs.delete(from, to);
        if (!opts.create) return { state: 'none' };
        job = this.request0(from, to, opts.priority ?? PRIORITY.device);
      }
    }
    if (job.state === 'failed') return { state: 'failed', job };
    if (job.state === 'building') return { state: 'building', job, position: 0, retryAfter: this.retryAfterSeconds };
    // 1 = next to start; each full round of workers ahead adds one Retry-After period.
    const position = this.jobs.position(job) + 1;
    const rounds = Math.floor((position - 1) / Math.max(1, this.pool.workers));
    return { state: 'queued', job, position, retryAfter: Math.min(300, this.retryAfterSeconds * (2 + rounds)) };
  }

  private request0(from: string, to: string, priority: number): DeltaJob {
    const { job, created } = this.jobs.request(from, to, priority);
    if (created) {
      this.pool.kick();
      return this.jobs.get(from, to) ?? job; // the kick may have claimed it
    }
    return job;
  }

  async status(from: string, to: string): Promise<DeltaStatus> {
    return (await this.lookup(from, to, { create: false })).state;
  }

  /** Queues a build for two published versions; 'none' when either is unknown. */
  async request(from: string, to: string): Promise<DeltaStatus> {
    if (from === to || !(await this.exists(from)) || !(await this.exists(to))) return 'none';
    return (await this.lookup(from, to, { create: true })).state;
  }
}
