import type { Db } from './db.js';
import {
  DEFAULT_RETRY,
  PRIORITY,
  retryDelay,
  type AdmitAnswer,
  type AdmitResult,
  type DeltaJob,
  type DeltaQueue,
  type JobState,
  type QueueFacts,
  type RetryPolicy,
  jobFromRow as toJob,
  type JobRow as Row,
} from './delta-queue.js';

// The queue's vocabulary lives in delta-queue.ts; re-exported for the modules and tests that read it here.
export { DEFAULT_RETRY, PRIORITY, type AdmitAnswer, type DeltaJob, type JobState, type QueueFacts, type RetryPolicy };

/**
 * The delta queue in the server's SQLite file (`<data>/server.sqlite`), the one-server default:
 * one process owns the file (cache/server.lock), so a claim needs no lease — jobs left 'building'
 * by a crash go back to the queue at the next start. The statements are synchronous
 * (better-sqlite3); the methods are async only to share the DeltaQueue interface with PostgreSQL.
 */
export class DeltaJobs implements DeltaQueue {
  readonly shared = false;
  readonly renewEveryMs = 0;
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
      delReady: db.prepare("DELETE FROM delta_jobs WHERE from_version = ? AND to_version = ? AND state = 'ready'"),
      lru: db.prepare<[], Row>("SELECT * FROM delta_jobs WHERE state = 'ready' ORDER BY last_access_at, rowid"),
      all: db.prepare<[], Row>('SELECT * FROM delta_jobs ORDER BY state, priority, requested_at, rowid'),
      readyBytes: db.prepare<[], { n: number | null }>("SELECT SUM(size) AS n FROM delta_jobs WHERE state = 'ready'"),
      counts: db.prepare<[], { state: JobState; n: number }>('SELECT state, COUNT(*) AS n FROM delta_jobs GROUP BY state'),
      nextDue: db.prepare<[], { t: number | null }>("SELECT MIN(next_attempt_at) AS t FROM delta_jobs WHERE state = 'queued'"),
      involving: db.prepare<[string, string, string], Row>('SELECT * FROM delta_jobs WHERE from_version = ? OR to_version = ? OR from_version LIKE ?'),
      note: db.prepare(
        `INSERT INTO delta_demand (from_version, to_version, noted_at) VALUES (?, ?, ?)
           ON CONFLICT (from_version, to_version) DO UPDATE SET noted_at = excluded.noted_at`,
      ),
      noted: db.prepare<[string, string], { noted_at: number }>('SELECT noted_at FROM delta_demand WHERE from_version = ? AND to_version = ?'),
      prune: db.prepare('DELETE FROM delta_demand WHERE noted_at < ?'),
    };
  }

  private row(from: string, to: string): DeltaJob | undefined {
    const r = this.q.get.get(from, to);
    return r ? toJob(r) : undefined;
  }

  async get(from: string, to: string): Promise<DeltaJob | undefined> {
    return this.row(from, to);
  }

  async request(from: string, to: string, priority: number, now = Date.now()): Promise<{ job: DeltaJob; created: boolean }> {
    const r = await this.admitRequest<{ admit: false }>(from, to, priority, now, {});
    if ('refused' in r) throw new Error('unreachable: a request without admission is never refused');
    return r;
  }

  async admitRequest<R extends { admit: false }>(
    from: string,
    to: string,
    priority: number,
    now: number,
    o: { client?: string; admit?: (facts: QueueFacts) => AdmitAnswer<R> },
  ): Promise<AdmitResult<R>> {
    // The hot path (a device polling a known pair) is one read, no write transaction.
    const seen = this.row(from, to);
    if (seen && (seen.state === 'building' || seen.state === 'ready' || (seen.state === 'queued' && seen.priority <= priority)))
      return { job: seen, created: false };
    return this.db.transaction((): AdmitResult<R> => {
      const cur = this.row(from, to);
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
          return { job: this.row(from, to)!, created: true, evicted };
        }
      }
      return { job: this.row(from, to)!, created: ins.changes > 0, evicted };
    })();
  }

  async raise(from: string, to: string, priority: number): Promise<void> {
    this.q.bump.run(priority, from, to, priority);
  }

  async position(job: DeltaJob): Promise<number> {
    return this.q.position.get({ p: job.priority, t: job.requestedAt, from: job.from, to: job.to })!.n;
  }

  async claimNext(now = Date.now()): Promise<DeltaJob | undefined> {
    return this.db.transaction(() => {
      const r = this.q.next.get(now);
      if (!r) return undefined;
      const res = this.q.claim.run(now, r.from_version, r.to_version);
      if (res.changes === 0) return undefined;
      return this.row(r.from_version, r.to_version);
    })();
  }

  /** One process owns the file: nothing else can take a claim, so there is nothing to renew. */
  async renewClaims(): Promise<number> {
    return 0;
  }

  async holds(from: string, to: string): Promise<boolean> {
    return this.row(from, to)?.state === 'building';
  }

  async markReady(from: string, to: string, size: number, sha256: string, now = Date.now()): Promise<boolean> {
    return this.q.ready.run(now, size, sha256, now, from, to).changes > 0;
  }

  async markFailed(from: string, to: string, error: string, now = Date.now()): Promise<DeltaJob> {
    const job = this.row(from, to);
    if (!job) throw new Error(`no delta job ${from} -> ${to}`);
    if (job.attempts >= this.retry.maxAttempts) this.q.fail.run(now, error, from, to);
    else this.q.retryLater.run(now + retryDelay(this.retry, job.attempts), error, from, to);
    return this.row(from, to)!;
  }

  async retryNow(from: string, to: string, now = Date.now()): Promise<void> {
    this.q.revive.run(PRIORITY.admin, now, null, from, to);
  }

  async requeue(from: string, to: string): Promise<void> {
    this.q.requeue.run(from, to);
  }

  /** The attempt stays counted, so a build that crashes the server every time still ends as 'failed'. */
  async recoverInterrupted(): Promise<number> {
    return this.q.recover.run().changes;
  }

  async touch(from: string, to: string, now = Date.now()): Promise<void> {
    this.q.touch.run(now, from, to);
  }

  async delete(from: string, to: string): Promise<boolean> {
    return this.q.del.run(from, to).changes > 0;
  }

  async evictReady(from: string, to: string): Promise<boolean> {
    return this.q.delReady.run(from, to).changes > 0;
  }

  async readyByLru(): Promise<DeltaJob[]> {
    return this.q.lru.all().map(toJob);
  }

  async all(): Promise<DeltaJob[]> {
    return this.q.all.all().map(toJob);
  }

  async involving(version: string): Promise<DeltaJob[]> {
    // Keys of other kinds end in +<from> (zfs+1.0, rc~xz-5.4.1+1.0); '%' and '_' cannot occur in a version.
    return this.q.involving.all(version, version, `%+${version}`).map(toJob);
  }

  async readyBytes(): Promise<number> {
    return this.q.readyBytes.get()!.n ?? 0;
  }

  async counts(): Promise<Record<JobState, number>> {
    const out: Record<JobState, number> = { queued: 0, building: 0, ready: 0, failed: 0 };
    for (const r of this.q.counts.all()) out[r.state] = r.n;
    return out;
  }

  async nextDue(): Promise<number | undefined> {
    return this.q.nextDue.get()!.t ?? undefined;
  }

  async noteDemand(from: string, to: string, now: number): Promise<void> {
    this.q.note.run(from, to, now);
  }

  async demandNotedAt(from: string, to: string): Promise<number | undefined> {
    return this.q.noted.get(from, to)?.noted_at;
  }

  async pruneDemand(before: number): Promise<void> {
    this.q.prune.run(before);
  }

  /** Only this process queues into its file: the delta service starts the pool itself. */
  onQueued(): void {}

  /** The database is the server's (src/server/db.ts), closed with it. */
  async close(): Promise<void> {}
}
