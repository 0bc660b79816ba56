import type { Db } from './db.js';

export type JobState = 'queued' | 'building' | 'ready' | 'failed';

export interface DeltaJob {
  from: string;
  to: string;
  state: JobState;
  priority: number;
  requestedAt: number;
  attempts: number;
  nextAttemptAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  lastError: string | null;
  size: number | null;
  sha256: string | null;
  lastAccessAt: number | null;
  builds: number;
  /** The client address that queued a job nobody needed (src/server/delta-admission.ts), else null. */
  client: string | null;
}

/**
 * Lower runs first: a device waiting beats a precompute guess, and both beat a pair nobody is
 * known to need (src/server/delta-admission.ts).
 */
export const PRIORITY = { device: 0, admin: 0, precompute: 10, unneeded: 20 } as const;

/** What an admission decision reads about the queue (src/server/delta-admission.ts). */
export interface QueueFacts {
  /** Jobs in state 'queued'. */
  queued: number;
  /** This client's jobs nobody is known to need (priority `unneeded`), queued or building. */
  clientHeld: number;
  /** A queued job nobody is known to need exists, which a needed pair may displace. */
  evictable: boolean;
}

/** An admission answer as the queue needs it: admitted (at this priority, maybe displacing one) or refused. */
export type AdmitAnswer<R> = { admit: true; priority: number; evict: boolean } | R;

export interface RetryPolicy {
  maxAttempts: number;
  /** Delay before attempt n+1 is baseMs * 4^(n-1), capped at maxMs. */
  baseMs: number;
  maxMs: number;
  /** A failed pair asked for again after this long is queued afresh. */
  failedCooldownMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 3, baseMs: 10_000, maxMs: 15 * 60_000, failedCooldownMs: 60 * 60_000 };

interface Row {
  from_version: string;
  to_version: string;
  state: JobState;
  priority: number;
  requested_at: number;
  attempts: number;
  next_attempt_at: number;
  started_at: number | null;
  finished_at: number | null;
  last_error: string | null;
  size: number | null;
  sha256: string | null;
  last_access_at: number | null;
  builds: number;
  client: string | null;
}

function toJob(r: Row): DeltaJob {
  return {
    from: r.from_version,
    to: r.to_version,
    state: r.state,
    priority: r.priority,
    requestedAt: r.requested_at,
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    lastError: r.last_error,
    size: r.size,
    sha256: r.sha256,
    lastAccessAt: r.last_access_at,
    builds: r.builds,
    client: r.client,
  };
}

/**
 * The delta job queue and cache index, one row per (from, to) pair. The primary key is what makes
 * "one build per pair" hold across requests and processes: a request inserts or finds the row,
 * and a worker moves it queued → building in one UPDATE, so two claimers cannot both win.
 */
export class DeltaJobs {
  private readonly q;
  constructor(
    private readonly db: Db,
    readonly retry: RetryPolicy = DEFAULT_RETRY,
  ) {
    this.q = {
      get: db.prepare<[string, string], Row>('SELECT * FROM delta_jobs WHERE from_version = ? AND to_version = ?'),
      insert: db.prepare("INSERT OR IGNORE INTO delta_jobs (from_version, to_version, state, priority, requested_at, client) VALUES (?, ?, 'queued', ?, ?, ?)"),
      bump: db.prepare("UPDATE delta_jobs SET priority = ? WHERE from_version = ? AND to_version = ? AND state = 'queued' AND priority > ?"),
      revive: db.prepare(
        `UPDATE delta_jobs SET state = 'queued', attempts = 0, next_attempt_at = 0, last_error = NULL, priority = ?, requested_at = ?, client = ?
           WHERE from_version = ? AND to_version = ? AND state = 'failed'`,
      ),
      queued: db.prepare<[], { n: number }>("SELECT COUNT(*) AS n FROM delta_jobs WHERE state = 'queued'"),
      held: db.prepare<[string, number], { n: number }>(
        "SELECT COUNT(*) AS n FROM delta_jobs WHERE client = ? AND priority >= ? AND state IN ('queued', 'building')",
      ),
      newestUnneeded: db.prepare<[number], Row>(
        "SELECT * FROM delta_jobs WHERE state = 'queued' AND priority >= ? ORDER BY requested_at DESC, rowid DESC LIMIT 1",
      ),
      position: db.prepare<[{ p: number; t: number; from: string; to: string }], { n: number }>(
        `SELECT COUNT(*) AS n FROM delta_jobs WHERE state = 'queued' AND (priority < @p OR (priority = @p AND (requested_at < @t
           OR (requested_at = @t AND rowid < (SELECT rowid FROM delta_jobs WHERE from_version = @from AND to_version = @to)))))`,
      ),
      next: db.prepare<[number], Row>(
        "SELECT * FROM delta_jobs WHERE state = 'queued' AND next_attempt_at <= ? ORDER BY priority, requested_at, rowid LIMIT 1",
      ),
      claim: db.prepare(
        `UPDATE delta_jobs SET state = 'building', attempts = attempts + 1, builds = builds + 1, started_at = ?
           WHERE from_version = ? AND to_version = ? AND state = 'queued'`,
      ),
      ready: db.prepare(
        `UPDATE delta_jobs SET state = 'ready', finished_at = ?, size = ?, sha256 = ?, last_access_at = ?, last_error = NULL
           WHERE from_version = ? AND to_version = ?`,
      ),
      retryLater: db.prepare("UPDATE delta_jobs SET state = 'queued', next_attempt_at = ?, last_error = ? WHERE from_version = ? AND to_version = ?"),
      fail: db.prepare("UPDATE delta_jobs SET state = 'failed', finished_at = ?, last_error = ? WHERE from_version = ? AND to_version = ?"),
      requeue: db.prepare(
        `UPDATE delta_jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), started_at = NULL
           WHERE from_version = ? AND to_version = ? AND state = 'building'`,
      ),
      recover: db.prepare("UPDATE delta_jobs SET state = 'queued', started_at = NULL, next_attempt_at = 0 WHERE state = 'building'"),
      touch: db.prepare('UPDATE delta_jobs SET last_access_at = ? WHERE from_version = ? AND to_version = ?'),
      del: db.prepare('DELETE FROM delta_jobs WHERE from_version = ? AND to_version = ?'),
      lru: db.prepare<[], Row>("SELECT * FROM delta_jobs WHERE state = 'ready' ORDER BY last_access_at, rowid"),
      all: db.prepare<[], Row>('SELECT * FROM delta_jobs ORDER BY state, priority, requested_at, rowid'),
      readyBytes: db.prepare<[], { n: number | null }>("SELECT SUM(size) AS n FROM delta_jobs WHERE state = 'ready'"),
      counts: db.prepare<[], { state: JobState; n: number }>('SELECT state, COUNT(*) AS n FROM delta_jobs GROUP BY state'),
      nextDue: db.prepare<[], { t: number | null }>("SELECT MIN(next_attempt_at) AS t FROM delta_jobs WHERE state = 'queued'"),
      involving: db.prepare<[string, string], Row>('SELECT * FROM delta_jobs WHERE from_version = ? OR to_version = ?'),
    };
  }

  get(from: string, to: string): DeltaJob | undefined {
    const r = this.q.get.get(from, to);
    return r ? toJob(r) : undefined;
  }

  /**
   * Finds the pair's job or queues one (idempotent). A queued job asked for by a more urgent
   * requester moves up; a failed job asked for again after the cool-down is queued afresh.
   */
  request(from: string, to: string, priority: number, now = Date.now()): { job: DeltaJob; created: boolean } {
    const r = this.admitRequest<{ admit: false }>(from, to, priority, now, {});
    if ('refused' in r) throw new Error('unreachable: a request without admission is never refused');
    return r;
  }

  /**
   * `request` for a client: a request that would add a job (none yet, or a failed one past its
   * cool-down) first asks `admit`, in the same transaction as the insert, so the queue bound holds
   * however requests interleave. Refused, nothing is written; with `evict`, the newest queued job
   * nobody needed is dropped to make room.
   */
  admitRequest<R extends { admit: false }>(
    from: string,
    to: string,
    priority: number,
    now: number,
    o: { client?: string; admit?: (facts: QueueFacts) => AdmitAnswer<R> },
  ): { job: DeltaJob; created: boolean; evicted?: DeltaJob } | { refused: R } {
    // The hot path (a device polling a known pair) is one read, no write transaction.
    const seen = this.get(from, to);
    if (seen && (seen.state === 'building' || seen.state === 'ready' || (seen.state === 'queued' && seen.priority <= priority)))
      return { job: seen, created: false };
    return this.db.transaction(() => {
      const cur = this.get(from, to);
      const adds = !cur || (cur.state === 'failed' && now - (cur.finishedAt ?? 0) >= this.retry.failedCooldownMs);
      let evicted: DeltaJob | undefined;
      if (adds && o.admit) {
        const decision = o.admit({
          queued: this.q.queued.get()!.n,
          clientHeld: this.q.held.get(o.client ?? '', PRIORITY.unneeded)!.n,
          evictable: this.q.newestUnneeded.get(PRIORITY.unneeded) !== undefined,
        });
        if (!decision.admit) return { refused: decision };
        priority = decision.priority;
        if (decision.evict) {
          const r = this.q.newestUnneeded.get(PRIORITY.unneeded)!;
          this.q.del.run(r.from_version, r.to_version);
          evicted = toJob(r);
        }
      }
      // Only a job nobody is known to need keeps its client: it is what the per-client cap counts.
      const client = priority >= PRIORITY.unneeded ? (o.client ?? null) : null;
      const ins = this.q.insert.run(from, to, priority, now, client);
      if (ins.changes === 0) {
        if (cur?.state === 'queued') this.q.bump.run(priority, from, to, priority);
        else if (adds) {
          this.q.revive.run(priority, now, client, from, to);
          return { job: this.get(from, to)!, created: true, evicted };
        }
      }
      return { job: this.get(from, to)!, created: ins.changes > 0, evicted };
    })();
  }

  /** Moves a queued job up to `priority` (a device's check-in named the pair); no job, no change. */
  raise(from: string, to: string, priority: number): void {
    this.q.bump.run(priority, from, to, priority);
  }

  /** How many queued jobs run before this one (0 = next). */
  position(job: DeltaJob): number {
    return this.q.position.get({ p: job.priority, t: job.requestedAt, from: job.from, to: job.to })!.n;
  }

  /** Atomically moves the most urgent due job to 'building'. */
  claimNext(now = Date.now()): DeltaJob | undefined {
    return this.db.transaction(() => {
      const r = this.q.next.get(now);
      if (!r) return undefined;
      const res = this.q.claim.run(now, r.from_version, r.to_version);
      if (res.changes === 0) return undefined;
      return this.get(r.from_version, r.to_version);
    })();
  }

  markReady(from: string, to: string, size: number, sha256: string, now = Date.now()): void {
    this.q.ready.run(now, size, sha256, now, from, to);
  }

  /** Records a failed attempt: back to the queue after a backoff, or 'failed' when out of attempts. */
  markFailed(from: string, to: string, error: string, now = Date.now()): DeltaJob {
    const job = this.get(from, to);
    if (!job) throw new Error(`no delta job ${from} -> ${to}`);
    if (job.attempts >= this.retry.maxAttempts) {
      this.q.fail.run(now, error, from, to);
    } else {
      const delay = Math.min(this.retry.maxMs, this.retry.baseMs * 4 ** Math.max(0, job.attempts - 1));
      this.q.retryLater.run(now + delay, error, from, to);
    }
    return this.get(from, to)!;
  }

  /** An operator's retry: a failed pair goes back to the queue at once with fresh attempts. */
  retryNow(from: string, to: string, now = Date.now()): void {
    this.q.revive.run(PRIORITY.admin, now, null, from, to);
  }

  /** A build stopped by shutdown goes back to the queue without counting as an attempt. */
  requeue(from: string, to: string): void {
    this.q.requeue.run(from, to);
  }

  /**
   * At start: jobs left 'building' by a process that died go back to the queue. The attempt stays
   * counted, so a build that crashes the server every time still ends as 'failed'.
   */
  recoverInterrupted(): number {
    return this.q.recover.run().changes;
  }

  touch(from: string, to: string, now = Date.now()): void {
    this.q.touch.run(now, from, to);
  }

  delete(from: string, to: string): void {
    this.q.del.run(from, to);
  }

  /** Ready deltas, least recently used first. */
  readyByLru(): DeltaJob[] {
    return this.q.lru.all().map(toJob);
  }

  all(): DeltaJob[] {
    return this.q.all.all().map(toJob);
  }

  involving(version: string): DeltaJob[] {
    return this.q.involving.all(version, version).map(toJob);
  }

  readyBytes(): number {
    return this.q.readyBytes.get()!.n ?? 0;
  }

  counts(): Record<JobState, number> {
    const out: Record<JobState, number> = { queued: 0, building: 0, ready: 0, failed: 0 };
    for (const r of this.q.counts.all()) out[r.state] = r.n;
    return out;
  }

  /** Earliest next_attempt_at among queued jobs (for the retry timer). */
  nextDue(): number | undefined {
    return this.q.nextDue.get()!.t ?? undefined;
  }
}
