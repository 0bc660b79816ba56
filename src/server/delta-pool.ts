import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { EventEmitter } from 'node:events';
import type { FastifyBaseLogger } from 'fastify';
import { commitFile } from '../util/atomic.js';
import { sha256File } from '../util/sha256-file.js';
import type { DeltaBuilder } from './delta-builder.js';
import type { DeltaCache } from './delta-cache.js';
import type { DeltaJob, DeltaJobs } from './delta-jobs.js';
import type { StoreLayout } from './store-layout.js';

export interface PoolEvents {
  ready: [job: { from: string; to: string; size: number }];
  failed: [job: DeltaJob, err: unknown];
  started: [job: DeltaJob];
}

/**
 * A bounded pool running delta builds: at most `workers` at once, each claimed from the SQLite
 * queue. The builder does the heavy work out of this thread (child processes), so the event loop
 * keeps answering requests. Output goes to a unique `.partial`, is fsynced and renamed into place,
 * and only then is the row marked ready: a crash leaves a temp file (removed at start), never a
 * delta that looks complete but is not.
 */
export class DeltaWorkerPool extends EventEmitter<PoolEvents> {
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void>; cancelled: boolean }>();
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;
  /** Builds started by this process (tests and stats). */
  buildsStarted = 0;

  constructor(
    private readonly jobs: DeltaJobs,
    private readonly cache: DeltaCache,
    private readonly layout: StoreLayout,
    private readonly builder: DeltaBuilder,
    readonly workers: number,
    private readonly log: FastifyBaseLogger,
  ) {
    super();
  }

  get active(): number {
    return this.running.size;
  }

  /** Claims due jobs while there are free workers; arms a timer for the next retry. */
  kick(): void {
    if (this.stopping) return;
    while (this.running.size < this.workers) {
      const job = this.jobs.claimNext();
      if (!job) break;
      const abort = new AbortController();
      const key = `${job.from}\u0000${job.to}`;
      const done = this.build(job, abort.signal).finally(() => {
        this.running.delete(key);
        this.kick();
      });
      this.running.set(key, { abort, done, cancelled: false });
    }
    this.armTimer();
  }

  private armTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.stopping) return;
    const due = this.jobs.nextDue();
    if (due === undefined) return;
    const wait = Math.max(50, due - Date.now());
    this.timer = setTimeout(() => this.kick(), Math.min(wait, 60_000));
    this.timer.unref();
  }

  private async build(job: DeltaJob, signal: AbortSignal): Promise<void> {
    const final = this.layout.delta(job.from, job.to);
    const partial = `${final}.${randomBytes(4).toString('hex')}.partial`;
    const log = this.log.child({ from: job.from, to: job.to, attempt: job.attempts });
    const t0 = Date.now();
    this.buildsStarted++;
    this.emit('started', job);
    log.info('delta build started');
    try {
      await fsp.mkdir(this.layout.deltasDir, { recursive: true });
      await this.builder({ from: job.from, to: job.to, out: partial, signal, log });
      if (signal.aborted) throw new Error('aborted');
      if (this.jobs.get(job.from, job.to)?.state !== 'building') throw new Error('the job was removed while it was building');
      const size = (await fsp.stat(partial)).size;
      const sha256 = await sha256File(partial);
      await commitFile(partial, final);
      this.jobs.markReady(job.from, job.to, size, sha256);
      log.info({ size, ms: Date.now() - t0 }, 'delta build finished');
      this.emit('ready', { from: job.from, to: job.to, size });
      await this.cache.evict({ from: job.from, to: job.to });
    } catch (err) {
      await fsp.rm(partial, { force: true });
      if (this.running.get(`${job.from}\u0000${job.to}`)?.cancelled || this.jobs.get(job.from, job.to)?.state !== 'building') {
        log.info('delta build cancelled'); // its release or delta was deleted meanwhile
        return;
      }
      if (signal.aborted) {
        this.jobs.requeue(job.from, job.to);
        log.info('delta build interrupted by shutdown; back in the queue');
        return;
      }
      const message = err instanceof Error ? err.message : String(err);
      const after = this.jobs.markFailed(job.from, job.to, message);
      log.warn(
        { err: message, state: after.state, attempts: after.attempts },
        after.state === 'failed' ? 'delta build failed for good' : 'delta build failed; will retry',
      );
      this.emit('failed', after, err);
    }
  }

  /** Aborts the build of one pair, if running; the caller deletes its row. */
  cancel(from: string, to: string): void {
    const r = this.running.get(`${from}\u0000${to}`);
    if (r) {
      r.cancelled = true;
      r.abort.abort();
    }
  }

  /** Stops claiming, aborts running builds (they return to the queue) and waits for them. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    for (const r of this.running.values()) r.abort.abort();
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }
}
