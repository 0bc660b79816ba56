import { promises as fsp } from 'node:fs';
import type { FastifyBaseLogger } from 'fastify';
import { IbuError } from '../errors.js';
import type { DeltaService, DeltaStatus } from './contracts.js';
import { admit, type AdmissionLimits } from './delta-admission.js';
import type { DeltaCache } from './delta-cache.js';
import type { DeltaDemand } from './delta-demand.js';
import { PRIORITY, type DeltaJob, type DeltaQueue } from './delta-queue.js';
import type { DeltaWorkerPool } from './delta-pool.js';
import type { StoreLayout } from './store-layout.js';

export type DeltaLookup =
  | { state: 'ready'; job: DeltaJob; file: string }
  | { state: 'queued' | 'building'; job: DeltaJob; position: number; retryAfter: number }
  | { state: 'failed'; job: DeltaJob }
  | { state: 'none' };

/** Who asks for a pair: a client address is admitted (src/server/delta-admission.ts); the server itself is trusted. */
export interface LookupOptions {
  create: boolean;
  /** For trusted callers (admin, precompute); a client's priority follows from its pair's demand. */
  priority?: number;
  /** The client address key (clientKey) of an HTTP request: the request goes through admission. */
  client?: string;
  /** The version the job key `from` stands for, when they differ (a ZFS stream's key is `zfs+<from>`). */
  pairFrom?: string;
}

/**
 * The delta side of the server as one object: what the routes ask ("give me from→to"), and
 * `app.deltas` for the fleet plugin (is a delta ready? a device needs this one).
 */
export class DeltaServiceImpl implements DeltaService {
  constructor(
    readonly jobs: DeltaQueue,
    readonly cache: DeltaCache,
    readonly pool: DeltaWorkerPool,
    private readonly layout: StoreLayout,
    private readonly retryAfterSeconds: number,
    private readonly exists: (version: string) => Promise<boolean>,
    readonly demand: DeltaDemand,
    readonly limits: AdmissionLimits,
    private readonly log: FastifyBaseLogger,
  ) {}

  /**
   * The current state of a pair, queueing a build when `create` is set and none exists. A row
   * that says ready but whose file is gone (deleted by hand) is dropped and rebuilt. A client's
   * request that would add a job is admitted first: refused, it throws DELTA_QUEUE_FULL or
   * DELTA_CLIENT_LIMIT with `details.retryAfter`.
   */
  async lookup(from: string, to: string, opts: LookupOptions): Promise<DeltaLookup> {
    let job = opts.create ? await this.request0(from, to, opts) : await this.jobs.get(from, to);
    if (!job) return { state: 'none' };
    if (job.state === 'ready') {
      const file = this.layout.delta(from, to);
      try {
        await fsp.access(file);
        return { state: 'ready', job, file };
      } catch {
        await this.jobs.evictReady(from, to);
        if (!opts.create) return { state: 'none' };
        job = await this.request0(from, to, opts);
      }
    }
    if (job.state === 'failed') return { state: 'failed', job };
    if (job.state === 'building') return { state: 'building', job, position: 0, retryAfter: this.retryAfterSeconds };
    // 1 = next to start; each full round of workers ahead adds one Retry-After period.
    const position = (await this.jobs.position(job)) + 1;
    return { state: 'queued', job, position, retryAfter: this.retryAfterFor(position) };
  }

  private retryAfterFor(position: number): number {
    const rounds = Math.floor((position - 1) / Math.max(1, this.pool.workers));
    return Math.min(300, this.retryAfterSeconds * (2 + rounds));
  }

  private async request0(from: string, to: string, o: LookupOptions): Promise<DeltaJob> {
    const r = o.client === undefined ? await this.jobs.request(from, to, o.priority ?? PRIORITY.device) : await this.admitted(from, to, o.client, o);
    if (!('created' in r)) return r;
    if (r.created) {
      this.pool.kick();
      await this.pool.settled(); // the claim, when this process builds: the answer says 'building' at once
      return (await this.jobs.get(from, to)) ?? r.job;
    }
    return r.job;
  }

  /** A client's request: the known job as it is, or the queue's answer after admission (src/server/delta-admission.ts). */
  private async admitted(from: string, to: string, client: string, o: LookupOptions): Promise<DeltaJob | { job: DeltaJob; created: boolean }> {
    const pairFrom = o.pairFrom ?? from;
    // Known pairs cost no admission: a poll of a building or built pair is one read. A queued
    // one moves up only when a check-in named it since (a ZFS stream: the check-in raised the
    // ibu delta's job only); the published path is read for new jobs alone (it reads files).
    const seen = await this.jobs.get(from, to);
    if (seen && (seen.state === 'building' || seen.state === 'ready')) return seen;
    if (seen?.state === 'queued' && (seen.priority <= PRIORITY.device || !(await this.demand.noted(pairFrom, to)))) return seen;
    const demand = await this.demand.of(pairFrom, to);
    const priority = demand === 'none' ? PRIORITY.unneeded : PRIORITY.device;
    const a = await this.jobs.admitRequest(from, to, priority, Date.now(), { client, admit: (facts) => admit(demand, facts, this.limits) });
    if ('refused' in a) {
      const retryAfter = this.retryAfterFor((await this.jobs.counts()).queued + 1);
      throw new IbuError(a.refused.code, a.refused.message, { details: { retryAfter, from, to } });
    }
    if (a.evicted) this.log.info({ from: a.evicted.from, to: a.evicted.to, client: a.evicted.client }, 'queued delta job nobody needed displaced');
    return a;
  }

  /**
   * An enrolled device's check-in made from→to its next hop: the pair is needed from now on (its
   * build is never capped and goes first; one already queued moves up). Returns its state.
   */
  async deviceNeeds(from: string, to: string): Promise<DeltaStatus> {
    // Only published pairs: a device may report any version string, and the table must stay small.
    // Written (and the queue touched) once per pair every few minutes, not on every check-in; a
    // ZFS stream's job moves up when the device asks for it (its key differs).
    const known = from !== to && (await this.exists(from)) && (await this.exists(to));
    if (known && (await this.demand.note(from, to))) await this.jobs.raise(from, to, PRIORITY.device);
    return this.status(from, to);
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
