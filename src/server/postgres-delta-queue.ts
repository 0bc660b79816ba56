import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import pg from 'pg';
import { IbuError } from '../errors.js';
import { inTransaction } from '../util/pg-transaction.js';
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
import { openDeltaSchema, pgTypes } from './postgres-delta-schema.js';

/** NOTIFY channel: a job was queued or given back, a builder with a free worker may claim it. */
const CHANNEL = 'ibu_delta_jobs';
/** Advisory lock key (the fleet uses 7141–7144, the schema 7145): admission of new jobs. */
const ADMIT_LOCK = 7146;

/** A claim not renewed for this long is taken over by another builder (ibu serve --delta-lease). */
export const DEFAULT_LEASE_MS = 30_000;

type Query = Pick<pg.PoolClient, 'query'>;

export interface PostgresQueueOptions {
  retry?: RetryPolicy;
  /** A claim not renewed for this long may be taken over (default DEFAULT_LEASE_MS). */
  leaseMs?: number;
  /** Who claims: unique per process (default host:pid:random). */
  owner?: string;
}

/**
 * The delta queue in PostgreSQL, shared by every `ibu serve` replica on one database that serves
 * the same delta directory. A builder claims with `SELECT … FOR UPDATE SKIP LOCKED` (two builders
 * never wait on, nor both take, one row) and holds the claim by renewing a lease (`lease_until`);
 * a builder that dies (kill -9, power, a partition) stops renewing, and once the lease runs out
 * the next claim by any builder takes the job over, the attempt counted. Every write a builder
 * makes about its job is fenced by `claimed_by`, so a builder that was presumed dead and comes
 * back cannot overwrite the new owner's result. New jobs are admitted under a transaction
 * advisory lock (the queue bound holds across replicas) and announced with NOTIFY, so idle
 * builders start within milliseconds; a poll (the pool's timer) covers a lost notification.
 *
 * Rows are scoped by the delta directory (`scope`: a random id the first replica writes into it,
 * `.ibu-delta-dir`): a ready row means a file there, so only processes that see that directory
 * share a queue. Replicas each with a directory of their own (no `--delta-dir`) keep separate
 * queues in the same table and each build what its devices ask for, as before; pointing them at
 * one shared directory makes it one queue, one build per pair.
 */
export class PostgresDeltaQueue implements DeltaQueue {
  readonly shared = true;
  readonly retry: RetryPolicy;
  readonly leaseMs: number;
  readonly owner: string;
  private readonly pool: pg.Pool;
  private listener: pg.Client | null = null;
  private readonly listeners: Array<() => void> = [];
  private reconnect: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(
    private readonly url: string,
    /** The delta directory's id: every query is about its rows only. */
    readonly scope: string,
    o: PostgresQueueOptions,
  ) {
    this.retry = o.retry ?? DEFAULT_RETRY;
    this.leaseMs = o.leaseMs ?? DEFAULT_LEASE_MS;
    this.owner = o.owner ?? `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
    this.pool = new pg.Pool({ connectionString: url, max: 6, types: pgTypes });
    // An idle connection dropped by the server must not crash the process; the next query reconnects.
    this.pool.on('error', () => {});
  }

  get renewEveryMs(): number {
    return Math.max(100, Math.floor(this.leaseMs / 3));
  }

  /**
   * Connects, creates the table, and reads the id of the delta directory `dir` (writing one when it
   * has none), all under an advisory lock: replicas may start together on a fresh shared directory.
   */
  static async open(url: string, dir: string, o: PostgresQueueOptions = {}): Promise<PostgresDeltaQueue> {
    const scope = await openDeltaSchema(url, dir);
    const q = new PostgresDeltaQueue(url, scope, o);
    try {
      await q.listen();
    } catch (err) {
      await q.close();
      throw new IbuError('STORE_UNAVAILABLE', `Cannot LISTEN for delta jobs: ${(err as Error).message}.`, { cause: err });
    }
    return q;
  }

  /** A query on this scope's rows: `:scope` in the text is bound to it (after `params`). */
  private run<R extends pg.QueryResultRow = pg.QueryResultRow>(c: Query, sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    return c.query<R>(sql.replaceAll(':scope', `$${params.length + 1}`), [...params, this.scope]);
  }

  /** Wakes the builders of this scope (inside a transaction: delivered at commit). */
  private async notify(c: Query): Promise<void> {
    await c.query('SELECT pg_notify($1, $2)', [CHANNEL, this.scope]);
  }

  private async listen(): Promise<void> {
    const c = new pg.Client({ connectionString: this.url });
    c.on('notification', (n) => {
      if (n.payload === this.scope) for (const fn of this.listeners) fn();
    });
    c.on('error', () => this.relisten());
    c.on('end', () => this.relisten());
    await c.connect();
    await c.query(`LISTEN ${CHANNEL}`);
    this.listener = c;
  }

  /** Lost the LISTEN connection: the pool's poll keeps claiming meanwhile; reconnect, then look at once. */
  private relisten(): void {
    this.listener = null;
    if (this.closed || this.reconnect) return;
    this.reconnect = setTimeout(() => {
      this.reconnect = null;
      this.listen().then(
        () => this.listeners.forEach((fn) => fn()),
        () => this.relisten(),
      );
    }, 1000);
    this.reconnect.unref();
  }

  onQueued(fn: () => void): void {
    this.listeners.push(fn);
  }

  private tx<T>(fn: (c: Query) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, fn);
  }

  private async row(c: Query, from: string, to: string): Promise<DeltaJob | undefined> {
    const r = await this.run<Row>(c, 'SELECT * FROM delta_jobs WHERE scope = :scope AND from_version = $1 AND to_version = $2', [from, to]);
    return r.rows[0] ? toJob(r.rows[0]) : undefined;
  }

  get(from: string, to: string): Promise<DeltaJob | undefined> {
    return this.row(this.pool, from, to);
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
    // The hot path (a device polling a known pair) is one read, no transaction.
    const seen = await this.get(from, to);
    if (seen && (seen.state === 'building' || seen.state === 'ready' || (seen.state === 'queued' && seen.priority <= priority)))
      return { job: seen, created: false };
    return this.tx(async (c): Promise<AdmitResult<R>> => {
      // Every replica's additions in turn: the admission facts (queue length, a client's count) stay true until commit.
      await this.run(c, 'SELECT pg_advisory_xact_lock($1, hashtext(:scope))', [ADMIT_LOCK]);
      const cur = await this.row(c, from, to);
      const adds = !cur || (cur.state === 'failed' && now - (cur.finishedAt ?? 0) >= this.retry.failedCooldownMs);
      let evicted: DeltaJob | undefined;
      if (adds && o.admit) {
        const f = await this.run<{ queued: number; held: number; evictable: boolean }>(
          c,
          `SELECT count(*) FILTER (WHERE state = 'queued')::int AS queued,
                  count(*) FILTER (WHERE client = $1 AND priority >= $2 AND state IN ('queued', 'building'))::int AS held,
                  bool_or(state = 'queued' AND priority >= $2) IS TRUE AS evictable
             FROM delta_jobs WHERE scope = :scope`,
          [o.client ?? '', PRIORITY.unneeded],
        );
        const facts = f.rows[0]!;
        const decision = o.admit({ queued: facts.queued, clientHeld: facts.held, evictable: facts.evictable });
        if (!decision.admit) return { refused: decision };
        priority = decision.priority;
        if (decision.evict) {
          const r = await this.run<Row>(
            c,
            `DELETE FROM delta_jobs WHERE scope = :scope AND state = 'queued' AND (from_version, to_version) IN (SELECT from_version, to_version FROM delta_jobs
               WHERE scope = :scope AND state = 'queued' AND priority >= $1 ORDER BY requested_at DESC, seq DESC LIMIT 1) RETURNING *`,
            [PRIORITY.unneeded],
          );
          if (r.rows[0]) evicted = toJob(r.rows[0]);
        }
      }
      const client = priority >= PRIORITY.unneeded ? (o.client ?? null) : null;
      const ins = await this.run(
        c,
        `INSERT INTO delta_jobs (scope, from_version, to_version, state, priority, requested_at, client) VALUES (:scope, $1, $2, 'queued', $3, $4, $5)
           ON CONFLICT DO NOTHING`,
        [from, to, priority, now, client],
      );
      let created = (ins.rowCount ?? 0) > 0;
      if (!created) {
        if (cur?.state === 'queued') await this.bump(c, from, to, priority);
        else if (adds) created = await this.revive(c, from, to, priority, now, client);
      }
      if (created) await this.notify(c); // delivered at commit
      return { job: (await this.row(c, from, to))!, created, evicted };
    });
  }

  private async bump(c: Query, from: string, to: string, priority: number): Promise<void> {
    await this.run(
      c,
      "UPDATE delta_jobs SET priority = $1 WHERE scope = :scope AND from_version = $2 AND to_version = $3 AND state = 'queued' AND priority > $1",
      [priority, from, to],
    );
  }

  private async revive(c: Query, from: string, to: string, priority: number, now: number, client: string | null): Promise<boolean> {
    const r = await this.run(
      c,
      `UPDATE delta_jobs SET state = 'queued', attempts = 0, next_attempt_at = 0, last_error = NULL, priority = $1, requested_at = $2,
              client = $3, claimed_by = NULL, lease_until = NULL
         WHERE scope = :scope AND from_version = $4 AND to_version = $5 AND state = 'failed'`,
      [priority, now, client, from, to],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async raise(from: string, to: string, priority: number): Promise<void> {
    await this.bump(this.pool, from, to, priority);
  }

  async position(job: DeltaJob): Promise<number> {
    const r = await this.run<{ n: number }>(
      this.pool,
      `SELECT count(*)::int AS n FROM delta_jobs WHERE scope = :scope AND state = 'queued' AND (priority < $1 OR (priority = $1 AND (requested_at < $2
         OR (requested_at = $2 AND seq < (SELECT seq FROM delta_jobs WHERE scope = :scope AND from_version = $3 AND to_version = $4)))))`,
      [job.priority, job.requestedAt, job.from, job.to],
    );
    return r.rows[0]!.n;
  }

  async claimNext(now = Date.now()): Promise<DeltaJob | undefined> {
    for (;;) {
      // A due queued job, or one whose builder stopped renewing its lease. SKIP LOCKED: a row another
      // builder is claiming this instant is passed over, not waited for.
      const r = await this.run<Row & { was: JobState; prev: string | null }>(
        this.pool,
        `WITH c AS (
           SELECT from_version, to_version, state AS was, claimed_by AS prev FROM delta_jobs
            WHERE scope = :scope AND ((state = 'queued' AND next_attempt_at <= $1) OR (state = 'building' AND lease_until < $1))
            ORDER BY priority, requested_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)
         UPDATE delta_jobs d SET state = 'building', attempts = d.attempts + 1, builds = d.builds + 1, started_at = $1,
                claimed_by = $2, lease_until = $1 + $3
           FROM c WHERE d.scope = :scope AND d.from_version = c.from_version AND d.to_version = c.to_version
         RETURNING d.*, c.was, c.prev`,
        [now, this.owner, this.leaseMs],
      );
      const row = r.rows[0];
      if (!row) return undefined;
      const job = toJob(row);
      // Taken over from a dead builder on its last attempt: a build that kills its builder every time ends as 'failed'.
      if (row.was === 'building' && job.attempts > this.retry.maxAttempts) {
        await this.run(
          this.pool,
          `UPDATE delta_jobs SET state = 'failed', attempts = $1, finished_at = $2, last_error = $3, claimed_by = NULL, lease_until = NULL
             WHERE scope = :scope AND from_version = $4 AND to_version = $5 AND claimed_by = $6`,
          [this.retry.maxAttempts, now, `its builder (${row.prev}) stopped renewing its claim on every attempt`, job.from, job.to, this.owner],
        );
        continue;
      }
      return job;
    }
  }

  async renewClaims(now = Date.now()): Promise<number> {
    const r = await this.run(this.pool, "UPDATE delta_jobs SET lease_until = $1 WHERE scope = :scope AND claimed_by = $2 AND state = 'building'", [
      now + this.leaseMs,
      this.owner,
    ]);
    return r.rowCount ?? 0;
  }

  async holds(from: string, to: string): Promise<boolean> {
    const r = await this.run(
      this.pool,
      "SELECT 1 FROM delta_jobs WHERE scope = :scope AND from_version = $1 AND to_version = $2 AND state = 'building' AND claimed_by = $3",
      [from, to, this.owner],
    );
    return r.rows.length > 0;
  }

  async markReady(from: string, to: string, size: number, sha256: string, now = Date.now()): Promise<boolean> {
    const r = await this.run(
      this.pool,
      `UPDATE delta_jobs SET state = 'ready', finished_at = $1, size = $2, sha256 = $3, last_access_at = $1, last_error = NULL,
              claimed_by = NULL, lease_until = NULL
         WHERE scope = :scope AND from_version = $4 AND to_version = $5 AND state = 'building' AND claimed_by = $6`,
      [now, size, sha256, from, to, this.owner],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async markFailed(from: string, to: string, error: string, now = Date.now()): Promise<DeltaJob> {
    const job = await this.get(from, to);
    if (!job) throw new Error(`no delta job ${from} -> ${to}`);
    const fence = [from, to, this.owner];
    if (job.attempts >= this.retry.maxAttempts) {
      await this.run(
        this.pool,
        `UPDATE delta_jobs SET state = 'failed', finished_at = $4, last_error = $5, claimed_by = NULL, lease_until = NULL
           WHERE scope = :scope AND from_version = $1 AND to_version = $2 AND state = 'building' AND claimed_by = $3`,
        [...fence, now, error],
      );
    } else {
      await this.run(
        this.pool,
        `UPDATE delta_jobs SET state = 'queued', next_attempt_at = $4, last_error = $5, claimed_by = NULL, lease_until = NULL
           WHERE scope = :scope AND from_version = $1 AND to_version = $2 AND state = 'building' AND claimed_by = $3`,
        [...fence, now + retryDelay(this.retry, job.attempts), error],
      );
    }
    return (await this.get(from, to)) ?? job;
  }

  async retryNow(from: string, to: string, now = Date.now()): Promise<void> {
    if (await this.revive(this.pool, from, to, PRIORITY.admin, now, null)) await this.notify(this.pool);
  }

  /** Shutdown: the job goes back to the queue at once (no lease to wait out) and another builder hears of it. */
  async requeue(from: string, to: string): Promise<void> {
    await this.run(
      this.pool,
      `UPDATE delta_jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0), started_at = NULL, claimed_by = NULL, lease_until = NULL
         WHERE scope = :scope AND from_version = $1 AND to_version = $2 AND state = 'building' AND claimed_by = $3`,
      [from, to, this.owner],
    );
    await this.notify(this.pool);
  }

  async recoverInterrupted(): Promise<number> {
    return 0;
  }

  async touch(from: string, to: string, now = Date.now()): Promise<void> {
    await this.run(this.pool, 'UPDATE delta_jobs SET last_access_at = $1 WHERE scope = :scope AND from_version = $2 AND to_version = $3', [now, from, to]);
  }

  async delete(from: string, to: string): Promise<boolean> {
    const r = await this.run(this.pool, 'DELETE FROM delta_jobs WHERE scope = :scope AND from_version = $1 AND to_version = $2', [from, to]);
    return (r.rowCount ?? 0) > 0;
  }

  async evictReady(from: string, to: string): Promise<boolean> {
    const r = await this.run(this.pool, "DELETE FROM delta_jobs WHERE scope = :scope AND from_version = $1 AND to_version = $2 AND state = 'ready'", [
      from,
      to,
    ]);
    return (r.rowCount ?? 0) > 0;
  }

  private async list(sql: string, params: unknown[] = []): Promise<DeltaJob[]> {
    return (await this.run<Row>(this.pool, sql, params)).rows.map(toJob);
  }

  readyByLru(): Promise<DeltaJob[]> {
    return this.list("SELECT * FROM delta_jobs WHERE scope = :scope AND state = 'ready' ORDER BY last_access_at, seq");
  }

  all(): Promise<DeltaJob[]> {
    return this.list('SELECT * FROM delta_jobs WHERE scope = :scope ORDER BY state, priority, requested_at, seq');
  }

  involving(version: string): Promise<DeltaJob[]> {
    // Keys of other kinds end in +<from> (zfs+1.0, rc~xz-5.4.1+1.0); '%' and '_' cannot occur in a version.
    return this.list("SELECT * FROM delta_jobs WHERE scope = :scope AND (from_version = $1 OR to_version = $1 OR from_version LIKE '%+' || $1)", [version]);
  }

  async readyBytes(): Promise<number> {
    const r = await this.run<{ n: number | null }>(this.pool, "SELECT sum(size)::bigint AS n FROM delta_jobs WHERE scope = :scope AND state = 'ready'");
    return r.rows[0]!.n ?? 0;
  }

  async counts(): Promise<Record<JobState, number>> {
    const out: Record<JobState, number> = { queued: 0, building: 0, ready: 0, failed: 0 };
    const r = await this.run<{ state: JobState; n: number }>(this.pool, 'SELECT state, count(*)::int AS n FROM delta_jobs WHERE scope = :scope GROUP BY state');
    for (const x of r.rows) out[x.state] = x.n;
    return out;
  }

  /** The next retry due, or the next lease of another builder running out (its job is then ours to take). */
  async nextDue(): Promise<number | undefined> {
    const r = await this.run<{ t: number | null }>(
      this.pool,
      `SELECT least(min(next_attempt_at) FILTER (WHERE state = 'queued'),
                    min(lease_until) FILTER (WHERE state = 'building' AND claimed_by <> $1)) AS t FROM delta_jobs WHERE scope = :scope`,
      [this.owner],
    );
    return r.rows[0]!.t ?? undefined;
  }

  // Demand is about devices, not files: one table for every scope on the database.
  async noteDemand(from: string, to: string, now: number): Promise<void> {
    await this.pool.query(
      `INSERT INTO delta_demand (from_version, to_version, noted_at) VALUES ($1, $2, $3)
         ON CONFLICT (from_version, to_version) DO UPDATE SET noted_at = greatest(delta_demand.noted_at, excluded.noted_at)`,
      [from, to, now],
    );
  }

  async demandNotedAt(from: string, to: string): Promise<number | undefined> {
    const r = await this.pool.query<{ noted_at: number }>('SELECT noted_at FROM delta_demand WHERE from_version = $1 AND to_version = $2', [from, to]);
    return r.rows[0]?.noted_at;
  }

  async pruneDemand(before: number): Promise<void> {
    await this.pool.query('DELETE FROM delta_demand WHERE noted_at < $1', [before]);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.reconnect) clearTimeout(this.reconnect);
    const l = this.listener;
    this.listener = null;
    await l?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}
