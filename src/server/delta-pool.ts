import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { EventEmitter } from 'node:events';
import type { FastifyBaseLogger } from 'fastify';
import { commitFile } from '../util/atomic.js';
import { sha256File } from '../util/sha256-file.js';
import type { DeltaBuilder } from './delta-builder.js';
import type { DeltaCache } from './delta-cache.js';
import type { DeltaJob, DeltaQueue } from './delta-queue.js';
import type { StoreLayout } from './store-layout.js';

export interface PoolEvents {
  ready: [job: { from: string; to: string; size: number }];
  failed: [job: DeltaJob, err: unknown];
  started: [job: DeltaJob];
}

/**
 * A bounded pool running delta builds: at most `workers` at once, each claimed from the queue
 * (SQLite in this process, or PostgreSQL shared with other replicas: then the claims are renewed
 * every `renewEveryMs` while building, and a NOTIFY from another replica starts a claim). The
 * builder does the heavy work out of this thread (child processes), so the event loop keeps
 * answering requests. Output goes to a unique `.partial`, is fsynced and renamed into place,
 * and only then is the row marked ready: a crash leaves a temp file (removed at start), never a
 * delta that looks complete but is not.
 */
export class DeltaWorkerPool extends EventEmitter<PoolEvents> {
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void>; cancelled: boolean }>();
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;
  private renewer: NodeJS.Timeout | undefined;
  /** One claiming pass at a time; a kick during a pass runs one more after it. */
  private kicking: Promise<void> | undefined;
  private kickAgain = false;
  /** Builds started by this process (tests and stats). */
  buildsStarted = 0;

  constructor(
    private readonly jobs: DeltaQueue,
    private readonly cache: DeltaCache,
    private readonly layout: StoreLayout,
    private readonly builder: DeltaBuilder,
    readonly workers: number,
    private readonly log: FastifyBaseLogger,
  ) {
    super();
    jobs.onQueued(() => this.kick());
  }

  get active(): number {
    return this.running.size;
  }

  /** Claims due jobs while there are free workers; arms a timer for the next retry or lease expiry. */
  kick(): void {
    if (this.stopping || this.workers === 0) return;
    if (this.kicking) {
      this.kickAgain = true;
      return;
    }
    this.kicking = this.claim()
      .catch((err: unknown) => {
        // The database away for a moment: try again shortly rather than wait for a request.
        this.log.error({ err }, 'claiming a delta job failed; retrying in 5 s');
        if (this.timer) clearTimeout(this.timer);
        this.timer = setTimeout(() => this.kick(), 5_000);
        this.timer.unref();
      })
      .finally(() => {
        this.kicking = undefined;
        if (this.kickAgain) {
          this.kickAgain = false;
          this.kick();
        }
      });
  }

  /** Resolves when the claiming pass under way (if any) is done (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.kicking) await this.kicking;
  }

  private async claim(): Promise<void> {
    while (!this.stopping && this.running.size < this.workers) {
      const job = await this.jobs.claimNext();
      if (!job) break;
      if (this.stopping) {
        await this.jobs.requeue(job.from, job.to);
        break;
      }
      const abort = new AbortController();
      const key = `${job.from}\u0000${job.to}`;
      const done = this.build(job, abort.signal).finally(() => {
        this.running.delete(key);
        this.kick();
      });
      this.running.set(key, { abort, done, cancelled: false });
    }
    this.armRenewal();
    await this.armTimer();
  }

  /** A shared queue's claims live while renewed: every `renewEveryMs` while this process builds. */
  private armRenewal(): void {
    if (this.renewer || this.jobs.renewEveryMs <= 0 || this.running.size === 0) return;
    this.renewer = setInterval(() => {
      if (this.running.size === 0) {
        clearInterval(this.renewer);
        this.renewer = undefined;
        return;
      }
      void this.jobs.renewClaims().catch((err: unknown) => this.log.warn({ err }, 'renewing delta build claims failed'));
    }, this.jobs.renewEveryMs);
    this.renewer.unref();
  }

  private async armTimer(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    // Every worker busy: the next build to finish kicks again (no 50 ms polling of a backlog).
    if (this.stopping || this.running.size >= this.workers) return;
    // A shared queue is also polled (a NOTIFY may be lost while the LISTEN connection reconnects).
    const poll = this.jobs.shared ? 5_000 : 60_000;
    const due = await this.jobs.nextDue();
    if (due === undefined && !this.jobs.shared) return;
    const wait = due === undefined ? poll : Math.max(50, due - Date.now());
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.kick(), Math.min(wait, poll));
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
      if (!(await this.jobs.holds(job.from, job.to))) throw new Error('the job was removed or taken over while it was building');
      const size = (await fsp.stat(partial)).size;
      const sha256 = await sha256File(partial);
      await commitFile(partial, final);
      // Lost the claim since the check above (a lease run out): the new owner's result stands.
      if (!(await this.jobs.markReady(job.from, job.to, size, sha256))) log.warn('delta built, but its claim was taken over meanwhile');
      log.info({ size, ms: Date.now() - t0 }, 'delta build finished');
      this.emit('ready', { from: job.from, to: job.to, size });
      await this.cache.evict({ from: job.from, to: job.to });
    } catch (err) {
      await fsp.rm(partial, { force: true });
      if (this.running.get(`${job.from}\u0000${job.to}`)?.cancelled || !(await this.jobs.holds(job.from, job.to).catch(() => false))) {
        log.info('delta build cancelled'); // its release or delta was deleted meanwhile
        return;
      }
      if (signal.aborted) {
        await this.jobs.requeue(job.from, job.to);
        log.info('delta build interrupted by shutdown; back in the queue');
        return;
      }
      const message = err instanceof Error ? err.message : String(err);
      const after = await this.jobs.markFailed(job.from, job.to, message);
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
    await this.settled();
    if (this.timer) clearTimeout(this.timer);
    for (const r of this.running.values()) r.abort.abort();
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
    if (this.renewer) clearInterval(this.renewer);
  }
}
