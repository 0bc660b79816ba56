import pg from 'pg';
import { inTransaction } from '../../util/pg-transaction.js';
import type { FleetRepository } from '../repository.js';
import type {
  DeviceRecord,
  DeviceView,
  GroupRecord,
  LeaseRecord,
  ParticipationStatus,
  ReleaseRecord,
  RolloutDevice,
  RolloutRecord,
  WriteOp,
} from '../types.js';
import { emptyStatusCounts } from '../rollout-policy.js';
import { IbuError } from '../../errors.js';
import { PostgresCoordination } from './postgres-coordination.js';
import {
  DEVICE_COLUMNS,
  DEVICE_VIEW_SELECT,
  PARTICIPATION_COLUMNS,
  deviceToRow,
  participationToRow,
  rowToDevice,
  rowToDeviceView,
  rowToGroup,
  rowToParticipation,
  rowToRelease,
  rowToRollout,
  schemaSql,
  addedColumns,
  PREAUTH_UPSERT,
  rowToPreauthorized,
  type Row,
} from './rows.js';

/** BIGINT arrives as a string by default; every int8 here (epoch ms, counts) fits a double. */
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/**
 * PostgreSQL behind the same interface, for fleets that want a database server. A batch is one
 * transaction with multi-row upserts (one round trip per table, not per device).
 */
export class PostgresFleetRepository implements FleetRepository {
  readonly kind = 'postgres' as const;
  private pool: pg.Pool;
  readonly coordination: PostgresCoordination;

  constructor(url: string, opts: { max?: number } = {}) {
    this.pool = new pg.Pool({ connectionString: url, max: opts.max ?? 8, types });
    // An idle connection the server drops (a PostgreSQL restart, a failover, an administrator's
    // pg_terminate_backend) is an 'error' on the pool; unheard, it would crash `ibu serve`. The
    // pool has already discarded it and the next query opens another.
    this.pool.on('error', () => {});
    this.coordination = new PostgresCoordination(this.pool, url);
  }

  async init(): Promise<void> {
    try {
      // Two servers starting at once must not race on CREATE TABLE IF NOT EXISTS.
      const c = await this.pool.connect();
      try {
        await c.query('SELECT pg_advisory_lock(7141)');
        await c.query(schemaSql('postgres'));
        for (const a of addedColumns('postgres')) await c.query(`ALTER TABLE ${a.table} ADD COLUMN IF NOT EXISTS ${a.column} ${a.type}`);
      } finally {
        await c.query('SELECT pg_advisory_unlock(7141)').catch(() => {});
        c.release();
      }
    } catch (err) {
      throw new IbuError(
        'STORE_UNAVAILABLE',
        `Cannot use the PostgreSQL fleet database: ${(err as Error).message}. Check --database-url and that the server is running.`,
        { cause: err },
      );
    }
  }

  async close(): Promise<void> {
    await this.coordination.close();
    await this.pool.end();
  }

  private transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, fn);
  }

  private async q(sql: string, params: unknown[] = []): Promise<Row[]> {
    return (await this.pool.query(sql, params)).rows as Row[];
  }

  async getDevice(id: string): Promise<DeviceView | undefined> {
    const [r] = await this.q(`${DEVICE_VIEW_SELECT} WHERE d.id = $1`, [id]);
    return r ? rowToDeviceView(r) : undefined;
  }

  async writeBatch(ops: readonly WriteOp[]): Promise<void> {
    if (!ops.length) return;
    // ON CONFLICT cannot touch a row twice in one statement: keep each key's last write.
    const devices = new Map<string, DeviceRecord>();
    const parts = new Map<string, RolloutDevice>();
    const events: unknown[][] = [];
    const leaseOps: WriteOp[] = [];
    for (const op of ops) {
      if (op.kind === 'device') devices.set(op.device.id, op.device);
      else if (op.kind === 'participation') parts.set(`${op.row.rolloutId}\0${op.row.deviceId}`, op.row);
      else if (op.kind === 'event') {
        const e = op.event;
        events.push([e.deviceId, e.type, e.fromVersion, e.toVersion, e.at, e.errorCode, e.errorMessage, e.method ?? null]);
      } else leaseOps.push(op);
    }
    await this.transaction(async (c) => {
      const devSet = DEVICE_COLUMNS.filter((x) => x !== 'id')
        .map((x) => `${x} = excluded.${x}`)
        .join(', ');
      await upsertMany(c, 'devices', DEVICE_COLUMNS, [...devices.values()].map(deviceToRow), `ON CONFLICT (id) DO UPDATE SET ${devSet}`);
      const pSet = PARTICIPATION_COLUMNS.filter((x) => x !== 'rollout_id' && x !== 'device_id')
        .map((x) => `${x} = excluded.${x}`)
        .join(', ');
      await upsertMany(
        c,
        'rollout_devices',
        PARTICIPATION_COLUMNS,
        [...parts.values()].map(participationToRow),
        `ON CONFLICT (rollout_id, device_id) DO UPDATE SET ${pSet}`,
      );
      await upsertMany(c, 'events', ['device_id', 'type', 'from_version', 'to_version', 'at', 'error_code', 'error_message', 'method'], events, '');
      for (const op of leaseOps) {
        if (op.kind === 'lease') {
          await c.query(
            `INSERT INTO leases (device_id, grp, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET grp = excluded.grp, expires_at = excluded.expires_at`,
            [op.lease.deviceId, op.lease.group, op.lease.expiresAt],
          );
        } else if (op.kind === 'lease-delete') await c.query('DELETE FROM leases WHERE device_id = $1', [op.deviceId]);
      }
    });
  }

  async listDevices(after: string, limit: number): Promise<DeviceRecord[]> {
    return (await this.q('SELECT * FROM devices WHERE id > $1 ORDER BY id LIMIT $2', [after, limit])).map(rowToDevice);
  }

  async deviceCount(): Promise<number> {
    return Number((await this.q('SELECT count(*)::int AS n FROM devices'))[0]!.n);
  }

  async problemDevices(limit: number): Promise<DeviceView[]> {
    const rows = await this.q(
      `${DEVICE_VIEW_SELECT} WHERE p.status IN ('failed', 'rolled-back', 'silent') OR d.flags <> ''
       ORDER BY coalesce(p.updated_at, d.last_checkin) DESC LIMIT $1`,
      [limit],
    );
    return rows.map(rowToDeviceView);
  }

  async getPreauthorized(id: string) {
    const [r] = await this.q('SELECT * FROM preauthorized WHERE id = $1', [id]);
    return r ? rowToPreauthorized(r) : undefined;
  }

  async addPreauthorized(rows: ReadonlyArray<{ id: string; group: string; channel: string; secretHash?: string }>): Promise<void> {
    const dedup = new Map(rows.map((r) => [r.id, r]));
    await this.transaction((c) =>
      upsertMany(
        c,
        'preauthorized',
        ['id', 'grp', 'channel', 'secret_hash', 'used_at'],
        [...dedup.values()].map((r) => [r.id, r.group, r.channel, r.secretHash ?? null, null]),
        PREAUTH_UPSERT,
      ),
    );
  }

  async claimFactorySecret(id: string, secretHash: string, at: number): Promise<boolean> {
    const r = await this.pool.query('UPDATE preauthorized SET used_at = $1 WHERE id = $2 AND secret_hash = $3 AND used_at IS NULL', [at, id, secretHash]);
    return r.rowCount === 1;
  }

  async listReleases(): Promise<ReleaseRecord[]> {
    return (await this.q('SELECT * FROM releases')).map(rowToRelease);
  }

  async upsertRelease(r: ReleaseRecord): Promise<void> {
    await this.q(
      `INSERT INTO releases (channel, version, mandatory, manifest_url, created_at, source) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (channel, version) DO UPDATE SET mandatory = excluded.mandatory, manifest_url = excluded.manifest_url, source = excluded.source`,
      [r.channel, r.version, r.mandatory ? 1 : 0, r.manifestUrl, r.createdAt, r.source],
    );
    await this.coordination.notify('releases');
  }

  async listRollouts(): Promise<RolloutRecord[]> {
    return (await this.q('SELECT * FROM rollouts ORDER BY id')).map(rowToRollout);
  }

  async insertRollout(r: Omit<RolloutRecord, 'id'>): Promise<number> {
    const [row] = await this.q(
      `INSERT INTO rollouts (channel, version, spec, state, wave, wave_started_at, created_at, updated_at, reason, baseline_bad, baseline_started)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id`,
      [r.channel, r.version, JSON.stringify(r.spec), r.state, r.wave, r.waveStartedAt, r.createdAt, r.updatedAt, r.reason, r.baselineBad, r.baselineStarted],
    );
    return Number(row!.id);
  }

  async updateRollout(r: RolloutRecord): Promise<void> {
    await this.q(
      `UPDATE rollouts SET spec = $1, state = $2, wave = $3, wave_started_at = $4, updated_at = $5, reason = $6, baseline_bad = $7, baseline_started = $8
       WHERE id = $9`,
      [JSON.stringify(r.spec), r.state, r.wave, r.waveStartedAt, r.updatedAt, r.reason, r.baselineBad, r.baselineStarted, r.id],
    );
    await this.coordination.notify('rollouts');
  }

  async getParticipation(rolloutId: number, deviceId: string): Promise<RolloutDevice | undefined> {
    const [r] = await this.q('SELECT * FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2', [rolloutId, deviceId]);
    return r ? (rowToParticipation(r) ?? undefined) : undefined;
  }

  async participationCounts(rolloutId: number): Promise<Record<ParticipationStatus, number>> {
    const out = emptyStatusCounts();
    for (const r of await this.q('SELECT status, count(*)::int AS n FROM rollout_devices WHERE rollout_id = $1 GROUP BY status', [rolloutId])) {
      out[String(r.status) as ParticipationStatus] = Number(r.n);
    }
    return out;
  }

  async markSilent(rolloutId: number, now: number): Promise<number> {
    const res = await this.pool.query(
      `UPDATE rollout_devices SET status = 'silent', updated_at = $1 WHERE rollout_id = $2 AND status = 'applying' AND deadline < $1`,
      [now, rolloutId],
    );
    return res.rowCount ?? 0;
  }

  async extendDeadlines(rolloutId: number, deadline: number): Promise<number> {
    const res = await this.pool.query(`UPDATE rollout_devices SET deadline = $1 WHERE rollout_id = $2 AND status = 'applying' AND deadline < $1`, [
      deadline,
      rolloutId,
    ]);
    return res.rowCount ?? 0;
  }

  async versionCounts(channel?: string, wave?: { bucketBelow: number; groups: string[] }): Promise<Array<{ version: string; devices: number }>> {
    let rows: Row[];
    if (wave) {
      // Devices that never checked in count too (version ''): they are in the wave and not done.
      rows = await this.q(
        `SELECT coalesce(version, '') AS version, count(*)::int AS n FROM devices
         WHERE channel = $1 AND (bucket < $2 OR grp = ANY($3)) GROUP BY 1 ORDER BY n DESC`,
        [channel ?? '', wave.bucketBelow, wave.groups],
      );
    } else if (channel === undefined) {
      rows = await this.q('SELECT version, count(*)::int AS n FROM devices WHERE version IS NOT NULL GROUP BY version ORDER BY n DESC');
    } else {
      rows = await this.q('SELECT version, count(*)::int AS n FROM devices WHERE channel = $1 AND version IS NOT NULL GROUP BY version ORDER BY n DESC', [
        channel,
      ]);
    }
    return rows.map((r) => ({ version: String(r.version), devices: Number(r.n) }));
  }

  async listGroups(): Promise<GroupRecord[]> {
    return (await this.q('SELECT * FROM device_groups ORDER BY name')).map(rowToGroup);
  }

  async upsertGroup(g: GroupRecord): Promise<void> {
    await this.q(
      `INSERT INTO device_groups (name, win, max_reboots, lease_ttl_seconds) VALUES ($1, $2, $3, $4)
       ON CONFLICT (name) DO UPDATE SET win = excluded.win, max_reboots = excluded.max_reboots, lease_ttl_seconds = excluded.lease_ttl_seconds`,
      [g.name, g.window ? JSON.stringify(g.window) : null, g.maxConcurrentReboots, g.leaseTtlSeconds],
    );
    await this.coordination.notify('groups');
  }

  async listLeases(): Promise<LeaseRecord[]> {
    return (await this.q('SELECT * FROM leases')).map((r) => ({ deviceId: String(r.device_id), group: String(r.grp), expiresAt: Number(r.expires_at) }));
  }

  async getSetting(key: string): Promise<unknown> {
    const [r] = await this.q('SELECT value FROM settings WHERE key = $1', [key]);
    return r ? JSON.parse(String(r.value)) : undefined;
  }

  async putSetting(key: string, value: unknown): Promise<void> {
    await this.q('INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, JSON.stringify(value)]);
    await this.coordination.notify('settings');
  }
}

/** Multi-row INSERT in slices that stay under PostgreSQL's 65,535 parameter limit. */
async function upsertMany(c: pg.PoolClient, table: string, cols: readonly string[], rows: unknown[][], conflict: string): Promise<void> {
  const per = Math.max(1, Math.floor(60_000 / cols.length));
  for (let i = 0; i < rows.length; i += per) {
    const slice = rows.slice(i, i + per);
    const params: unknown[] = [];
    const values = slice
      .map(
        (row) =>
          `(${row
            .map((v) => {
              params.push(v);
              return `$${params.length}`;
            })
            .join(', ')})`,
      )
      .join(', ');
    await c.query(`INSERT INTO ${table} (${cols.join(', ')}) VALUES ${values} ${conflict}`, params);
  }
}
