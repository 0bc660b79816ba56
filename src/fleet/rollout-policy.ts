import { IbuError } from '../errors.js';
import { BAD_STATUSES, type ParticipationStatus, type RolloutDevice, type RolloutRecord, type RolloutSpec } from './types.js';
import { BUCKETS, effectiveWaves, waveOf, type Wave } from './waves.js';

export const DEFAULT_ROLLOUT_SPEC: RolloutSpec = {
  waves: [1, 10, 50, 100],
  canaryGroups: [],
  successRatio: 0.95,
  maxFailureRatio: 0.05,
  minSample: 20,
  maxFailures: 0,
  silentAfterSeconds: 1800,
  minWaveSeconds: 0,
  rampPercentPerMinute: 0,
};

/** Fills defaults and checks a rollout spec; every problem is reported at once (ROLLOUT_INVALID). */
export function resolveRolloutSpec(input: Partial<RolloutSpec> | undefined, defaults: RolloutSpec = DEFAULT_ROLLOUT_SPEC): RolloutSpec {
  const s: RolloutSpec = { ...defaults, ...(input ?? {}) };
  const problems: string[] = [];
  if (!Array.isArray(s.waves) || s.waves.length === 0) problems.push('waves must be a non-empty list of percentages, e.g. [1, 10, 50, 100]');
  else {
    s.waves.forEach((p, i) => {
      if (typeof p !== 'number' || !(p > 0 && p <= 100)) problems.push(`waves[${i}] = ${String(p)} must be a percentage in (0, 100]`);
      else if (i > 0 && p <= s.waves[i - 1]!) problems.push('waves must increase');
    });
    if (s.waves[s.waves.length - 1] !== 100) problems.push('the last wave must be 100 so the rollout can complete');
  }
  if (!Array.isArray(s.canaryGroups) || s.canaryGroups.some((g) => typeof g !== 'string' || g === ''))
    problems.push('canaryGroups must be a list of group names');
  const ratio = (name: keyof RolloutSpec) => {
    const v = s[name];
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) problems.push(`${name} must be a number between 0 and 1`);
  };
  ratio('successRatio');
  ratio('maxFailureRatio');
  const count = (name: keyof RolloutSpec) => {
    const v = s[name];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) problems.push(`${name} must be a number >= 0`);
  };
  count('minSample');
  count('maxFailures');
  count('silentAfterSeconds');
  count('minWaveSeconds');
  count('rampPercentPerMinute');
  if (problems.length) throw new IbuError('ROLLOUT_INVALID', `The rollout is invalid: ${problems.join('; ')}.`, { details: { problems } });
  return { ...s, waves: [...s.waves], canaryGroups: [...s.canaryGroups] };
}

export interface RolloutFacts {
  byStatus: Record<ParticipationStatus, number>;
  /** Devices of the channel inside the current wave, and how many of them run the release or newer. */
  waveDevices: number;
  waveDone: number;
  now: number;
}

export type RolloutDecision = { kind: 'none' } | { kind: 'pause'; reason: string } | { kind: 'advance'; wave: number } | { kind: 'complete'; reason: string };

export function emptyStatusCounts(): Record<ParticipationStatus, number> {
  return { targeted: 0, applying: 0, trial: 0, succeeded: 0, failed: 0, 'rolled-back': 0, silent: 0 };
}

/** Bad and started counts, the numbers thresholds work on. */
export function badAndStarted(byStatus: Record<ParticipationStatus, number>): { bad: number; started: number } {
  const bad = BAD_STATUSES.reduce((n, s) => n + byStatus[s], 0);
  const started = bad + byStatus.applying + byStatus.trial + byStatus.succeeded;
  return { bad, started };
}

/**
 * The heart of "halts itself": given a running rollout and fresh counts, pause it when the bad
 * outcomes pass the threshold, otherwise open the next wave when the current one reached its
 * success ratio, or complete it after the last wave. Pure; the service performs the decision.
 */
export function decide(r: RolloutRecord, f: RolloutFacts): RolloutDecision {
  if (r.state !== 'running') return { kind: 'none' };
  const { bad: allBad, started: allStarted } = badAndStarted(f.byStatus);
  const bad = allBad - r.baselineBad;
  const started = allStarted - r.baselineStarted;
  const detail = `${f.byStatus.failed} failed, ${f.byStatus['rolled-back']} rolled back, ${f.byStatus.silent} silent of ${allStarted} started`;
  if (r.spec.maxFailures > 0 && bad >= r.spec.maxFailures) {
    return { kind: 'pause', reason: `${bad} devices went bad, the limit is ${r.spec.maxFailures} (${detail})` };
  }
  if (started >= Math.max(1, r.spec.minSample) && bad / started > r.spec.maxFailureRatio) {
    return { kind: 'pause', reason: `failure ratio ${(bad / started).toFixed(3)} exceeds ${r.spec.maxFailureRatio} (${detail})` };
  }
  const waves = effectiveWaves(r.spec);
  const reached = f.waveDevices > 0 ? f.waveDone / f.waveDevices >= r.spec.successRatio : true;
  if (!reached || f.now - r.waveStartedAt < r.spec.minWaveSeconds * 1000) return { kind: 'none' };
  if (r.wave + 1 < waves.length) return { kind: 'advance', wave: r.wave + 1 };
  return { kind: 'complete', reason: `${f.waveDone} of ${f.waveDevices} devices run ${r.version}` };
}

/**
 * Whether a release is offered to a device now, by the rollout that governs it (undefined: the
 * release has none and goes to everyone, see docs/fleet.md).
 */
export function offeredBy(
  rollout: RolloutRecord | undefined,
  d: { bucket: number; group: string },
  part: RolloutDevice | null,
  req: { trial: boolean; version: string },
  now: number,
): boolean {
  if (!rollout) return true;
  switch (rollout.state) {
    case 'completed':
      return true;
    case 'aborted':
      return false;
    case 'running': {
      const waves = effectiveWaves(rollout.spec);
      const w = waveOf(waves, d.bucket, d.group);
      if (w < 0 || w > rollout.wave) return false;
      // once offered, always offered: a device never loses its target mid-download
      return w < rollout.wave || part?.rolloutId === rollout.id || now >= rampOpensAt(rollout, waves, w, d);
    }
    case 'paused':
      // Devices already past the point of no return finish; nobody new starts.
      return (part?.rolloutId === rollout.id && (part.status === 'applying' || part.status === 'trial')) || (req.trial && req.version === rollout.version);
  }
}

/**
 * When the ramp of the open wave reaches a device: the wave's new devices are offered in bucket
 * order at `rampPercentPerMinute`. A device in the wave by its group (the canaries) is offered at
 * once: that wave's size is the vendor's choice, not a share of the fleet. Deterministic, so
 * every replica agrees.
 */
export function rampOpensAt(rollout: RolloutRecord, waves: readonly Wave[], w: number, d: { bucket: number }): number {
  const rate = rollout.spec.rampPercentPerMinute;
  const lo = w > 0 ? waves[w - 1]!.bucketBelow : 0;
  if (!(rate > 0) || d.bucket < lo || d.bucket >= waves[w]!.bucketBelow) return rollout.waveStartedAt;
  return rollout.waveStartedAt + (((d.bucket - lo) / BUCKETS) * 100 * 60_000) / rate;
}
