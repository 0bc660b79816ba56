import pg from 'pg';
import { IbuError } from '../../errors.js';
import type { ReplicaCoordination } from '../repository.js';
import type { LeaseRecord, RolloutRecord } from '../types.js';

/** The channel every replica LISTENs on; the payload names what changed (releases, rollouts, groups, settings). */
const CHANNEL = 'ibu_fleet';
/** Session advisory lock held by the one replica that evaluates rollouts and expires leases. */
const EVALUATOR_LOCK = 7142;
/** Transaction advisory locks on a group's leases and on a release's rollouts: keys in their own namespace (the two-int form). */
const LEASE_NS = 7143;
const ROLLOUT_NS = 7144;

const toLease = (r: { device_id: string; grp: string; expires_at: number | string }): LeaseRecord => ({
  deviceId: String(r.device_id),
  group: String(r.grp),
  expiresAt: Number(r.expires_at),
});

/**
 * What replicas of `ibu serve` on one PostgreSQL need beyond storage. Nothing authoritative stays
 * in a process: a reboot lease is granted in one transaction under an advisory lock on its group
 * (so two replicas answering check-ins of one group at once cannot both take the last slot);
 * rollouts, releases, groups and settings stay cached in every replica for the check-in path,
 * and each write NOTIFYs the others, which reload that part (LISTEN on one dedicated connection;
 * after losing it a replica reloads everything). One replica at a time (a session advisory lock,
 * freed by PostgreSQL when its process dies) evaluates rollouts; every rollout write is
 * conditional on the row being what the writer read, so an operator's pause on one replica and an
 * evaluation on another cannot overwrite each other.
 */
export class PostgresCoordination implements ReplicaCoordination {
  private client: pg.Client | null = null;
  private leader = false;
  private closed = false;
  private listeners: Array<(topic: string) => void> = [];
  private reconnecting: NodeJS.Timeout | null = null;

  constructor(
    private readonly pool: pg.Pool,
    private readonly url: string,
  ) {}

  async acquireLease(lease: LeaseRecord, max: number, now: number): Promise<LeaseRecord | undefined> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      // Serialises grants within one group across every replica; other groups do not wait.
      await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LEASE_NS, lease.group]);
      const held = await c.query('SELECT * FROM leases WHERE device_id = $1 AND expires_at > $2', [lease.deviceId, now]);
      if (held.rows.length) {
        await c.query('COMMIT');
        return toLease(held.rows[0]);
      }
      // The group's leases that ran out go now (as the in-memory table drops them): their slots are free.
      await c.query('DELETE FROM leases WHERE grp = $1 AND expires_at <= $2', [lease.group, now]);
      if (max > 0) {
        const n = await c.query('SELECT count(*)::int AS n FROM leases WHERE grp = $1', [lease.group]);
        if (Number(n.rows[0].n) >= max) {
          await c.query('COMMIT');
          return undefined;
        }
      }
      await c.query(
        `INSERT INTO leases (device_id, grp, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (device_id) DO UPDATE SET grp = excluded.grp, expires_at = excluded.expires_at`,
        [lease.deviceId, lease.group, lease.expiresAt],
      );
      await c.query('COMMIT');
      return lease;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }

  async heldLease(deviceId: string, now: number): Promise<LeaseRecord | undefined> {
    const r = await this.pool.query('SELECT * FROM leases WHERE device_id = $1 AND expires_at > $2', [deviceId, now]);
    return r.rows.length ? toLease(r.rows[0]) : undefined;
  }

  async activeLeases(now: number, group?: string): Promise<LeaseRecord[]> {
    const r =
      group === undefined
        ? await this.pool.query('SELECT * FROM leases WHERE expires_at > $1 ORDER BY expires_at', [now])
        : await this.pool.query('SELECT * FROM leases WHERE expires_at > $1 AND grp = $2 ORDER BY expires_at', [now, group]);
    return r.rows.map(toLease);
  }

  async expireLeases(now: number): Promise<number> {
    return (await this.pool.query('DELETE FROM leases WHERE expires_at <= $1', [now])).rowCount ?? 0;
  }

  async notify(topic: string): Promise<void> {
    await this.pool.query('SELECT pg_notify($1, $2)', [CHANNEL, topic]);
  }

  async insertRolloutIfNone(r: Omit<RolloutRecord, 'id'>): Promise<number> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      // Two replicas creating a rollout for one release (an operator and a channel policy) take turns here.
      await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [ROLLOUT_NS, `${r.channel} ${r.version}`]);
      const prev = await c.query(`SELECT id, state FROM rollouts WHERE channel = $1 AND version = $2 AND state <> 'aborted' ORDER BY id DESC LIMIT 1`, [
        r.channel,
        r.version,
      ]);
      if (prev.rows.length) {
        throw new IbuError('CONFLICT', `Release ${r.version} already has rollout ${prev.rows[0].id} (${prev.rows[0].state}); pause, resume or abort that one.`);
      }
      const ins = await c.query(
        `INSERT INTO rollouts (channel, version, spec, state, wave, wave_started_at, created_at, updated_at, reason, baseline_bad, baseline_started)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id`,
        [r.channel, r.version, JSON.stringify(r.spec), r.state, r.wave, r.waveStartedAt, r.createdAt, r.updatedAt, r.reason, r.baselineBad, r.baselineStarted],
      );
      await c.query('SELECT pg_notify($1, $2)', [CHANNEL, 'rollouts']);
      await c.query('COMMIT');
      return Number(ins.rows[0].id);
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }

  async updateRolloutIf(r: RolloutRecord, prev: RolloutRecord): Promise<boolean> {
    const res = await this.pool.query(
      `WITH u AS (
         UPDATE rollouts SET spec = $1, state = $2, wave = $3, wave_started_at = $4, updated_at = $5, reason = $6, baseline_bad = $7, baseline_started = $8
         WHERE id = $9 AND state = $10 AND wave = $11 AND updated_at = $12 RETURNING id)
       SELECT id, pg_notify($13, 'rollouts') FROM u`,
      [
        JSON.stringify(r.spec),
        r.state,
        r.wave,
        r.waveStartedAt,
        r.updatedAt,
        r.reason,
        r.baselineBad,
        r.baselineStarted,
        r.id,
        prev.state,
        prev.wave,
        prev.updatedAt,
        CHANNEL,
      ],
    );
    return res.rows.length === 1;
  }

  /** Starts listening (and trying for the evaluator lock) on a dedicated connection; reconnects with a full reload when it drops. */
  async listen(fn: (topic: string) => void): Promise<void> {
    this.listeners.push(fn);
    if (!this.client) await this.connect();
  }

  private async connect(): Promise<void> {
    const c = new pg.Client({ connectionString: this.url });
    c.on('notification', (n) => {
      if (n.channel === CHANNEL) for (const f of this.listeners) f(n.payload ?? '');
    });
    c.on('error', () => this.lost(c));
    c.on('end', () => this.lost(c));
    await c.connect();
    await c.query(`LISTEN ${CHANNEL}`);
    this.client = c;
  }

  /** The connection went: the evaluator lock went with it, and notices may have been missed. */
  private lost(c: pg.Client): void {
    if (this.client !== c) return;
    this.client = null;
    this.leader = false;
    if (this.closed || this.reconnecting) return;
    const retry = () => {
      this.reconnecting = setTimeout(() => {
        this.connect()
          .then(() => {
            this.reconnecting = null;
            for (const f of this.listeners) f('*');
          })
          .catch(retry);
      }, 1000);
      this.reconnecting.unref();
    };
    retry();
  }

  async isEvaluator(): Promise<boolean> {
    if (this.leader) return true;
    const c = this.client;
    if (!c) return false;
    const r = await c.query('SELECT pg_try_advisory_lock($1) AS ok', [EVALUATOR_LOCK]);
    this.leader = Boolean(r.rows[0].ok);
    return this.leader;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.reconnecting) clearTimeout(this.reconnecting);
    const c = this.client;
    this.client = null;
    this.leader = false;
    await c?.end().catch(() => {});
  }
}
