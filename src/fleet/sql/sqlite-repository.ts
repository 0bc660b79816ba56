import Database from 'better-sqlite3';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
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

const CHECKPOINT_MS = 500;
const PARTICIPATION_COUNTS = 'SELECT status, count(*) AS n FROM rollout_devices WHERE rollout_id = ? GROUP BY status';
const VERSION_COUNTS_ALL = 'SELECT version, count(*) AS n FROM devices WHERE version IS NOT NULL GROUP BY version ORDER BY n DESC';
const VERSION_COUNTS_CHANNEL = 'SELECT version, count(*) AS n FROM devices WHERE channel = ? AND version IS NOT NULL GROUP BY version ORDER BY n DESC';
const PROBLEM_DEVICES = `${DEVICE_VIEW_SELECT} WHERE p.status IN ('failed', 'rolled-back', 'silent') OR d.flags <> ''
  ORDER BY coalesce(p.updated_at, d.last_checkin) DESC LIMIT ?`;

/**
 * The embedded default: one SQLite file in WAL mode with prepared statements. better-sqlite3 is
 * synchronous, which is what makes it fast here: a batch of check-ins is one transaction that
 * runs to completion without yielding. synchronous=NORMAL: a process crash loses nothing
 * committed; a power cut may lose the last transactions, which devices re-report at their next
 * check-in (every check-in carries the device's whole state). Aggregates over the whole fleet
 * run in a worker thread on a read-only connection (sqlite-reader.ts) so check-ins never wait
 * behind them.
 */
export class SqliteFleetRepository implements FleetRepository {
  readonly kind = 'sqlite' as const;
  private db: Database.Database;
  private st!: ReturnType<SqliteFleetRepository['prepare']>;

  private reader: Worker | null = null;
  private pending = new Map<number, { resolve: (rows: Row[]) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  constructor(
    private readonly file: string,
    private readonly opts: { synchronous?: 'NORMAL' | 'FULL'; offloadReads?: boolean } = {},
  ) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${opts.synchronous ?? 'NORMAL'}`);
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('cache_size = -65536');
  }

  async init(): Promise<void> {
    this.db.exec(schemaSql('sqlite'));
    for (const c of addedColumns('sqlite')) {
      const cols = this.db.prepare(`PRAGMA table_info(${c.table})`).all() as Row[];
      if (!cols.some((r) => r.name === c.column)) this.db.exec(`ALTER TABLE ${c.table} ADD COLUMN ${c.column} ${c.type}`);
    }
    this.st = this.prepare();
    if (this.opts.offloadReads !== false && !this.reader) this.startReader();
  }

  private startReader(): void {
    // Same extension as this module: .js when built, .ts under tsx (workers inherit execArgv).
    const self = fileURLToPath(import.meta.url);
    const entry = path.join(path.dirname(self), `sqlite-reader${path.extname(self)}`);
    // The worker checkpoints the WAL off the main thread (see sqlite-reader.ts).
    const workerData = { file: this.file, checkpointMs: CHECKPOINT_MS };
    // Under tsx (tests, `npm run bench:fleet`) the worker must register tsx itself to load a .ts file.
    const w = entry.endsWith('.ts')
      ? new Worker(`import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(pathToFileURL(entry).href)}); });`, {
          eval: true,
          workerData,
        })
      : new Worker(entry, { workerData });
    w.unref();
    w.on('message', (m: { id: number; rows?: Row[]; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.error !== undefined) p.reject(new Error(m.error));
      else p.resolve(m.rows ?? []);
    });
    w.on('error', (err) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      this.reader = null; // fall back to reading and checkpointing on the main thread
      if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000');
    });
    this.reader = w;
    this.db.pragma('wal_autocheckpoint = 0');
  }

  /** Runs a read-only aggregate off the main thread when the reader is up. */
  private async readAll(sql: string, params: unknown[]): Promise<Row[]> {
    const w = this.reader;
    if (!w) return this.db.prepare(sql).all(...params) as Row[];
    const id = this.nextId++;
    return new Promise<Row[]>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, sql, params });
    });
  }

  private prepare() {
    const db = this.db;
    const devCols = DEVICE_COLUMNS.join(', ');
    const devSet = DEVICE_COLUMNS.filter((c) => c !== 'id')
      .map((c) => `${c} = excluded.${c}`)
      .join(', ');
    const pCols = PARTICIPATION_COLUMNS.join(', ');
    const pSet = PARTICIPATION_COLUMNS.filter((c) => c !== 'rollout_id' && c !== 'device_id')
      .map((c) => `${c} = excluded.${c}`)
      .join(', ');
    return {
      getDevice: db.prepare(`${DEVICE_VIEW_SELECT} WHERE d.id = ?`),
      upsertDevice: db.prepare(
        `INSERT INTO devices (${devCols}) VALUES (${DEVICE_COLUMNS.map(() => '?').join(', ')}) ON CONFLICT (id) DO UPDATE SET ${devSet}`,
      ),
      upsertParticipation: db.prepare(
        `INSERT INTO rollout_devices (${pCols}) VALUES (${PARTICIPATION_COLUMNS.map(() => '?').join(', ')})
         ON CONFLICT (rollout_id, device_id) DO UPDATE SET ${pSet}`,
      ),
      insertEvent: db.prepare(
        'INSERT INTO events (device_id, type, from_version, to_version, at, error_code, error_message, method) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      upsertLease: db.prepare(
        `INSERT INTO leases (device_id, grp, expires_at) VALUES (?, ?, ?)
         ON CONFLICT (device_id) DO UPDATE SET grp = excluded.grp, expires_at = excluded.expires_at`,
      ),
      deleteLease: db.prepare('DELETE FROM leases WHERE device_id = ?'),
      listDevices: db.prepare('SELECT * FROM devices WHERE id > ? ORDER BY id LIMIT ?'),
      deviceCount: db.prepare('SELECT count(*) AS n FROM devices'),
      getPreauth: db.prepare('SELECT * FROM preauthorized WHERE id = ?'),
      addPreauth: db.prepare(`INSERT INTO preauthorized (id, grp, channel, secret_hash, used_at) VALUES (?, ?, ?, ?, NULL) ${PREAUTH_UPSERT}`),
      claimSecret: db.prepare('UPDATE preauthorized SET used_at = ? WHERE id = ? AND secret_hash = ? AND used_at IS NULL'),
      listReleases: db.prepare('SELECT * FROM releases'),
      upsertRelease: db.prepare(
        `INSERT INTO releases (channel, version, mandatory, manifest_url, created_at, source) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (channel, version) DO UPDATE SET mandatory = excluded.mandatory, manifest_url = excluded.manifest_url, source = excluded.source`,
      ),
      listRollouts: db.prepare('SELECT * FROM rollouts ORDER BY id'),
      insertRollout: db.prepare(
        `INSERT INTO rollouts (channel, version, spec, state, wave, wave_started_at, created_at, updated_at, reason, baseline_bad, baseline_started)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      updateRollout: db.prepare(
        `UPDATE rollouts SET spec = ?, state = ?, wave = ?, wave_started_at = ?, updated_at = ?, reason = ?, baseline_bad = ?, baseline_started = ?
         WHERE id = ?`,
      ),
      getParticipation: db.prepare('SELECT * FROM rollout_devices WHERE rollout_id = ? AND device_id = ?'),
      extendDeadlines: db.prepare(`UPDATE rollout_devices SET deadline = ? WHERE rollout_id = ? AND status = 'applying' AND deadline < ?`),
      markSilent: db.prepare(`UPDATE rollout_devices SET status = 'silent', updated_at = ? WHERE rollout_id = ? AND status = 'applying' AND deadline < ?`),
      listGroups: db.prepare('SELECT * FROM device_groups ORDER BY name'),
      upsertGroup: db.prepare(
        `INSERT INTO device_groups (name, win, max_reboots, lease_ttl_seconds) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET win = excluded.win, max_reboots = excluded.max_reboots, lease_ttl_seconds = excluded.lease_ttl_seconds`,
      ),
      listLeases: db.prepare('SELECT * FROM leases'),
      getSetting: db.prepare('SELECT value FROM settings WHERE key = ?'),
      putSetting: db.prepare('INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
    };
  }

  async close(): Promise<void> {
    const w = this.reader;
    this.reader = null;
    if (w) await w.terminate();
    if (this.db.open) this.db.close();
  }

  async getDevice(id: string): Promise<DeviceView | undefined> {
    const r = this.st.getDevice.get(id) as Row | undefined;
    return r ? rowToDeviceView(r) : undefined;
  }

  private batch = (ops: readonly WriteOp[]): void => {
    for (const op of ops) {
      switch (op.kind) {
        case 'device':
          this.st.upsertDevice.run(deviceToRow(op.device));
          break;
        case 'participation':
          this.st.upsertParticipation.run(participationToRow(op.row));
          break;
        case 'event': {
          const e = op.event;
          this.st.insertEvent.run(e.deviceId, e.type, e.fromVersion, e.toVersion, e.at, e.errorCode, e.errorMessage, e.method ?? null);
          break;
        }
        case 'lease':
          this.st.upsertLease.run(op.lease.deviceId, op.lease.group, op.lease.expiresAt);
          break;
        case 'lease-delete':
          this.st.deleteLease.run(op.deviceId);
          break;
      }
    }
  };
  /** Built once: better-sqlite3's transaction() wrapper is not free to create per batch. */
  private batchTx: ((ops: readonly WriteOp[]) => void) | null = null;

  async writeBatch(ops: readonly WriteOp[]): Promise<void> {
    if (!ops.length) return;
    this.batchTx ??= this.db.transaction(this.batch);
    this.batchTx(ops);
  }

  async listDevices(after: string, limit: number): Promise<DeviceRecord[]> {
    return (this.st.listDevices.all(after, limit) as Row[]).map(rowToDevice);
  }

  async deviceCount(): Promise<number> {
    return Number((this.st.deviceCount.get() as Row).n);
  }

  async problemDevices(limit: number): Promise<DeviceView[]> {
    return (await this.readAll(PROBLEM_DEVICES, [limit])).map(rowToDeviceView);
  }

  async getPreauthorized(id: string) {
    const r = this.st.getPreauth.get(id) as Row | undefined;
    return r ? rowToPreauthorized(r) : undefined;
  }

  async addPreauthorized(rows: ReadonlyArray<{ id: string; group: string; channel: string; secretHash?: string }>): Promise<void> {
    this.db.transaction(() => {
      for (const r of rows) this.st.addPreauth.run(r.id, r.group, r.channel, r.secretHash ?? null);
    })();
  }

  async claimFactorySecret(id: string, secretHash: string, at: number): Promise<boolean> {
    return this.st.claimSecret.run(at, id, secretHash).changes === 1;
  }

  async listReleases(): Promise<ReleaseRecord[]> {
    return (this.st.listReleases.all() as Row[]).map(rowToRelease);
  }

  async upsertRelease(r: ReleaseRecord): Promise<void> {
    this.st.upsertRelease.run(r.channel, r.version, r.mandatory ? 1 : 0, r.manifestUrl, r.createdAt, r.source);
  }

  async listRollouts(): Promise<RolloutRecord[]> {
    return (this.st.listRollouts.all() as Row[]).map(rowToRollout);
  }

  async insertRollout(r: Omit<RolloutRecord, 'id'>): Promise<number> {
    const res = this.st.insertRollout.run(
      r.channel,
      r.version,
      JSON.stringify(r.spec),
      r.state,
      r.wave,
      r.waveStartedAt,
      r.createdAt,
      r.updatedAt,
      r.reason,
      r.baselineBad,
      r.baselineStarted,
    );
    return Number(res.lastInsertRowid);
  }

  async updateRollout(r: RolloutRecord): Promise<void> {
    this.st.updateRollout.run(JSON.stringify(r.spec), r.state, r.wave, r.waveStartedAt, r.updatedAt, r.reason, r.baselineBad, r.baselineStarted, r.id);
  }

  async getParticipation(rolloutId: number, deviceId: string): Promise<RolloutDevice | undefined> {
    const r = this.st.getParticipation.get(rolloutId, deviceId) as Row | undefined;
    return r ? (rowToParticipation(r) ?? undefined) : undefined;
  }

  async participationCounts(rolloutId: number): Promise<Record<ParticipationStatus, number>> {
    const out = emptyStatusCounts();
    for (const r of await this.readAll(PARTICIPATION_COUNTS, [rolloutId])) out[String(r.status) as ParticipationStatus] = Number(r.n);
    return out;
  }

  async markSilent(rolloutId: number, now: number): Promise<number> {
    return this.st.markSilent.run(now, rolloutId, now).changes;
  }

  async extendDeadlines(rolloutId: number, deadline: number): Promise<number> {
    return this.st.extendDeadlines.run(deadline, rolloutId, deadline).changes;
  }

  async versionCounts(channel?: string, wave?: { bucketBelow: number; groups: string[] }): Promise<Array<{ version: string; devices: number }>> {
    let rows: Row[];
    if (wave) {
      const g = wave.groups.map(() => '?').join(', ');
      // Devices that never checked in count too (version ''): they are in the wave and not done.
      const sql = `SELECT coalesce(version, '') AS version, count(*) AS n FROM devices
        WHERE channel = ? AND (bucket < ?${g ? ` OR grp IN (${g})` : ''}) GROUP BY version ORDER BY n DESC`;
      rows = await this.readAll(sql, [channel ?? '', wave.bucketBelow, ...wave.groups]);
    } else if (channel === undefined) rows = await this.readAll(VERSION_COUNTS_ALL, []);
    else rows = await this.readAll(VERSION_COUNTS_CHANNEL, [channel]);
    return rows.map((r) => ({ version: String(r.version), devices: Number(r.n) }));
  }

  async listGroups(): Promise<GroupRecord[]> {
    return (this.st.listGroups.all() as Row[]).map(rowToGroup);
  }

  async upsertGroup(g: GroupRecord): Promise<void> {
    this.st.upsertGroup.run(g.name, g.window ? JSON.stringify(g.window) : null, g.maxConcurrentReboots, g.leaseTtlSeconds);
  }

  async listLeases(): Promise<LeaseRecord[]> {
    return (this.st.listLeases.all() as Row[]).map((r) => ({ deviceId: String(r.device_id), group: String(r.grp), expiresAt: Number(r.expires_at) }));
  }

  async getSetting(key: string): Promise<unknown> {
    const r = this.st.getSetting.get(key) as Row | undefined;
    return r ? JSON.parse(String(r.value)) : undefined;
  }

  async putSetting(key: string, value: unknown): Promise<void> {
    this.st.putSetting.run(key, JSON.stringify(value));
  }
}
