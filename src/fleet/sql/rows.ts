import type { DeviceRecord, DeviceView, GroupRecord, Preauthorized, ParticipationStatus, ReleaseRecord, RolloutDevice, RolloutRecord } from '../types.js';
import type { DeviceState } from '../protocol.js';

/**
 * Row <-> record mapping shared by the SQLite and PostgreSQL repositories: both use the same
 * column names, so a device read by one looks exactly like a device read by the other.
 */
export type Row = Record<string, unknown>;

const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
const str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

export const DEVICE_COLUMNS = [
  'id',
  'token_hash',
  'grp',
  'channel',
  'bucket',
  'version',
  'state',
  'trial',
  'committed_version',
  'max_committed',
  'prepared_version',
  'free_bytes',
  'last_error_code',
  'last_error_message',
  'last_checkin',
  'checkins',
  'flags',
  'enrolled_at',
  'rollout_id',
  'public_key',
  'key_proof_at',
] as const;

export function deviceToRow(d: DeviceRecord): unknown[] {
  return [
    d.id,
    d.tokenHash,
    d.group,
    d.channel,
    d.bucket,
    d.version,
    d.state,
    d.trial ? 1 : 0,
    d.committedVersion,
    d.maxCommitted,
    d.preparedVersion,
    d.freeBytes,
    d.lastErrorCode,
    d.lastErrorMessage,
    d.lastCheckin,
    d.checkins,
    d.flags.join(','),
    d.enrolledAt,
    d.rolloutId,
    d.publicKey,
    d.keyProofAt,
  ];
}

export function rowToDevice(r: Row): DeviceRecord {
  return {
    id: String(r.id),
    tokenHash: String(r.token_hash),
    group: String(r.grp),
    channel: String(r.channel),
    bucket: Number(r.bucket),
    version: str(r.version),
    state: str(r.state) as DeviceState | null,
    trial: Number(r.trial) === 1,
    committedVersion: str(r.committed_version),
    maxCommitted: str(r.max_committed),
    preparedVersion: str(r.prepared_version),
    freeBytes: num(r.free_bytes),
    lastErrorCode: str(r.last_error_code),
    lastErrorMessage: str(r.last_error_message),
    lastCheckin: num(r.last_checkin),
    checkins: Number(r.checkins),
    flags: r.flags ? String(r.flags).split(',').filter(Boolean) : [],
    enrolledAt: Number(r.enrolled_at),
    rolloutId: num(r.rollout_id),
    publicKey: str(r.public_key),
    keyProofAt: num(r.key_proof_at),
  };
}

export const PARTICIPATION_COLUMNS = [
  'rollout_id',
  'device_id',
  'wave',
  'status',
  'from_version',
  'updated_at',
  'deadline',
  'error_code',
  'error_message',
] as const;

export function participationToRow(p: RolloutDevice): unknown[] {
  return [p.rolloutId, p.deviceId, p.wave, p.status, p.fromVersion, p.updatedAt, p.deadline, p.errorCode, p.errorMessage];
}

export function rowToParticipation(r: Row, prefix = ''): RolloutDevice | null {
  if (r[`${prefix}rollout_id`] === null || r[`${prefix}rollout_id`] === undefined || r[`${prefix}status`] == null) return null;
  return {
    rolloutId: Number(r[`${prefix}rollout_id`]),
    deviceId: String(r[`${prefix}device_id`]),
    wave: Number(r[`${prefix}wave`]),
    status: String(r[`${prefix}status`]) as ParticipationStatus,
    fromVersion: String(r[`${prefix}from_version`]),
    updatedAt: Number(r[`${prefix}updated_at`]),
    deadline: num(r[`${prefix}deadline`]),
    errorCode: str(r[`${prefix}error_code`]),
    errorMessage: str(r[`${prefix}error_message`]),
  };
}

/** SELECT list for a device joined with its current participation (columns prefixed p_). */
export const DEVICE_VIEW_SELECT = `SELECT d.*, p.rollout_id AS p_rollout_id, p.device_id AS p_device_id, p.wave AS p_wave, p.status AS p_status,
  p.from_version AS p_from_version, p.updated_at AS p_updated_at, p.deadline AS p_deadline, p.error_code AS p_error_code,
  p.error_message AS p_error_message
  FROM devices d LEFT JOIN rollout_devices p ON p.rollout_id = d.rollout_id AND p.device_id = d.id`;

export function rowToDeviceView(r: Row): DeviceView {
  return { ...rowToDevice(r), participation: rowToParticipation(r, 'p_') };
}

export function rowToRelease(r: Row): ReleaseRecord {
  return {
    channel: String(r.channel),
    version: String(r.version),
    mandatory: Number(r.mandatory) === 1,
    manifestUrl: String(r.manifest_url),
    createdAt: Number(r.created_at),
    source: String(r.source) as ReleaseRecord['source'],
  };
}

export function rowToRollout(r: Row): RolloutRecord {
  return {
    id: Number(r.id),
    channel: String(r.channel),
    version: String(r.version),
    spec: JSON.parse(String(r.spec)),
    state: String(r.state) as RolloutRecord['state'],
    wave: Number(r.wave),
    waveStartedAt: Number(r.wave_started_at),
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
    reason: str(r.reason),
    baselineBad: Number(r.baseline_bad),
    baselineStarted: Number(r.baseline_started),
  };
}

export function rowToGroup(r: Row): GroupRecord {
  return {
    name: String(r.name),
    window: r.win ? JSON.parse(String(r.win)) : null,
    maxConcurrentReboots: Number(r.max_reboots),
    leaseTtlSeconds: Number(r.lease_ttl_seconds),
  };
}

/** Builds the SQL schema for either dialect: they differ only in integer and serial types. */
export function schemaSql(dialect: 'sqlite' | 'postgres'): string {
  const big = dialect === 'sqlite' ? 'INTEGER' : 'BIGINT';
  const serial = dialect === 'sqlite' ? 'INTEGER PRIMARY KEY AUTOINCREMENT' : 'BIGSERIAL PRIMARY KEY';
  return `
  CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, grp TEXT NOT NULL, channel TEXT NOT NULL, bucket INTEGER NOT NULL,
    version TEXT, state TEXT, trial INTEGER NOT NULL DEFAULT 0, committed_version TEXT, max_committed TEXT,
    prepared_version TEXT, free_bytes ${big}, last_error_code TEXT, last_error_message TEXT, last_checkin ${big},
    checkins ${big} NOT NULL DEFAULT 0, flags TEXT NOT NULL DEFAULT '', enrolled_at ${big} NOT NULL, rollout_id ${big},
    public_key TEXT, key_proof_at ${big}
  );
  CREATE INDEX IF NOT EXISTS devices_channel_version ON devices (channel, version, bucket, grp);
  CREATE TABLE IF NOT EXISTS preauthorized (
    id TEXT PRIMARY KEY, grp TEXT NOT NULL, channel TEXT NOT NULL, secret_hash TEXT, used_at ${big}
  );
  CREATE TABLE IF NOT EXISTS releases (
    channel TEXT NOT NULL, version TEXT NOT NULL, mandatory INTEGER NOT NULL DEFAULT 0, manifest_url TEXT NOT NULL,
    created_at ${big} NOT NULL, source TEXT NOT NULL, PRIMARY KEY (channel, version)
  );
  CREATE TABLE IF NOT EXISTS rollouts (
    id ${serial}, channel TEXT NOT NULL, version TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    wave INTEGER NOT NULL, wave_started_at ${big} NOT NULL, created_at ${big} NOT NULL, updated_at ${big} NOT NULL,
    reason TEXT, baseline_bad ${big} NOT NULL DEFAULT 0, baseline_started ${big} NOT NULL DEFAULT 0
  );
  CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id ${big} NOT NULL, device_id TEXT NOT NULL, wave INTEGER NOT NULL, status TEXT NOT NULL,
    from_version TEXT NOT NULL, updated_at ${big} NOT NULL, deadline ${big}, error_code TEXT, error_message TEXT,
    PRIMARY KEY (rollout_id, device_id)
  );
  CREATE INDEX IF NOT EXISTS rollout_devices_status ON rollout_devices (rollout_id, status, deadline);
  CREATE TABLE IF NOT EXISTS device_groups (
    name TEXT PRIMARY KEY, win TEXT, max_reboots INTEGER NOT NULL, lease_ttl_seconds INTEGER NOT NULL
  );
  CREATE TABLE IF NOT EXISTS leases (device_id TEXT PRIMARY KEY, grp TEXT NOT NULL, expires_at ${big} NOT NULL);
  CREATE INDEX IF NOT EXISTS leases_group ON leases (grp, expires_at);
  CREATE TABLE IF NOT EXISTS events (
    id ${serial}, device_id TEXT NOT NULL, type TEXT NOT NULL, from_version TEXT, to_version TEXT, at ${big} NOT NULL,
    error_code TEXT, error_message TEXT, method TEXT
  );
  CREATE INDEX IF NOT EXISTS events_device ON events (device_id, at);
  CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  `;
}

/** Upserting a pre-authorization keeps its factory secret unless a new one is given, which re-arms it. */
export const PREAUTH_UPSERT = `ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, channel = excluded.channel,
  secret_hash = coalesce(excluded.secret_hash, preauthorized.secret_hash),
  used_at = CASE WHEN excluded.secret_hash IS NULL THEN preauthorized.used_at ELSE NULL END`;

/** Columns added after the first schema: created on databases that predate them. */
export function addedColumns(dialect: 'sqlite' | 'postgres'): Array<{ table: string; column: string; type: string }> {
  const big = dialect === 'sqlite' ? 'INTEGER' : 'BIGINT';
  return [
    { table: 'devices', column: 'public_key', type: 'TEXT' },
    { table: 'devices', column: 'key_proof_at', type: big },
    { table: 'preauthorized', column: 'secret_hash', type: 'TEXT' },
    { table: 'preauthorized', column: 'used_at', type: big },
    { table: 'events', column: 'method', type: 'TEXT' },
  ];
}

/** A pre-authorization: the group and channel an id joins, and its one-time factory secret if imported. */
export function rowToPreauthorized(r: Row): Preauthorized {
  return { group: String(r.grp), channel: String(r.channel), secretHash: str(r.secret_hash), usedAt: num(r.used_at) };
}
