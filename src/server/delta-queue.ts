/**
 * The delta job queue and cache index as one interface with two implementations: SQLite in the
 * data directory (src/server/delta-jobs.ts, the one-server default) and PostgreSQL shared by every
 * replica (src/server/postgres-delta-queue.ts, with `--database-url`). One row per (from, to) pair:
 * the primary key is what makes "one build per pair" hold however many ask, and a claim moves a
 * row queued → building in one statement, so two claimers cannot both win.
 */

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
/** A job as both backends store it (one row per pair; SQLite and PostgreSQL share the columns). */
export interface JobRow {
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

export function jobFromRow(r: JobRow): DeltaJob {
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

/** Delay before the attempt after `attempts` failed ones (RetryPolicy.baseMs). */
export function retryDelay(r: RetryPolicy, attempts: number): number {
  return Math.min(r.maxMs, r.baseMs * 4 ** Math.max(0, attempts - 1));
}

export type AdmitResult<R> = { job: DeltaJob; created: boolean; evicted?: DeltaJob } | { refused: R };

export interface DeltaQueue {
  readonly retry: RetryPolicy;
  /**
   * True when other processes claim from the same queue (PostgreSQL): a claim then carries a lease
   * that its builder renews (`renewClaims`), and the files of builds in progress in the shared delta
   * directory may be another process's.
   */
  readonly shared: boolean;
  /** With a shared queue, the id of the delta directory its rows belong to (`<delta-dir>/.ibu-delta-dir`). */
  readonly scope?: string;
  /** How often a builder must renew its claims (ms); 0 when claims never expire (SQLite: one process). */
  readonly renewEveryMs: number;

  get(from: string, to: string): Promise<DeltaJob | undefined>;
  /**
   * Finds the pair's job or queues one (idempotent). A queued job asked for by a more urgent
   * requester moves up; a failed job asked for again after the cool-down is queued afresh.
   */
  request(from: string, to: string, priority: number, now?: number): Promise<{ job: DeltaJob; created: boolean }>;
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
  ): Promise<AdmitResult<R>>;
  /** Moves a queued job up to `priority` (a device's check-in named the pair); no job, no change. */
  raise(from: string, to: string, priority: number): Promise<void>;
  /** How many queued jobs run before this one (0 = next). */
  position(job: DeltaJob): Promise<number>;
  /** Atomically moves the most urgent due job to 'building', claimed by this process. */
  claimNext(now?: number): Promise<DeltaJob | undefined>;
  /** Extends the lease of every job this process builds; returns how many it still holds. */
  renewClaims(now?: number): Promise<number>;
  /** Whether this process still holds the claim on a job it builds (not cancelled, not taken over). */
  holds(from: string, to: string): Promise<boolean>;
  /** The build is done; false when this process no longer held the claim. */
  markReady(from: string, to: string, size: number, sha256: string, now?: number): Promise<boolean>;
  /** Records a failed attempt: back to the queue after a backoff, or 'failed' when out of attempts. */
  markFailed(from: string, to: string, error: string, now?: number): Promise<DeltaJob>;
  /** An operator's retry: a failed pair goes back to the queue at once with fresh attempts. */
  retryNow(from: string, to: string, now?: number): Promise<void>;
  /** A build stopped by shutdown goes back to the queue without counting as an attempt. */
  requeue(from: string, to: string): Promise<void>;
  /**
   * At start: jobs this queue knows were left 'building' by a dead process go back to the queue
   * (SQLite: all of them, the process owned the file). A shared queue returns 0: a dead builder's
   * claims expire and the next claim takes them over.
   */
  recoverInterrupted(): Promise<number>;
  touch(from: string, to: string, now?: number): Promise<void>;
  /** Deletes the pair's row whatever its state; false when there was none. */
  delete(from: string, to: string): Promise<boolean>;
  /** Deletes the pair's row only while it is 'ready' (quota eviction); false when another process got there first. */
  evictReady(from: string, to: string): Promise<boolean>;
  /** Ready deltas, least recently used first. */
  readyByLru(): Promise<DeltaJob[]>;
  all(): Promise<DeltaJob[]>;
  /** Jobs from or to a version, including the other kinds of job keyed `<kind>+<from>` (ZFS streams, recompressing deltas). */
  involving(version: string): Promise<DeltaJob[]>;
  readyBytes(): Promise<number>;
  counts(): Promise<Record<JobState, number>>;
  /** Earliest time a claim may become possible without a new request: a retry due, a lease running out. */
  nextDue(): Promise<number | undefined>;
  /**
   * The pairs enrolled devices were told to upgrade along (src/server/delta-demand.ts), kept beside
   * the queue so that a check-in on one replica counts for a delta request on another.
   */
  noteDemand(from: string, to: string, now: number): Promise<void>;
  /** When a check-in last named from→to, if it did. */
  demandNotedAt(from: string, to: string): Promise<number | undefined>;
  /** Forgets the pairs no check-in named since `before`. */
  pruneDemand(before: number): Promise<void>;
  /** Calls `fn` when another process queued a job or gave one back (PostgreSQL NOTIFY); SQLite never does. */
  onQueued(fn: () => void): void;
  close(): Promise<void>;
}
