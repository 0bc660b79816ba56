import type { DeviceState, MaintenanceWindow } from './protocol.js';

/**
 * The fleet's records, shared by the pure logic (this folder) and the repositories that store
 * them (src/server/fleet/*-repository.ts). Times are epoch milliseconds.
 */
export interface DeviceRecord {
  id: string;
  tokenHash: string; // sha256 hex of the device token; the token itself is never stored ('' = revoked)
  /** The device's ed25519 public key bound at enrollment (null: none bound, or reset by an admin). */
  publicKey: string | null;
  /** Signing time of the last accepted enrollment proof: an older or equal one is a replay. */
  keyProofAt: number | null;
  group: string;
  channel: string;
  bucket: number; // 0..9999, stable hash of the id: decides the rollout wave
  version: string | null; // running version (null until the first check-in)
  state: DeviceState | null;
  trial: boolean;
  committedVersion: string | null;
  maxCommitted: string | null; // highest committed version ever reported (anti-downgrade)
  preparedVersion: string | null;
  freeBytes: number | null;
  lastErrorCode: string | null;
  lastErrorMessage: string | null;
  lastCheckin: number | null;
  checkins: number;
  flags: string[]; // e.g. 'downgraded'
  enrolledAt: number;
  /** The rollout this device currently takes part in, if any (its status is in RolloutDevice). */
  rolloutId: number | null;
}

/** A pre-authorized id: where it joins, and the sha256 of its one-time factory secret if the vendor imported one. */
export interface Preauthorized {
  group: string;
  channel: string;
  secretHash: string | null;
  /** When the factory secret was used (it cannot be used twice). */
  usedAt: number | null;
}

/** Participation of one device in one rollout. */
export type ParticipationStatus = 'targeted' | 'applying' | 'trial' | 'succeeded' | 'failed' | 'rolled-back' | 'silent';
export const BAD_STATUSES: readonly ParticipationStatus[] = ['failed', 'rolled-back', 'silent'];

export interface RolloutDevice {
  rolloutId: number;
  deviceId: string;
  wave: number;
  status: ParticipationStatus;
  fromVersion: string;
  updatedAt: number;
  deadline: number | null; // when 'applying', the device must check in again before this
  errorCode: string | null;
  errorMessage: string | null;
}

/** A device joined with its current participation (what a check-in reads in one query). */
export interface DeviceView extends DeviceRecord {
  participation: RolloutDevice | null;
}

export interface ReleaseRecord {
  channel: string;
  version: string;
  mandatory: boolean; // a stepping stone every device must pass through
  manifestUrl: string;
  createdAt: number;
  source: 'store' | 'api';
}

export type RolloutState = 'running' | 'paused' | 'completed' | 'aborted';

export interface RolloutSpec {
  /** Cumulative percentages of the channel's devices, e.g. [1, 10, 50, 100]. */
  waves: number[];
  /** Groups that form a wave before the first percentage (canaries); they stay in every later wave. */
  canaryGroups: string[];
  /** A wave is done when this share of its devices runs the release (or newer). */
  successRatio: number;
  /** Pause when (failed + rolled back + silent) / started exceeds this... */
  maxFailureRatio: number;
  /** ...once at least this many devices have started (small samples are noisy)... */
  minSample: number;
  /** ...or at once when this many devices went bad (0 = no absolute limit). */
  maxFailures: number;
  /** A device that started applying and has not checked in after this long counts as silent. */
  silentAfterSeconds: number;
  /** A wave stays open at least this long before the next opens. */
  minWaveSeconds: number;
  /**
   * Open each wave gradually: at most this many percent of the channel's devices are newly offered
   * the release per minute (0 = the whole wave at once). Bounds the server's and the CDN's peak
   * when a large wave opens (every device of a wave downloads, asks for a lease, reboots, reports).
   */
  rampPercentPerMinute: number;
}

export interface RolloutRecord {
  id: number;
  channel: string;
  version: string;
  spec: RolloutSpec;
  state: RolloutState;
  wave: number; // index into effectiveWaves(spec)
  waveStartedAt: number;
  createdAt: number;
  updatedAt: number;
  reason: string | null; // why it paused / was aborted / completed
  /** Bad and started counts acknowledged by the last resume; thresholds apply beyond them. */
  baselineBad: number;
  baselineStarted: number;
}

export interface GroupRecord {
  name: string;
  window: MaintenanceWindow | null;
  maxConcurrentReboots: number; // 0 = unlimited
  leaseTtlSeconds: number;
}

export interface LeaseRecord {
  deviceId: string;
  group: string;
  expiresAt: number;
}

export interface FleetEvent {
  deviceId: string;
  type: string;
  fromVersion: string | null;
  toVersion: string | null;
  at: number;
  errorCode: string | null;
  errorMessage: string | null;
  /** How the device entered the trial (reboot, kexec, soft-reboot), when it said. */
  method?: string | null;
}

/** Everything a check-in or event changes, written together in one batched transaction. */
export type WriteOp =
  | { kind: 'device'; device: DeviceRecord }
  | { kind: 'participation'; row: RolloutDevice }
  | { kind: 'event'; event: FleetEvent }
  | { kind: 'lease'; lease: LeaseRecord }
  | { kind: 'lease-delete'; deviceId: string };

export interface RolloutCounts {
  /** Participation rows by status (all waves). */
  byStatus: Record<ParticipationStatus, number>;
}

/** The device row of a view, with a copy of its flags (safe to change). */
export function stripView(v: DeviceView): DeviceRecord {
  const { participation: _p, ...d } = v;
  return { ...d, flags: [...d.flags] };
}
