import { IbuError } from '../errors.js';
import { hashToken } from './enrollment.js';
import type { FleetRepository } from './repository.js';
import { DEFAULT_ROLLOUT_SPEC, resolveRolloutSpec } from './rollout-policy.js';
import type { RolloutSpec } from './types.js';

export interface FleetConfig {
  /** Interval between check-ins of an idle device (the server adds +-jitter). */
  checkinIntervalSeconds: number;
  /** Interval while a device has a target or is mid-upgrade, so rollouts move on. */
  activeCheckinIntervalSeconds: number;
  jitter: number;
  /** sha256 of the fleet-wide secret that lets unknown ids enroll (unset: only pre-authorized ids). */
  enrollmentSecretHash?: string;
  /** How often rollouts are evaluated (silent devices, thresholds, waves). */
  evaluateEveryMs: number;
  defaultChannel: string;
  defaultGroup: string;
  defaultLeaseTtlSeconds: number;
  /** Concurrent reboots per group when the group sets none (0 = unlimited). */
  defaultMaxConcurrentReboots: number;
  /** Rollout settings used when a rollout request leaves them out. */
  rolloutDefaults: RolloutSpec;
  manifestUrl: (version: string) => string;
  batchMaxOps: number;
}

export const DEFAULT_FLEET_CONFIG: FleetConfig = {
  checkinIntervalSeconds: 3600,
  activeCheckinIntervalSeconds: 120,
  jitter: 0.2,
  defaultChannel: 'stable',
  defaultGroup: 'default',
  defaultLeaseTtlSeconds: 1800,
  defaultMaxConcurrentReboots: 0,
  rolloutDefaults: DEFAULT_ROLLOUT_SPEC,
  manifestUrl: (v) => `/v1/releases/${encodeURIComponent(v)}/manifest`,
  batchMaxOps: 2000,
  evaluateEveryMs: 2000,
};

/** The part of the config an operator may change at run time (stored in the fleet database). */
export interface FleetSettings {
  checkinIntervalSeconds?: number;
  activeCheckinIntervalSeconds?: number;
  jitter?: number;
  defaultLeaseTtlSeconds?: number;
  defaultMaxConcurrentReboots?: number;
  evaluateEveryMs?: number;
  rolloutDefaults?: Partial<RolloutSpec>;
  /** Write-only: only its sha256 is kept. An empty string turns secret enrollment off. */
  enrollmentSecret?: string;
}

/** The settings as stored: the secret replaced by its hash. */
export type StoredSettings = FleetSettings & { enrollmentSecretHash?: string };

/** The settings as an operator reads them back (the secret only as set or not). */
export type SettingsView = FleetSettings & { enrollmentSecretSet: boolean };

const KEY = 'fleet';

/** Checks a settings patch; every problem is reported at once (CONFIG_INVALID, or ROLLOUT_INVALID for the rollout defaults). */
export function validateSettings(patch: FleetSettings, rolloutDefaults: RolloutSpec): void {
  const problems: string[] = [];
  const pos = (k: keyof FleetSettings, allowZero = false) => {
    const v = patch[k];
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0)))
      problems.push(`${k} must be a ${allowZero ? 'non-negative' : 'positive'} number`);
  };
  pos('checkinIntervalSeconds');
  pos('activeCheckinIntervalSeconds');
  pos('defaultLeaseTtlSeconds');
  pos('defaultMaxConcurrentReboots', true);
  pos('evaluateEveryMs');
  if (patch.jitter !== undefined && !(typeof patch.jitter === 'number' && patch.jitter >= 0 && patch.jitter < 1))
    problems.push('jitter must be a number in [0, 1)');
  if (patch.enrollmentSecret !== undefined && typeof patch.enrollmentSecret !== 'string') problems.push('enrollmentSecret must be a string');
  if (problems.length) throw new IbuError('CONFIG_INVALID', `The fleet settings are invalid: ${problems.join('; ')}.`, { details: { problems } });
  if (patch.rolloutDefaults) resolveRolloutSpec(patch.rolloutDefaults, rolloutDefaults);
}

/** Writes stored settings over the config in place. */
export function applySettings(config: FleetConfig, s: StoredSettings): void {
  const { rolloutDefaults, enrollmentSecret: _secret, enrollmentSecretHash, ...rest } = s;
  Object.assign(config, rest);
  if (rolloutDefaults) config.rolloutDefaults = resolveRolloutSpec(rolloutDefaults, DEFAULT_ROLLOUT_SPEC);
  if ('enrollmentSecretHash' in s) config.enrollmentSecretHash = enrollmentSecretHash;
}

export function settingsView(c: FleetConfig): SettingsView {
  return {
    checkinIntervalSeconds: c.checkinIntervalSeconds,
    activeCheckinIntervalSeconds: c.activeCheckinIntervalSeconds,
    jitter: c.jitter,
    defaultLeaseTtlSeconds: c.defaultLeaseTtlSeconds,
    defaultMaxConcurrentReboots: c.defaultMaxConcurrentReboots,
    evaluateEveryMs: c.evaluateEveryMs,
    rolloutDefaults: c.rolloutDefaults,
    enrollmentSecretSet: Boolean(c.enrollmentSecretHash),
  };
}

export async function loadSettings(repo: FleetRepository): Promise<StoredSettings | undefined> {
  return (await repo.getSetting(KEY)) as StoredSettings | undefined;
}

/** Merges a (validated) patch into the stored settings, so a restart keeps them; returns what was stored. */
export async function persistSettings(repo: FleetRepository, patch: FleetSettings): Promise<StoredSettings> {
  const next: StoredSettings = { ...((await loadSettings(repo)) ?? {}), ...patch };
  if (patch.enrollmentSecret !== undefined) {
    delete next.enrollmentSecret;
    next.enrollmentSecretHash = patch.enrollmentSecret === '' ? undefined : hashToken(patch.enrollmentSecret);
  }
  await repo.putSetting(KEY, next);
  return next;
}
